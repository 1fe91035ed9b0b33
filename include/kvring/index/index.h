// ChunkIndex: chunk hash (64 bits) -> the holders that have it, where a
// holder is an interned (instance, worker, location) id.
//
// Design (in the manner of the comment at the top of Abseil's raw_hash_set.h):
//
//  * The index maps keys to holders, split into 2^k shards by the top bits of
//    a mixed key. Each shard is a bucketed cuckoo table: a bucket is one cache
//    line of five 12-byte slots, and a key's slot lives in either of its two
//    buckets, chosen by two hashes of the key. A key has one slot whatever its
//    holders: most keys have one, and the slot holds the key and, in 32 bits,
//    where that holder's key list has it (the id of the list's chunk, which
//    names the holder and the chunk's first position, and the offset in it);
//    a key with several (a prefix many workers cache) has a holder group
//    instead, a small array of (holder, position) in its shard, named by the
//    slot. (Pairs with a slot each would make a key with h holders fill h of
//    its ten slots, and a cuckoo table whose items take half a bucket works
//    only below half load.)
//  * Every operation reads at most the same two lines, which the caller can
//    prefetch many operations ahead (Prefetch, Locate): a lookup compares a
//    bucket's five slots with the key in SIMD, an evict clears a slot, an
//    admit fills an empty slot, of its first bucket if it has one. Nothing
//    shifts and no probe run is walked, so an operation's work and lines do
//    not grow with load.
//  * A lookup reads the second bucket only if it must: every bucket keeps,
//    in the four bytes its slots leave, how many keys whose first bucket
//    this is live in their second.
//    At 3/4 load that count is 0 for most buckets, and a key found in its
//    first bucket is done, so most lookups read one line; a long lookup
//    (Locate, then Follow a few hashes before the probe) prefetches the
//    second only where the first says so.
//    (The Robin Hood linear-probing table this replaced read past its two
//    prefetched lines whenever a shift or a run did, and at 3/4 load that
//    was most of its 10 M-key ingest time: docs/PERFORMANCE.md.)
//  * When both buckets are full, an admit moves slots to their other bucket
//    (first one that can go at once, then a random walk of at most 32 steps,
//    each a random line). A slot that still finds no room goes to the shard's
//    overflow (a small hash map: rare below 85 % load), and the shard marks
//    the key's first bucket in a bitmap so that lookups of other keys skip
//    the overflow. A shard with no overflow never looks at either.
//  * No stop-the-world rehash. When a shard passes 85 % full it allocates a
//    table half as large again and from then on every operation on the shard
//    moves a fixed number of old buckets over; lookups consult both tables
//    until the old one is drained (a bucket below the migration cursor counts
//    as moved). Growing by 3/2 keeps a grown table 57-85 % full: with the key
//    lists, 22-30 bytes a key at any size (doubling left 43-85 %).
//  * Per-holder membership: each holder keeps the list of its keys (chunked,
//    so growth wastes at most a partly filled chunk at each end and one spare
//    per holder), in the order they came: a removal moves the list's first
//    key into the hole, and keys mostly leave oldest first, so a prefix a
//    worker admitted in order stays side by side, and a long P2P lookup walks
//    it there instead of probing each hash (KeysFrom). Dropping a
//    holder costs time proportional to its own keys and runs in bounded
//    slices (DropHolderSlice) so lookups keep being served while a million
//    keys go.
//  * A per-holder quota (keys) bounds what one flooding worker can take.
//  * Optionally (Options::prepare_tables, off by default) big tables (2 MiB
//    and more) are prepared off the owner's thread: when a shard passes 3/4
//    full, a helper thread maps its next table, advises huge pages and faults
//    every page in, so the table is backed by huge pages from its first insert
//    (a random probe then costs one TLB-cached translation instead of a page
//    walk). The price, measured on a 2-core VM: the helper's huge-page faults
//    hold the process's mmap lock for milliseconds (compaction), and the
//    owner's heap growth waits behind them, so the worst insert while growing
//    rises from ~1 ms to 15-25 ms. Hence off unless throughput matters more
//    than the growth pause (docs/PERFORMANCE.md). If the helper is late,
//    growth maps the table itself.
//  * Reserve (Options::reserve_keys): an operator who knows the cache's size
//    (GPU + CPU + disk chunks of the deployment) has every shard's table made
//    for it at start, at 3/4 load when the reserve is full (capacities need
//    not be powers of two), advised for huge pages and populated there: no
//    growth, no fault and no compaction on the insert path until the reserve
//    is exceeded (then growth goes on as above), every probe TLB-friendly,
//    and at 10 M keys 16 bytes of table per key.
//
// Thread-safety: none; owned by the single controller thread (the helper
// thread only ever touches tables it has not handed over yet).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace kvring::index {

