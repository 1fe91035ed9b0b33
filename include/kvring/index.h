// ChunkIndex: chunk hash (64 bits) -> the holders that have it, where a
// holder is an interned (instance, worker, location) id.
//
// Design (in the manner of the comment at the top of Abseil's raw_hash_set.h):
//
//  * The index is a multimap of (key, holder) pairs, split into 2^k shards by
//    the top bits of a mixed key. Each shard is an open-addressing table with
//    linear probing in Robin Hood order (a slot never sits farther from its
//    home than a later slot of the same run), whose slots are 16 bytes: key,
//    holder, and the pair's position in its holder's key list. Most keys have
//    one holder, so most keys cost one slot; a key with several holders has
//    one slot each. Runs are kept sorted by home, then key, so a key's pairs
//    sit together and a lookup stops at the first slot nearer its own home
//    than the lookup has come, or as near with a greater key: a hit reads no
//    farther than the slot after its own pairs (the second cache line less
//    often), and misses stay short even at 7/8 load.
//  * No stop-the-world rehash. When a shard passes 7/8 full it allocates a
//    table twice the size and from then on every operation on the shard moves
//    a fixed number of old slots over; lookups consult both tables until the
//    old one is drained. The old table is never shrunk or re-probed while it
//    drains: a slot below the migration cursor counts as moved, a removed pair
//    still in it becomes a tombstone, so its probe runs stay intact.
//  * Deletions in the current table shift the rest of the run back by one
//    (no tombstones accumulate, Robin Hood order is kept).
//  * Per-holder membership: each holder keeps the list of its keys (chunked,
//    so growth wastes at most one chunk and one spare per holder). Dropping a
//    holder costs time proportional to its own keys and runs in bounded
//    slices (DropHolderSlice) so lookups keep being served while a million
//    keys go.
//  * A per-holder quota (keys) bounds what one flooding worker can take.
//  * Optionally (Options::prepare_tables, off by default) big tables (2 MiB
//    and more) are prepared off the owner's thread: when a shard passes 3/4
//    full, a helper thread maps its next table, advises huge pages and faults
//    every page in, so the table is backed by huge pages from its first insert
//    (a random probe then costs one TLB-cached translation instead of a page
//    walk: lookups -20 %, 10 M-key ingest +20 %). The price, measured on a
//    2-core VM: the helper's huge-page faults hold the process's mmap lock for
//    milliseconds (compaction), and the owner's heap growth waits behind them,
//    so the worst insert while growing rises from ~1 ms to 15-25 ms. Hence
//    off unless throughput matters more than the growth pause
//    (docs/PERFORMANCE.md). If the helper is late, growth maps the table itself.
//  * Reserve (Options::reserve_keys): an operator who knows the cache's size
//    (GPU + CPU + disk chunks of the deployment) has every shard's table made
//    for it at start, at 3/4 load when the reserve is full (capacities need
//    not be powers of two), advised for huge pages and populated there: no
//    growth, no fault and no compaction on the insert path until the reserve
//    is exceeded (then growth goes on as above), every probe TLB-friendly,
//    and at 10 M keys 21 bytes of table per key instead of 27 (16-byte slots
//    at 0.6 load after doubling). Start-up pays the population once.
//
// Thread-safety: none; owned by the single controller thread (the helper
// thread only ever touches tables it has not handed over yet).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace kvring::index {

using HolderId = std::uint32_t;
inline constexpr HolderId kMaxHolder = 0xfffffffdu;

struct Options {
  // 64 shards: at 10 M keys each table is 4-8 MiB, so huge pages back it (a
  // 1 MiB table cannot be); growth is incremental whatever the shard size.
  std::uint32_t shard_bits = 6;
  std::size_t initial_shard_slots = 1024; // rounded up to a power of two
  std::size_t per_holder_quota = 0;       // 0: unlimited
  std::size_t migrate_per_op = 64;        // old slots moved per operation while a shard grows
  bool prepare_tables = false;            // big tables prepared by a helper thread (see above)
  // Keys to make room for up front (0: none; start small and grow). See
  // "Reserve" above: sized tables backed by huge pages from the start.
  std::size_t reserve_keys = 0;
};

enum class AddResult : std::uint8_t { kAdded, kAlreadyPresent, kOverQuota };

class ChunkIndex {
 public:
  explicit ChunkIndex(Options options = {});
  ~ChunkIndex();
  ChunkIndex(const ChunkIndex&) = delete;
  ChunkIndex& operator=(const ChunkIndex&) = delete;

