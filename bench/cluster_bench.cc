// Cluster benchmarks (issue 22): kvring controllers in processes of their
// own, federated through a real nats-server (JetStream) that this program
// starts on 127.0.0.1; workers use the client library in this process.
//
//   BM_Floor_CacheLinePingPong           the floor between two cores, same run
//   BM_Cluster_Ingest/<federated>        KV ops/s from a worker (batches of 256, 1 M keys held),
//                                        the controller's change feed and publisher off (0) or on (1)
//   BM_Cluster_ReplicationLag            one admit on node A until a lookup on node B sees it
//                                        (p50/p99 in ns), the cluster otherwise idle
//   BM_Cluster_Lookup/<remote>/<hashes>/<keys>
//                                        a P2P lookup on node B of chains held by workers of node B
//                                        itself (0) or of node A (1: remote keys), <keys> keys in all
//   BM_Cluster_CatchUp/<keys>            a node that joins late: from its start until its index
//                                        holds the <keys> keys node A published
//   BM_Cluster_CatchUpAfterChurn/<snapshot keys>
//                                        a node that joins after node A's 1 M keys saw 16 M ops of
//                                        churn: without snapshots (0) or with a dump every <keys> ops
//   BM_Cluster_LagUnderLoad/<k ops/s>    replication lag (p50/p99, ns) of a marker admitted on node A
//                                        while a worker of node A churns <k ops/s> (admit new,
//                                        evict oldest, 1 M keys held) in a process of its own;
//                                        ops_per_s: the rate the churn reached
//   BM_Cluster_Simulated/<nodes>/<keys per node>/<k ops/s>
//                                        a cluster of <nodes> nodes on this machine: node A and
//                                        node B real controllers, the others simulated (a change
//                                        feed and a real publisher each in this process, written as
//                                        a controller would); node B joins after each simulated node
//                                        published <keys per node> keys (catchup_s: until B holds
//                                        them all; b_rss_bytes: B's resident set then);
//                                        then the simulated nodes churn <k ops/s> in all and the
//                                        lag of markers admitted on node A is measured at node B
//
// The controllers here sleep when idle (they share two cores with NATS, the
// publisher and subscriber threads and the workers). NATS_SERVER: the
// nats-server program (default: nats-server on PATH).
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "bench_util.h"
#include "kvring/client/client.h"
#include "kvring/cluster/publisher.h"
#include "kvring/cluster/subscriber.h"
#include "kvring/controller/controller.h"

