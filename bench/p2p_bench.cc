// P2P lookup cost inside the controller (no transport): a 10 M-key index over
// 8 instances (grown, or made with a reserve: `_Reserved`; `_Shared`: 10 M
// (key, holder) pairs, each chain cached by 4 of the instances, so every key
// has a holder group of 4; `_Scattered`: grown, its chains' keys admitted
// interleaved, so that no holder lists a chain in order; `_Churned`: grown,
// then a quarter of it replaced oldest first and 1 % of its keys evicted and
// admitted again, as a running cache's lists are), requests of 32,
// 256 and 4,096 chunk hashes whose whole prefix one peer holds, as kvring's
// longest-prefix policy and LMCache's rule answer them, beside their memory
// floor (BM_Floor_RandomLinePairs: the probes' cache lines alone;
// BM_Floor_RandomLines: one line a hash, the least any layout reads).
// LMCache's Python controller, measured with real msgspec and no sockets:
// ~42 us for 32 hashes, ~0.9 ms for 4,096 (docs/PERFORMANCE.md).
#include <benchmark/benchmark.h>


#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "bench_util.h"
#include "kvring/index/index.h"
#include "kvring/index/p2p.h"

namespace {

using namespace kvring;

struct World {
  registry::Registry reg;
  index::ChunkIndex idx;
  std::vector<std::vector<std::uint64_t>> chains;  // each a prefix chain of 4,096 hashes
  std::vector<index::HolderId> holders;            // one an instance
  // scattered: each instance admits its chains' keys interleaved (the first
  // key of every chain, then the second...), so no chain's keys are side by
  // side in its key list.
  explicit World(std::size_t reserve_keys, std::size_t sharers = 1, bool scattered = false)
      : idx(index::Options{.reserve_keys = reserve_keys}) {
    constexpr int kInstances = 8;
    constexpr std::size_t kPairs = 10000000, kChain = 4096;
    std::mt19937_64 rng(11);
    for (int i = 0; i < kInstances; ++i) {
      registry::WorkerRecord w;
      w.instance_id = "lmcache_instance_" + std::to_string(i);
      w.worker_id = 0;
      w.peer_init_url = "localhost:" + std::to_string(8200 + i);
      bool is_new;
      holders.push_back(reg.Holder(reg.Upsert(w, &is_new), "LocalCPUBackend"));
    }
    for (std::size_t made = 0; made < kPairs; made += kChain * sharers) {
      std::vector<std::uint64_t> chain(kChain);
      for (auto& h : chain) h = rng();
      if (!scattered)
        for (std::size_t s = 0; s < sharers; ++s)
          for (auto k : chain) (void)idx.Add(k, holders[(chains.size() + s) % kInstances]);
      chains.push_back(std::move(chain));
    }
    if (scattered)
      for (std::size_t k = 0; k < kChain; ++k)
        for (std::size_t c = 0; c < chains.size(); ++c)
          for (std::size_t s = 0; s < sharers; ++s) (void)idx.Add(chains[c][k], holders[(c + s) % kInstances]);
  }