  AddResult Add(std::uint64_t key, HolderId holder);
  // Returns whether the pair was present.
  bool Remove(std::uint64_t key, HolderId holder);
  bool Contains(std::uint64_t key, HolderId holder) const;
  // Calls fn(HolderId) for every holder of `key` (order unspecified).
  template <typename Fn>
  void ForEachHolder(std::uint64_t key, Fn&& fn) const;
  // Number of holders of `key`.
  std::size_t HolderCount(std::uint64_t key) const;

  // Removes up to `budget` keys of `holder`; returns how many remain.
  std::size_t DropHolderSlice(HolderId holder, std::size_t budget);
  std::size_t KeysOf(HolderId holder) const;
  // Calls fn(key) for every key of `holder` (a cold path: stats, digests).
  void ForEachKeyOf(HolderId holder, const std::function<void(std::uint64_t)>& fn) const;

  // Prefetches the home slots of `keys` (call before a run of lookups: the
  // misses then overlap instead of queueing one after another).
  void Prefetch(std::span<const std::uint64_t> keys) const;

  // A lookup located ahead of its use: Locate mixes the key, finds its
  // window (the home slot's cache line and the next) and prefetches it;
  // ForEachHolder(probe, ...) later reads the holders from that window. A
  // long lookup (P2P requests: hundreds of hashes) then mixes and places each
  // key once and, between the two, runs no code but its own: per hash, the
  // instructions are what is left to pay once the misses overlap
  // (docs/PERFORMANCE.md). Valid until the index next changes.
  struct Probe;
  Probe Locate(std::uint64_t key) const;
  template <typename Fn>
  void ForEachHolder(const Probe& probe, Fn&& fn) const;

  std::size_t pairs() const { return pairs_; }
  std::size_t over_quota() const { return over_quota_; }
  // The key mixer (MurmurHash3's fmix64): spreads structured keys over the
  // shards and slots. Also a handy generator of well-spread test keys.
  static constexpr std::uint64_t Mix(std::uint64_t key) {
    // Chunk hashes are already hashes, but a worker may send structured
    // values: a multiply-xorshift finaliser (MurmurHash3's fmix64) spreads them.
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdULL;
    key ^= key >> 33;
    key *= 0xc4ceb9fe1a85ec53ULL;
    key ^= key >> 33;
    return key;
  }

  // Heap bytes held by tables and holder lists.
  std::size_t MemoryBytes() const;
  // Shards currently migrating to a bigger table (for tests and stats).
  std::size_t GrowingShards() const;

  // All-zero bytes are an empty slot, so a new table comes from calloc or
  // mmap (the kernel's zero pages) with no initialisation pass: growing a shard costs
  // no O(capacity) step, pages fault in as pairs arrive.
  struct Slot {
    // The key as Mix() leaves it: Mix is a bijection, so this is the key in
    // another form, and a probe reads a slot's home (its low bits) without
    // re-mixing every key it passes.
    std::uint64_t mixed;
    std::uint32_t tag;  // 0: empty; kTombstone: removed while migrating; else holder + 1
    std::uint32_t pos;  // position in the holder's key list
  };
  static constexpr std::uint32_t kEmptyTag = 0;
  static constexpr std::uint32_t kTombstone = 0xffffffffu;
  static constexpr std::uint32_t Tag(HolderId h) { return h + 1; }
  // Every table starts on a cache line and holds a multiple of a line's slots.
  static constexpr std::size_t kLineBytes = 64;
  static constexpr std::size_t kSlotsPerLine = kLineBytes / sizeof(Slot);
  // Bit 2j set: slot j of the two-line window at `line` (line-aligned) holds
  // `mixed`. WindowMatches compares in SIMD where it can, WindowMatchesScalar
  // a slot at a time (the portable path, and the tests' reference).
  static unsigned WindowMatches(const Slot* line, std::uint64_t mixed);
  static unsigned WindowMatchesScalar(const Slot* line, std::uint64_t mixed) {
    unsigned eq = 0;
    for (std::size_t j = 0; j < 2 * kSlotsPerLine; ++j) eq |= unsigned{line[j].mixed == mixed} << (2 * j);
    return eq;
  }