namespace {

using namespace kvring;
using namespace kvring::bench;
using Clock = std::chrono::steady_clock;

const char* const kLocation = "LocalCPUBackend";
std::uint64_t Mix(std::uint64_t x) { return index::ChunkIndex::Mix(x); }
// Unique per call: Google Benchmark runs a benchmark function several times,
// and each run's cluster must start from an empty stream.
std::string Unique(const std::string& what) {
  static int calls = 0;
  return "cb" + std::to_string(getpid()) + "-" + std::to_string(calls++) + "-" + what;
}


// One nats-server for the whole run.
struct Nats {
  Child child;
  std::string url, dir;
  Nats() {
    const int port = FreePort();
    dir = (std::filesystem::temp_directory_path() / ("kvring-bench-nats-" + std::to_string(getpid()))).string();
    std::filesystem::create_directories(dir);
    const char* prog = std::getenv("NATS_SERVER") ? std::getenv("NATS_SERVER") : "nats-server";
    child.stop_signal = SIGTERM;
    child.pid = fork();
    if (child.pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int null = open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      const std::string p = std::to_string(port);
      execlp(prog, prog, "-js", "-a", "127.0.0.1", "-p", p.c_str(), "-sd", dir.c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    url = "nats://127.0.0.1:" + std::to_string(port);
    for (auto deadline = Clock::now() + std::chrono::seconds(10); Clock::now() < deadline;) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<std::uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      const bool up = connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      close(s);
      if (up) return;
      usleep(10000);
    }
    std::fprintf(stderr, "nats-server did not come up\n");
    std::abort();
  }
  ~Nats() {
    child.Stop();  // first: a nats-server still running writes its store again after the removal
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  static Nats& Get() {
    static Nats n;
    return n;
  }
};

// A controller process: optionally a cluster node (feeds, publisher, subscriber).
struct Node {
  Child child;
  std::string name;
  // The child's: made by configure(), used until the controller is gone.
  std::unique_ptr<feed::ChangeFeed> change;
  std::unique_ptr<feed::RemoteFeed> remote;
  std::unique_ptr<cluster::Publisher> pub;
  std::unique_ptr<cluster::Subscriber> sub;

  // Pinned (cpu >= 0) after the cluster threads started: only the
  // controller's thread holds the core, the publisher and subscriber run
  // where they can — on every core, or (`apart`) on every core but the
  // controller's, as on a machine where the controller has a core of its own.
  // `snapshot_keys`: cluster::PublisherOptions::snapshot_min_keys.
  Node(const std::string& what, const std::string& cluster, bool federated, int cpu, std::uint32_t spin,
       std::uint64_t snapshot_keys = 0, bool apart = false,
       std::chrono::microseconds linger = cluster::PublisherOptions{}.linger)
      : name(Unique(what)) {
    const std::string url = federated ? Nats::Get().url : "";
    auto log = [what](std::string_view line) {
      std::fprintf(stderr, "[%s] %.*s\n", what.c_str(), static_cast<int>(line.size()), line.data());
    };
    ControllerHooks hooks;
    hooks.configure = [&](controller::Options& o) {
      o.log = log;
      if (!federated) return;
      cluster::PublisherOptions po;
      po.nats_url = url;
      po.cluster = cluster;
      po.node = what;
      // A node that starves on two busy cores must not lose its lease mid-run.
      po.lease_ttl = std::chrono::seconds(30);
      po.snapshot_min_keys = snapshot_keys;
      po.linger = linger;
      po.log = log;
      if (apart && cpu >= 0) AvoidCpu(0, cpu);  // the threads made next inherit it (the controller's pins itself after)
      change = std::move(feed::ChangeFeed::Create(64 << 20)).value();
      remote = std::move(feed::RemoteFeed::Create(64 << 20)).value();
      pub = std::move(cluster::Publisher::Start(po, change.get())).value();
      sub = std::move(cluster::Subscriber::Start(po, remote.get())).value();
      o.change_feed = change.get();
      o.remote_feed = remote.get();
    };
    hooks.started = [&](controller::Controller& ctl) {
      if (!pub) return;  // `kvring stats --name <node>` shows them while a benchmark runs
      ctl.AddStatsSource("cluster_publisher", [p = pub.get()] { return p->StatsJson(); }, [] { return std::string(); });
      ctl.AddStatsSource("cluster_subscriber", [s = sub.get()] { return s->StatsJson(); }, [] { return std::string(); });
    };
    ForkController(child, name, cpu, spin, hooks);
  }
};


// Looks up until the answer holds at least `want` chunks; the time it took.
// `every`: the pause between lookups (0: back to back, for latencies; a
// catch-up of seconds is timed to a millisecond without a client spinning
// on a core the joining node needs: measured, back-to-back lookups during a
// 10 M-key catch-up changed nothing measurable, 6.2 s either way).
Clock::duration WaitVisible(client::Worker& asker, std::span<const std::uint64_t> hashes, std::uint64_t want,
                            std::chrono::microseconds every = std::chrono::microseconds(0)) {
  const auto t0 = Clock::now();
  for (;;) {
    auto hit = asker.Lookup(hashes, std::chrono::milliseconds(1000));
    if (hit.ok() && hit->num_hit_chunks >= want) return Clock::now() - t0;
    if (every.count() > 0) std::this_thread::sleep_for(every);  // pacing the polls, not synchronising
    if (Clock::now() - t0 > std::chrono::seconds(60)) {
      std::fprintf(stderr, "never visible\n");
      std::abort();
    }
  }
}

void BM_Floor_CacheLinePingPong(benchmark::State& state) { CacheLinePingPong(state); }
BENCHMARK(BM_Floor_CacheLinePingPong)->UseRealTime()->MinTime(1.0);

// Local ingest with federation off (/0/*) and on (/1/*). Third argument:
// the publisher's linger in µs (PublisherOptions::linger). Second argument,
// where the cluster's work runs: 0 anywhere (nats-server, the publisher and
// the subscriber share both cores with the controller and the worker), 1 off
// the controller's core (nats-server, the cluster threads and the worker on
// the other one): a node whose controller has a core of its own, as when
// NATS runs on its own machines (the documented deployment) or is kept off
// that core.
void BM_Cluster_Ingest(benchmark::State& state) {
  const bool federated = state.range(0) != 0, apart = state.range(1) != 0;
  Node node("ingest" + std::to_string(federated), Unique("ing").substr(2), federated, 0, UINT32_MAX, 0, apart,
            std::chrono::microseconds(state.range(2)));
  if (federated && apart) AvoidCpu(Nats::Get().child.pid, 0);
  Pin(1);
  auto w = Connect(node.name, "inst0");
  SteadyChurnIngest(state, *w, 1'000'000, [] {});
  if (federated && apart) AvoidCpu(Nats::Get().child.pid, -1);
}
BENCHMARK(BM_Cluster_Ingest)
    ->Args({0, 0, 0})
    ->Args({1, 0, 0})
    ->Args({1, 0, 1000})
    ->Args({1, 1, 0})
    ->Args({1, 1, 1000})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(2.0);

void BM_Cluster_ReplicationLag(benchmark::State& state) {
  const std::string cluster = Unique("lag").substr(2);
  // Controllers that sleep at once when idle: on two cores, a spinning one
  // would take the CPU from the path being measured (publisher, NATS, subscriber).
  Node a("nodeA", cluster, true, -1, 1), b("nodeB", cluster, true, -1, 1);
  auto wa = Connect(a.name, "instA");
  auto asker = Connect(b.name, "asker");
  std::vector<std::int64_t> ns;
  std::uint64_t k = 1;
  for (auto _ : state) {
    const std::uint64_t key = Mix(k++);
    const auto t0 = Clock::now();
    wa->Admit(kLocation, key);
    if (!wa->Flush().ok()) state.SkipWithError("flush failed");
    (void)WaitVisible(*asker, std::span<const std::uint64_t>(&key, 1), 1);
    const auto dt = Clock::now() - t0;
    state.SetIterationTime(std::chrono::duration<double>(dt).count());
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count());
  }
  ReportPercentiles(state, ns);
}
BENCHMARK(BM_Cluster_ReplicationLag)->UseManualTime()->Iterations(2000);

// Chains of 4096 chunks held by 8 instances on node A (remote) or node B
// (local); lookups from a worker of node B.
void BM_Cluster_Lookup(benchmark::State& state) {
  const bool remote = state.range(0) != 0;
  const auto n = static_cast<std::size_t>(state.range(1));
  const auto keys = static_cast<std::size_t>(state.range(2));
  const std::string cluster = Unique("lk" + std::to_string(remote) + std::to_string(n)).substr(2);
  // Node B, where the lookups are served, spins on CPU 0 as a dedicated
  // controller core would (as in e2e_bench); node A sleeps when idle.
  Node a("nodeA", cluster, true, -1, 1), b("nodeB", cluster, true, 0, UINT32_MAX);
  Pin(1);
  constexpr int kInstances = 8;
  constexpr std::size_t kChain = 4096;
  const std::size_t chains = keys / kInstances / kChain;
  auto chain_hash = [](int inst, std::size_t c, std::size_t k) {
    return Mix((static_cast<std::uint64_t>(inst + 1) << 48) ^ (static_cast<std::uint64_t>(c) << 20) ^ k);
  };
  std::vector<std::unique_ptr<client::Worker>> holders;
  for (int i = 0; i < kInstances; ++i) {
    holders.push_back(Connect(remote ? a.name : b.name, "inst" + std::to_string(i)));
    for (std::size_t c = 0; c < chains; ++c)
      for (std::size_t k = 0; k < kChain; ++k) holders.back()->Admit(kLocation, chain_hash(i, c, k));
    if (!holders.back()->Heartbeat().ok()) std::abort();
  }
  auto asker = Connect(b.name, "asker");
  // Every chain's last key visible on node B before timing.
  for (int i = 0; i < kInstances; ++i)
    for (std::size_t c = 0; c < chains; ++c) {
      std::vector<std::uint64_t> whole(kChain);
      for (std::size_t k = 0; k < kChain; ++k) whole[k] = chain_hash(i, c, k);
      (void)WaitVisible(*asker, whole, kChain);
    }
  std::mt19937_64 rng(42);
  std::vector<std::uint64_t> hashes(n);
  std::vector<std::int64_t> ns;
  for (auto _ : state) {
    const int inst = static_cast<int>(rng() % kInstances);
    const std::size_t c = rng() % chains;
    for (std::size_t k = 0; k < n; ++k) hashes[k] = chain_hash(inst, c, k);
    const auto t0 = Clock::now();
    auto hit = asker->Lookup(hashes, std::chrono::milliseconds(1000));
    const auto dt = Clock::now() - t0;
    if (!hit.ok() || hit->num_hit_chunks != n) {
      const std::string why = !hit.ok() ? "lookup failed: " + hit.status().ToString()
                                        : "lookup missed: " + std::to_string(hit->num_hit_chunks) + " of " +
                                              std::to_string(n) + " from " + hit->instance_id;
      state.SkipWithError(why.c_str());
      break;
    }
    state.SetIterationTime(std::chrono::duration<double>(dt).count());
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count());
  }
  ReportPercentiles(state, ns);
}
BENCHMARK(BM_Cluster_Lookup)
    ->ArgsProduct({{0, 1}, {32, 256}, {1'000'000, 10'000'000}})
    ->UseManualTime()
    ->MinTime(1.0);

// Per iteration: a node joins `cluster` (node A's records are in the
// stream) and is timed until a lookup there sees `last`, node A's last key:
// everything before it is in (records in order). Polled every millisecond
// (the figure is hundreds of milliseconds and more).
void TimeJoins(benchmark::State& state, const std::string& cluster, std::uint64_t last) {
  int round = 0;
  for (auto _ : state) {
    const auto t0 = Clock::now();
    Node late("late" + std::to_string(round++), cluster, true, -1, 1);
    auto asker = Connect(late.name, "asker");
    (void)WaitVisible(*asker, std::span<const std::uint64_t>(&last, 1), 1, std::chrono::milliseconds(1));
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
  }
}

void BM_Cluster_CatchUp(benchmark::State& state) {
  const auto keys = static_cast<std::size_t>(state.range(0));
  const std::string cluster = Unique("cu" + std::to_string(keys)).substr(2);
  Node a("nodeA", cluster, true, -1, 1);
  auto wa = Connect(a.name, "instA");
  for (std::size_t k = 0; k < keys; ++k) wa->Admit(kLocation, Mix(k));
  if (!wa->Heartbeat().ok()) std::abort();
  TimeJoins(state, cluster, Mix(keys - 1));
  state.counters["keys"] = static_cast<double>(keys);
}
BENCHMARK(BM_Cluster_CatchUp)->Arg(1'000'000)->Arg(10'000'000)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

// A node with a long history: 1 M keys held, then 16 M ops of churn (admit
// a fresh key, evict the oldest). A node that joins afterwards reads the
// stream from where node A's lease says it can be rebuilt: the epoch's start
// without snapshots (0), the latest dump with snapshots every <keys> ops.
void BM_Cluster_CatchUpAfterChurn(benchmark::State& state) {
  const auto snapshot_keys = static_cast<std::uint64_t>(state.range(0));
  const std::string cluster = Unique("ch" + std::to_string(snapshot_keys)).substr(2);
  Node a("nodeA", cluster, true, -1, 1, snapshot_keys);
  auto wa = Connect(a.name, "instA");
  constexpr std::uint64_t kHeld = 1'000'000, kChurn = 16'000'000;
  std::uint64_t next = 0, oldest = 0;
  for (; next < kHeld; ++next) wa->Admit(kLocation, Mix(next));
  while (next < kHeld + kChurn / 2) {
    wa->Admit(kLocation, Mix(next++));
    wa->Evict(kLocation, Mix(oldest++));
  }
  if (!wa->Heartbeat().ok()) std::abort();
  std::vector<std::uint64_t> last{Mix(next - 1)};
  // Everything published: a first joiner sees the last key (by then node
  // A's lease names its latest dump, refreshed as soon as it was acknowledged).
  { Node probe("probe", cluster, true, -1, 1);
    auto asker = Connect(probe.name, "asker");
    (void)WaitVisible(*asker, last, 1, std::chrono::milliseconds(1)); }
  TimeJoins(state, cluster, last[0]);
  state.counters["ops_in_history"] = static_cast<double>(kHeld + kChurn);
}
BENCHMARK(BM_Cluster_CatchUpAfterChurn)->Arg(0)->Arg(1'000'000)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

// ---- under load ----------------------------------------------------------------------------

// Calls `ops(batch)` so that `rate` ops/s are done on average from the call
// on, until `stop`; when ahead it sleeps 100 µs (pacing, not synchronising);
// when it cannot keep up it runs flat out. `done` counts the ops (relaxed: a
// figure).
template <typename Ops>
void PacedChurn(double rate, std::size_t batch, const std::atomic<bool>& stop, std::atomic<std::uint64_t>* done,
                Ops ops) {
  const auto t0 = Clock::now();
  std::uint64_t n = 0;
  while (!stop.load(std::memory_order_relaxed)) {
    const double due = rate * std::chrono::duration<double>(Clock::now() - t0).count();
    if (static_cast<double>(n + batch) > due) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
      continue;
    }
    ops(batch);
    n += batch;
    done->store(n, std::memory_order_relaxed);
  }
}