using HolderId = std::uint32_t;
inline constexpr HolderId kMaxHolder = 0x7ffffffdu;  // a tag with the top bit set names a holder group

struct Options {
  // 64 shards: at 10 M keys each table is 4-8 MiB, so huge pages back it (a
  // 1 MiB table cannot be); growth is incremental whatever the shard size.
  std::uint32_t shard_bits = 6;
  std::size_t initial_shard_lines = 256;  // first table's lines of kSlotsPerLine slots: a power of two, 4 at least
  std::size_t per_holder_quota = 0;       // 0: unlimited
  std::size_t migrate_per_op = 64;        // old slots moved per operation while a shard grows (whole buckets)
  bool prepare_tables = false;            // big tables prepared by a helper thread (see above)
  // Keys to make room for up front (0: none; start small and grow). See
  // "Reserve" above: sized tables backed by huge pages from the start.
  std::size_t reserve_keys = 0;
  // Where a new holder's key list starts counting positions (they wrap at
  // 2^kPosBits): tests start near the wrap instead of making 2^28 admits.
  std::uint32_t list_position_start = 0;
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
  // A walk over a holder's keys in slices, while the holder keeps changing
  // between them (the cluster's resync dumps a live index this way). Begin
  // with KeyWalk{}; each call hands up to `max_keys` keys to fn(span) and
  // returns whether keys are left. Every key the holder has from the first
  // call to the last is handed at least once, however other keys come and go
  // in between: the walk goes from the list's head to its tail, and a removal
  // moves only the list's first key, which is either handed already or moves
  // further on (see HolderKeys::Remove). Keys added meanwhile may or may not
  // be handed; a key removed meanwhile may have been handed before it went.
  struct KeyWalk {
    std::uint32_t pos = 0;
    bool started = false;
  };
  template <typename Fn>
  bool WalkKeys(HolderId holder, KeyWalk* walk, std::size_t max_keys, Fn&& fn) const {
    for (std::size_t left = max_keys; left > 0;) {
      std::span<const std::uint64_t> run = NextRun(holder, walk);
      if (run.empty()) return false;
      run = run.first(std::min(run.size(), left));
      fn(run);
      walk->pos += static_cast<std::uint32_t>(run.size());
      left -= run.size();
    }
    return NextRun(holder, walk).size() > 0;
  }

  // Prefetches both buckets of each of `keys` (call before a run of operations: the
  // misses then overlap instead of queueing one after another).
  void Prefetch(std::span<const std::uint64_t> keys) const;

  // A lookup located ahead of its use: Locate mixes the key, finds its two
  // buckets and prefetches the first; Follow, once that line is likely in,
  // prefetches the second if the key is not in the first and it may be there,
  // or, if the key is there with a holder group, the group's header; Gather,
  // once that is likely in, prefetches the group's entries;
  // ForEachHolder(probe, ...) later reads the holders from them. A
  // long lookup (P2P requests: hundreds of hashes) then mixes and places each
  // key once and, between the two, runs no code but its own: per hash, the
  // instructions are what is left to pay once the misses overlap
  // (docs/PERFORMANCE.md). Valid until the index next changes.
  struct Probe;
  Probe Locate(std::uint64_t key) const;
  // look_for_group: false where no key has a group (HasGroups()), to skip
  // the compare it takes when the first bucket counts no spill.
  void Follow(Probe& probe, bool look_for_group = true) const;
  void Gather(const Probe& probe) const;
  template <typename Fn>
  void ForEachHolder(const Probe& probe, Fn&& fn) const;
  // ForEachHolder that also names where each holder lists the key:
  // fn(HolderId, std::uint32_t position in the holder's key list).
  template <typename Fn>
  void ForEachHolderAt(const Probe& probe, Fn&& fn) const;