  // A cache that has run for a while: the oldest quarter of the chains
  // evicted (oldest first, as LRU does) and as many new ones admitted, and
  // 1 % of the keys evicted and admitted again (a touched chunk that LRU
  // moves to its newest end: it leaves its place in its holder's list).
  void Churn() {
    std::mt19937_64 rng(13);
    const std::size_t old_chains = chains.size() / 4;
    for (std::size_t c = 0; c < old_chains; ++c) {
      for (auto k : chains[c]) (void)idx.Remove(k, holders[c % holders.size()]);
      std::vector<std::uint64_t> fresh(chains[c].size());
      for (auto& h : fresh) h = rng();
      chains.push_back(std::move(fresh));  // chains[c] stays first in line; its holder takes a new one
      for (auto k : chains.back()) (void)idx.Add(k, holders[(chains.size() - 1) % holders.size()]);
    }
    chains.erase(chains.begin(), chains.begin() + static_cast<std::ptrdiff_t>(old_chains));
    for (std::size_t n = 0; n < idx.pairs() / 100; ++n) {
      const std::size_t c = rng() % chains.size();
      const std::uint64_t k = chains[c][rng() % chains[c].size()];
      index::HolderId holder = 0;
      idx.ForEachHolder(k, [&](index::HolderId h) { holder = h; });  // one each here
      (void)idx.Remove(k, holder);
      (void)idx.Add(k, holder);
    }
  }
};
// The default index (grown from small tables, 4 KiB pages) and one made with
// a reserve for its 10 M keys (kvringd --index-reserve-keys: huge pages).
enum class Kind { kGrown, kReserved, kShared, kScattered, kChurned };
World& TheWorld(Kind kind) {
  if (kind == Kind::kChurned) {
    static const std::unique_ptr<World> churned = [] {
      auto w = std::make_unique<World>(0);
      w->Churn();
      return w;
    }();
    return *churned;
  }
  if (kind == Kind::kScattered) {
    static World scattered(0, 1, true);
    return scattered;
  }
  if (kind == Kind::kShared) {
    static World shared(0, 4);
    return shared;
  }
  static World grown(0);
  if (kind == Kind::kGrown) return grown;
  static World with_reserve(10000000);
  return with_reserve;
}

void Run(benchmark::State& state, p2p::Policy policy, Kind kind = Kind::kGrown) {
  World& w = TheWorld(kind);
  const auto n = static_cast<std::size_t>(state.range(0));
  p2p::Lookup lookup;
  std::mt19937 rng(1);
  std::uint64_t hits = 0;
  for (auto _ : state) {
    const auto& chain = w.chains[rng() % w.chains.size()];
    p2p::Hit h = lookup.Run(w.idx, w.reg, std::span(chain.data(), n), "requester", 0, policy);
    hits += h.num_hit_chunks;
  }
  if (hits != state.iterations() * n) state.SkipWithError("lookup missed");
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}
void BM_P2PLookup_LongestPrefix(benchmark::State& s) { Run(s, p2p::Policy::kLongestPrefix); }
void BM_P2PLookup_LMCacheRule(benchmark::State& s) { Run(s, p2p::Policy::kLMCache); }
void BM_P2PLookup_LongestPrefix_Reserved(benchmark::State& s) { Run(s, p2p::Policy::kLongestPrefix, Kind::kReserved); }
void BM_P2PLookup_LongestPrefix_Shared(benchmark::State& s) { Run(s, p2p::Policy::kLongestPrefix, Kind::kShared); }
BENCHMARK(BM_P2PLookup_LongestPrefix)->Arg(32)->Arg(256)->Arg(4096);
BENCHMARK(BM_P2PLookup_LMCacheRule)->Arg(32)->Arg(256)->Arg(4096);
BENCHMARK(BM_P2PLookup_LongestPrefix_Reserved)->Arg(32)->Arg(256)->Arg(4096);
BENCHMARK(BM_P2PLookup_LongestPrefix_Shared)->Arg(32)->Arg(256)->Arg(4096);
void BM_P2PLookup_LongestPrefix_Scattered(benchmark::State& s) {
  Run(s, p2p::Policy::kLongestPrefix, Kind::kScattered);
}
BENCHMARK(BM_P2PLookup_LongestPrefix_Scattered)->Arg(32)->Arg(256)->Arg(4096);
void BM_P2PLookup_LongestPrefix_Churned(benchmark::State& s) { Run(s, p2p::Policy::kLongestPrefix, Kind::kChurned); }
BENCHMARK(BM_P2PLookup_LongestPrefix_Churned)->Arg(32)->Arg(256)->Arg(4096);

// The memory floor of a lookup: for each of N random "hashes", the two cache
// lines a probe reads (a random 16-byte slot and the line after it) in a
// 256 MiB table, prefetched 32 hashes ahead as the lookup does, with nothing
// else to do. Arg 1: the table on 2 MiB huge pages (populated up front), 0:
// on 4 KiB pages (a page walk per probe).
void BM_Floor_RandomLinePairs(benchmark::State& state) {
  bench::RandomLinePairsFloor(state, static_cast<std::size_t>(state.range(0)), state.range(1) != 0, 32, false);
}
BENCHMARK(BM_Floor_RandomLinePairs)->ArgsProduct({{32, 256}, {0, 1}});
// One random line a hash, huge pages: what a lookup must read whatever the
// slot layout (a one-line probe's floor; the 6 us for 256 hashes
// end to end has this, the ring round trip and the codec under it).
void BM_Floor_RandomLines(benchmark::State& state) {
  bench::RandomLinePairsFloor(state, static_cast<std::size_t>(state.range(0)), true, 32, false, 1);
}
BENCHMARK(BM_Floor_RandomLines)->Arg(32)->Arg(256);

}  // namespace

BENCHMARK_MAIN();
