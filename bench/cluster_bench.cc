// Cluster benchmarks (issue 22): kvring controllers in processes of their
// own, federated through a real nats-server (JetStream) that this program
// starts on 127.0.0.1; workers use the client library in this process.
//
//   BM_Floor_CacheLinePingPong           the floor between two cores, same run
//   BM_Cluster_Ingest/<federated>        KV ops/s from a worker (batches of 256, 1 M keys held),
//                                        the controller's change feed and publisher off (0) or on (1)
//   BM_Cluster_ReplicationLag            one admit on node A until a lookup on node B sees it
//                                        (p50/p99 in ns), the cluster otherwise idle
//   BM_Cluster_Lookup/<remote>/<hashes>  a P2P lookup on node B of chains held by workers of node B
//                                        itself (0) or of node A (1: remote keys), 1 M keys
//   BM_Cluster_CatchUp/<keys>            a node that joins late: from its start until its index
//                                        holds the <keys> keys node A published
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

#include <cstdio>
#include <cstdlib>
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
  // where they can.
  Node(const std::string& what, const std::string& cluster, bool federated, int cpu, std::uint32_t spin) : name(Unique(what)) {
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
      po.log = log;
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

void BM_Cluster_Ingest(benchmark::State& state) {
  const bool federated = state.range(0) != 0;
  Node node("ingest" + std::to_string(federated), Unique("ing").substr(2), federated, 0, UINT32_MAX);
  Pin(1);
  auto w = Connect(node.name, "inst0");
  SteadyChurnIngest(state, *w, 1'000'000, [] {});
}
BENCHMARK(BM_Cluster_Ingest)->Arg(0)->Arg(1)->UseRealTime()->Unit(benchmark::kMillisecond)->MinTime(2.0);

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
  const std::string cluster = Unique("lk" + std::to_string(remote) + std::to_string(n)).substr(2);
  // Node B, where the lookups are served, spins on CPU 0 as a dedicated
  // controller core would (as in e2e_bench); node A sleeps when idle.
  Node a("nodeA", cluster, true, -1, 1), b("nodeB", cluster, true, 0, UINT32_MAX);
  Pin(1);
  constexpr int kInstances = 8;
  constexpr std::size_t kChain = 4096, kChains = 1'000'000 / kInstances / kChain;
  auto chain_hash = [](int inst, std::size_t c, std::size_t k) {
    return Mix((static_cast<std::uint64_t>(inst + 1) << 48) ^ (static_cast<std::uint64_t>(c) << 20) ^ k);
  };
  std::vector<std::unique_ptr<client::Worker>> holders;
  for (int i = 0; i < kInstances; ++i) {
    holders.push_back(Connect(remote ? a.name : b.name, "inst" + std::to_string(i)));
    for (std::size_t c = 0; c < kChains; ++c)
      for (std::size_t k = 0; k < kChain; ++k) holders.back()->Admit(kLocation, chain_hash(i, c, k));
    if (!holders.back()->Heartbeat().ok()) std::abort();
  }
  auto asker = Connect(b.name, "asker");
  // Every chain's last key visible on node B before timing.
  for (int i = 0; i < kInstances; ++i)
    for (std::size_t c = 0; c < kChains; ++c) {
      std::vector<std::uint64_t> whole(kChain);
      for (std::size_t k = 0; k < kChain; ++k) whole[k] = chain_hash(i, c, k);
      (void)WaitVisible(*asker, whole, kChain);
    }
  std::mt19937_64 rng(42);
  std::vector<std::uint64_t> hashes(n);
  std::vector<std::int64_t> ns;
  for (auto _ : state) {
    const int inst = static_cast<int>(rng() % kInstances);
    const std::size_t c = rng() % kChains;
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
BENCHMARK(BM_Cluster_Lookup)->ArgsProduct({{0, 1}, {32, 256}})->UseManualTime()->MinTime(1.0);

void BM_Cluster_CatchUp(benchmark::State& state) {
  const auto keys = static_cast<std::size_t>(state.range(0));
  const std::string cluster = Unique("cu" + std::to_string(keys)).substr(2);
  Node a("nodeA", cluster, true, -1, 1);
  auto wa = Connect(a.name, "instA");
  for (std::size_t k = 0; k < keys; ++k) wa->Admit(kLocation, Mix(k));
  if (!wa->Heartbeat().ok()) std::abort();
  std::vector<std::uint64_t> last{Mix(keys - 1)};
  int round = 0;
  for (auto _ : state) {
    // Node A's records are in the stream; a node joins and replays them.
    const auto t0 = Clock::now();
    Node late("late" + std::to_string(round++), cluster, true, -1, 1);
    auto asker = Connect(late.name, "asker");
    // A's last key: everything before it is in (records in order). Polled
    // every millisecond (the figure is seconds).
    (void)WaitVisible(*asker, last, 1, std::chrono::milliseconds(1));
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  state.counters["keys"] = static_cast<double>(keys);
}
BENCHMARK(BM_Cluster_CatchUp)->Arg(1'000'000)->Arg(10'000'000)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
