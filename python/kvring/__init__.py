"""kvring for Python: the shared-memory client of a kvring controller, LMCache's
controller protocol (msgspec's bytes) and LMCache's chunk hashes.

    import kvring

    with kvring.Worker(controller="main", instance_id="vllm-0", worker_id=0,
                       peer_init_url="10.0.0.5:8200", keys_of=my_cache.keys_at) as w:
        w.admit("LocalCPUBackend", hashes)            # list of ints, or a numpy int64/uint64 array
        w.lookup(prefix_hashes, timeout=0.005)         # [(instance_id, location, num_hit_chunks, peer_init_url)]

    orch = kvring.Orchestrator(controller="main")
    orch.lookup(tokens)                                # LMCache's LookupRetMsg, as a dict
    orch.clear("vllm-0", "LocalCPUBackend")

    kvring.decode(kvring.encode({"type": "HealthMsg", "event_id": "e", "instance_id": "i"}))
    kvring.chunk_hashes(tokens, chunk_size=256)        # [(start, end, hash)], LMCache's builtin hash

Every call that waits (attach, lookup, flush, heartbeat, a request) releases the
GIL. Command handlers (on_clear, on_health, ...) and keys_of run on the
Worker's background thread with the GIL taken. Errors: kvring.Error (and
TimeoutError, ValueError, TypeError) carrying kvring's message.
"""
import json as _json
import uuid as _uuid

from . import _kvring
from ._kvring import Error

__version__ = _kvring.__version__
__all__ = ["Worker", "Orchestrator", "Error", "encode", "decode", "chunk_hashes", "__version__"]


def encode(message):
    """msgspec's msgpack bytes of one LMCache message, given as a dict in
    msgspec's to_builtins shape (what decode returns): {"type": "RegisterMsg", ...}."""
    if not isinstance(message, dict):
        raise TypeError("encode takes a dict (an LMCache message in to_builtins shape)")
    return _kvring.encode_json(_json.dumps(message))


