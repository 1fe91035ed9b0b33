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


class NatsCluster:
    """Three nats-servers routed into one NATS cluster, JetStream on each
    (streams replicated three ways by --cluster-replicas 3)."""

    def __init__(self):
        self.ports = [free_port() for _ in range(3)]
        self.routes = [free_port() for _ in range(3)]
        self.dirs = [tempfile.mkdtemp(prefix="kvring-nats%d-" % i) for i in range(3)]
        self.procs = [None] * 3
        for i in range(3):
            self.start(i)
        self.url = ",".join("nats://127.0.0.1:%d" % p for p in self.ports)

    def start(self, i):
        routes = ",".join("nats://127.0.0.1:%d" % p for p in self.routes)
        self.procs[i] = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.ports[i]), "-sd", self.dirs[i], "-n", "n%d" % i,
             "--cluster_name", "kvring-test", "--cluster", "nats://127.0.0.1:%d" % self.routes[i], "--routes", routes],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up():
            try:
                with socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.2):
                    return True
            except OSError:
                return self.procs[i].poll() is not None
        wait_for(up, 10, "nats-server %d to listen" % i)
        assert self.procs[i].poll() is None, "nats-server %d exited" % i

    def kill(self, i):
        self.procs[i].kill()
        self.procs[i].wait()

    def stop(self):
        for p in self.procs:
            if p and p.poll() is None:
                p.kill()
                p.wait()
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)


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
        assert "the stream rebuilds this node from seq %d" % view["this"]["rebuild_from_seq"] in r.stdout, r.stdout
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


class Churn:
    """A worker on each node admitting and evicting; `held` is what each holds."""

    def __init__(self, nodes, seed):
        import random
        self.rng = random.Random(seed)
        self.workers = [kvring.Worker(n.name, "inst" + n.name[-1], 0, peer_init_url=n.name[-5:] + ":8200")
                        for n in nodes]
        self.held = [set() for _ in nodes]
        self.next_key = 1

    def round(self):
        for w, h in zip(self.workers, self.held):
            add = list(range(self.next_key, self.next_key + 40))
            self.next_key += 40
            w.admit(LOC, add)
            h.update(add)
            gone = self.rng.sample(sorted(h), min(len(h), 30))
            w.evict(LOC, gone)
            h.difference_update(gone)
            w.flush()

    def total(self):
        return sum(len(h) for h in self.held)

    def close(self):
        for w in self.workers:
            w.close()


def agree(nodes, total):
    """Every node's index has the same digest and `total` keys."""
    ds = [n.digest() for n in nodes]
    return len(set(ds)) == 1 and all(n.stats()["keys"] == total for n in nodes)


def wait_agree(nodes, total, timeout, what):
    """wait_for(agree), and on a timeout each node's view and its log."""
    try:
        wait_for(lambda: agree(nodes, total), timeout, what)
    except AssertionError:
        for n in nodes:
            st = n.stats()
            print(n.name, "keys", st["keys"], "want", total, "digest", n.digest(),
                  {k: st[k] for k in st if k.startswith("remote_")}, st.get("cluster"), n.log_tail()[-1500:])
        raise


def churn_then_join(nodes, seed, join, check_before_join=lambda: None):
    """Workers on `nodes` admit and evict for a while, until every node's
    index digest equals every other's: the union of all workers' holdings,
    nothing lost, nothing phantom; then join() starts a late node, which must
    reach the same digest. Returns the late node's stats."""
    churn = Churn(nodes, seed)
    late = None
    try:
        for _ in range(60):
            churn.round()
        wait_agree(nodes, churn.total(), 30, "the nodes to agree")
        check_before_join()
        late = join()
        wait_agree(nodes + [late], churn.total(), 30, "the late joiner to agree")
        st = late.stats()
        assert st["remote_refused"] == 0
        assert st["cluster"]["garbage_messages"] == 0
        return st
    finally:
        churn.close()
        if late:
            late.stop()