 private:
  // Slots of one table. Large tables are mmap-ed on a 2 MiB boundary and,
  // once fully populated, advised to use transparent huge pages: a random
  // probe then misses the TLB far less (4 KiB pages over a 10 M-key index
  // cost a page walk per lookup).
  struct TableMemory {  // no member initialisers: unique_ptr needs it default-constructible here
    enum Kind : std::uint8_t {
      kHeap,        // calloc-ed (small tables)
      kMapped,      // its own 2 MiB-aligned mapping
      kArenaPiece,  // part of the reserve's mapping: its pages are handed back, the mapping stays
    };
    std::size_t bytes;
    Kind kind;
    void operator()(Slot* p) const;
  };
  // Any capacity, not only powers of two (a table sized for a reserve is
  // not rounded up to twice what it needs): a key's home is the fixed-point
  // product of 32 mixed bits and the capacity (Lemire's fast range), which
  // keeps homes in key order, so Robin Hood runs work as with a mask.
  struct Table {
    std::unique_ptr<Slot[], TableMemory> slots;
    std::size_t capacity = 0;
    std::size_t Home(std::uint64_t mixed) const {
      return static_cast<std::size_t>((std::uint64_t{static_cast<std::uint32_t>(mixed)} * capacity) >> 32);
    }
    std::size_t Next(std::size_t i) const { return i + 1 == capacity ? 0 : i + 1; }
    // How far slot `i` lies past `home`, around the end.
    std::size_t Distance(std::size_t i, std::size_t home) const { return i >= home ? i - home : i + capacity - home; }
    // Whether slot `i` (holding `other`) lies past every pair of key `mixed`,
    // which a scan reached `dist` slots from its home: runs are sorted by
    // home, then key, so a slot nearer its home, or as near with a greater
    // key, ends the scan (a hit stops right after its own pairs).
    bool PastKey(std::size_t i, std::uint64_t other, std::size_t dist, std::uint64_t mixed) const {
      const std::size_t d = Distance(i, Home(other));
      return d < dist || (d == dist && other > mixed);
    }
  };
  static Table NewTable(std::size_t capacity);
  class TablePreparer;
  static void AdviseHugePages(const Table& t);
  // Advises huge pages for a big table and faults every page in (the
  // preparer's thread, or start-up for a reserve): afterwards no insert faults.
  static void PopulateHugePages(void* p, std::size_t bytes);
  static void* MapAligned(std::size_t bytes);
  struct Shard {
    Table cur;
    Table old;               // non-empty while migrating
    std::size_t migrate_at = 0;
    std::size_t used = 0;    // pairs in cur
    std::size_t requested = 0;  // capacity asked of the preparer for the next growth (0: none)
    bool prepared = false;      // cur came from the preparer (already advised and populated)
  };
  struct HolderKeys;

  // The probe of `key` without its prefetch.
  Probe Place(std::uint64_t key) const;
  // Calls fn for every holder and returns true if the probe's window holds
  // all of the key's pairs; false (no call) if they may run past it (about
  // 6 % of hits at 3/4 load) or the probe has no window.
  template <typename Fn>
  bool HoldersInWindow(const Probe& probe, Fn&& fn) const;
  Shard& ShardOf(std::uint64_t mixed) { return shards_[mixed >> (64 - options_.shard_bits)]; }
  const Shard& ShardOf(std::uint64_t mixed) const { return shards_[mixed >> (64 - options_.shard_bits)]; }
  // The pair (mixed, holder) in `t` (`old`: a draining table, whose slots
  // below `cursor` count as moved), or null; then `*stop` (if given) is the
  // slot where the probe stopped, which is where the pair would go.
  Slot* FindIn(Table& t, std::uint64_t mixed, HolderId holder, bool old, std::size_t cursor,
               std::size_t* stop = nullptr) const;
  void InsertInto(Table& t, std::uint64_t mixed, const Slot& s);
  // Puts `s` at slot `i` and moves the rest of the run on by one slot.
  static void ShiftInsert(Table& t, std::size_t i, Slot s);
  void EraseAt(Table& t, std::size_t i);
  void MigrateStep(Shard& sh);
  void StartGrowth(Shard& sh);
  void SetPos(std::uint64_t key, HolderId holder, std::uint32_t pos);
  HolderKeys& Keys(HolderId holder);

  Options options_;
  // The reserve's tables, one mapping for all shards (so that all of it can
  // be huge pages: per-shard tables of a few MiB would each end in a partial
  // huge page). Declared before shards_, so it outlives their pieces.
  std::unique_ptr<Slot[], TableMemory> reserve_arena_;
  std::vector<Shard> shards_;
  std::vector<std::unique_ptr<HolderKeys>> holders_;
  std::size_t pairs_ = 0;
  std::size_t over_quota_ = 0;
  std::unique_ptr<TablePreparer> preparer_;  // null: prepare_tables off
};

// ---- inline lookups ----------------------------------------------------------------

