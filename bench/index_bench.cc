// The chunk index against the tables it could have been: std::unordered_map
// and absl::flat_hash_map holding the same content (chunk hash -> holder),
// on random 64-bit keys.
//
//   BM_<Table>_Insert/N          ns per insert while building an N-key table
//   BM_<Table>_Lookup/N          ns per lookup of a random present key (batches of 32)
//   BM_<Table>_Erase/N           ns per erase
//   counters: bytes_per_key (heap bytes the table holds / keys), rss_bytes_per_key (what the
//             process's resident set grew by from before the table was made to the end of
//             the build, / keys)
//   BM_<Table>_WorstInsertPause/N  the longest single insert while growing from 0 to N keys
//   BM_<Table>_Churn/N           ns per op of a table held at N keys by alternate admits of new
//                                keys and evicts of the oldest, in batches of 256 as the
//                                controller applies a BatchedKVOperationMsg (ChunkIndex: both
//                                buckets prefetched 16 ops ahead, as the controller does);
//                                N = 2^20: the one holder's key list sits on a chunk boundary
//   BM_Floor_RandomLinePairWrites/N/huge  the churn's memory floor: per op, two adjacent random
//                                lines of a 256 MiB table read and written, prefetched 16
//                                ops ahead, nothing else (huge: 2 MiB pages, else 4 KiB;
//                                the cuckoo index's two buckets are not adjacent, which
//                                costs a second page walk on 4 KiB pages only)
//   ChunkIndexReserved: Options::reserve_keys = N (its start-up is the setup_ms counter)
//
// ChunkIndex lookups prefetch the buckets of each batch of 32 first (as the P2P
// path does with a request's hashes); the other tables are probed one by one.
#include <benchmark/benchmark.h>

#include <absl/container/flat_hash_map.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <random>
#include <unordered_map>
#include <type_traits>
#include <vector>

#include "bench_util.h"
#include "kvring/index/index.h"

namespace {

using kvring::index::ChunkIndex;
using kvring::index::HolderId;

std::atomic<std::size_t> g_bytes{0};
template <typename T>
struct CountingAllocator {
  using value_type = T;
  CountingAllocator() = default;
  template <typename U>
  CountingAllocator(const CountingAllocator<U>&) {}
  T* allocate(std::size_t n) {
    g_bytes += n * sizeof(T);
    return std::allocator<T>().allocate(n);
  }
  void deallocate(T* p, std::size_t n) {
    g_bytes -= n * sizeof(T);
    std::allocator<T>().deallocate(p, n);
  }
  friend bool operator==(const CountingAllocator&, const CountingAllocator&) { return true; }
};

using StdMap = std::unordered_map<std::uint64_t, HolderId, std::hash<std::uint64_t>, std::equal_to<>,
                                  CountingAllocator<std::pair<const std::uint64_t, HolderId>>>;
using AbslMap = absl::flat_hash_map<std::uint64_t, HolderId, absl::Hash<std::uint64_t>, std::equal_to<>,
                                    CountingAllocator<std::pair<const std::uint64_t, HolderId>>>;

std::vector<std::uint64_t> Keys(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::uint64_t> k(n);
  for (auto& x : k) x = rng();
  return k;
}

// ---- adapters ----------------------------------------------------------------------

struct IndexAdapter {
  ChunkIndex t;
  void Insert(std::uint64_t k) { (void)t.Add(k, 1); }
  void Erase(std::uint64_t k) { t.Remove(k, 1); }
  std::size_t Bytes() const { return t.MemoryBytes(); }
  // Ops alternate: admit keys[i], evict keys[i + 1] (the controller's loop in HandleKvBatch).
  void ChurnBatch(const std::uint64_t* keys, std::size_t n) {
    constexpr std::size_t kAhead = 16;
    t.Prefetch({keys, std::min(n, kAhead)});
    for (std::size_t i = 0; i < n; ++i) {
      if (i + kAhead < n) t.Prefetch({keys + i + kAhead, 1});
      if (i % 2 == 0) (void)t.Add(keys[i], 1);
      else t.Remove(keys[i], 1);
    }
  }
  std::uint64_t LookupBatch(const std::uint64_t* keys, std::size_t n) const {
    t.Prefetch({keys, n});
    std::uint64_t hits = 0;
    for (std::size_t i = 0; i < n; ++i) t.ForEachHolder(keys[i], [&](HolderId h) { hits += h; });
    return hits;
  }
};
// The same index with Options::prepare_tables (huge-page tables made by a helper thread).
struct PreparedIndexAdapter : IndexAdapter {
  PreparedIndexAdapter() : IndexAdapter{ChunkIndex([] {
    kvring::index::Options o;
    o.prepare_tables = true;
    return o;
  }())} {}
};
// The same index with room for the N keys made at start (Options::reserve_keys):
// sized tables, huge pages populated before the first insert.
struct ReservedIndexAdapter : IndexAdapter {
  explicit ReservedIndexAdapter(std::size_t n) : IndexAdapter{ChunkIndex([n] {
    kvring::index::Options o;
    o.reserve_keys = n;
    return o;
  }())} {}
};
// Every table for N keys; only the reserved index uses N.
template <typename A>
std::unique_ptr<A> Make(std::size_t n) {
  if constexpr (std::is_constructible_v<A, std::size_t>) return std::make_unique<A>(n);
  else return std::make_unique<A>();
}
template <typename Map>
struct MapAdapter {
  Map t;
  MapAdapter() { g_bytes = 0; }
  void Insert(std::uint64_t k) { t.emplace(k, 1); }
  void Erase(std::uint64_t k) { t.erase(k); }
  void ChurnBatch(const std::uint64_t* keys, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      if (i % 2 == 0) t.emplace(keys[i], 1);
      else t.erase(keys[i]);
    }
  }
  std::size_t Bytes() const { return g_bytes.load(); }
  std::uint64_t LookupBatch(const std::uint64_t* keys, std::size_t n) const {
    std::uint64_t hits = 0;
    for (std::size_t i = 0; i < n; ++i) {
      auto it = t.find(keys[i]);
      if (it != t.end()) hits += it->second;
    }
    return hits;
  }
};