  // A holder's key list keeps its keys in the order they came (removing one
  // moves the list's first key into its place, and keys mostly leave oldest
  // first), so the chunks of a prefix that a worker admitted one after
  // another sit side by side in it: a long lookup that has found one of them
  // there checks the next hashes against the list, a line for eight, instead
  // of probing each (p2p.cc). A key at a live position of the list is one
  // the holder holds.
  // The keys of `holder` from list position `pos` (taken modulo 2^kPosBits)
  // to the end of that piece of the list (a piece holds 1,024 keys), or an
  // empty span if `pos` is not a live position.
  std::span<const std::uint64_t> KeysFrom(HolderId holder, std::size_t pos) const;
  // WalkKeys' step: moves walk->pos up to the list's head if removals passed
  // it, and returns the keys from there to the end of their chunk (empty at the tail).
  std::span<const std::uint64_t> NextRun(HolderId holder, KeyWalk* walk) const;
  void PrefetchKeyAt(HolderId holder, std::size_t pos) const;

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

  // Heap bytes held by tables, overflow and holder lists.
  std::size_t MemoryBytes() const;
  // Shards currently migrating to a bigger table (for tests and stats).
  std::size_t GrowingShards() const;
  // Keys held in the shards' overflow (both of their buckets were full).
  std::size_t OverflowKeys() const;
  // Keys with several holders (each has a holder group).
  std::size_t GroupedKeys() const { return grouped_keys_; }
  bool HasGroups() const { return grouped_keys_ != 0; }

  // All-zero bytes are an empty slot, so a new table comes from calloc or
  // mmap (the kernel's zero pages) with no initialisation pass: growing a shard costs
  // no O(capacity) step, pages fault in as pairs arrive.
  // A slot is 12 bytes, five to a bucket: a quarter more slots in the same
  // memory than 16-byte slots (docs/PERFORMANCE.md, "Twelve-byte slots").
  struct __attribute__((packed, aligned(4))) Slot {
    // The key as Stored() leaves it: Mix(key) with the shard's bits (the top
    // ones, the same for every key of a table) set, so never 0, an empty
    // slot's; Mix is a bijection, so within a shard this is the key in
    // another form, and moving a slot to its other bucket needs no re-mixing.
    std::uint64_t mixed;
    // 0: empty; kGroupBit | id: the shard's holder group `id`; else where the
    // key's one holder lists it: (list chunk id << kChunkBits) | offset in
    // that chunk. The chunk names the holder and the list position of its
    // first key (ListChunk), so the slot needs no room for either.
    std::uint32_t ref;
  };
  static constexpr std::uint32_t kGroupBit = 0x80000000u;
  static constexpr unsigned kPosBits = 28;
  static constexpr std::uint32_t kPosMask = (std::uint32_t{1} << kPosBits) - 1;
  // A key list's chunk holds 2^kChunkBits keys; chunk ids fill the rest of a ref.
  static constexpr unsigned kChunkBits = 10;
  static constexpr std::uint32_t kChunkMask = (std::uint32_t{1} << kChunkBits) - 1;
  static constexpr std::uint32_t kMaxListChunks = kGroupBit >> kChunkBits;  // ids 1 .. this - 1
  // Keys one holder can have (its list's positions, partly filled chunks at
  // both ends included, must fit kPosBits); more are over quota.
  static constexpr std::size_t kMaxKeysPerHolder = (std::size_t{1} << kPosBits) - 2048;
  static constexpr std::uint32_t kSpillSaturated = 0xffff;
  // A bucket is one cache line: five slots, and a count of the keys that
  // have this bucket first and live in their second. Every table starts on a line.
  static constexpr std::size_t kLineBytes = 64;
  static constexpr std::size_t kSlotsPerLine = 5;
  struct Line {
    Slot slots[kSlotsPerLine];
    std::uint32_t spilled;
  };
  static unsigned Spilled(const Line* bucket) { return bucket->spilled; }
  // Bit 2j set: slot j of `line` holds `mixed`.
  // BucketMatches compares in SIMD where it can, BucketMatchesScalar a slot
  // at a time (the portable path, and the tests' reference).
  static unsigned BucketMatches(const Line* line, std::uint64_t mixed);
  static unsigned BucketMatchesScalar(const Line* line, std::uint64_t mixed) {
    unsigned eq = 0;
    for (std::size_t j = 0; j < kSlotsPerLine; ++j) eq |= unsigned{line->slots[j].mixed == mixed} << (2 * j);
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
    void operator()(Line* p) const;
  };
  // Any number of buckets, not only powers of two (a table sized for a
  // reserve is not rounded up to twice what it needs): a bucket is the
  // fixed-point product of 32 hash bits and the bucket count (Lemire's fast
  // range). The first bucket takes the stored key's low 32 bits; the second,
  // a multiplicative hash of all 64, so the two are independent.
  struct Table {
    std::unique_ptr<Line[], TableMemory> slots;
    std::size_t buckets = 0;
    std::size_t capacity() const { return buckets * kSlotsPerLine; }  // slots
    std::size_t First(std::uint64_t stored) const {
      return static_cast<std::size_t>((std::uint64_t{static_cast<std::uint32_t>(stored)} * buckets) >> 32);
    }
    std::size_t Second(std::uint64_t stored) const {
      const auto h = static_cast<std::uint32_t>((stored * 0x9e3779b97f4a7c15ULL) >> 32);
      return static_cast<std::size_t>((std::uint64_t{h} * buckets) >> 32);
    }
    Line* Bucket(std::size_t b) const { return &slots[b]; }
  };
  static Table NewTable(std::size_t buckets);
  static std::size_t GrownBuckets(std::size_t buckets);
  class TablePreparer;
  static void AdviseHugePages(const Table& t);
  // Advises huge pages for a big table and faults every page in (the
  // preparer's thread, or start-up for a reserve): afterwards no insert faults.
  static void PopulateHugePages(void* p, std::size_t bytes);
  static void* MapAligned(std::size_t bytes);
  struct GroupEntry {
    HolderId holder;
    std::uint32_t pos;  // in the holder's key list
  };
  struct Shard {
    Table cur;
    Table old;                  // non-empty while migrating
    std::size_t migrate_at = 0; // old buckets below this have moved
    std::size_t used = 0;       // slots (keys) in cur
    std::size_t requested = 0;  // capacity asked of the preparer for the next growth (0: none)
    bool prepared = false;      // cur came from the preparer (already advised and populated)
    // Slots whose buckets were full, by stored key; `marked` has bit b set
    // when a key in it has cur bucket b as its first (empty while none).
    std::unordered_map<std::uint64_t, Slot> overflow;
    std::vector<std::uint64_t> marked;
    bool Marked(std::size_t bucket) const {
      return !overflow.empty() && (marked[bucket / 64] >> (bucket % 64) & 1) != 0;
    }
    // Holder groups, by id; freed ones keep their capacity for the next.
    std::vector<std::vector<GroupEntry>> groups;
    std::vector<std::uint32_t> free_groups;
  };
  struct HolderKeys;

