// kvring load: a load generator of real worker processes.
//
// It forks instances x tp worker processes. Each one attaches with the client
// library (client.h), registers as (inst<i>, rank t) with a peer URL, and
// serves simulated requests: a request is a document's chunk hashes (documents
// of one "app" share a system-prompt prefix; every instance computes the same
// hashes for the same tokens, as LMCache does), looked up among the peers with
// a blocking P2P lookup, then admitted into the worker's simulated CPU cache,
// which evicts its oldest chunks past --cache-chunks. Workers answer full-sync
// requests from their simulated cache, and the controller's commands (clear,
// pin, compress, decompress, move, health, check-finish) against it, so that
// `kvring clear`/`health` and the HTTP API can be tried end to end. Each worker fills a latency histogram
// in shared memory; the parent merges them and reports.
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <deque>
#include <iostream>
#include <random>
#include <thread>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "kvring/protocol/chunk_hash.h"
#include "kvring/client/client.h"
#include "kvring/index/index.h"
#include "latency_histogram.h"

namespace kvring::tools {
namespace {

using Clock = std::chrono::steady_clock;

struct LoadConfig {
  std::string name = "kvring";
  int instances = 2;
  int tp = 1;
  double seconds = 3;
  bool json = false;
  int lookup_hashes = 32;    // hashes per P2P lookup (the prefix of each request)
  int max_chunks = 64;       // chunks per request, uniform in [1, max_chunks]
  int documents = 10000;
  int apps = 16;             // documents of one app share a prefix
  int shared_prefix = 4;     // chunks of that prefix
  std::size_t cache_chunks = 200000;  // per worker
  std::size_t batch_ops = 256;
  std::uint64_t seed = 1;
};

struct Shared {  // one per worker, in a MAP_SHARED region made before fork
  std::uint64_t ops = 0;
  std::uint64_t lookups = 0;
  std::uint64_t hits = 0;
  std::uint64_t hit_chunks = 0;
  std::uint64_t errors = 0;
  std::uint64_t full_syncs = 0;
  int connected = 0;  // 1 ok, -1 failed
  char first_error[256] = {};
  LatencyHistogram latency_ns;
};

std::uint64_t Mix(std::uint64_t x) { return index::ChunkIndex::Mix(x); }

std::uint64_t ChunkHash(const LoadConfig& c, std::uint64_t doc, std::uint64_t k) {
  if (static_cast<int>(k) < c.shared_prefix) return Mix((doc % c.apps) << 20 | k | (1ull << 62));
  return Mix(doc << 20 | k);
}

void Note(Shared& s, const Status& st) {
  ++s.errors;
  if (!s.first_error[0]) std::snprintf(s.first_error, sizeof s.first_error, "%s", st.ToString().c_str());
}

int RunWorker(const LoadConfig& c, int inst, int rank, Shared& out, const std::atomic<int>& stop) {
  static constexpr const char* kLocation = "LocalCPUBackend";
  std::unordered_set<std::uint64_t> cache;
  std::deque<std::uint64_t> order;  // admission order: the oldest is evicted first
  client::WorkerOptions o;
  o.controller = c.name;
  o.instance_id = "inst" + std::to_string(inst);
  o.worker_id = rank;
  o.port = 20000 + inst * c.tp + rank;
  o.peer_init_url = "127.0.0.1:" + std::to_string(30000 + inst * c.tp + rank);
  o.batch_ops = c.batch_ops;
  o.keys_of = [&](const std::string&) { return std::vector<std::uint64_t>(order.begin(), order.end()); };
  // Commands run inside worker.Tick(), on this thread: they may touch the cache.
  constexpr std::int64_t kChunkTokens = 256;
  client::Worker* self = nullptr;
  auto tokens_held = [&](const std::string& location) {
    return location == kLocation ? static_cast<std::int64_t>(cache.size()) * kChunkTokens : 0;
  };
  // Tokens of the longest cached prefix of `tokens` (LMCache's chunk hashes).
  auto prefix_tokens = [&](const std::string& location, const std::vector<protocol::Int>& tokens) {
    if (location != kLocation) return std::int64_t{0};
    std::vector<std::int64_t> ids;
    for (const protocol::Int& t : tokens) ids.push_back(t.FitsI64() ? t.AsI64() : 0);
    std::int64_t end = 0;
    for (const auto& ch : ChunkHasher(kChunkTokens, pyhash::HashInt(0)).Hash(ids)) {
      if (!cache.count(protocol::Int::FromI64(ch.hash).bits())) break;
      end = static_cast<std::int64_t>(ch.end);
    }
    return end;
  };
  auto some_tokens = [&](const std::string& location, const std::optional<std::vector<protocol::Int>>& tokens) {
    return tokens && !tokens->empty() ? prefix_tokens(location, *tokens) : tokens_held(location);
  };
  o.handlers.clear = [&](const protocol::ClearWorkerMsg& m) {
    std::int64_t n = tokens_held(m.location);
    if (m.location == kLocation) {
      for (std::uint64_t h : order) self->Evict(kLocation, h);
      out.ops += order.size();
      order.clear();
      cache.clear();
    }
    return protocol::ClearWorkerRetMsg{protocol::Int::FromI64(n)};
  };
  o.handlers.pin = [&](const protocol::PinWorkerMsg& m) {
    return protocol::PinWorkerRetMsg{protocol::Int::FromI64(prefix_tokens(m.location, m.tokens))};
  };
  o.handlers.compress = [&](const protocol::CompressWorkerMsg& m) {
    return protocol::CompressWorkerRetMsg{protocol::Int::FromI64(some_tokens(m.location, m.tokens))};
  };
  o.handlers.decompress = [&](const protocol::DecompressWorkerMsg& m) {
    return protocol::DecompressWorkerRetMsg{protocol::Int::FromI64(some_tokens(m.location, m.tokens))};
  };
  o.handlers.move = [&](const protocol::MoveWorkerMsg& m) {
    return protocol::MoveWorkerRetMsg{protocol::Int::FromI64(some_tokens(m.old_position, m.tokens))};
  };
  o.handlers.health = [](const protocol::HealthWorkerMsg&) { return protocol::HealthWorkerRetMsg{protocol::Int(0)}; };
  o.handlers.check_finish = [](const protocol::CheckFinishWorkerMsg&) {
    return protocol::CheckFinishWorkerRetMsg{"finished"};
  };
  auto w = client::Worker::Connect(o);
  if (!w.ok()) {
    out.connected = -1;
    Note(out, w.status());
    return 1;
  }
  out.connected = 1;
  client::Worker& worker = **w;
  self = &worker;
  // Every TP rank of an instance serves the same requests, as in vLLM: their
  // caches hold the same chunks (so clear, pin, ... counts agree across ranks).
  std::mt19937_64 rng(c.seed * 1000003 + static_cast<std::uint64_t>(inst));
  std::vector<std::uint64_t> hashes;
  for (std::uint64_t iter = 0; !stop.load(std::memory_order_relaxed); ++iter) {  // relaxed: a flag
    // Popular documents come up more often (a squared uniform: skewed, not Zipf-exact).
    double u = std::uniform_real_distribution<double>(0, 1)(rng);
    std::uint64_t doc = static_cast<std::uint64_t>(u * u * c.documents);
    std::size_t len = 1 + rng() % static_cast<std::uint64_t>(c.max_chunks);
    hashes.resize(len);
    for (std::size_t k = 0; k < len; ++k) hashes[k] = ChunkHash(c, doc, k);
    if (c.lookup_hashes > 0) {
      std::size_t n = std::min<std::size_t>(len, static_cast<std::size_t>(c.lookup_hashes));
      auto t0 = Clock::now();
      auto hit = worker.Lookup(std::span(hashes).first(n), std::chrono::milliseconds(1000));
      auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
      if (hit.ok()) {
        out.latency_ns.Add(static_cast<std::uint64_t>(ns));
        ++out.lookups;
        if (hit->num_hit_chunks > 0) {
          ++out.hits;
          out.hit_chunks += hit->num_hit_chunks;
        }
      } else {
        Note(out, hit.status());
      }
    }
    for (std::uint64_t h : hashes) {
      if (!cache.insert(h).second) continue;
      order.push_back(h);
      worker.Admit(kLocation, h);
      ++out.ops;
      if (cache.size() > c.cache_chunks) {
        std::uint64_t old = order.front();
        order.pop_front();
        cache.erase(old);
        worker.Evict(kLocation, old);
        ++out.ops;
      }
    }
    if (iter % 64 == 0)
      if (Status s = worker.Tick(); !s.ok()) Note(out, s);
  }
  out.full_syncs = worker.counters().full_syncs;
  if (Status s = worker.Close(); !s.ok()) Note(out, s);
  return 0;
}

std::uint64_t ControllerKvOps(const std::string& name) {
  auto n = client::StatsCounter(name, "kv_ops_total", std::chrono::milliseconds(1000));
  return n.ok() ? *n : 0;
}

}  // namespace

Command AddLoad(CLI::App& app) {
  auto c = std::make_shared<LoadConfig>();
  app.description(
      "Start instances x tp real worker processes against a running controller; each admits and\n"
      "evicts chunks with realistic prefix sharing and issues P2P lookups. Reports ops/s and\n"
      "lookup latency percentiles. Exit 0 when every worker ran without error, 1 otherwise.");
  app.add_option("--name", c->name, "Controller name")->capture_default_str();
  app.add_option("--instances", c->instances, "Serving instances")->check(CLI::Range(1, 256))->capture_default_str();
  app.add_option("--tp", c->tp, "Workers (TP ranks) per instance")->check(CLI::Range(1, 64))->capture_default_str();
  app.add_option("--seconds", c->seconds, "How long to run")->check(CLI::Range(0.1, 86400.0))->capture_default_str();
  app.add_flag("--json", c->json, "One JSON object");
  app.add_option("--lookup-hashes", c->lookup_hashes, "Hashes per P2P lookup (0: no lookups)")
      ->check(CLI::Range(0, 65536))->capture_default_str();
  app.add_option("--max-chunks", c->max_chunks, "Chunks per request at most")->check(CLI::Range(1, 65536))->capture_default_str();
  app.add_option("--documents", c->documents, "Distinct documents")->check(CLI::Range(1, 1 << 30))->capture_default_str();
  app.add_option("--cache-chunks", c->cache_chunks, "Chunks each worker's simulated cache holds")->capture_default_str();
  app.add_option("--batch-ops", c->batch_ops, "Ops per BatchedKVOperationMsg")->check(CLI::Range(1, 100000))->capture_default_str();
  app.add_option("--seed", c->seed, "Random seed")->capture_default_str();
  return [c]() -> int {
    const int n = c->instances * c->tp;
    // Fail early, with the client library's message, when no controller runs.
    if (auto probe = client::ControlRequest(c->name, R"({"op":"stats"})", std::chrono::milliseconds(1000)); !probe.ok()) {
      std::cerr << "error: " << probe.status().message() << "\n";
      return 1;
    }
    std::size_t bytes = sizeof(std::atomic<int>) + sizeof(Shared) * static_cast<std::size_t>(n) + 64;
    void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
      std::cerr << "error: mmap: " << std::strerror(errno) << "\n";
      return 1;
    }
    auto* stop = new (mem) std::atomic<int>(0);
    static_assert(std::atomic<int>::is_always_lock_free, "shared between processes");
    auto* shared = reinterpret_cast<Shared*>(static_cast<char*>(mem) + 64);
    for (int i = 0; i < n; ++i) new (&shared[i]) Shared();
    std::uint64_t ctl_ops0 = ControllerKvOps(c->name);
    std::vector<pid_t> pids;
    auto t0 = Clock::now();
    for (int i = 0; i < n; ++i) {
      pid_t pid = fork();
      if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        _exit(RunWorker(*c, i / c->tp, i % c->tp, shared[i], *stop));
      }
      if (pid > 0) pids.push_back(pid);
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(c->seconds));  // the load's duration
    stop->store(1, std::memory_order_relaxed);  // relaxed: a flag; waitpid orders the results
    int failed = 0;
    for (pid_t p : pids) {
      int status = 0;
      waitpid(p, &status, 0);
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
    }
    double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    std::uint64_t ctl_ops = ControllerKvOps(c->name) - ctl_ops0;
    Shared total;
    std::string first_error;
    for (int i = 0; i < n; ++i) {
      const Shared& s = shared[i];
      total.ops += s.ops;
      total.lookups += s.lookups;
      total.hits += s.hits;
      total.hit_chunks += s.hit_chunks;
      total.errors += s.errors;
      total.full_syncs += s.full_syncs;
      total.latency_ns.Merge(s.latency_ns);
      if (first_error.empty() && s.first_error[0]) first_error = s.first_error;
    }
    munmap(mem, bytes);
    double us = 1e-3;
    nlohmann::json j = {
        {"workers", n},
        {"seconds", secs},
        {"kv_ops", total.ops},
        {"kv_ops_per_s", static_cast<double>(total.ops) / secs},
        {"controller_kv_ops_per_s", static_cast<double>(ctl_ops) / secs},
        {"p2p_lookups", total.lookups},
        {"p2p_lookups_per_s", static_cast<double>(total.lookups) / secs},
        {"p2p_p50_us", static_cast<double>(total.latency_ns.Quantile(0.5)) * us},
        {"p2p_p99_us", static_cast<double>(total.latency_ns.Quantile(0.99)) * us},
        {"p2p_p999_us", static_cast<double>(total.latency_ns.Quantile(0.999)) * us},
        {"p2p_max_us", static_cast<double>(total.latency_ns.max) * us},
        {"p2p_hit_rate", total.lookups ? static_cast<double>(total.hits) / static_cast<double>(total.lookups) : 0.0},
        {"p2p_mean_hit_chunks", total.hits ? static_cast<double>(total.hit_chunks) / static_cast<double>(total.hits) : 0.0},
        {"full_syncs", total.full_syncs},
        {"errors", total.errors + static_cast<std::uint64_t>(failed)},
    };
    if (!first_error.empty()) j["first_error"] = first_error;
    if (c->json) {
      std::cout << j.dump() << std::endl;
    } else {
      std::printf("kvring load: %d workers (%d instances x %d TP ranks) for %.1f s against '%s'\n", n, c->instances,
                  c->tp, secs, c->name.c_str());
      std::printf("  kv ops       %12llu  (%.2f M/s sent; controller applied %.2f M/s)\n",
                  static_cast<unsigned long long>(total.ops), static_cast<double>(total.ops) / secs / 1e6,
                  static_cast<double>(ctl_ops) / secs / 1e6);
      std::printf("  p2p lookups  %12llu  (%.0f/s, %d hashes each at most; hit rate %.1f %%)\n",
                  static_cast<unsigned long long>(total.lookups), static_cast<double>(total.lookups) / secs,
                  c->lookup_hashes, 100.0 * j["p2p_hit_rate"].get<double>());
      std::printf("  lookup round trip  p50 %.1f us  p99 %.1f us  p99.9 %.1f us  max %.1f us\n",
                  j["p2p_p50_us"].get<double>(), j["p2p_p99_us"].get<double>(), j["p2p_p999_us"].get<double>(),
                  j["p2p_max_us"].get<double>());
      std::printf("  errors       %12llu%s\n", static_cast<unsigned long long>(j["errors"].get<std::uint64_t>()),
                  first_error.empty() ? "" : ("  (first: " + first_error + ")").c_str());
    }
    return j["errors"].get<std::uint64_t>() == 0 ? 0 : 1;
  };
}

}  // namespace kvring::tools
