#!/usr/bin/env python3
"""A KV-aware router: for a prompt's tokens, pick the serving instance that
holds the longest prefix of its KV cache, the way production-stack's router
asks LMCache's controller (`/lookup`), but over kvring's shared memory (a
router on the controller's machine). Falls back to the least-loaded instance
(here: round robin) when nobody holds the prefix's first chunk.

    python3 examples/router.py --controller main --port 8800 \\
        --backend vllm-0=http://10.0.0.5:8000 --backend vllm-1=http://10.0.0.6:8000
    curl -X POST localhost:8800/route -d '{"prompt_token_ids": [1, 2, 3, ...]}'
    -> {"instance_id": "vllm-1", "url": "http://10.0.0.6:8000", "matched_tokens": 512}

A real deployment forwards the request to the chosen URL; this example
answers with the choice, so it can sit in front of any proxy.
"""
import argparse
import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kvring


class Router:
    def __init__(self, controller, backends):
        self.backends = dict(backends)  # instance_id -> URL
        self.orch = kvring.Orchestrator(controller)
        self._next = itertools.cycle(sorted(self.backends))
        self._lock = threading.Lock()

    def route(self, tokens):
        """(instance_id, url, matched_tokens) for a prompt's token ids."""
        reply = self.orch.lookup(tokens)  # LookupRetMsg: instance_id -> (location, matched end token)
        best, matched = None, 0
        for instance_id, (_location, end) in reply["layout_info"].items():
            if instance_id in self.backends and end > matched:
                best, matched = instance_id, end
        if best is None:
            with self._lock:
                best = next(self._next)
        return best, self.backends[best], matched


def serve(router, port):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's naming)
            if self.path != "/route":
                self.send_error(404)
                return
            try:
                body = json.loads(self.rfile.read(min(int(self.headers.get("Content-Length", 0)), 16 << 20)))
                tokens = [int(t) for t in body["prompt_token_ids"]]
                instance_id, url, matched = router.route(tokens)
                out = json.dumps({"instance_id": instance_id, "url": url, "matched_tokens": matched}).encode()
                self.send_response(200)
            except (ValueError, KeyError, TypeError, kvring.Error) as e:
                out = json.dumps({"error": str(e)}).encode()
                self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controller", default="kvring")
    ap.add_argument("--port", type=int, default=8800)
    ap.add_argument("--backend", action="append", default=[], help="INSTANCE_ID=URL (repeat)")
    a = ap.parse_args()
    backends = [b.split("=", 1) for b in a.backend]
    if not backends:
        ap.error("at least one --backend INSTANCE_ID=URL")
    serve(Router(a.controller, backends), a.port)


if __name__ == "__main__":
    main()
