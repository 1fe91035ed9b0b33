"""The kvring Python module (python/) against a real kvringd, real worker
processes and real shared memory: a Python worker beside a C++ one, lookups
with deadlines, full sync after kill -9 of kvringd, command handlers called by
the controller's fan-outs, many threads at once, the codec over every golden
vector, chunk hashes over the CPython vectors, and garbage arguments.

Run by ctest (CMakeLists.txt, `python_module`) with PYTHONPATH set to the
build tree's python/ and KVRINGD, KVRING_CLI, SHM_WORKER_TOOL, KVRING_TEST_DATA.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types

import numpy as np
import pytest

import kvring

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402
from helpers import ShmWorker, wait_for  # noqa: E402

KVRINGD = os.environ.get("KVRINGD", "build/release/kvringd")
KVRING_CLI = os.environ.get("KVRING_CLI", "build/release/kvring")
DATA = os.environ.get("KVRING_TEST_DATA", os.path.join(os.path.dirname(__file__), "..", "data"))
LOC = "LocalCPUBackend"


class Daemon:
    def __init__(self, name, extra=()):
        self.name, self.extra = name, list(extra)
        self.start()

    def start(self):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([KVRINGD, "--name", self.name, "--stats-interval", "0",
                                      "--command-timeout", "2"] + self.extra,
                                     stderr=self.log, stdout=subprocess.DEVNULL)
        # `kvring stats` waits for the controller to come up (bounded).
        r = subprocess.run([KVRING_CLI, "stats", "--name", self.name, "--json", "--timeout", "10000"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr + self.log_tail()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    def log_tail(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


@pytest.fixture
def daemon(request):
    d = Daemon("py%d-%s" % (os.getpid(), request.node.name[5:25]), ["--heartbeat-interval", "0.2"])
    yield d
    d.stop()
    assert d.proc.returncode == 0, d.log_tail()


def lookup_until(w, hashes, want, timeout=10.0):
    helpers.lookup_until(lambda: w.lookup(hashes, timeout=2), want, timeout)


# ---- workers -------------------------------------------------------------------

def test_a_python_worker_and_a_cpp_worker_see_each_others_chunks(daemon):
    with kvring.Worker(daemon.name, "py_inst", 0, peer_init_url="py-host:8200") as w:
        w.admit(LOC, list(range(100, 140)))
        w.flush()
        cpp = ShmWorker(daemon.name, "cpp_inst", 0, "cpp-host:8200")
        try:
            def cpp_sees():
                hit = cpp.ask("lookup " + " ".join(str(k) for k in range(100, 140)))
                return (hit["instance_id"], hit["location"], hit["num_hit_chunks"], hit["peer_init_url"]) == \
                    ("py_inst", LOC, 40, "py-host:8200")
            wait_for(cpp_sees, 10, "the C++ worker's lookup of the Python worker's chunks")
            assert cpp.ask("admit %s %s" % (LOC, " ".join(str(k) for k in range(900, 910)))) == {"ok": True}
            # The C++ worker's admits are batched: a lookup of its own flushes them.
            cpp.ask("lookup 900")
            lookup_until(w, range(900, 910), [("cpp_inst", LOC, 10, "cpp-host:8200")])
            # A miss: LMCache's shape with an empty instance and 0 chunks.
            assert w.lookup([123456789], timeout=2) == [("", "", 0, "")]
        finally:
            cpp.close()


def test_hashes_from_numpy_arrays_are_used_in_place(daemon):
    with kvring.Worker(daemon.name, "np_a", 0, peer_init_url="a:1") as a, \
            kvring.Worker(daemon.name, "np_b", 0, peer_init_url="b:1") as b:
        keys = np.arange(1, 100001, dtype=np.uint64)
        a.admit(LOC, keys)
        a.flush()
        lookup_until(b, keys[-4096:], [("np_a", LOC, 4096, "a:1")])  # the last batch: all applied
        # int64, negative hashes: the same 64-bit pattern as the unsigned value.
        signed = np.array([-1, -2, -3], dtype=np.int64)
        a.admit(LOC, signed)
        a.flush()
        lookup_until(b, np.array([2**64 - 1, 2**64 - 2, 2**64 - 3], dtype=np.uint64), [("np_a", LOC, 3, "a:1")])
        a.evict(LOC, keys[:10])
        a.flush()
        lookup_until(b, keys[:10], [("", "", 0, "")])
        assert a.counters()["ops_sent"] == 100000 + 3 + 10


def test_a_lookup_waits_no_longer_than_its_timeout(daemon):
    with kvring.Worker(daemon.name, "slow", 0, request_timeout=0.5) as w:
        daemon.proc.send_signal(signal.SIGSTOP)  # the controller answers nothing
        try:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                w.lookup([1, 2, 3], timeout=0.05)
            assert time.monotonic() - t0 < 1.0
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        # The late reply is skipped, never taken for the next one.
        assert w.lookup([1, 2, 3], timeout=2) == [("", "", 0, "")]


def test_a_worker_full_syncs_its_keys_after_kill9_of_kvringd(daemon):
    held = set(range(5000, 5300))
    synced = threading.Event()

    def keys_of(location):
        assert location == LOC
        synced.set()
        return np.array(sorted(held), dtype=np.uint64)

    with kvring.Worker(daemon.name, "sync_inst", 0, peer_init_url="s:1", keys_of=keys_of) as w:
        w.admit(LOC, sorted(held))
        w.flush()
        daemon.kill9()
        daemon.start()  # a fresh controller, same name: its index is empty
        # The worker's background thread reattaches and rebuilds the index from keys_of.
        assert synced.wait(15), "keys_of was not called for a full sync"

        def asker_sees():
            with kvring.Worker(daemon.name, "asker", 0) as a:
                return a.lookup(range(5000, 5300), timeout=2) == [("sync_inst", LOC, 300, "s:1")]
        wait_for(asker_sees, 15, "the synced keys in the new controller")
        wait_for(lambda: w.counters()["full_syncs"] >= 1, 15, "the worker's sync to end")


def test_command_handlers_answer_the_controllers_fan_outs(daemon):
    calls = []

    def on_clear(msg):
        calls.append(msg)
        return 7

    def on_health(msg):
        return 0

    def on_pin(msg):
        raise RuntimeError("pinning is broken here")

    with kvring.Worker(daemon.name, "cmd_inst", 0, on_clear=on_clear, on_health=on_health, on_pin=on_pin), \
            kvring.Orchestrator(daemon.name) as orch:
        r = orch.clear("cmd_inst", LOC, event_id="ev-clear-1")
        assert r == {"type": "ClearRetMsg", "event_id": "ev-clear-1", "num_tokens": 7}
        assert calls and calls[0]["type"] == "ClearWorkerMsg" and calls[0]["location"] == LOC
        assert orch.health("cmd_inst")["error_codes"] == {"0": 0} or orch.health("cmd_inst")["error_codes"] == {0: 0}
        with pytest.raises(kvring.Error, match="pinning is broken here"):
            orch.pin("cmd_inst", LOC, [1, 2, 3])
        # No handler: LMCache's "Unknown message".
        with pytest.raises(kvring.Error, match="Unknown message"):
            orch.compress("cmd_inst", "zstd", LOC)
        assert orch.check_finish("ev-clear-1")["type"] == "CheckFinishRetMsg"
        info = orch.query_worker_info("cmd_inst")
        assert info["type"] == "QueryWorkerInfoRetMsg"
        assert orch.stats()["fanouts_total"] >= 3


def test_many_threads_look_up_at_once(daemon):
    with kvring.Worker(daemon.name, "held", 0, peer_init_url="h:1") as holder:
        holder.admit(LOC, range(1, 33))
        holder.flush()
        errors = []
        with kvring.Worker(daemon.name, "askers", 0) as w, kvring.Orchestrator(daemon.name) as orch:
            lookup_until(w, range(1, 33), [("held", LOC, 32, "h:1")])
            def ask(n):
                try:
                    for i in range(200):
                        got = w.lookup(range(1, 1 + (i % 32) + 1), timeout=5)
                        assert got == [("held", LOC, (i % 32) + 1, "h:1")], got
                        if i % 20 == 0:
                            assert orch.stats()["p2p_lookups_total"] > 0
                except Exception as e:  # noqa: BLE001: reported below
                    errors.append(e)
            threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors[:3]


# ---- the codec and chunk hashes ---------------------------------------------------

def test_decode_and_encode_every_golden_vector():
    manifest = json.load(open(os.path.join(DATA, "lmcache-msgspec", "manifest.json")))
    checked = refused = 0
    for case in manifest["cases"]:
        if case["decode_as"] != "Msg":
            continue  # heartbeat commands: not an LMCache Msg
        data = open(os.path.join(DATA, "lmcache-msgspec", case["file"]), "rb").read()
        if case["valid"]:
            assert kvring.decode(data) == case["expected"], case["file"]
            if case.get("canonical"):
                assert kvring.encode(case["expected"]) == data, case["file"]
            checked += 1
        else:
            with pytest.raises(ValueError):
                kvring.decode(data)
            refused += 1
    assert checked > 100 and refused > 40


def test_chunk_hashes_equal_cpythons():
    n = 0
    for seed_file in ("seed0.json", "seed123.json"):
        for case in json.load(open(os.path.join(DATA, "cpython-chunk-hash", seed_file)))["cases"]:
            seed = int(case["pythonhashseed"])
            nh = case["none_hash"]
            if nh["kind"] == "int":
                none_hash = nh["value"]
            elif nh["kind"] == "hash_of_str":
                none_hash = nh["value"]
            else:
                none_hash = bytes.fromhex(nh["value_hex"])
            got = kvring.chunk_hashes(case["tokens"], chunk_size=case["chunk_size"], none_hash=none_hash,
                                      python_hash_seed=seed)
            assert [list(c) for c in got] == case["chunks"], (seed_file, case["tokens"][:5])
            if case["tokens"]:
                arr = np.array(case["tokens"], dtype=np.int64)
                assert kvring.chunk_hashes(arr, chunk_size=case["chunk_size"], none_hash=none_hash,
                                           python_hash_seed=seed) == got
            n += 1
    assert n > 20


# ---- garbage in, exceptions out ---------------------------------------------------

def test_garbage_arguments_raise_and_never_crash(daemon):
    with pytest.raises(TypeError):
        kvring.Worker(daemon.name, "g", "not an int")
    with pytest.raises(kvring.Error):
        kvring.Worker("no-such-controller-%d" % os.getpid(), "g", 0, attach_timeout=0.05)
    with pytest.raises(ValueError):
        kvring.Worker(daemon.name, "g", 0, batch_ops=0)
    with pytest.raises(TypeError):
        kvring.Worker(daemon.name, "g", 0, on_clear="not callable")
    w = kvring.Worker(daemon.name, "g", 0)
    with pytest.raises(TypeError):
        w.admit(LOC, "a string")
    with pytest.raises(TypeError):
        w.admit(LOC, [1, 2, "x"])
    with pytest.raises(ValueError):
        w.admit(LOC, [2**64])
    with pytest.raises(ValueError):
        w.admit(LOC, [-2**63 - 1])
    with pytest.raises(TypeError):
        w.admit(LOC, np.array([1.5, 2.5]))
    with pytest.raises(TypeError):
        w.admit(LOC, np.array([1, 2], dtype=np.int32))
    with pytest.raises(TypeError):
        w.admit(LOC, 12345)
    with pytest.raises(ValueError):
        w.lookup([1], timeout=-1)
    with pytest.raises(ValueError):
        w.lookup([1], timeout=float("nan"))
    w.admit(LOC, range(1_000_000))  # huge, but fine
    w.flush()
    w.close()
    for call in (lambda: w.admit(LOC, [1]), lambda: w.lookup([1]), w.flush, w.heartbeat, w.counters):
        with pytest.raises(ValueError, match="closed"):
            call()
    w.close()  # twice: nothing
    with pytest.raises(ValueError):
        kvring.decode(b"\xc1")
    with pytest.raises(ValueError):
        kvring.decode(b"")
    with pytest.raises(TypeError):
        kvring.decode("text")
    with pytest.raises(ValueError):
        kvring.encode({"type": "NoSuchMsg"})
    with pytest.raises(ValueError):
        kvring.encode({"type": "HealthMsg", "event_id": 5, "instance_id": "i"})
    with pytest.raises(TypeError):
        kvring.encode([1, 2])
    with pytest.raises(ValueError):
        kvring.chunk_hashes([1, 2], chunk_size=0)
    with pytest.raises(ValueError):
        kvring.chunk_hashes([2**63], chunk_size=4)
    with pytest.raises(ValueError):
        kvring.chunk_hashes([1], none_hash="needs a seed")
    with pytest.raises(TypeError):
        kvring.chunk_hashes(["x"])
    with kvring.Orchestrator(daemon.name) as orch:
        with pytest.raises(TypeError):
            orch.request("not a dict")
        with pytest.raises(ValueError):
            orch.request({"type": "NoSuchMsg"})
        with pytest.raises(kvring.Error):
            orch.clear("no-such-instance", LOC)
    # The interpreter is still here, and so is the controller.
    assert daemon.proc.poll() is None


def test_help_and_stubs_describe_the_api():
    assert "longest prefix" in kvring.Worker.lookup.__doc__
    stub = os.path.join(os.path.dirname(kvring.__file__), "__init__.pyi")
    assert os.path.exists(stub) and os.path.exists(os.path.join(os.path.dirname(kvring.__file__), "py.typed"))
    text = open(stub).read()
    for name in ("class Worker", "class Orchestrator", "def chunk_hashes", "def encode", "def decode"):
        assert name in text
    assert kvring.__version__.count(".") == 2


# ---- the LMCache adapter and the router example ------------------------------------

class _Key:
    def __init__(self, chunk_hash):
        self.chunk_hash = chunk_hash


class _LocalCPUBackend:
    """What LMCache's FullSyncSender reads: get_keys() (CacheEngineKeys) and
    str(backend), the location."""

    def __init__(self, hashes):
        self.hashes = hashes

    def get_keys(self):
        return [_Key(h) for h in self.hashes]

    def __str__(self):
        return LOC


class _Engine:
    """The LMCache engine methods the worker's commands call."""

    def __init__(self, hot_cache=()):
        self.cleared = []
        self.storage_manager = types.SimpleNamespace(local_cpu_backend=_LocalCPUBackend(list(hot_cache)))

    def clear(self, locations):
        self.cleared.append(locations)
        return 11

    def health(self):
        return 0