  std::uint64_t Stored(std::uint64_t mixed) const { return mixed | top_bits_; }
  // The probe of `key` without its prefetch.
  Probe Place(std::uint64_t key) const;
  Shard& ShardOf(std::uint64_t mixed) { return shards_[mixed >> (64 - options_.shard_bits)]; }
  const Shard& ShardOf(std::uint64_t mixed) const { return shards_[mixed >> (64 - options_.shard_bits)]; }
  // The key's slot in a bucket, or null.
  static Slot* InBucket(Line* bucket, std::uint64_t stored) {
    const unsigned eq = BucketMatches(bucket, stored);
    return eq ? &bucket->slots[__builtin_ctz(eq) / 2] : nullptr;
  }
  // Where a key's slot is.
  enum class Where : std::uint8_t { kNone, kFirst, kSecond, kOld, kOverflow };
  // The key's slot wherever it is in the shard (cur, the part of old not yet
  // moved, overflow), or null (then *where is kNone). The slow lookup and the
  // updates share it; the mutable one only lifts the const.
  static const Slot* FindKey(const Shard& sh, std::uint64_t stored, Where* where);
  static Slot* FindKey(Shard& sh, std::uint64_t stored, Where* where) {
    return const_cast<Slot*>(FindKey(static_cast<const Shard&>(sh), stored, where));
  }
  // Whether `holder` holds `slot`'s key (alone or in its group).
  bool HeldBy(const Shard& sh, const Slot& slot, HolderId holder) const;
  // Puts the slot `s` into sh.cur, moving other slots to their other bucket
  // if both of its are full; returns false if a slot went to the overflow
  // instead (then cur holds as many slots as before).
  bool Put(Shard& sh, Slot s);
  // Moves one slot of the full bucket `b` to its other bucket, if that has
  // room; returns the slot freed, or -1.
  static int MoveOneOut(Table& t, std::size_t b);
  void AddToOverflow(Shard& sh, const Slot& s);
  static void Clear(Slot* s) { *s = Slot{0, 0}; }
  static void AddSpill(Line* bucket, int delta);
  void MarkOverflow(Shard& sh, std::uint64_t stored);
  void MigrateStep(Shard& sh);
  void StartGrowth(Shard& sh);
  void SetPos(std::uint64_t key, HolderId holder, std::uint32_t pos);
  // A key list's chunk, by id (0: none): its holder, and the list position
  // of its first key. Refs in slots name them (Slot::ref).
  struct ListChunk {
    HolderId holder;
    std::uint32_t base;
  };
  struct ListChunks {
    std::vector<ListChunk> by_id{ListChunk{0, 0}};  // id 0 never names a chunk
    std::vector<std::uint32_t> free_ids;
    bool Exhausted() const { return free_ids.empty() && by_id.size() >= kMaxListChunks; }
    std::uint32_t Acquire() {
      if (!free_ids.empty()) {
        const std::uint32_t id = free_ids.back();
        free_ids.pop_back();
        return id;
      }
      by_id.push_back(ListChunk{0, 0});
      return static_cast<std::uint32_t>(by_id.size() - 1);
    }
    void Release(std::uint32_t id) {
      if (id != 0) free_ids.push_back(id);
    }
  };
  // The holder and list position a single holder's ref names.
  const ListChunk& ChunkOf(std::uint32_t ref) const { return list_chunks_.by_id[ref >> kChunkBits]; }
  std::uint32_t PosOf(std::uint32_t ref) const { return ChunkOf(ref).base + (ref & kChunkMask); }
  HolderKeys& Keys(HolderId holder);
  const HolderKeys* ListOf(HolderId holder) const;  // null: the holder has no list
  // The slow lookup: a growing shard, or a key that may be in the overflow.
  template <typename Fn>
  void ForEachHolderSlow(const Shard& sh, std::uint64_t stored, Fn&& fn) const;
  // Calls fn(holder, list position) for the holder of a single-holder slot or
  // every holder of a group.
  template <typename Fn>
  void HoldersOf(const Shard& sh, const Slot& slot, Fn&& fn) const {
    const std::uint32_t ref = slot.ref;
    if ((ref & kGroupBit) == 0) {
      const ListChunk& c = ChunkOf(ref);
      return fn(c.holder, c.base + (ref & kChunkMask));
    }
    for (const GroupEntry& e : sh.groups[ref & ~kGroupBit]) fn(e.holder, e.pos);
  }

