// kvringd's ZeroMQ front (zmq/front.h) against its floor and against the
// shared-memory path, all in one run, with a real kvringd process started
// with lmcache_controller's flags (--host, --monitor-ports) and clients in
// this process. Nothing is pinned: kvringd's controller, front and ZeroMQ I/O
// threads and this process's threads share the machine's cores, as they would.
//
//   BM_Floor_ZmqReqRep/<hashes>       bare ZeroMQ REQ/REP round trip over tcp loopback to an echo
//                                     process, a lookup's bytes each way: the floor of this path
//   BM_Floor_ZmqReqRep_BusyCore/32    the floor while another process keeps one core busy (as a
//                                     spinning controller does)
//   BM_Floor_ZmqDealerRouter/<hashes> the same with the DEALER/ROUTER pair LMCache's workers use
//   BM_ZmqFront_P2PLookup/<hashes>    a worker's DEALER -> kvringd's reply ROUTER -> controller -> back
//   BM_ZmqFront_P2PLookup_BusyCore/32 the same while another process keeps one core busy
//   BM_Shm_P2PLookup/<hashes>         the same lookup from a shared-memory worker (client.h), same kvringd
//   BM_ZmqFront_Ingest                KV ops/s PUSHed as LMCache's sender does (50 ops a message, 50
//                                     messages a multipart), counted when the controller has applied them;
//                                     1 M admits then their evicts, after one untimed round (the index's
//                                     growth to hold them is not what this measures)
//   BM_Shm_Ingest                     the same ops from a shared-memory worker, 50 ops a batch
//
// The index holds KVRING_ZMQ_BENCH_KEYS (default 1 M) keys of another
// instance, in chains of 4,096 admitted in order; lookups ask for a chain's
// prefix. Lookups report p50/p99 in ns (manual time).
#include <benchmark/benchmark.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <zmq.h>

#include <cstdlib>
#include <memory>
#include <string>
#include <thread>

#include "bench_util.h"
#include "kvring/client/client.h"
#include "kvring/protocol/codec.h"

#include <nlohmann/json.hpp>

namespace {

using namespace kvring;
using namespace kvring::bench;
using protocol::Int;

constexpr std::size_t kChain = 4096;
const char* const kLocation = "LocalCPUBackend";

std::size_t IndexKeys() {
  const char* e = std::getenv("KVRING_ZMQ_BENCH_KEYS");
  return e ? std::strtoull(e, nullptr, 10) : std::size_t{1'000'000};
}

std::uint64_t Key(std::size_t chain, std::size_t k) { return index::ChunkIndex::Mix((chain << 20) ^ k ^ (1ULL << 50)); }


std::string Tcp(int port) { return "tcp://127.0.0.1:" + std::to_string(port); }

std::string Encoded(const protocol::Message& m) { return protocol::Encode(m); }

std::vector<Int> Hashes(std::size_t chain, std::size_t n) {
  std::vector<Int> h;
  for (std::size_t k = 0; k < n; ++k) h.push_back(Int::FromU64(Key(chain, k)));
  return h;
}

// One kvringd for the whole run, its index filled through the ZeroMQ front.
struct Daemon {
  Child child;
  std::string name = "zb" + std::to_string(getpid());
  int pull = FreePort(), reply = FreePort(), http = FreePort();
  void* ctx = zmq_ctx_new();
  void* push = nullptr;