struct ChunkIndex::Probe {
  std::uint64_t key;
  std::uint64_t mixed;
  const Slot* window;  // the home slot's line and the next; null: the slot-by-slot scan
  std::size_t skip;    // the home slot's place in the window
};

inline ChunkIndex::Probe ChunkIndex::Place(std::uint64_t key) const {
  const std::uint64_t m = Mix(key);
  const Shard& sh = ShardOf(m);
  const std::size_t home = sh.cur.Home(m), first = home & ~(kSlotsPerLine - 1);
  // Key 0 mixes to 0, an empty slot's key; a growing shard is probed twice;
  // a window past the table's end would wrap: all take the scan.
  if (sh.old.slots || m == 0 || first + 2 * kSlotsPerLine > sh.cur.capacity) return Probe{key, m, nullptr, 0};
  return Probe{key, m, &sh.cur.slots[first], home - first};
}

inline ChunkIndex::Probe ChunkIndex::Locate(std::uint64_t key) const {
  const Probe p = Place(key);
  if (p.window) {
    __builtin_prefetch(p.window);
    __builtin_prefetch(p.window + kSlotsPerLine);
  } else {
    Prefetch(std::span(&key, 1));
  }
  return p;
}

template <typename Fn>
void ChunkIndex::ForEachHolder(std::uint64_t key, Fn&& fn) const {
  ForEachHolder(Place(key), std::forward<Fn>(fn));
}

template <typename Fn>
bool ChunkIndex::HoldersInWindow(const Probe& probe, Fn&& fn) const {
  // The common case without a branch per slot: the two cache lines Locate
  // fetches (the home slot's and the next) are compared with the key all at
  // once. A key's pairs are contiguous from its home on (sorted runs), so if
  // they end before the last slot of the window, they are all here. A scan
  // loop over slots of unpredictable length costs a branch miss or two per
  // key, which was most of a prefetched lookup's time (docs/PERFORMANCE.md).
  if (!probe.window) return false;
  const Slot* line = probe.window;
  const std::size_t skip = probe.skip;
  // Bit 2j: slot skip + j holds the key.
  const unsigned eq = WindowMatches(line, probe.mixed) >> (2 * skip);
  if (eq == 0 || (eq >> (2 * (2 * kSlotsPerLine - skip - 1))) != 0) return false;
  for (unsigned left = eq; left != 0; left &= left - 1)
    fn(static_cast<HolderId>(line[skip + static_cast<std::size_t>(__builtin_ctz(left)) / 2].tag - 1));
  return true;
}

inline unsigned ChunkIndex::WindowMatches(const Slot* line, std::uint64_t mixed) {
#if defined(__SSE2__)
  // Two slots' keys to a register, compared as 32-bit halves (SSE2 has no
  // 64-bit compare): about a third of the instructions of a compare a slot,
  // and a prefetched lookup is bound by its instructions and loads per hash
  // as much as by its misses (docs/PERFORMANCE.md).
  const __m128i key = _mm_set1_epi64x(static_cast<long long>(mixed));
  const auto* v = reinterpret_cast<const __m128i*>(line);  // 16-byte slots, tables line-aligned
  unsigned halves = 0;  // bits 2j, 2j+1: slot j's low and high halves equal
  for (int k = 0; k < 4; ++k) {
    const __m128i pair = _mm_unpacklo_epi64(_mm_load_si128(v + 2 * k), _mm_load_si128(v + 2 * k + 1));
    halves |= static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(pair, key)))) << (4 * k);
  }
  return halves & (halves >> 1) & 0x5555u;
#else
  return WindowMatchesScalar(line, mixed);
#endif
}

template <typename Fn>
void ChunkIndex::ForEachHolder(const Probe& probe, Fn&& fn) const {
  if (HoldersInWindow(probe, fn)) return;
  const std::uint64_t m = probe.mixed;
  const Shard& sh = ShardOf(m);
  for (int which = 0; which < 2; ++which) {
    const Table& t = which == 0 ? sh.cur : sh.old;
    if (!t.slots) continue;
    for (std::size_t i = t.Home(m), dist = 0;; i = t.Next(i), ++dist) {
      const Slot& s = t.slots[i];
      if (s.tag == kEmptyTag) break;
      if (s.mixed != m) {
        if (t.PastKey(i, s.mixed, dist, m)) break;
        continue;
      }
      if (which == 1 && i < sh.migrate_at) continue;  // already moved to cur
      if (s.tag != kTombstone) fn(static_cast<HolderId>(s.tag - 1));
    }
  }
}

}  // namespace kvring::index
