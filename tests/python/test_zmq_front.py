"""kvringd as a drop-in for lmcache_controller: LMCache-style workers over
ZeroMQ (lmcache_worker.py) against a real kvringd started with LMCache's
flags, beside shared-memory workers (shm_worker_tool), with real processes,
real sockets and real kill -9.

Run by ctest (CMakeLists.txt) with KVRINGD, KVRING_CLI and SHM_WORKER_TOOL set.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import msgpack
import pytest
import zmq

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402
from helpers import ShmWorker, wait_for  # noqa: E402
from lmcache_worker import LMCacheWorker, pack, tagged, unpack  # noqa: E402

KVRINGD = os.environ.get("KVRINGD", "build/release/kvringd")
KVRING_CLI = os.environ.get("KVRING_CLI", "build/release/kvring")
LOC = "LocalCPUBackend"


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


class Daemon:
    """A kvringd started with lmcache_controller's flags."""

    def __init__(self, name, ports=None, extra=()):
        self.name = name
        self.http, self.pull, self.reply, self.heartbeat = ports or free_ports(4)
        self.extra = list(extra)
        self.proc = None
        self.start()

    def start(self):
        monitor = json.dumps({"pull": self.pull, "reply": self.reply, "heartbeat": self.heartbeat})
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [KVRINGD, "--name", self.name, "--host", "127.0.0.1", "--port", str(self.http), "--monitor-ports",
             monitor, "--stats-interval", "0", "--command-timeout", "1"] + self.extra,
            stderr=self.log, stdout=subprocess.DEVNULL)
        wait_for(lambda: self.stats(check=False).get("zmq", {}).get("pull_port") == self.pull, 15,
                 "kvringd's ZeroMQ front")
        wait_for(lambda: self.http_ready(), 15, "kvringd's HTTP API")

    def http_ready(self):
        try:
            self.post("/query_worker_info", {"instance_id": "all"})
            return True
        except (urllib.error.URLError, ConnectionError):
            return False

    def stats(self, check=True):
        r = subprocess.run([KVRING_CLI, "stats", "--name", self.name, "--json"], capture_output=True, text=True,
                           timeout=10)
        if r.returncode != 0:
            if check:
                raise AssertionError(r.stderr)
            return {}
        return json.loads(r.stdout)

    def post(self, path, body):
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.http, path), data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def alive(self):
        return self.proc.poll() is None

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()

    def log_tail(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


@pytest.fixture
def daemon(request):
    d = Daemon("zt%d-%s" % (os.getpid(), request.node.name[:20].replace("[", "").replace("]", "")))
    yield d
    d.stop()
    assert d.proc.returncode == 0, d.log_tail()


workers_made = []


def make_worker(d, instance, wid, peer=None, rep=True, **kw):
    rep_port = free_ports(1)[0] if rep else 0
    w = LMCacheWorker(instance, wid, "127.0.0.1:%d" % d.pull, "127.0.0.1:%d" % d.reply, rep_port,
                      peer_init_url=peer, **kw)
    workers_made.append(w)
    return w


def registered_pair(d):
    """Two registered workers of two instances: inst_a (peer a:1) and inst_b (peer b:1)."""
    a = make_worker(d, "inst_a", 0, "a:1")
    b = make_worker(d, "inst_b", 0, "b:1")
    a.register()
    b.register()
    return a, b


@pytest.fixture(autouse=True)
def close_workers():
    yield
    while workers_made:
        workers_made.pop().close()


def lookup_until(w, hashes, want, timeout=10.0):
    helpers.lookup_until(lambda: w.lookup(hashes), want, timeout)


# ---- registration, heartbeats, lookups ---------------------------------------------

def test_workers_register_get_a_reachable_heartbeat_url_and_find_each_others_chunks(daemon):
    a = make_worker(daemon, "inst_a", 0, "10.0.0.1:8200")
    b = make_worker(daemon, "inst_b", 0, "10.0.0.2:8200")
    ret = a.register()
    assert ret["extra_config"]["heartbeat_url"] == "127.0.0.1:%d" % daemon.heartbeat
    b.register()
    assert a.heartbeat(full_sync=False)["type"] == "HeartbeatRetMsg"  # over the heartbeat DEALER
    a.admit(LOC, range(1000, 1100))
    lookup_until(b, range(1000, 1032), ("inst_a", LOC, 32, "10.0.0.1:8200"))
    assert b.lookup([999, 1000]) == ("", "", 0, "")
    a.evict(LOC, range(1016, 1100))
    lookup_until(b, range(1000, 1032), ("inst_a", LOC, 16, "10.0.0.1:8200"))
    s = daemon.stats()
    assert s["workers"] == 2
    assert s["zmq"]["heartbeat_requests_total"] >= 1
    # Peers are counted from the sockets' monitor events, which the front
    # reads every 100 ms (not on every wake-up: docs/PERFORMANCE.md).
    wait_for(lambda: daemon.stats()["zmq"]["peers_connected"] >= 3, 5, "three peers counted")


def test_tp_ranks_get_their_own_ranks_peer(daemon):
    ranks = [make_worker(daemon, "inst_a", r, "10.0.0.1:%d" % (8200 + r)) for r in range(2)]
    other = [make_worker(daemon, "inst_b", r, "10.0.0.2:%d" % (8200 + r)) for r in range(2)]
    for w in ranks + other:
        w.register()
    for w in ranks:
        w.admit(LOC, range(50, 60))
    lookup_until(other[1], range(50, 60), ("inst_a", LOC, 10, "10.0.0.1:8201"))
    lookup_until(other[0], range(50, 60), ("inst_a", LOC, 10, "10.0.0.1:8200"))


def test_many_lookups_in_flight_on_one_dealer_come_back_in_order(daemon):
    a, b = registered_pair(daemon)
    a.admit(LOC, range(1, 201))
    lookup_until(b, range(1, 201), ("inst_a", LOC, 200, "a:1"))
    lengths = [(i * 37) % 200 + 1 for i in range(100)]
    answers = b.lookups_in_flight([range(1, n + 1) for n in lengths])
    assert [x[2] for x in answers] == lengths


def test_shared_memory_and_zeromq_workers_see_each_other(daemon):
    z = make_worker(daemon, "inst_zmq", 0, "zmq-host:8200")
    z.register()
    shm = ShmWorker(daemon.name, "inst_shm", 0, "shm-host:8200")
    try:
        assert shm.ask("admit %s %s" % (LOC, " ".join(str(k) for k in range(500, 540)))) == {"ok": True}
        lookup_until(z, range(500, 540), ("inst_shm", LOC, 40, "shm-host:8200"))
        z.admit(LOC, range(700, 720))

        def shm_sees():
            return shm.ask("lookup " + " ".join(str(k) for k in range(700, 720)))["num_hit_chunks"] == 20
        wait_for(shm_sees, 10, "the shm worker's lookup")
        hit = shm.ask("lookup " + " ".join(str(k) for k in range(700, 720)))
        assert (hit["instance_id"], hit["peer_init_url"]) == ("inst_zmq", "zmq-host:8200")
    finally:
        shm.close()


def test_json_frames_are_accepted_on_pull_and_router(daemon):
    a = make_worker(daemon, "inst_a", 0, "a:1")
    b = make_worker(daemon, "inst_b", 0, "b:1")
    ret = a.request_raw([b"", json.dumps({"type": "RegisterMsg", "instance_id": "inst_a", "worker_id": 0,
                                          "ip": "127.0.0.1", "port": a.port, "peer_init_url": "a:1"}).encode()])
    assert ret["type"] == "RegisterRetMsg"
    b.register()
    a.push.send(json.dumps({"type": "BatchedKVOperationMsg", "instance_id": "inst_a", "worker_id": 0,
                            "location": LOC, "operations": [{"op_type": "admit", "key": k, "seq_num": k}
                                                            for k in range(3)]}).encode())
    lookup_until(b, [0, 1, 2], ("inst_a", LOC, 3, "a:1"))
    assert daemon.stats()["zmq"]["json_frames_total"] == 2


def test_deregistration_and_reregistration_at_a_new_address(daemon):
    a, b = registered_pair(daemon)
    a.admit(LOC, range(10))
    lookup_until(b, range(10), ("inst_a", LOC, 10, "a:1"))
    a.deregister()
    lookup_until(b, range(10), ("", "", 0, ""))
    wait_for(lambda: daemon.stats()["workers"] == 1, 10, "the deregistration")
    # The same identity comes back from another process at another address:
    # commands go to the new one (LMCache keeps the stale socket).
    a2 = make_worker(daemon, "inst_a", 0, "a:2")
    a2.register()
    r = daemon.post("/health", {"instance_id": "inst_a"})
    assert r["error_codes"] == {"0": 0}
    assert [c["type"] for c in a2.commands] == ["HealthWorkerMsg"]
    assert a.commands == []


# ---- fan-outs over REQ ---------------------------------------------------------------

def test_http_health_and_clear_reach_zeromq_workers(daemon):
    ws = [make_worker(daemon, "inst_a", r, "a:%d" % r) for r in range(2)]
    for w in ws:
        w.register()
        w.admit(LOC, range(10 * w.worker_id, 10 * w.worker_id + 4))
    r = daemon.post("/health", {"instance_id": "inst_a"})
    assert r["error_codes"] == {"0": 0, "1": 0}
    assert r["event_id"].startswith("health")
    r = daemon.post("/clear", {"instance_id": "inst_a", "location": LOC})
    assert r["num_tokens"] == 4 * 256
    for w in ws:
        assert [c["type"] for c in w.commands] == ["HealthWorkerMsg", "ClearWorkerMsg"]
        assert w.commands[1]["location"] == LOC
    assert daemon.stats()["zmq"]["commands_answered_total"] == 4


def test_a_silent_worker_is_reported_and_its_req_socket_replaced(daemon):
    good = make_worker(daemon, "inst_a", 0, "a:0")
    good.register()
    # Rank 1 registers with a REP port nobody listens on.
    silent = make_worker(daemon, "inst_a", 1, "a:1", rep=False)
    silent.port = free_ports(1)[0]
    silent.register()
    t0 = time.monotonic()
    r = daemon.post("/health", {"instance_id": "inst_a"})
    assert time.monotonic() - t0 < 5  # --command-timeout 1: reported, never waited for
    assert r["error_codes"] == {"0": 0, "1": -1004}  # kHealthNoReply, as for a silent shm worker
    wait_for(lambda: daemon.stats()["zmq"]["commands_timed_out_total"] >= 1, 5, "the REQ socket's replacement")
    # The healthy rank keeps answering, and a REP that comes up later on the
    # silent rank's port gets the next command (on the fresh socket), not the stale one.
    late = LMCacheWorker("inst_a", 1, "127.0.0.1:%d" % daemon.pull, None, silent.port)
    workers_made.append(late)
    r = daemon.post("/health", {"instance_id": "inst_a"})
    assert r["error_codes"] == {"0": 0, "1": 0}
    assert [c["type"] for c in late.commands] == ["HealthWorkerMsg"]


# ---- restarts and deaths ---------------------------------------------------------------

def test_kill9_of_kvringd_and_restart_on_the_same_ports(daemon):
    a, b = registered_pair(daemon)
    a.admit(LOC, range(300, 364))
    lookup_until(b, range(300, 364), ("inst_a", LOC, 64, "a:1"))
    daemon.kill9()
    daemon.start()  # same name, same ports
    # The workers' sockets reconnect by themselves; their next heartbeat
    # re-registers them and asks for a full sync, which rebuilds the index.
    for w in (a, b):
        ret = w.heartbeat(full_sync=True)
        assert [c["reason"] for c in ret["commands"]] == ["worker_re_registered"]
    lookup_until(b, range(300, 364), ("inst_a", LOC, 64, "a:1"))
    s = daemon.stats()
    assert s["workers"] == 2 and s["full_syncs_completed"] >= 1
    r = daemon.post("/health", {"instance_id": "inst_a"})
    assert r["error_codes"] == {"0": 0}


WORKER_PROCESS = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from lmcache_worker import LMCacheWorker
w = LMCacheWorker("inst_dead", 0, sys.argv[2], sys.argv[3], 0, peer_init_url="dead:1")
w.register()
w.heartbeat(full_sync=False)
w.admit("LocalCPUBackend", range(900, 910))
print("ready", flush=True)
time.sleep(3600)
"""


def test_a_worker_killed_without_deregistering_is_reaped():
    d = Daemon("zt%d-reap" % os.getpid(), extra=["--lmcache-worker-timeout", "1", "--health-check-interval", "1"])
    try:
        p = subprocess.Popen([sys.executable, "-c", WORKER_PROCESS, os.path.dirname(__file__),
                              "127.0.0.1:%d" % d.pull, "127.0.0.1:%d" % d.reply], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        b = make_worker(d, "inst_b", 0, "b:1")
        b.register()
        lookup_until(b, range(900, 910), ("inst_dead", LOC, 10, "dead:1"))
        p.send_signal(signal.SIGKILL)
        p.wait()
        wait_for(lambda: d.stats()["workers_reaped"] == 1, 10, "the reaping")
        assert b.lookup(range(900, 910)) == ("", "", 0, "")
        b.heartbeat(full_sync=False)  # b heartbeats too: not reaped while it does
    finally:
        d.stop()


# ---- bad input -----------------------------------------------------------------------

def test_bad_frames_on_pull_are_counted_and_skipped(daemon):
    a, b = registered_pair(daemon)
    good = pack(tagged("BatchedKVOperationMsg", instance_id="inst_a", worker_id=0, location=LOC,
                       operations=[{"op_type": "admit", "key": 5, "seq_num": 0}]))
    bad = [b"\xc1", good[:-3], b"", pack({"type": "NoSuchMsg"}), b"{not json",
           pack(tagged("RegisterMsg", instance_id="x", worker_id=0, ip="1.2.3.4", port=1, peer_init_url=None)),
           pack(tagged("ClearMsg", event_id="e", instance_id="inst_a", location=LOC))]
    a.push.send_multipart(bad + [good])  # LMCache's PULL loop would die at the first
    lookup_until(b, [5], ("inst_a", LOC, 1, "a:1"))
    s = daemon.stats()
    assert s["zmq"]["pull_bad_frames_total"] == 6  # the truncated one is decoded (and refused) by the controller
    assert s["errors_total"] >= 1
    assert s["workers"] == 2  # the RegisterMsg on PULL registered no one


def test_bad_requests_on_the_routers_get_an_error_msg(daemon):
    a = make_worker(daemon, "inst_a", 0, "a:1")
    a.register()
    assert a.request_raw([b"", b"\xc1"])["type"] == "ErrorMsg"
    assert a.request_raw([b"", b"\x81\xa4type\xa9NoSuchMsg"])["type"] == "ErrorMsg"
    r = a.request_raw([b"", pack(tagged("ClearMsg", event_id="e", instance_id="inst_a", location=LOC))])
    assert r == {"type": "ErrorMsg", "error": "Unknown message type: ClearMsg"}
    r = a.request_raw([pack(tagged("HeartbeatMsg", instance_id="inst_a", worker_id=0, ip="127.0.0.1",
                                   port=a.port, peer_init_url=None))])  # no delimiter frame
    assert r["type"] == "ErrorMsg"
    r = a.request(tagged("BatchedP2PLookupMsg", hashes=[1], instance_id="inst_a", worker_id=0), a.heartbeat_dealer)
    assert r == {"type": "ErrorMsg", "error": "Expected HeartbeatMsg, got BatchedP2PLookupMsg"}
    truncated = pack(tagged("BatchedP2PLookupMsg", hashes=[1, 2, 3], instance_id="inst_a", worker_id=0))[:-2]
    assert a.request_raw([b"", truncated])["type"] == "ErrorMsg"  # the controller refuses it
    # Interleaved good and bad requests keep their order on one DEALER: the
    # front answers a bad one at once, but it leaves only after the good ones
    # sent before it have their answers from the controller.
    lookup = [b"", pack(tagged("BatchedP2PLookupMsg", hashes=[], instance_id="inst_a", worker_id=0))]
    burst = ([[b"", b"\xc1"]] + [lookup] + [[b"", b"\xc1"]] * 20) * 3
    for frames in burst:
        a.dealer.send_multipart(frames)
    got = [unpack(a.dealer.recv_multipart()[-1])["type"] for _ in burst]
    assert got == ["BatchedP2PLookupRetMsg" if f is lookup else "ErrorMsg" for f in burst]
    assert daemon.stats()["zmq"]["bad_requests_total"] == 5 + 63  # the truncated lookup is the controller's to refuse


def test_a_huge_frame_and_a_flood_leave_other_workers_served(daemon):
    a, b = registered_pair(daemon)
    a.admit(LOC, range(40))
    lookup_until(b, range(40), ("inst_a", LOC, 40, "a:1"))
    ctx = zmq.Context.instance()
    hostile = ctx.socket(zmq.PUSH)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.setsockopt(zmq.SNDTIMEO, 5000)
    hostile.connect("tcp://127.0.0.1:%d" % daemon.pull)
    hostile.send(b"\x00" * (100 << 20))  # 100 MB: past the frame limit, its peer is dropped
    flood = ctx.socket(zmq.PUSH)
    flood.setsockopt(zmq.LINGER, 0)
    flood.connect("tcp://127.0.0.1:%d" % daemon.pull)
    junk = pack(tagged("BatchedKVOperationMsg", instance_id="nobody", worker_id=0, location=LOC,
                       operations=[{"op_type": "admit", "key": k, "seq_num": k} for k in range(50)]))
    for _ in range(200):
        flood.send_multipart([junk] * 50)  # 10,000 frames of an unknown worker's events
    t0 = time.monotonic()
    assert b.lookup(range(40)) == ("inst_a", LOC, 40, "a:1")
    assert time.monotonic() - t0 < 5  # served while the flood is drained (ASan builds too)
    wait_for(lambda: daemon.stats()["dropped_unknown_worker"] >= 50 * 9000, 20, "the flood to drain")
    assert daemon.alive()
    hostile.close(0)
    flood.close(0)
    assert b.lookup(range(40)) == ("inst_a", LOC, 40, "a:1")


def test_metrics_show_the_zeromq_side(daemon):
    a = make_worker(daemon, "inst_a", 0, "a:1")
    a.register()
    a.lookup([1])
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % daemon.http, timeout=10) as r:
        text = r.read().decode()
    for name in ("lmcache:cache_controller_pull_socket_message_count", "lmcache:cache_controller_reply_socket_message_count",
                 "kvring_zmq_peers", "kvring_zmq_dropped_frames_total", "kvring_zmq_command_links"):
        assert name in text, name
    line = [l for l in text.splitlines() if l.startswith("lmcache:cache_controller_reply_socket_message_count")][0]
    assert float(line.split()[-1]) >= 2
    assert 'role="front"' in text


def test_inspect_shows_the_front_and_its_counters(daemon):
    a, b = registered_pair(daemon)
    a.admit(LOC, range(10))
    lookup_until(b, range(10), ("inst_a", LOC, 10, "a:1"))

    def fronts():
        r = subprocess.run([KVRING_CLI, "inspect", "--name", daemon.name, "--json"], capture_output=True, text=True,
                           timeout=10)
        segs = json.loads(r.stdout)["segments"]
        return [s for s in segs if s.get("role") == "front" and s["zmq"]["reply_requests"] >= 3]
    segs = wait_for(fronts, 10, "the front's counters in its segment")
    z = [s["zmq"] for s in segs][0]
    assert z["pull_frames"] >= 1 and z["peers"] >= 4 and z["command_links"] == 2
    human = subprocess.run([KVRING_CLI, "inspect", "--name", daemon.name, "--watch", "--count", "2",
                            "--interval", "0.2"], capture_output=True, text=True, timeout=10).stdout
    assert "  front pid " in human and "  zmq: peers " in human and "reply_requests " in human
    assert "/s)" in human  # rates on the second refresh