def test_after_churn_every_node_and_a_late_joiner_hold_the_same_index(cluster, request):
    """Three nodes churn and agree; a fourth node started afterwards replays
    the stream and reaches the same digest. (This churn stays far below
    kvringd's default dump interval: the joiner reads each node from its
    epoch's start; the next test has dumps.)"""
    url = cluster[0].args[cluster[0].args.index("--nats") + 1]
    churn_then_join(cluster, 5, lambda: Node(cluster_name(request), "nodeD", url))


def test_a_late_joiner_starts_at_the_nodes_latest_dumps(request):
    """With a dump every 500 key operations (--cluster-snapshot-keys), a node
    that joins after a churn starts reading the stream at the smallest
    sequence the other nodes' leases name (their latest dumps), not at the
    start, and reaches the same digest as the others."""
    nats = Nats()
    name = cluster_name(request)
    dumps = ["--cluster-snapshot-keys", "500"]
    nodes = [Node(name, n, nats.url, dumps) for n in ("nodeA", "nodeB", "nodeC")]

    def dumped():
        for n in nodes:  # at least one dump each (a publisher that drains a burst asks for one dump for it)
            assert n.stats()["cluster"]["snapshots"] >= 1, n.stats()["cluster"]

    try:
        st = churn_then_join(nodes, 7, lambda: Node(name, "nodeD", nats.url, dumps), dumped)
        assert st["cluster"]["start_seq"] > 1, st["cluster"]
        # It read less than the stream holds: the nodes' changes before their dumps were skipped.
        published = sum(n.stats()["cluster"]["published_records"] for n in nodes)
        assert st["cluster"]["remote_records"] < published, (st["cluster"], published)
    finally:
        for n in nodes:
            n.stop()
        nats.stop()


@pytest.fixture
def three_servers(request):
    """Three kvringds on a three-server NATS cluster (the stream and the
    lease bucket replicated three ways), a churning worker on each."""
    nats = NatsCluster()
    # Leases of 15 s: a NATS server's death under load (a new RAFT leader for
    # the stream and the lease bucket) must not read as a node's (a lapsed
    # lease is repaired by a forced dump, but that is another test).
    extra = ["--cluster-replicas", "3", "--cluster-lease", "15"]
    nodes = [Node(cluster_name(request), n, nats.url, extra) for n in ("nodeA", "nodeB", "nodeC")]
    churn = Churn(nodes, 7)
    yield nats, nodes, churn
    churn.close()
    for n in nodes:
        n.stop()
    nats.stop()


def test_three_nats_servers_one_killed_under_load_loses_no_delta(three_servers):
    """One NATS server is killed -9 while the workers churn; the clients move
    to the other two; once the churn stops every node holds exactly the union
    of the workers' keys (equal digests)."""
    nats, nodes, churn = three_servers
    for _ in range(20):
        churn.round()
    wait_agree(nodes, churn.total(), 90, "the nodes to agree before the kill")
    nats.kill(0)
    for _ in range(40):
        churn.round()
    wait_agree(nodes, churn.total(), 90, "the nodes to agree after a NATS server was killed")
    for n in nodes:
        st = n.stats()
        assert st["cluster"]["feed_overflows"] == 0, (st["cluster"], n.log_tail()[-2000:])


def test_three_nats_servers_all_away_for_ten_seconds_under_load_then_back(three_servers):
    """Every NATS server is stopped for 10 s while the workers keep churning
    (local service goes on; the publishers buffer), then restarted on their
    stores: every node converges to the same digest, the union of the
    workers' keys."""
    import time
    nats, nodes, churn = three_servers
    for _ in range(10):
        churn.round()
    wait_agree(nodes, churn.total(), 90, "the nodes to agree before the outage")
    for i in range(3):
        nats.kill(i)
    away_until = time.monotonic() + 10
    rounds = 0
    while time.monotonic() < away_until:  # the outage's length is the test's subject, not a synchronisation
        churn.round()
        rounds += 1
        time.sleep(0.05)
    assert rounds > 0
    for n in nodes:
        assert n.stats()["cluster"]["connected"] is False
    for i in range(3):
        nats.start(i)
    wait_agree(nodes, churn.total(), 90, "the nodes to agree after NATS came back")