template <typename A>
void Insert(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto keys = Keys(n, 1);
  double bytes_per_key = 0, rss_per_key = 0, setup_ms = 0;
  for (auto _ : state) {
    state.PauseTiming();  // a reserve's start-up is reported on its own (setup_ms)
    const std::size_t rss0 = kvring::bench::ResidentBytes();
    auto t0 = std::chrono::steady_clock::now();
    auto a = Make<A>(n);
    setup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    state.ResumeTiming();
    for (auto k : keys) a->Insert(k);
    bytes_per_key = static_cast<double>(a->Bytes()) / static_cast<double>(n);
    state.PauseTiming();
    rss_per_key = static_cast<double>(kvring::bench::ResidentBytes() - rss0) / static_cast<double>(n);
    a.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.counters["bytes_per_key"] = bytes_per_key;
  state.counters["rss_bytes_per_key"] = rss_per_key;
  state.counters["setup_ms"] = setup_ms;
  state.counters["ns_per_insert"] = benchmark::Counter(static_cast<double>(state.iterations() * n),
                                                       benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <typename A>
void Lookup(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto keys = Keys(n, 1);
  auto made = Make<A>(n);
  A& a = *made;
  for (auto k : keys) a.Insert(k);
  auto probe = keys;
  std::shuffle(probe.begin(), probe.end(), std::mt19937_64(2));
  std::size_t i = 0;
  std::uint64_t sink = 0;
  for (auto _ : state) {
    if (i + 32 > probe.size()) i = 0;
    sink += a.LookupBatch(probe.data() + i, 32);
    i += 32;
  }
  benchmark::DoNotOptimize(sink);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * 32));
  state.counters["ns_per_lookup"] = benchmark::Counter(static_cast<double>(state.iterations() * 32),
                                                       benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <typename A>
void Erase(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto keys = Keys(n, 1);
  for (auto _ : state) {
    state.PauseTiming();
    auto a = Make<A>(n);
    for (auto k : keys) a->Insert(k);
    state.ResumeTiming();
    for (auto k : keys) a->Erase(k);
    state.PauseTiming();
    a.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.counters["ns_per_erase"] = benchmark::Counter(static_cast<double>(state.iterations() * n),
                                                      benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

template <typename A>
void Churn(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  constexpr std::size_t kBatch = 256, kSpan = 1 << 22;  // ops per timed stretch; keys made ahead
  auto made = Make<A>(n);
  A& a = *made;
  std::mt19937_64 rng(5);
  // A ring of the live keys in admission order: the oldest is evicted as each new one comes.
  std::vector<std::uint64_t> live(n);
  for (auto& k : live) a.Insert(k = rng());
  std::vector<std::uint64_t> ops(kSpan);
  std::size_t oldest = 0, at = kSpan;
  for (auto _ : state) {
    if (at == kSpan) {
      state.PauseTiming();
      for (std::size_t i = 0; i < kSpan; i += 2) {
        ops[i] = rng();
        ops[i + 1] = live[oldest];
        live[oldest] = ops[i];
        oldest = oldest + 1 == n ? 0 : oldest + 1;
      }
      at = 0;
      state.ResumeTiming();
    }
    a.ChurnBatch(ops.data() + at, kBatch);
    at += kBatch;
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * kBatch));
  state.counters["ns_per_op"] = benchmark::Counter(static_cast<double>(state.iterations() * kBatch),
                                                   benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// The longest single insert while the table grows from empty to N keys.
template <typename A>
void WorstInsertPause(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  auto keys = Keys(n, 3);
  std::int64_t worst = 0;
  for (auto _ : state) {
    auto a = Make<A>(n);
    for (auto k : keys) {
      auto t0 = std::chrono::steady_clock::now();
      a->Insert(k);
      worst = std::max<std::int64_t>(worst, (std::chrono::steady_clock::now() - t0).count());
    }
  }
  state.counters["worst_insert_us"] = static_cast<double>(worst) / 1e3;
}

#define KVRING_TABLE_BENCH(Name, Adapter)                                                   \
  void BM_##Name##_Insert(benchmark::State& s) { Insert<Adapter>(s); }                     \
  void BM_##Name##_Lookup(benchmark::State& s) { Lookup<Adapter>(s); }                     \
  void BM_##Name##_Erase(benchmark::State& s) { Erase<Adapter>(s); }                       \
  void BM_##Name##_WorstInsertPause(benchmark::State& s) { WorstInsertPause<Adapter>(s); } \
  void BM_##Name##_Churn(benchmark::State& s) { Churn<Adapter>(s); }                       \
  BENCHMARK(BM_##Name##_Insert)->Arg(1 << 20)->Arg(10000000)->Unit(benchmark::kMillisecond)->Iterations(1); \
  BENCHMARK(BM_##Name##_Lookup)->Arg(1 << 20)->Arg(10000000);                              \
  BENCHMARK(BM_##Name##_Erase)->Arg(1 << 20)->Unit(benchmark::kMillisecond)->Iterations(1); \
  BENCHMARK(BM_##Name##_WorstInsertPause)->Arg(10000000)->Unit(benchmark::kMillisecond)->Iterations(1); \
  BENCHMARK(BM_##Name##_Churn)->Arg(1000000)->Arg(1 << 20)->Arg(10000000)->MinTime(2.0);

KVRING_TABLE_BENCH(ChunkIndex, IndexAdapter)
KVRING_TABLE_BENCH(ChunkIndexPrepared, PreparedIndexAdapter)
KVRING_TABLE_BENCH(ChunkIndexReserved, ReservedIndexAdapter)
KVRING_TABLE_BENCH(AbslFlatHashMap, MapAdapter<AbslMap>)
KVRING_TABLE_BENCH(StdUnorderedMap, MapAdapter<StdMap>)

void BM_Floor_RandomLinePairWrites(benchmark::State& state) {
  kvring::bench::RandomLinePairsFloor(state, static_cast<std::size_t>(state.range(0)), state.range(1) != 0, 16, true);
  state.counters["ns_per_op"] = benchmark::Counter(static_cast<double>(state.iterations() * state.range(0)),
                                                   benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_Floor_RandomLinePairWrites)->ArgsProduct({{256}, {0, 1}})->MinTime(2.0);

}  // namespace

BENCHMARK_MAIN();