def decode(data):
    """One LMCache message's msgpack bytes as a dict in msgspec's to_builtins
    shape. ValueError (with msgspec's wording) when the bytes are not one."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise TypeError("decode takes bytes")
    return _json.loads(_kvring.decode_json(data))


def chunk_hashes(tokens, chunk_size=256, none_hash=0, python_hash_seed=None):
    """LMCache's chunk hashes of a token list with CPython's builtin hash, as
    its ChunkedTokenDatabase computes them: [(start, end, hash)], one per chunk
    of `chunk_size` tokens (the last one partial),
    h[i] = hash((h[i-1], tuple(tokens[start:end]))), h[-1] = none_hash.

    `none_hash` is LMCache's NONE_HASH: an int, or the str/bytes it is the
    hash of (then `python_hash_seed`, the engine's PYTHONHASHSEED, is needed).
    `tokens`: a sequence of ints or a buffer of 8-byte integers (numpy)."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 0 < chunk_size < 2**32:
        raise ValueError("chunk_size must be an int in [1, 2**32 - 1]")
    if isinstance(none_hash, (str, bytes)):
        if python_hash_seed is None:
            raise ValueError("a str or bytes none_hash needs python_hash_seed (the engine's PYTHONHASHSEED)")
        if isinstance(python_hash_seed, bool) or not isinstance(python_hash_seed, int) or not 0 <= python_hash_seed < 2**32:
            raise ValueError("python_hash_seed must be an int in [0, 2**32 - 1]")
        if isinstance(none_hash, str):
            none_hash = _kvring.hash_str(none_hash, python_hash_seed)
        else:
            none_hash = _kvring.hash_bytes(none_hash, python_hash_seed)
    elif isinstance(none_hash, bool) or not isinstance(none_hash, int):
        raise TypeError("none_hash must be an int, a str or bytes")
    # hash() of an int does not depend on PYTHONHASHSEED: this interpreter's is CPython's.
    return _kvring.chunk_hashes(tokens, chunk_size, hash(none_hash))


class Worker:
    """One serving engine's worker (a TP rank) attached to a kvring controller
    over shared memory: it registers at once, sends admits and evicts in
    batches, answers P2P lookups, heartbeats and full-syncs in the background,
    and runs the command handlers the controller's fan-outs call for.

    keys_of(location) -> the hashes this worker holds there (for a full sync
    after a controller restart): a list of ints or a numpy array.
    on_clear / on_pin / on_compress / on_decompress / on_move(msg: dict) -> int
    (num_tokens); on_health(msg) -> int (error code, 0 = healthy);
    on_check_finish(msg) -> str; any of them may return the whole reply as a
    dict instead. A handler that raises answers LMCache's "Worker error: ...";
    a command without a handler answers "Unknown message: ...".
    """

    def __init__(self, controller="kvring", instance_id="", worker_id=0, peer_init_url=None, ip="127.0.0.1",
                 port=0, keys_of=None, on_clear=None, on_pin=None, on_compress=None, on_decompress=None,
                 on_move=None, on_health=None, on_check_finish=None, attach_timeout=2.0, request_timeout=2.0,
                 batch_ops=256, flush_interval=0.01, controller_uid=None, background=True):
        self._w = _kvring.Worker(controller, instance_id, worker_id, peer_init_url, ip, port, keys_of, on_clear,
                                 on_pin, on_compress, on_decompress, on_move, on_health, on_check_finish,
                                 float(attach_timeout), float(request_timeout), batch_ops, float(flush_interval),
                                 controller_uid, background)
        self.controller, self.instance_id, self.worker_id = controller, instance_id, worker_id

    def admit(self, location, hashes):
        """Queues admits of `hashes` (ints, or a buffer of int64/uint64) at `location`."""
        self._w.admit(location, hashes)

    def evict(self, location, hashes):
        """Queues evicts of `hashes` at `location`."""
        self._w.evict(location, hashes)

    def flush(self):
        """Sends every queued admit and evict now."""
        self._w.flush()

    def lookup(self, hashes, timeout=1.0):
        """Which peer holds the longest prefix of `hashes` (BatchedP2PLookupMsg):
        LMCache's layout_info, [(instance_id, location, num_hit_chunks,
        peer_init_url)]; a miss has instance_id "" and 0 chunks. TimeoutError
        when no answer comes within `timeout` seconds."""
        return self._w.lookup(hashes, float(timeout))

    def heartbeat(self):
        """One heartbeat now (the background thread sends them anyway), acting on
        what the controller asks (a full sync)."""
        self._w.heartbeat()

    def counters(self):
        """This worker's counters: ops_sent, lookups, heartbeats, full_syncs, ..."""
        return self._w.counters()

    @property
    def closed(self):
        return self._w.closed

    def close(self):
        """Flushes, deregisters and detaches; later calls raise ValueError."""
        self._w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _event_id(prefix):
    return f"{prefix}{_uuid.uuid4().hex}"


class Orchestrator:
    """An orchestrator's connection to a kvring controller (LMCache's
    controller API, over shared memory): many requests in flight at once from
    any number of threads. Replies are dicts in msgspec's to_builtins shape; an
    ErrorMsg reply raises kvring.Error with its text."""

    def __init__(self, controller="kvring", attach_timeout=2.0, timeout=5.0):
        self._o = _kvring.Orchestrator(controller, float(attach_timeout))
        self.timeout = float(timeout)

    def request(self, message, timeout=None):
        """Any LMCache message (a dict) and its reply (a dict)."""
        if not isinstance(message, dict):
            raise TypeError("request takes a dict (an LMCache message in to_builtins shape)")
        reply = _json.loads(self._o.request_json(_json.dumps(message), self.timeout if timeout is None else float(timeout)))
        if reply.get("type") == "ErrorMsg":
            raise Error(reply.get("error", "ErrorMsg"))
        return reply

    def lookup(self, tokens, event_id=None, timeout=None):
        """LookupMsg: which instances hold the longest prefix of `tokens`."""
        return self.request({"type": "LookupMsg", "event_id": event_id or _event_id("Lookup"),
                             "tokens": [int(t) for t in tokens]}, timeout)

    def clear(self, instance_id, location, event_id=None, timeout=None):
        return self.request({"type": "ClearMsg", "event_id": event_id or _event_id("Clear"),
                             "instance_id": instance_id, "location": location}, timeout)

    def pin(self, instance_id, location, tokens, event_id=None, timeout=None):
        return self.request({"type": "PinMsg", "event_id": event_id or _event_id("Pin"), "instance_id": instance_id,
                             "location": location, "tokens": [int(t) for t in tokens]}, timeout)

    def compress(self, instance_id, method, location, tokens=None, event_id=None, timeout=None):
        return self.request({"type": "CompressMsg", "event_id": event_id or _event_id("Compress"),
                             "instance_id": instance_id, "method": method, "location": location,
                             "tokens": None if tokens is None else [int(t) for t in tokens]}, timeout)

    def decompress(self, instance_id, method, location, tokens=None, event_id=None, timeout=None):
        return self.request({"type": "DecompressMsg", "event_id": event_id or _event_id("Decompress"),
                             "instance_id": instance_id, "method": method, "location": location,
                             "tokens": None if tokens is None else [int(t) for t in tokens]}, timeout)

    def move(self, old_position, new_position, tokens=None, copy=False, event_id=None, timeout=None):
        """MoveMsg: positions are (instance_id, location) pairs."""
        return self.request({"type": "MoveMsg", "event_id": event_id or _event_id("Move"),
                             "old_position": list(old_position), "new_position": list(new_position),
                             "tokens": None if tokens is None else [int(t) for t in tokens], "copy": bool(copy)},
                            timeout)

    def health(self, instance_id, event_id=None, timeout=None):
        return self.request({"type": "HealthMsg", "event_id": event_id or _event_id("Health"),
                             "instance_id": instance_id}, timeout)

    def check_finish(self, event_id, timeout=None):
        return self.request({"type": "CheckFinishMsg", "event_id": event_id}, timeout)

    def query_worker_info(self, instance_id="all", worker_ids=None, event_id=None, timeout=None):
        return self.request({"type": "QueryWorkerInfoMsg", "event_id": event_id or _event_id("QueryWorkerInfo"),
                             "instance_id": instance_id,
                             "worker_ids": None if worker_ids is None else [int(w) for w in worker_ids]}, timeout)

    def stats(self, timeout=None):
        """The controller's counters (what `kvring stats --json` prints)."""
        return _json.loads(self._o.control_json('{"op":"stats"}', self.timeout if timeout is None else float(timeout)))

    @property
    def alive(self):
        return self._o.alive

    def close(self):
        self._o.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
