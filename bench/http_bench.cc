// The orchestrator's lookup (LookupMsg: tokens -> which instances hold their
// prefix), through the HTTP API and through the rings, with 1 and 8
// concurrent clients: what production-stack's KV-aware router does on every
// request (POST /lookup). LMCache publishes 4,500 requests/s for its API.
//
//   BM_Floor_CacheLinePingPong        the floor between the same two cores
//   BM_Http_Lookup/threads:N          POST /lookup, one keep-alive connection per client thread
//   BM_Ring_Lookup/threads:N          the same LookupMsg over one Orchestrator's ring
//                                     (requests of every thread in flight together)
//
// A kvringd-like child process runs the controller (sleeping when idle, as
// kvringd does by default) and the HTTP server; the index holds the request's
// chunks (1,024 tokens: 4 chunks) at two instances. items_per_second is
// requests/s over all threads; p50/p99 are averaged over the threads.
#include <benchmark/benchmark.h>
#include <sys/prctl.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "bench_util.h"
#include "kvring/protocol/chunk_hash.h"
#include "kvring/client/client.h"
#include "kvring/controller/controller.h"
#include "kvring/http/server.h"
#include "support/http_client.h"

namespace {

using namespace kvring;
using namespace kvring::bench;

constexpr std::size_t kTokens = 1024;

struct Setup {
  Child daemon;
  std::string name = "httpb" + std::to_string(getpid());
  std::uint16_t port = 0;
  std::vector<std::int64_t> tokens;
  std::string body;  // {"tokens": [...]}
  std::vector<std::unique_ptr<client::Worker>> workers;
  std::unique_ptr<client::Orchestrator> orchestrator;

  Setup() {
    auto* shared_port = static_cast<std::atomic<int>*>(SharedMap(4096));
    std::unique_ptr<http::Server> server;  // the child's
    std::thread starter;
    ControllerHooks hooks;
    hooks.started = [&](controller::Controller&) {
      starter = std::thread([&] {
        http::Options ho;
        ho.port = 0;
        ho.controller = name;
        auto s = http::Server::Start(ho);
        if (!s.ok()) _exit(2);
        server = std::move(s).value();
        shared_port->store(server->port(), std::memory_order_release);  // pairs with the parent's acquire
      });
    };
    // The HTTP side's connection first, while nothing answers it any more.
    hooks.stopping = [&] {
      starter.join();
      server.reset();
    };
    ForkController(daemon, name, -1, 2000, hooks);
    for (std::size_t i = 0; i < kTokens; ++i) tokens.push_back(static_cast<std::int64_t>(i * 31 + 7));
    std::vector<ChunkHash> chunks = ChunkHasher(256, pyhash::HashInt(0)).Hash(tokens);
    for (const char* inst : {"A", "B"}) {
      client::WorkerOptions wo;
      wo.controller = name;
      wo.instance_id = inst;
      wo.attach_timeout = std::chrono::milliseconds(10000);
      auto w = client::Worker::Connect(wo);
      if (!w.ok()) std::abort();
      for (const ChunkHash& c : chunks) (*w)->Admit("LocalCPUBackend", static_cast<std::uint64_t>(c.hash));
      if (!(*w)->Heartbeat().ok()) std::abort();  // answered after the admits were applied
      workers.push_back(std::move(w).value());
    }
    while (shared_port->load(std::memory_order_acquire) == 0) {
    }
    port = static_cast<std::uint16_t>(shared_port->load(std::memory_order_acquire));
    body = "{\"tokens\": [";
    for (std::size_t i = 0; i < tokens.size(); ++i) body += (i ? "," : "") + std::to_string(tokens[i]);
    body += "]}";
    auto o = client::Orchestrator::Connect(name, std::chrono::milliseconds(10000));
    if (!o.ok()) std::abort();
    orchestrator = std::move(o).value();
  }
};

Setup& Shared() {
  static Setup s;
  return s;
}

void Report(benchmark::State& state, std::vector<std::int64_t>& ns) {
  if (ns.empty()) return;
  std::sort(ns.begin(), ns.end());
  // Each thread reports its own; the counters average them over the threads.
  state.counters["p50_us"] = benchmark::Counter(Quantile(ns, 0.50) / 1e3, benchmark::Counter::kAvgThreads);
  state.counters["p99_us"] = benchmark::Counter(Quantile(ns, 0.99) / 1e3, benchmark::Counter::kAvgThreads);
  state.SetItemsProcessed(static_cast<std::int64_t>(ns.size()));
}

void BM_Floor_CacheLinePingPong(benchmark::State& state) { CacheLinePingPong(state); }
BENCHMARK(BM_Floor_CacheLinePingPong)->UseRealTime()->MinTime(1.0);

void BM_Http_Lookup(benchmark::State& state) {
  Setup& s = Shared();
  auto c = http::HttpClient::Connect("127.0.0.1", s.port);
  if (!c.ok()) return state.SkipWithError(c.status().ToString().c_str());
  std::vector<std::int64_t> ns;
  for (auto _ : state) {
    auto t0 = Clock::now();
    auto r = (*c)->Post("/lookup", s.body);
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (!r.ok() || r->status != 200 || r->body.find("\"A\"") == std::string::npos) {
      state.SkipWithError("bad /lookup answer");
      break;
    }
  }
  Report(state, ns);
}
BENCHMARK(BM_Http_Lookup)->Threads(1)->Threads(8)->UseRealTime()->MinTime(2.0);

void BM_Ring_Lookup(benchmark::State& state) {
  Setup& s = Shared();
  protocol::LookupMsg m{"bench", {}};
  for (std::int64_t t : s.tokens) m.tokens.push_back(protocol::Int::FromI64(t));
  std::vector<std::int64_t> ns;
  for (auto _ : state) {
    auto t0 = Clock::now();
    auto r = s.orchestrator->Request(m, std::chrono::milliseconds(5000));
    ns.push_back(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count());
    if (!r.ok() || std::get<protocol::LookupRetMsg>(*r).layout_info.size() != 2) {
      state.SkipWithError("bad LookupMsg answer");
      break;
    }
  }
  Report(state, ns);
}
BENCHMARK(BM_Ring_Lookup)->Threads(1)->Threads(8)->UseRealTime()->MinTime(2.0);

}  // namespace

// The shared setup is made on the main thread: its controller child has
// PR_SET_PDEATHSIG, which fires when the *thread* that forked it ends, and
// a threads:N benchmark runs on threads that end after each trial (a
// threads:8 run first killed the controller under itself).
int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  (void)Shared();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