// Admits one fresh key at a time on `asker`'s node A through `marker` and
// times each until a lookup on node B sees it (polled every 100 µs: the
// pipeline shares two cores with the pollers; the figure is milliseconds).
void MeasureMarkers(benchmark::State& state, client::Worker& marker, client::Worker& asker, std::uint64_t tag) {
  std::vector<std::int64_t> ns;
  std::uint64_t k = 0;
  for (auto _ : state) {
    const std::uint64_t key = Mix(tag ^ k++);
    const auto t0 = Clock::now();
    marker.Admit(kLocation, key);
    if (!marker.Flush().ok()) state.SkipWithError("flush failed");
    (void)WaitVisible(asker, std::span<const std::uint64_t>(&key, 1), 1, std::chrono::microseconds(100));
    const auto dt = Clock::now() - t0;
    state.SetIterationTime(std::chrono::duration<double>(dt).count());
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(dt).count());
  }
  ReportPercentiles(state, ns);
}

// Shared between a loader process and the benchmark (relaxed: figures and a
// phase the benchmark polls).
struct LoaderState {
  std::atomic<std::uint64_t> ops{0};
  std::atomic<int> prefilled{0};
};

void BM_Cluster_LagUnderLoad(benchmark::State& state) {
  const double rate = static_cast<double>(state.range(0)) * 1000.0;
  const std::string cluster = Unique("lu" + std::to_string(state.range(0))).substr(2);
  Node a("nodeA", cluster, true, -1, 1), b("nodeB", cluster, true, -1, 1);
  // The loader is forked before this process starts any thread (workers
  // have a ticker thread).
  auto* load = new (SharedMap(4096)) LoaderState;
  constexpr std::size_t kHeld = 1'000'000;
  constexpr std::uint64_t kLoaderTag = 1ull << 62;
  Child loader;
  loader.pid = fork();
  if (loader.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    auto w = Connect(a.name, "loader");
    std::uint64_t next = 0, oldest = 0;
    for (; next < kHeld; ++next) w->Admit(kLocation, Mix(kLoaderTag | next));
    if (!w->Flush().ok()) _exit(1);
    load->prefilled.store(1, std::memory_order_relaxed);
    const std::atomic<bool> never{false};
    PacedChurn(rate, 256, never, &load->ops, [&](std::size_t n) {
      for (std::size_t i = 0; i < n; i += 2) {
        w->Admit(kLocation, Mix(kLoaderTag | next++));
        w->Evict(kLocation, Mix(kLoaderTag | oldest++));
      }
      (void)w->Flush();  // the batch leaves now, not at the next flush interval
    });
    _exit(0);
  }
  auto marker = Connect(a.name, "marker");
  auto asker = Connect(b.name, "asker");
  while (load->prefilled.load(std::memory_order_relaxed) == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  const std::uint64_t last_prefill = Mix(kLoaderTag | (kHeld - 1));
  (void)WaitVisible(*asker, std::span<const std::uint64_t>(&last_prefill, 1), 1, std::chrono::milliseconds(1));
  const std::uint64_t ops0 = load->ops.load(std::memory_order_relaxed);
  const auto t0 = Clock::now();
  MeasureMarkers(state, *marker, *asker, 0);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  state.counters["ops_per_s"] = static_cast<double>(load->ops.load(std::memory_order_relaxed) - ops0) / secs;
}
BENCHMARK(BM_Cluster_LagUnderLoad)->Arg(1000)->Arg(5000)->UseManualTime()->Iterations(300);

// ---- a simulated cluster ---------------------------------------------------------------------

// Nodes without a controller: a change feed written here as a controller
// would write it (one holder each), published by a real Publisher thread.
struct SimulatedNodes {
  std::vector<std::unique_ptr<feed::ChangeFeed>> feeds;
  std::vector<std::unique_ptr<cluster::Publisher>> publishers;
  std::vector<std::uint64_t> next, oldest;  // each node's key cursors

  SimulatedNodes(const std::string& cluster, std::size_t n) : next(n, 0), oldest(n, 0) {
    feeds.reserve(n);
    publishers.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {
      cluster::PublisherOptions po;
      po.nats_url = Nats::Get().url;
      po.cluster = cluster;
      po.node = "sim" + std::to_string(i);
      po.lease_ttl = std::chrono::seconds(30);
      po.log = [](std::string_view line) {
        std::fprintf(stderr, "[sim] %.*s\n", static_cast<int>(line.size()), line.data());
      };
      feeds.push_back(std::move(feed::ChangeFeed::Create(4 << 20)).value());
      publishers.push_back(std::move(cluster::Publisher::Start(po, feeds.back().get())).value());
      const std::string inst = "sim" + std::to_string(i);
      if (!feeds.back()->HolderUp(1, 0, inst, kLocation, inst + ":8200")) std::abort();
      feeds.back()->Publish();
    }
  }
  static std::uint64_t KeyOf(std::size_t node, std::uint64_t k) { return Mix((std::uint64_t{node + 1} << 40) | k); }

  // `admits` fresh keys of node i and, when `churn`, as many of its oldest
  // evicted; waits while the feed is more than half full (its publisher
  // drains it: the controller's feed never waits, but a simulated node may).
  void Write(std::size_t i, std::size_t admits, bool churn) {
    std::vector<protocol::KVOpEvent> ops;
    for (std::size_t j = 0; j < admits; ++j) {
      ops.push_back({protocol::OpType::kAdmit, protocol::Int::FromU64(KeyOf(i, next[i]++)), protocol::Int(0)});
      if (churn) ops.push_back({protocol::OpType::kEvict, protocol::Int::FromU64(KeyOf(i, oldest[i]++)), protocol::Int(0)});
    }
    while (!feeds[i]->DumpHasRoom(ops.size())) std::this_thread::sleep_for(std::chrono::microseconds(100));
    if (!feeds[i]->Keys(1, ops)) std::abort();
    feeds[i]->Publish();
  }
};

// The simulated nodes run in a process of their own, forked before this one
// starts any thread (cnats keeps global state and threads a forked child
// would inherit half of). Shared (relaxed: a phase polled and a figure).
struct SimulatorState {
  std::atomic<int> phase{0};  // 1: every node's keys acknowledged by the stream; 2: churn now
  std::atomic<std::uint64_t> ops{0};
};

void BM_Cluster_Simulated(benchmark::State& state) {
  const auto nodes = static_cast<std::size_t>(state.range(0));
  const auto keys_per_node = static_cast<std::size_t>(state.range(1));
  const double rate = static_cast<double>(state.range(2)) * 1000.0;
  const std::string cluster = Unique("sim" + std::to_string(nodes)).substr(2);
  Node a("nodeA", cluster, true, -1, 1);
  auto* sim_state = new (SharedMap(4096)) SimulatorState;
  Child simulator;
  simulator.pid = fork();
  if (simulator.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    SimulatedNodes sim(cluster, nodes - 2);
    constexpr std::size_t kPerRecord = 4096;
    for (std::size_t i = 0; i < sim.feeds.size(); ++i)
      for (std::size_t done = 0; done < keys_per_node; done += kPerRecord)
        sim.Write(i, std::min(kPerRecord, keys_per_node - done), false);
    // A holder-up and the admits' records, acknowledged.
    const std::uint64_t records = 1 + (keys_per_node + kPerRecord - 1) / kPerRecord;
    for (auto& p : sim.publishers)
      while (p->stats().records < records) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    sim_state->phase.store(1, std::memory_order_relaxed);
    while (sim_state->phase.load(std::memory_order_relaxed) != 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // Round robin, 128 admits + 128 evicts a write.
    std::size_t i = 0;
    const std::atomic<bool> never{false};
    PacedChurn(rate, 256, never, &sim_state->ops, [&](std::size_t n) {
      sim.Write(i, n / 2, true);
      i = (i + 1) % sim.feeds.size();
    });
    _exit(0);
  }
  while (sim_state->phase.load(std::memory_order_relaxed) != 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  // Node B joins a cluster whose stream holds every simulated node's keys.
  const auto t0 = Clock::now();
  Node b("nodeB", cluster, true, -1, 1);
  auto marker = Connect(a.name, "marker");
  auto asker = Connect(b.name, "asker");
  for (std::size_t i = 0; i + 2 < nodes; ++i) {
    const std::uint64_t last = SimulatedNodes::KeyOf(i, keys_per_node - 1);
    (void)WaitVisible(*asker, std::span<const std::uint64_t>(&last, 1), 1, std::chrono::milliseconds(1));
  }
  state.counters["catchup_s"] = std::chrono::duration<double>(Clock::now() - t0).count();
  state.counters["remote_keys"] = static_cast<double>((nodes - 2) * keys_per_node);
  state.counters["b_rss_bytes"] = static_cast<double>(ResidentBytes(b.child.pid));
  sim_state->phase.store(2, std::memory_order_relaxed);
  const std::uint64_t ops0 = sim_state->ops.load(std::memory_order_relaxed);
  const auto t1 = Clock::now();
  MeasureMarkers(state, *marker, *asker, 1ull << 63);
  state.counters["ops_per_s"] = static_cast<double>(sim_state->ops.load(std::memory_order_relaxed) - ops0) /
                                std::chrono::duration<double>(Clock::now() - t1).count();
}
BENCHMARK(BM_Cluster_Simulated)
    ->Args({8, 50'000, 1000})
    ->Args({64, 50'000, 1000})
    ->Args({64, 50'000, 250})
    ->UseManualTime()
    ->Iterations(300);

}  // namespace

BENCHMARK_MAIN();
