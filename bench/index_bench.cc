// The chunk index against the tables it could have been: std::unordered_map
// and absl::flat_hash_map holding the same content (chunk hash -> holder),
// on random 64-bit keys.
//
//   BM_<Table>_Insert/N          ns per insert while building an N-key table
//   BM_<Table>_Lookup/N          ns per lookup of a random present key (batches of 32)
//   BM_<Table>_Erase/N           ns per erase
//   counters: bytes_per_key (heap bytes the table holds / keys)
//   BM_<Table>_WorstInsertPause/N  the longest single insert while growing from 0 to N keys
//   ChunkIndexReserved: Options::reserve_keys = N (its start-up is the setup_ms counter)
//
// ChunkIndex lookups prefetch each batch of 32 home slots first (as the P2P
// path does with a request's hashes); the other tables are probed one by one.
#include <benchmark/benchmark.h>

#include <absl/container/flat_hash_map.h>

#include <atomic>
#include <chrono>
#include <random>
#include <unordered_map>
#include <type_traits>
#include <vector>

#include "kvring/index.h"

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
  double bytes_per_key = 0, setup_ms = 0;
  for (auto _ : state) {
    state.PauseTiming();  // a reserve's start-up is reported on its own (setup_ms)
    auto t0 = std::chrono::steady_clock::now();
    auto a = Make<A>(n);
    setup_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    state.ResumeTiming();
    for (auto k : keys) a->Insert(k);
    bytes_per_key = static_cast<double>(a->Bytes()) / static_cast<double>(n);
    state.PauseTiming();
    a.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.counters["bytes_per_key"] = bytes_per_key;
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
  BENCHMARK(BM_##Name##_Insert)->Arg(1 << 20)->Arg(10000000)->Unit(benchmark::kMillisecond)->Iterations(1); \
  BENCHMARK(BM_##Name##_Lookup)->Arg(1 << 20)->Arg(10000000);                              \
  BENCHMARK(BM_##Name##_Erase)->Arg(1 << 20)->Unit(benchmark::kMillisecond)->Iterations(1); \
  BENCHMARK(BM_##Name##_WorstInsertPause)->Arg(10000000)->Unit(benchmark::kMillisecond)->Iterations(1);

KVRING_TABLE_BENCH(ChunkIndex, IndexAdapter)
KVRING_TABLE_BENCH(ChunkIndexPrepared, PreparedIndexAdapter)
KVRING_TABLE_BENCH(ChunkIndexReserved, ReservedIndexAdapter)
KVRING_TABLE_BENCH(AbslFlatHashMap, MapAdapter<AbslMap>)
KVRING_TABLE_BENCH(StdUnorderedMap, MapAdapter<StdMap>)

}  // namespace

BENCHMARK_MAIN();
