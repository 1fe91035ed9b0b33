"""Several kvringds sharing their index through NATS JetStream (issue 22):
a real nats-server (JetStream) on 127.0.0.1 and three real kvringd processes
started with --cluster, workers on each (kvring.Worker over shared memory).

Run by ctest (CMakeLists.txt, `python_cluster`) with PYTHONPATH set to the
build tree's python/ and KVRINGD, KVRING_CLI, NATS_SERVER.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

import kvring

sys.path.insert(0, os.path.dirname(__file__))
import helpers  # noqa: E402
from helpers import wait_for  # noqa: E402

KVRINGD = os.environ.get("KVRINGD", "build/release/kvringd")
KVRING_CLI = os.environ.get("KVRING_CLI", "build/release/kvring")
NATS_SERVER = os.environ.get("NATS_SERVER", "nats-server")
LOC = "LocalCPUBackend"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nats:
    """A nats-server with JetStream, its store in a fresh folder."""

    def __init__(self):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kvring-nats-")
        self.proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return self.proc.poll() is not None  # died: stop waiting, the assert below says so
        wait_for(up, 10, "nats-server to listen")
        assert self.proc.poll() is None, "nats-server exited"
        self.url = "nats://127.0.0.1:%d" % self.port

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Node:
    """A kvringd that is one node of the cluster."""

    def __init__(self, cluster, node, url, extra=()):
        self.name = "cl%d-%s-%s" % (os.getpid(), cluster[-6:], node)
        self.args = [KVRINGD, "--name", self.name, "--stats-interval", "0", "--heartbeat-interval", "0.2",
                     "--cluster", cluster, "--node", node, "--nats", url] + list(extra)
        self.start(["--no-full-sync-on-start"])

    def start(self, extra):
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.args + extra, stderr=self.log, stdout=subprocess.DEVNULL)
        r = subprocess.run([KVRING_CLI, "stats", "--name", self.name, "--json", "--timeout", "10000"],
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0, r.stderr + self.log_tail()

    def restart_with_full_sync(self):
        self.start([])

    def stats(self):
        r = subprocess.run([KVRING_CLI, "stats", "--name", self.name, "--json"], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def digest(self):
        r = subprocess.run([KVRING_CLI, "stats", "--name", self.name, "--json", "--digest"], capture_output=True,
                           text=True, timeout=20)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["digest"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        assert self.proc.returncode == 0, self.log_tail()

    def log_tail(self):
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-4000:]


def cluster_name(request):
    return "c%d%s" % (os.getpid(), request.node.name[5:15].replace("_", ""))


@pytest.fixture
def cluster(request):
    nats = Nats()
    name = cluster_name(request)
    nodes = [Node(name, n, nats.url) for n in ("nodeA", "nodeB", "nodeC")]
    yield nodes
    for n in nodes:
        n.stop()
    nats.stop()


def lookup_until(w, hashes, want, timeout=20.0):
    helpers.lookup_until(lambda: w.lookup(hashes, timeout=2), want, timeout)


def test_a_chunk_admitted_on_one_node_is_found_on_another_with_its_peer_url(cluster):
    a, b, c = cluster
    with kvring.Worker(a.name, "instA", 0, peer_init_url="nodeA:8200") as wa, \
            kvring.Worker(c.name, "instC", 0, peer_init_url="nodeC:8200") as wc:
        wa.admit(LOC, [101, 102, 103])
        wa.flush()
        lookup_until(wc, [101, 102, 103, 104], [("instA", LOC, 3, "nodeA:8200")])
        wa.evict(LOC, [102])
        wa.flush()
        lookup_until(wc, [101, 102, 103], [("instA", LOC, 1, "nodeA:8200")])
        # `kvring cluster` on node C: node A with its one holder and two keys.
        r = subprocess.run([KVRING_CLI, "cluster", "--name", c.name, "--json"], capture_output=True, text=True,
                           timeout=20)
        assert r.returncode == 0, r.stderr
        view = json.loads(r.stdout)
        assert view["this"]["node"] == "nodeC" and view["this"]["connected"] is True
        nodes = {n["node"]: n for n in view["nodes"]}
        assert nodes["nodeA"]["holders"] == 1 and nodes["nodeA"]["keys"] == 2, view
        r = subprocess.run([KVRING_CLI, "cluster", "--name", c.name], capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and "nodeA" in r.stdout, r.stdout + r.stderr
        # Node B sees it too, from its own index.
        with kvring.Worker(b.name, "instB", 0) as wb:
            lookup_until(wb, [101, 103], [("instA", LOC, 2, "nodeA:8200")])
    # instA's worker detached: its holder leaves every node.
    with kvring.Worker(c.name, "instC2", 0) as wc2:
        lookup_until(wc2, [101], [("", "", 0, "")])
    st = c.stats()
    assert st["cluster"]["subscribed"] is True
    assert st["remote_records"] > 0
    assert st["remote_refused"] == 0
    assert a.stats()["cluster"]["published_records"] > 0


def test_a_local_peer_wins_a_tie_with_a_remote_one(cluster):
    a, _, c = cluster
    with kvring.Worker(a.name, "farA", 0, peer_init_url="nodeA:8200") as far, \
            kvring.Worker(c.name, "nearC", 0, peer_init_url="nodeC:8201") as near, \
            kvring.Worker(c.name, "asker", 0) as asker:
        far.admit(LOC, [7, 8])
        far.flush()
        lookup_until(asker, [7, 8], [("farA", LOC, 2, "nodeA:8200")])
        near.admit(LOC, [7, 8])  # the same prefix, on the asker's own node
        near.flush()
        lookup_until(asker, [7, 8], [("nearC", LOC, 2, "nodeC:8201")])
        for _ in range(20):  # a tie: always the local one, never rotated to the remote
            assert asker.lookup([7, 8], timeout=2) == [("nearC", LOC, 2, "nodeC:8201")]
        far.admit(LOC, [9])  # the remote one now holds the longer prefix
        far.flush()
        lookup_until(asker, [7, 8, 9], [("farA", LOC, 3, "nodeA:8200")])


def test_a_killed_node_leaves_the_others_within_its_lease_and_returns_after_a_restart(cluster):
    a, _, c = cluster
    held = [301, 302, 303]
    wa = kvring.Worker(a.name, "instA", 0, peer_init_url="nodeA:8200", keys_of=lambda loc: held if loc == LOC else [])
    try:
        wa.admit(LOC, held)
        wa.flush()
        with kvring.Worker(c.name, "asker", 0) as asker:
            lookup_until(asker, held, [("instA", LOC, 3, "nodeA:8200")])
            a.proc.send_signal(signal.SIGKILL)  # no clean stop: no lease given back, no holder retired
            a.proc.wait()
            # Gone from node C within the lease time (3 s by default), plus a lease check.
            lookup_until(asker, held, [("", "", 0, "")], timeout=10)
            assert c.stats()["remote_nodes_gone"] >= 1
            # Node A restarts (a new epoch); its worker reattaches and full-syncs
            # its keys (kvringd asks every worker after a start); C sees them again.
            a.restart_with_full_sync()
            lookup_until(asker, held, [("instA", LOC, 3, "nodeA:8200")], timeout=20)
    finally:
        wa.close()


def test_after_churn_every_node_and_a_late_joiner_hold_the_same_index(request):
    """Workers on three nodes admit and evict for a while (dumps every 500
    key operations, so the stream is cut again and again); then every node's
    index digest equals every other's: the union of all workers' holdings,
    nothing lost, nothing phantom. A fourth node started afterwards reads the
    last dumps and what followed and reaches the same digest."""
    nats = Nats()
    name = cluster_name(request)
    snap = ["--cluster-snapshot-keys", "500"]
    nodes = [Node(name, n, nats.url, snap) for n in ("nodeA", "nodeB", "nodeC")]
    late = None
    try:
        import random
        rng = random.Random(5)
        workers = [kvring.Worker(n.name, "inst" + n.name[-1], 0, peer_init_url=n.name[-5:] + ":8200") for n in nodes]
        held = [set() for _ in workers]
        next_key = 1
        for _ in range(60):
            for w, h in zip(workers, held):
                add = list(range(next_key, next_key + 50))
                next_key += 50
                w.admit(LOC, add)
                h.update(add)
                gone = rng.sample(sorted(h), min(len(h), 35))
                w.evict(LOC, gone)
                h.difference_update(gone)
                w.flush()
        total = sum(len(h) for h in held)

        def converged(ns):
            ds = [n.digest() for n in ns]
            return len(set(ds)) == 1 and all(n.stats()["keys"] == total for n in ns)
        wait_for(lambda: converged(nodes), 30, "the three nodes to agree")
        assert all(n.stats()["cluster"]["purges"] >= 2 for n in nodes), [n.stats()["cluster"] for n in nodes]
        late = Node(name, "nodeD", nats.url, snap)
        wait_for(lambda: converged(nodes + [late]), 30, "the late joiner to agree")
        st = late.stats()
        assert st["remote_refused"] == 0
        assert st["cluster"]["garbage_messages"] == 0
        for w in workers:
            w.close()
    finally:
        for n in nodes + ([late] if late else []):
            n.stop()
        nats.stop()