  Daemon() {
    child.stop_signal = SIGTERM;
    child.pid = fork();
    if (child.pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      std::string ports = "{\"pull\": " + std::to_string(pull) + ", \"reply\": " + std::to_string(reply) + "}";
      std::string port = std::to_string(http);
      // kvringd --spin and --spin-us (defaults: kvringd's).
      const char* spin = std::getenv("KVRING_ZMQ_BENCH_SPIN");
      execl(KVRINGD_PATH, "kvringd", "--name", name.c_str(), "--host", "127.0.0.1", "--port", port.c_str(),
            "--monitor-ports", ports.c_str(), "--stats-interval", "0", "--log-level", "error", "--no-full-sync-on-start",
            "--spin", spin ? spin : "2000", "--spin-us", std::getenv("KVRING_ZMQ_BENCH_SPIN_US") ? std::getenv("KVRING_ZMQ_BENCH_SPIN_US") : "1000", static_cast<char*>(nullptr));
      _exit(127);
    }
    // Up when its front answers a registration.
    void* d = Dealer();
    protocol::RegisterMsg reg{"holder", Int(0), "127.0.0.1", Int(1), std::string("holder:8200")};
    std::string bytes = Encoded(reg);
    char buf[4096];
    zmq_send(d, "", 0, ZMQ_SNDMORE);
    zmq_send(d, bytes.data(), bytes.size(), 0);
    zmq_recv(d, buf, sizeof buf, 0);
    if (zmq_recv(d, buf, sizeof buf, 0) <= 0) std::abort();
    zmq_close(d);
    push = zmq_socket(ctx, ZMQ_PUSH);
    zmq_connect(push, Tcp(pull).c_str());
    // Fill: chains of 4,096 keys, 50 ops a message as LMCache's sender.
    std::int64_t seq = 0;
    const std::size_t chains = IndexKeys() / kChain;
    for (std::size_t c = 0; c < chains; ++c)
      for (std::size_t k = 0; k < kChain; k += 50) {
        protocol::BatchedKVOperationMsg b{"holder", Int(0), kLocation, {}};
        for (std::size_t i = k; i < std::min(kChain, k + 50); ++i)
          b.operations.push_back({protocol::OpType::kAdmit, Int::FromU64(Key(c, i)), Int(seq++)});
        std::string m = Encoded(b);
        zmq_send(push, m.data(), m.size(), 0);
      }
    WaitForOps(static_cast<std::uint64_t>(seq));
  }
  ~Daemon() {
    zmq_close(push);
    zmq_ctx_term(ctx);
  }
  void* Dealer() {
    void* d = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, timeout = 10000;
    zmq_setsockopt(d, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(d, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_connect(d, Tcp(reply).c_str());
    return d;
  }
  // One orchestrator connection for every look at the counters (a new one
  // each time would have the controller make and remove a segment a look).
  std::unique_ptr<client::Orchestrator> orch;
  std::uint64_t KvOps() {
    if (!orch) {
      auto o = client::Orchestrator::Connect(name, std::chrono::milliseconds(5000));
      if (!o.ok()) std::abort();
      orch = std::move(o).value();
    }
    auto text = orch->Control("{\"op\":\"stats\"}", std::chrono::milliseconds(5000));
    if (!text.ok()) return 0;
    auto j = nlohmann::json::parse(*text, nullptr, false);
    return j.is_object() && j.contains("kv_ops_total") ? j["kv_ops_total"].get<std::uint64_t>() : 0;
  }
  // Polled every millisecond: the ingest figures are over 2 M ops (0.1-0.6 s).
  void WaitForOps(std::uint64_t total) {
    while (KvOps() < total) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
};

Daemon& TheDaemon() {
  static Daemon d;
  return d;
}

// ---- floors ----------------------------------------------------------------------

// An echo server in a child process: REP (or ROUTER, answering [id, "", payload]).
void ZmqFloor(benchmark::State& state, bool dealer_router) {
  const auto hashes = static_cast<std::size_t>(state.range(0));
  const int port = FreePort();
  Child child;
  child.pid = fork();
  if (child.pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    void* ctx = zmq_ctx_new();
    void* s = zmq_socket(ctx, dealer_router ? ZMQ_ROUTER : ZMQ_REP);
    zmq_bind(s, Tcp(port).c_str());
    std::vector<zmq_msg_t> parts(3);
    while (true) {
      std::size_t n = 0;
      int more = 1;
      while (more && n < parts.size()) {
        zmq_msg_init(&parts[n]);
        if (zmq_msg_recv(&parts[n], s, 0) < 0) _exit(0);
        more = zmq_msg_more(&parts[n]);
        ++n;
      }
      for (std::size_t i = 0; i < n; ++i) zmq_msg_send(&parts[i], s, i + 1 < n ? ZMQ_SNDMORE : 0);
    }
  }
  void* ctx = zmq_ctx_new();
  void* s = zmq_socket(ctx, dealer_router ? ZMQ_DEALER : ZMQ_REQ);
  int linger = 0;
  zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
  zmq_connect(s, Tcp(port).c_str());
  const std::string msg = Encoded(protocol::BatchedP2PLookupMsg{Hashes(0, hashes), "requester", Int(0)});
  std::vector<char> in(msg.size() + 64);
  auto round_trip = [&] {
    if (dealer_router) zmq_send(s, "", 0, ZMQ_SNDMORE);
    zmq_send(s, msg.data(), msg.size(), 0);
    if (dealer_router) zmq_recv(s, in.data(), in.size(), 0);
    zmq_recv(s, in.data(), in.size(), 0);
  };
  round_trip();
  std::vector<std::int64_t> ns;
  for (auto _ : state) {
    auto t0 = Clock::now();
    round_trip();
    auto dt = Clock::now() - t0;
    ns.push_back(dt.count());
    state.SetIterationTime(std::chrono::duration<double>(dt).count());
  }
  ReportPercentiles(state, ns);
  zmq_close(s);
  zmq_ctx_term(ctx);
}
void BM_Floor_ZmqReqRep(benchmark::State& state) { ZmqFloor(state, false); }
// The same floor while a third process keeps one core busy, as kvringd's
// controller thread does while it spins for requests: what two cores shared
// by one more runnable thread cost this path.
struct BusyCore {  // a process that spins until it is killed
  Child spinner;
  BusyCore() {
    spinner.pid = fork();
    if (spinner.pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      for (std::uint64_t i = 0;; ++i) benchmark::DoNotOptimize(i);
    }
  }
};
void BM_Floor_ZmqReqRep_BusyCore(benchmark::State& state) {
  BusyCore busy;
  ZmqFloor(state, false);
}
void BM_Floor_ZmqDealerRouter(benchmark::State& state) { ZmqFloor(state, true); }

// ---- lookups ----------------------------------------------------------------------

void BM_ZmqFront_P2PLookup(benchmark::State& state) {
  Daemon& d = TheDaemon();
  const auto hashes = static_cast<std::size_t>(state.range(0));
  void* s = d.Dealer();
  const std::string reg = Encoded(protocol::RegisterMsg{"requester", Int(0), "127.0.0.1", Int(2), std::nullopt});
  std::vector<char> in(4096);
  auto ask = [&](const std::string& msg) {
    zmq_send(s, "", 0, ZMQ_SNDMORE);
    zmq_send(s, msg.data(), msg.size(), 0);
    zmq_recv(s, in.data(), in.size(), 0);
    return zmq_recv(s, in.data(), in.size(), 0);
  };
  ask(reg);
  const std::size_t chains = IndexKeys() / kChain;
  std::vector<std::string> requests;
  for (std::size_t c = 0; c < std::min<std::size_t>(chains, 64); ++c)
    requests.push_back(Encoded(protocol::BatchedP2PLookupMsg{Hashes(c, hashes), "requester", Int(0)}));
  protocol::BatchedP2PLookupRetMsg check;
  int n = ask(requests[0]);
  if (n <= 0 || !protocol::Decode({reinterpret_cast<const std::uint8_t*>(in.data()), static_cast<std::size_t>(n)}, &check).ok() ||
      check.layout_info.empty() || check.layout_info[0].num_hit_chunks.AsI64() != static_cast<std::int64_t>(hashes)) {
    state.SkipWithError("the lookup through the front did not hit");
    return;
  }
  std::vector<std::int64_t> ns;
  std::size_t i = 0;
  for (auto _ : state) {
    const std::string& m = requests[i++ % requests.size()];
    auto t0 = Clock::now();
    ask(m);
    auto dt = Clock::now() - t0;
    ns.push_back(dt.count());
    state.SetIterationTime(std::chrono::duration<double>(dt).count());
  }
  ReportPercentiles(state, ns);
  zmq_close(s);
}

// More runnable threads than cores: the front's lookup while a process spins.
void BM_ZmqFront_P2PLookup_BusyCore(benchmark::State& state) {
  BusyCore busy;
  BM_ZmqFront_P2PLookup(state);
}

void BM_Shm_P2PLookup(benchmark::State& state) {
  Daemon& d = TheDaemon();
  const auto hashes = static_cast<std::size_t>(state.range(0));
  client::WorkerOptions o;
  o.controller = d.name;
  o.instance_id = "shm_requester";
  auto w = client::Worker::Connect(o);
  if (!w.ok()) {
    state.SkipWithError(w.status().message().c_str());
    return;
  }
  const std::size_t chains = IndexKeys() / kChain;
  std::vector<std::vector<std::uint64_t>> requests;
  for (std::size_t c = 0; c < std::min<std::size_t>(chains, 64); ++c) {
    requests.emplace_back();
    for (std::size_t k = 0; k < hashes; ++k) requests.back().push_back(Key(c, k));
  }
  auto hit = (*w)->Lookup(requests[0], std::chrono::milliseconds(2000));
  if (!hit.ok() || hit->num_hit_chunks != hashes) {
    state.SkipWithError("the shm lookup did not hit");
    return;
  }
  std::vector<std::int64_t> ns;
  std::size_t i = 0;
  for (auto _ : state) {
    const auto& r = requests[i++ % requests.size()];
    auto t0 = Clock::now();
    benchmark::DoNotOptimize((*w)->Lookup(r, std::chrono::milliseconds(2000)));
    auto dt = Clock::now() - t0;
    ns.push_back(dt.count());
    state.SetIterationTime(std::chrono::duration<double>(dt).count());
  }
  ReportPercentiles(state, ns);
}

// ---- ingest -----------------------------------------------------------------------

constexpr std::size_t kIngestOps = 2'000'000;  // per iteration: admits, then the same keys evicted

void BM_ZmqFront_Ingest(benchmark::State& state) {
  Daemon& d = TheDaemon();
  // Messages made before the clock starts: admits of 1 M fresh keys, then their evicts.
  std::vector<std::string> msgs;
  std::int64_t seq = 1 << 30;
  for (int op = 0; op < 2; ++op)
    for (std::size_t k = 0; k < kIngestOps / 2; k += 50) {
      protocol::BatchedKVOperationMsg b{"holder", Int(0), "LocalDiskBackend", {}};
      for (std::size_t i = k; i < k + 50; ++i)
        b.operations.push_back({op == 0 ? protocol::OpType::kAdmit : protocol::OpType::kEvict,
                                Int::FromU64(Key(1 << 20, i)), Int(seq++)});
      msgs.push_back(Encoded(b));
    }
  auto send_all = [&] {
    const std::uint64_t before = d.KvOps();
    for (std::size_t i = 0; i < msgs.size(); ++i)  // 50 messages a multipart, as LMCache's worker
      zmq_send(d.push, msgs[i].data(), msgs[i].size(), (i + 1) % 50 != 0 && i + 1 < msgs.size() ? ZMQ_SNDMORE : 0);
    d.WaitForOps(before + kIngestOps);
  };
  send_all();  // untimed: the index grows to hold the extra million keys once
  for (auto _ : state) {
    auto t0 = Clock::now();
    send_all();
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kIngestOps));
}

void BM_Shm_Ingest(benchmark::State& state) {
  Daemon& d = TheDaemon();
  client::WorkerOptions o;
  o.controller = d.name;
  o.instance_id = "shm_ingester";
  o.batch_ops = 50;
  auto w = client::Worker::Connect(o);
  if (!w.ok()) {
    state.SkipWithError(w.status().message().c_str());
    return;
  }
  auto send_all = [&] {
    const std::uint64_t before = d.KvOps();
    for (std::size_t i = 0; i < kIngestOps / 2; ++i) (*w)->Admit(kLocation, Key(2 << 20, i));
    for (std::size_t i = 0; i < kIngestOps / 2; ++i) (*w)->Evict(kLocation, Key(2 << 20, i));
    (void)(*w)->Flush();
    d.WaitForOps(before + kIngestOps);
  };
  send_all();  // untimed, as above
  for (auto _ : state) {
    auto t0 = Clock::now();
    send_all();
    state.SetIterationTime(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kIngestOps));
}

BENCHMARK(BM_Floor_ZmqReqRep)->Arg(32)->Arg(256)->UseManualTime()->Iterations(20000);
BENCHMARK(BM_Floor_ZmqReqRep_BusyCore)->Arg(32)->UseManualTime()->Iterations(20000);
BENCHMARK(BM_Floor_ZmqDealerRouter)->Arg(32)->Arg(256)->UseManualTime()->Iterations(20000);
BENCHMARK(BM_ZmqFront_P2PLookup)->Arg(32)->Arg(256)->UseManualTime()->Iterations(20000);
BENCHMARK(BM_ZmqFront_P2PLookup_BusyCore)->Arg(32)->UseManualTime()->Iterations(20000);
BENCHMARK(BM_Shm_P2PLookup)->Arg(32)->Arg(256)->UseManualTime()->Iterations(200000);
BENCHMARK(BM_ZmqFront_Ingest)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Shm_Ingest)->UseManualTime()->Iterations(3)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