  Options options_;
  std::uint64_t top_bits_ = 0;  // the shard bits, all set (see Slot::mixed)
  std::uint64_t kick_state_ = 0x2545f4914f6cdd1dULL;  // xorshift: which slot a full bucket gives up
  // The reserve's tables, one mapping for all shards (so that all of it can
  // be huge pages: per-shard tables of a few MiB would each end in a partial
  // huge page). Declared before shards_, so it outlives their pieces.
  std::unique_ptr<Line[], TableMemory> reserve_arena_;
  std::vector<Shard> shards_;
  ListChunks list_chunks_;  // before holders_: their lists give their chunk ids back as they go
  std::vector<std::unique_ptr<HolderKeys>> holders_;
  std::size_t pairs_ = 0;
  std::size_t grouped_keys_ = 0;  // holder groups in use, all shards
  std::size_t over_quota_ = 0;
  std::unique_ptr<TablePreparer> preparer_;  // null: prepare_tables off
};

// ---- inline lookups ----------------------------------------------------------------

struct ChunkIndex::Probe {
  std::uint64_t stored;
  const Shard* shard;
  const Line* first;   // the key's two buckets; null: the slow lookup
  const Line* second;  // null: the same bucket as `first`
  // Set by Follow when the key is in `first` with a holder group.
  const std::vector<GroupEntry>* group;
};

inline ChunkIndex::Probe ChunkIndex::Place(std::uint64_t key) const {
  const std::uint64_t m = Mix(key), st = Stored(m);
  const Shard& sh = ShardOf(m);
  const std::size_t b1 = sh.cur.First(st), b2 = sh.cur.Second(st);
  // A growing shard is probed in both tables, a marked bucket's key in the
  // overflow too: both take the slow lookup.
  if (sh.old.slots || sh.Marked(b1)) return Probe{st, &sh, nullptr, nullptr, nullptr};
  return Probe{st, &sh, sh.cur.Bucket(b1), b2 == b1 ? nullptr : sh.cur.Bucket(b2), nullptr};
}