def test_the_lmcache_adapter_moves_lmcaches_worker_messages_over_the_rings(daemon, monkeypatch):
    import asyncio
    import types

    from kvring.lmcache import KvringLMCacheWorker

    monkeypatch.setenv("KVRING_CONTROLLER", daemon.name)
    engine = _Engine(hot_cache=[41, 42, 43])  # what the engine holds once the messages below are applied
    config = types.SimpleNamespace(lmcache_instance_id="lm_inst", lmcache_worker_port=0, p2p_init_url="lm:8200")
    worker = KvringLMCacheWorker(config, types.SimpleNamespace(worker_id=0), engine)
    try:
        worker.register()
        worker.put_msg({"type": "KVAdmitMsg", "instance_id": "lm_inst", "worker_id": 0, "key": 41, "location": LOC,
                        "seq_num": 0})
        worker.put_msg({"type": "BatchedKVOperationMsg", "instance_id": "lm_inst", "worker_id": 0, "location": LOC,
                        "operations": [{"op_type": "admit", "key": k, "seq_num": k} for k in (42, 43, 44)]
                        + [{"op_type": "evict", "key": 44, "seq_num": 45}]})
        with kvring.Worker(daemon.name, "other", 0) as other:
            worker._worker.flush()
            lookup_until(other, [41, 42, 43, 44], [("lm_inst", LOC, 3, "lm:8200")])
            ret = asyncio.run(worker.async_put_and_wait_msg(
                {"type": "BatchedP2PLookupMsg", "hashes": [41, 42], "instance_id": "lm_inst", "worker_id": 0}))
            assert ret == {"type": "BatchedP2PLookupRetMsg", "layout_info": [["", "", 0, ""]]}  # its own: no peer
        with kvring.Orchestrator(daemon.name) as orch:
            assert orch.clear("lm_inst", LOC)["num_tokens"] == 11
            assert engine.cleared == [[LOC]]
        with pytest.raises(ValueError):
            worker.put_msg({"type": "LookupMsg", "event_id": "e", "tokens": []})
        with pytest.raises(TypeError):
            worker.put_msg(42)
    finally:
        worker.close()
    assert worker._worker.closed


def test_the_lmcache_adapter_full_syncs_the_engines_hot_cache(daemon, monkeypatch):
    """The controller asks a new worker for a full sync (kvringd's full sync on
    start): the adapter lists the engine's LocalCPUBackend keys, as LMCache's
    FullSyncSender does, with no keys_of given; an explicit heartbeat, as
    LMCache's worker sends, answers the ask instead of failing."""
    from kvring.lmcache import KvringLMCacheWorker

    monkeypatch.setenv("KVRING_CONTROLLER", daemon.name)
    engine = _Engine(hot_cache=[501, 502, 503])  # never announced by put_msg
    config = types.SimpleNamespace(lmcache_instance_id="hot", lmcache_worker_port=0, p2p_init_url="hot:8200")
    worker = KvringLMCacheWorker(config, types.SimpleNamespace(worker_id=0), engine)
    try:
        worker.heartbeat()
        with kvring.Worker(daemon.name, "asker", 0) as other:
            lookup_until(other, [501, 502, 503, 504], [("hot", LOC, 3, "hot:8200")])
    finally:
        worker.close()


def test_the_router_example_picks_the_instance_with_the_longest_prefix(daemon):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "router", os.path.join(os.path.dirname(__file__), "..", "..", "examples", "router.py"))
    router_mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(router_mod)
    tokens = list(range(1000, 1000 + 4 * 256))
    chunks = kvring.chunk_hashes(tokens, chunk_size=256)  # the controller's LookupMsg hashing: 256, NONE_HASH 0
    with kvring.Worker(daemon.name, "vllm-0", 0) as a, kvring.Worker(daemon.name, "vllm-1", 0) as b:
        a.admit(LOC, [h for _, _, h in chunks[:1]])   # one chunk of the prompt
        b.admit(LOC, [h for _, _, h in chunks[:3]])   # three chunks: the longest prefix
        a.flush()
        b.flush()
        r = router_mod.Router(daemon.name, [("vllm-0", "http://a"), ("vllm-1", "http://b")])
        wait_for(lambda: r.route(tokens) == ("vllm-1", "http://b", 3 * 256), 10, "the router's choice")
        # Nobody holds the first chunk of another prompt: round robin over the backends.
        other = list(range(50000, 50300))
        picks = {r.route(other)[0] for _ in range(4)}
        assert picks == {"vllm-0", "vllm-1"}
        assert r.route(other)[2] == 0


def test_closing_a_worker_and_an_orchestrator_while_other_threads_use_them(daemon):
    w = kvring.Worker(daemon.name, "closing", 0)
    orch = kvring.Orchestrator(daemon.name)
    started = threading.Barrier(5)
    outcomes = []

    def use(call):
        started.wait()
        try:
            for _ in range(100000):
                call()
        except (ValueError, kvring.Error) as e:  # closed under it: an exception, never a crash
            outcomes.append(type(e).__name__)

    threads = [threading.Thread(target=use, args=(lambda: w.lookup([1, 2, 3], timeout=2),)) for _ in range(2)]
    threads += [threading.Thread(target=use, args=(lambda: orch.stats(),)) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    w.close()
    orch.close()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 4, outcomes
    assert daemon.proc.poll() is None