inline ChunkIndex::Probe ChunkIndex::Locate(std::uint64_t key) const {
  const Probe p = Place(key);
  if (p.first) {
    __builtin_prefetch(p.first);
  } else {
    Prefetch(std::span(&key, 1));
  }
  return p;
}

inline void ChunkIndex::Follow(Probe& probe, bool look_for_group) const {
  if (!probe.first) return;
  // A key found in its first bucket has no other slot; if it has several
  // holders, their group's header is a line of its own, and its entries
  // (Gather, later) another: without these two prefetches a shared key's
  // lookup waits for both, one after the other.
  const bool may_have_spilled = probe.second && Spilled(probe.first) != 0;
  if (!may_have_spilled && !look_for_group) return;
  const unsigned eq = BucketMatches(probe.first, probe.stored);
  if (eq == 0) {
    if (may_have_spilled) __builtin_prefetch(probe.second);
    return;
  }
  if (!look_for_group) return;
  const std::uint32_t ref = probe.first->slots[__builtin_ctz(eq) / 2].ref;
  if (ref & kGroupBit) {
    probe.group = &probe.shard->groups[ref & ~kGroupBit];
    __builtin_prefetch(probe.group);
  }
}

inline void ChunkIndex::Gather(const Probe& probe) const {
  if (probe.group) __builtin_prefetch(probe.group->data());
}

template <typename Fn>
void ChunkIndex::ForEachHolder(std::uint64_t key, Fn&& fn) const {
  ForEachHolder(Place(key), std::forward<Fn>(fn));
}

inline unsigned ChunkIndex::BucketMatches(const Line* line, std::uint64_t mixed) {
#if defined(__SSE2__)
  // Two slots' keys to a register, compared as 32-bit halves (SSE2 has no
  // 64-bit compare), the fifth alone: fewer instructions than a compare a
  // slot, and a prefetched lookup is bound by its instructions and loads per
  // hash as much as by its misses (docs/PERFORMANCE.md).
  const __m128i key = _mm_set1_epi64x(static_cast<long long>(mixed));
  const auto* b = reinterpret_cast<const unsigned char*>(line);
  auto key_at = [b](std::size_t j) {  // slot j's key: 12-byte slots, so 4-byte aligned only
    return _mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + j * sizeof(Slot)));
  };
  const __m128i k01 = _mm_unpacklo_epi64(key_at(0), key_at(1));
  const __m128i k23 = _mm_unpacklo_epi64(key_at(2), key_at(3));
  // Bits 2j, 2j+1: slot j's low and high halves equal.
  const unsigned halves = static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k01, key)))) |
                          static_cast<unsigned>(_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(k23, key)))) << 4 |
                          (unsigned{line->slots[4].mixed == mixed} * 3u) << 8;
  return halves & (halves >> 1) & 0x155u;
#else
  return BucketMatchesScalar(line, mixed);
#endif
}

template <typename Fn>
void ChunkIndex::ForEachHolder(const Probe& probe, Fn&& fn) const {
  ForEachHolderAt(probe, [&fn](HolderId h, std::uint32_t) { fn(h); });
}

template <typename Fn>
void ChunkIndex::ForEachHolderAt(const Probe& probe, Fn&& fn) const {
  if (!probe.first) return ForEachHolderSlow(*probe.shard, probe.stored, fn);
  // The common case: a bucket compared with the key all at once, no branch
  // per slot (a scan loop of unpredictable length costs a branch miss or two
  // per key, which was most of a prefetched lookup's time: docs/PERFORMANCE.md);
  // a key has one slot, so found there it is done, and the second bucket is
  // read only if some key that has the first as its first lives there.
  if (const unsigned eq = BucketMatches(probe.first, probe.stored); eq != 0)
    return HoldersOf(*probe.shard, probe.first->slots[__builtin_ctz(eq) / 2], fn);
  if (probe.second && Spilled(probe.first) != 0)
    if (const unsigned eq = BucketMatches(probe.second, probe.stored); eq != 0)
      HoldersOf(*probe.shard, probe.second->slots[__builtin_ctz(eq) / 2], fn);
}

template <typename Fn>
void ChunkIndex::ForEachHolderSlow(const Shard& sh, std::uint64_t stored, Fn&& fn) const {
  Where where;
  if (const Slot* slot = FindKey(sh, stored, &where)) HoldersOf(sh, *slot, fn);
}

}  // namespace kvring::index
