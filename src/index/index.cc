#include "kvring/index/index.h"

#include <sys/mman.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <new>

namespace kvring::index {

// A holder's keys in fixed chunks, in the order they came: growth never
// copies, and at most one partly filled chunk at each end, and one spare, is
// wasted per holder.
//
// Removing a key moves the list's *first* key into its place (unless it is
// that key, or the last one: then nothing moves). Keys leave a cache mostly
// oldest first (LRU), so most removals take the first key and move nothing,
// and the keys a worker admitted together (a request's prefix) stay side by
// side, for lookups to walk (KeysFrom). Moving the last key instead, as a
// vector's swap-remove does, would move the newest keys, one per eviction:
// under steady LRU churn every prefix, once admitted, would be scattered.
//
// Positions count modulo 2^kPosBits (the slots keep kPosBits of them), so a
// list whose keys come at one end and go at the other never runs out: live
// positions are [head, head + size), fewer than 2^kPosBits.
//
// Each chunk has an id (ListChunks) that names the holder and the position of
// its first key, so a slot names a key's place in 32 bits (Slot::ref): the
// id is taken when a chunk joins the list, its base updated when the spare
// joins again elsewhere, and given back when the chunk's memory is freed.
struct ChunkIndex::HolderKeys {
  static constexpr std::size_t kChunk = std::size_t{1} << kChunkBits;
  static_assert((std::size_t{kPosMask} + 1) % kChunk == 0, "a chunk never straddles the positions' wrap");
  static_assert(kMaxKeysPerHolder + 2 * kChunk <= std::size_t{kPosMask} + 1,
                "the chunks of a full list, partial at both ends, span fewer than 2^kPosBits positions");
  // chunks[first] starts at position `base`; those before it are let go
  // (null), and erased once they are half of the vector, so that the
  // vector's capacity serves for good and a steady cache allocates nothing.
  std::vector<std::unique_ptr<std::uint64_t[]>> chunks;
  std::vector<std::uint32_t> ids;  // chunks[i]'s id (0 for a chunk let go)
  std::size_t first = 0;
  std::unique_ptr<std::uint64_t[]> spare;  // the last chunk let go, for the next one needed
  std::uint32_t spare_id = 0;
  std::uint32_t base = 0;  // a multiple of kChunk
  std::uint32_t head = 0;  // the first key's position
  std::size_t size = 0;
  HolderId holder;
  ListChunks* registry;

  HolderKeys(std::uint32_t start, HolderId h, ListChunks* r)
      : base(Wrap(start / kChunk * kChunk)), head(Wrap(start)), holder(h), registry(r) {}
  ~HolderKeys() {
    for (std::size_t i = first; i < ids.size(); ++i) registry->Release(ids[i]);
    registry->Release(spare_id);
  }
  HolderKeys(const HolderKeys&) = delete;
  HolderKeys& operator=(const HolderKeys&) = delete;
  static std::uint32_t Wrap(std::size_t pos) { return static_cast<std::uint32_t>(pos) & kPosMask; }
  std::size_t Offset(std::uint32_t pos) const { return Wrap(pos - base); }  // from chunks[first][0]
  std::size_t Chunks() const { return chunks.size() - first; }
  bool Live(std::uint32_t pos) const { return Wrap(pos - head) < size; }
  std::uint64_t* Address(std::uint32_t pos) const {
    const std::size_t o = Offset(pos);
    return &chunks[first + o / kChunk][o % kChunk];
  }
  std::uint32_t Last() const { return Wrap(head + size - 1); }
  // The ref of live position `pos` (Slot::ref).
  std::uint32_t RefAt(std::uint32_t pos) const {
    const std::size_t o = Offset(pos);
    return ids[first + o / kChunk] << kChunkBits | static_cast<std::uint32_t>(o % kChunk);
  }
  // Whether the next Push takes a chunk id no spare has (ListChunks::Exhausted).
  bool NeedsNewChunkId() const { return Offset(Wrap(head + size)) / kChunk >= Chunks() && spare_id == 0; }
  std::uint32_t Push(std::uint64_t key) {
    const std::uint32_t pos = Wrap(head + size);
    if (Offset(pos) / kChunk >= Chunks()) {
      const std::uint32_t id = spare_id ? spare_id : registry->Acquire();
      chunks.push_back(spare ? std::move(spare) : std::make_unique_for_overwrite<std::uint64_t[]>(kChunk));
      ids.push_back(id);
      spare_id = 0;
      registry->by_id[id] = ListChunk{holder, Wrap(pos / kChunk * kChunk)};
    }
    *Address(pos) = key;
    ++size;
    return pos;
  }
  // Keeps chunk (memory, id) as the spare; the spare it replaces is freed.
  void LetGo(std::unique_ptr<std::uint64_t[]> chunk, std::uint32_t id) {
    registry->Release(spare_id);
    spare = std::move(chunk);
    spare_id = id;
  }
  // Removes the key at live position `pos`; returns the key that moved into
  // its place (the first), or nothing if none did.
  std::optional<std::uint64_t> Remove(std::uint32_t pos) {
    if (pos == Last()) {
      --size;
      // The last chunk goes once the one before it is empty too: a holder
      // whose count hovers at a chunk boundary (admit, evict, admit...) would
      // otherwise let go of and take a chunk on every pair.
      const std::size_t used = Offset(head) + size;  // chunks[first] onwards
      if (used % kChunk == 0 && Chunks() > used / kChunk + 1) {
        LetGo(std::move(chunks.back()), ids.back());
        chunks.pop_back();
        ids.pop_back();
      }
      return std::nullopt;
    }
    std::optional<std::uint64_t> moved;
    if (pos != head) {
      moved = *Address(head);
      *Address(pos) = *moved;
    }
    head = Wrap(head + 1);
    --size;
    if (Offset(head) == kChunk) {  // chunks[first] is empty now
      LetGo(std::move(chunks[first]), ids[first]);
      ids[first++] = 0;
      base = Wrap(base + kChunk);
      if (2 * first >= chunks.size()) {
        chunks.erase(chunks.begin(), chunks.begin() + static_cast<std::ptrdiff_t>(first));
        ids.erase(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(first));
        first = 0;
      }
    }
    return moved;
  }
};

namespace {
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kMapAtLeast = std::size_t{64} << 10;  // smaller tables: zeroed heap (a few µs)
}  // namespace

void ChunkIndex::TableMemory::operator()(Line* p) const {
  switch (kind) {
    case kHeap: std::free(p); break;
    case kMapped: munmap(p, bytes); break;
    case kArenaPiece: {  // outgrown: the pages wholly its own go back (its neighbours' edges stay)
      const auto begin = (reinterpret_cast<std::uintptr_t>(p) + 4095) & ~std::uintptr_t{4095};
      const auto end = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~std::uintptr_t{4095};
      if (end > begin) (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
      break;
    }
  }
}

// The helper thread behind Options::prepare_tables. It also does the owner's
// other mmap-lock work on big tables (madvise, munmap): those take the
// process's mmap lock for writing, which would wait behind this thread's page
// population; done here, in order, the owner's thread never waits for it.
// Tasks and prepared tables pass under `mu_`, so a prepared table's pages are
// populated before the owner's thread sees its pointer.
class ChunkIndex::TablePreparer {
 public:
  TablePreparer() : thread_([this] { Loop(); }) {}
  ~TablePreparer() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  // Prepares a table of `buckets` buckets for `shard` (see Take).
  void Request(std::size_t shard, std::size_t buckets) { Push(Task{Task::kPrepare, shard, buckets, {}}); }
  // Advises huge pages for a table the owner filled itself.
  void Advise(Table&& view) { Push(Task{Task::kAdvise, 0, 0, std::move(view)}); }
  // Unmaps a drained table.
  void Retire(Table t) { Push(Task{Task::kRetire, 0, 0, std::move(t)}); }
  // The table prepared for `shard`, if it is ready and of `buckets` buckets.
  std::optional<Table> Take(std::size_t shard, std::size_t buckets) {
    std::lock_guard lock(mu_);
    auto it = ready_.find(shard);
    if (it == ready_.end() || it->second.buckets != buckets) return std::nullopt;
    Table t = std::move(it->second);
    ready_.erase(it);
    return t;
  }

 private:
  struct Task {
    enum Kind { kPrepare, kAdvise, kRetire } kind;
    std::size_t shard, buckets;
    Table table;  // kAdvise: a non-owning view (released, never freed here); kRetire: owned
  };
  void Push(Task t) {
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(t));
    }
    cv_.notify_one();
  }
  void Loop() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
      if (stop_) break;
      Task task = std::move(tasks_.front());
      tasks_.pop_front();
      lock.unlock();
      if (task.kind == Task::kAdvise) {
        AdviseHugePages(task.table);
        (void)task.table.slots.release();  // the owner's table: not ours to free
      } else if (task.kind == Task::kRetire) {
        task.table = Table{};
      } else {
        Table t = Prepare(task.buckets);
        lock.lock();
        ready_[task.shard] = std::move(t);
        continue;
      }
      lock.lock();
    }
    for (Task& t : tasks_)
      if (t.kind == Task::kAdvise) (void)t.table.slots.release();
  }
  static Table Prepare(std::size_t buckets) {
    Table t = NewTable(buckets);
    PopulateHugePages(t.slots.get(), t.buckets * sizeof(Line));
    return t;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> tasks_;
  std::unordered_map<std::size_t, Table> ready_;
  bool stop_ = false;
  std::thread thread_;  // last: started once the members above exist
};

ChunkIndex::Table ChunkIndex::NewTable(std::size_t buckets) {
  const std::size_t bytes = buckets * sizeof(Line);
  Table t;
  t.buckets = buckets;
  if (bytes >= kMapAtLeast) {
    // Mapped: the kernel's zero pages, faulted in as slots arrive (zeroing a
    // heap table of up to 2 MiB at once took up to ~1 ms, all of it in the
    // one insert that started the growth). From 2 MiB on, on a 2 MiB boundary
    // so that huge pages can back it, but not advised for them yet: a
    // huge-page fault can stall for milliseconds (zeroing 2 MiB, and
    // compaction when memory is fragmented), and a growing table takes its
    // faults on the insert path. AdviseHugePages() runs once the table is
    // fully populated.
    void* p = bytes >= kHugePage ? MapAligned(bytes)
                                 : mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    t.slots = std::unique_ptr<Line[], TableMemory>(static_cast<Line*>(p), TableMemory{bytes, TableMemory::kMapped});
    return t;
  }
  // Cache-line aligned: a bucket is a line.
  auto* p = static_cast<Line*>(std::aligned_alloc(kLineBytes, bytes));
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, bytes);
  t.slots = std::unique_ptr<Line[], TableMemory>(p, TableMemory{bytes, TableMemory::kHeap});
  return t;
}
static_assert(sizeof(ChunkIndex::Slot) == 12 && alignof(ChunkIndex::Slot) == 4);
static_assert(sizeof(ChunkIndex::Line) == ChunkIndex::kLineBytes, "a bucket is a cache line");
static_assert(ChunkIndex::kSlotsPerLine == 5, "BucketMatches compares five slots");
static_assert(ChunkIndex::kMaxListChunks << ChunkIndex::kChunkBits == ChunkIndex::kGroupBit,
              "a single holder's ref never has the group bit");

// Maps `bytes` starting on a 2 MiB boundary (one huge page more is mapped
// and trimmed): memory that starts mid-page could never be a huge page.
void* ChunkIndex::MapAligned(std::size_t bytes) {
  void* raw = mmap(nullptr, bytes + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  auto start = reinterpret_cast<std::uintptr_t>(raw);
  auto aligned = (start + kHugePage - 1) & ~(std::uintptr_t{kHugePage} - 1);
  if (aligned > start) munmap(raw, aligned - start);
  if (std::size_t tail = start + kHugePage - aligned; tail > 0) munmap(reinterpret_cast<void*>(aligned + bytes), tail);
  return reinterpret_cast<void*>(aligned);
}

ChunkIndex::ChunkIndex(Options options) : options_(options) {
  if (options_.shard_bits < 1) options_.shard_bits = 1;
  if (options_.shard_bits > 16) options_.shard_bits = 16;
  // A table is a power of two of lines (buckets of kSlotsPerLine slots):
  // 256 first lines give the same sizes along growth as the index's first,
  // 16-byte-slot tables had (at 10 M keys, 63 % full).
  std::size_t buckets = 4;
  while (buckets < options_.initial_shard_lines) buckets <<= 1;
  if (options_.migrate_per_op < 8) options_.migrate_per_op = 8;
  shards_.resize(std::size_t{1} << options_.shard_bits);
  top_bits_ = ~std::uint64_t{0} << (64 - options_.shard_bits);
  if (options_.reserve_keys == 0) {
    for (auto& sh : shards_) sh.cur = NewTable(buckets);
  } else {
    // 3/4 load when the reserve is full, 2 % over for shards above their share.
    const std::size_t per_shard = (options_.reserve_keys + shards_.size() - 1) / shards_.size();
    buckets = std::max(buckets, (per_shard * 4 / 3 * 102 / 100 + kSlotsPerLine) / kSlotsPerLine);
    const std::size_t piece = buckets * sizeof(Line), bytes = piece * shards_.size();
    auto* arena = static_cast<Line*>(MapAligned(bytes));
    reserve_arena_ = std::unique_ptr<Line[], TableMemory>(arena, TableMemory{bytes, TableMemory::kMapped});
    PopulateHugePages(arena, bytes);
    for (std::size_t i = 0; i < shards_.size(); ++i) {
      shards_[i].cur.buckets = buckets;
      shards_[i].cur.slots =
          std::unique_ptr<Line[], TableMemory>(arena + i * buckets, TableMemory{piece, TableMemory::kArenaPiece});
    }
  }
  if (options_.prepare_tables) preparer_ = std::make_unique<TablePreparer>();
}

ChunkIndex::~ChunkIndex() = default;

ChunkIndex::HolderKeys& ChunkIndex::Keys(HolderId holder) {
  if (holder >= holders_.size()) holders_.resize(holder + 1);
  if (!holders_[holder]) holders_[holder] = std::make_unique<HolderKeys>(options_.list_position_start, holder, &list_chunks_);
  return *holders_[holder];
}

const ChunkIndex::HolderKeys* ChunkIndex::ListOf(HolderId holder) const {
  return holder < holders_.size() ? holders_[holder].get() : nullptr;
}

std::size_t ChunkIndex::KeysOf(HolderId holder) const {
  const HolderKeys* hk = ListOf(holder);
  return hk ? hk->size : 0;
}

void ChunkIndex::ForEachKeyOf(HolderId holder, const std::function<void(std::uint64_t)>& fn) const {
  const HolderKeys* hk = ListOf(holder);
  if (!hk) return;
  for (std::size_t i = 0; i < hk->size; ++i) fn(*hk->Address(HolderKeys::Wrap(hk->head + i)));
}

std::span<const std::uint64_t> ChunkIndex::KeysFrom(HolderId holder, std::size_t pos) const {
  const HolderKeys* list = ListOf(holder);
  if (!list) return {};
  const HolderKeys& hk = *list;
  const std::uint32_t p = HolderKeys::Wrap(pos);
  if (!hk.Live(p)) return {};
  const std::size_t in_chunk = hk.Offset(p) % HolderKeys::kChunk;
  return {hk.Address(p), std::min(hk.size - HolderKeys::Wrap(p - hk.head), HolderKeys::kChunk - in_chunk)};
}

std::span<const std::uint64_t> ChunkIndex::NextRun(HolderId holder, KeyWalk* walk) const {
  const HolderKeys* list = ListOf(holder);
  if (!list || list->size == 0) return {};
  if (!walk->started) {
    walk->started = true;
    walk->pos = list->head;
  }
  walk->pos = HolderKeys::Wrap(walk->pos);
  // Positions behind the head are gone: their keys were handed, or moved on
  // to a hole at or past the walk (a removal takes the first key).
  const std::uint32_t behind = HolderKeys::Wrap(list->head - walk->pos);
  if (behind != 0 && behind <= kPosMask / 2) walk->pos = list->head;
  return KeysFrom(holder, walk->pos);
}

void ChunkIndex::PrefetchKeyAt(HolderId holder, std::size_t pos) const {
  const HolderKeys* hk = ListOf(holder);
  if (const std::uint32_t p = HolderKeys::Wrap(pos); hk && hk->Live(p)) __builtin_prefetch(hk->Address(p));
}

const ChunkIndex::Slot* ChunkIndex::FindKey(const Shard& sh, std::uint64_t stored, Where* where) {
  const std::size_t b1 = sh.cur.First(stored), b2 = sh.cur.Second(stored);
  *where = Where::kFirst;
  if (Slot* s = InBucket(sh.cur.Bucket(b1), stored)) return s;
  *where = Where::kSecond;
  if (b2 != b1)
    if (Slot* s = InBucket(sh.cur.Bucket(b2), stored)) return s;
  *where = Where::kOld;
  if (sh.old.slots) {
    const std::size_t o1 = sh.old.First(stored), o2 = sh.old.Second(stored);
    if (o1 >= sh.migrate_at)
      if (Slot* s = InBucket(sh.old.Bucket(o1), stored)) return s;
    if (o2 != o1 && o2 >= sh.migrate_at)
      if (Slot* s = InBucket(sh.old.Bucket(o2), stored)) return s;
  }
  *where = Where::kOverflow;
  if (!sh.overflow.empty())
    if (auto it = sh.overflow.find(stored); it != sh.overflow.end()) return &it->second;
  *where = Where::kNone;
  return nullptr;
}

bool ChunkIndex::HeldBy(const Shard& sh, const Slot& slot, HolderId holder) const {
  bool held = false;
  HoldersOf(sh, slot, [&](HolderId h, std::uint32_t) { held |= h == holder; });
  return held;
}

namespace {

// Bit j set: slot j of the bucket is empty.
unsigned Empties(const ChunkIndex::Line* b) {
  return unsigned{b->slots[0].ref == 0} | unsigned{b->slots[1].ref == 0} << 1 |
         unsigned{b->slots[2].ref == 0} << 2 | unsigned{b->slots[3].ref == 0} << 3 |
         unsigned{b->slots[4].ref == 0} << 4;
}

// Steps of the random walk before a slot goes to the overflow: below 85 %
// load a walk almost always ends within a few steps, so this bounds the rare
// long one (each step a random line) rather than shaping the common case.
constexpr int kMaxKicks = 32;

}  // namespace

void ChunkIndex::AddSpill(Line* bucket, int delta) {
  const std::uint32_t c = bucket->spilled;
  // Saturated counts stay (a lookup then always reads the second bucket);
  // a count never goes below 0, which would take a slot counted nowhere.
  if (c == kSpillSaturated || (delta < 0 && c == 0)) return;
  bucket->spilled = static_cast<std::uint32_t>(static_cast<int>(c) + delta);
}

bool ChunkIndex::Put(Shard& sh, Slot s) {
  Table& t = sh.cur;
  const std::size_t b1 = t.First(s.mixed), b2 = t.Second(s.mixed);
  Line* l1 = t.Bucket(b1);
  // The first bucket when it has room (then lookups read only it), else the second.
  if (const unsigned e = Empties(l1); e != 0) {
    l1->slots[__builtin_ctz(e)] = s;
    return true;
  }
  Line* l2 = t.Bucket(b2);
  if (const unsigned e = Empties(l2); e != 0) {
    l2->slots[__builtin_ctz(e)] = s;
    if (b2 != b1) AddSpill(l1, +1);
    return true;
  }
  // Both full. First, a slot that can go to its other bucket at once makes
  // room (a look one step ahead, where a walk would take the first victim).
  for (Line* line : {l1, l2}) {
    const std::size_t b = line == l1 ? b1 : b2;
    if (int j = MoveOneOut(t, b); j >= 0) {
      line->slots[j] = s;
      if (b != b1) AddSpill(l1, +1);
      return true;
    }
    if (b2 == b1) break;
  }
  // Then a random walk. Each step puts the slot in hand in place of a random
  // slot of the bucket and takes that one to its other bucket; the spill
  // counts follow every slot that enters or leaves a second bucket.
  std::size_t at = kick_state_ & 1 ? b1 : b2;
  for (int step = 0; step < kMaxKicks; ++step) {
    kick_state_ ^= kick_state_ << 13;
    kick_state_ ^= kick_state_ >> 7;
    kick_state_ ^= kick_state_ << 17;
    Line* line = t.Bucket(at);
    Slot* victim_slot = &line->slots[((kick_state_ >> 32) * kSlotsPerLine) >> 32];
    const Slot victim = *victim_slot;
    *victim_slot = s;
    if (const std::size_t f = t.First(s.mixed); f != at) AddSpill(t.Bucket(f), +1);
    if (const std::size_t f = t.First(victim.mixed); f != at) AddSpill(t.Bucket(f), -1);
    s = victim;
    const std::size_t a1 = t.First(s.mixed), a2 = t.Second(s.mixed);
    at = a1 == at ? a2 : a1;
    line = t.Bucket(at);
    if (const unsigned e = Empties(line); e != 0) {
      line->slots[__builtin_ctz(e)] = s;
      if (at != a1) AddSpill(t.Bucket(a1), +1);
      return true;
    }
  }
  AddToOverflow(sh, s);
  return false;
}

int ChunkIndex::MoveOneOut(Table& t, std::size_t b) {
  Line* line = t.Bucket(b);
  for (std::size_t j = 0; j < kSlotsPerLine; ++j) {
    const std::uint64_t m = line->slots[j].mixed;
    const std::size_t f = t.First(m), other = f == b ? t.Second(m) : f;
    if (other == b) continue;
    Line* to = t.Bucket(other);
    const unsigned e = Empties(to);
    if (e == 0) continue;
    to->slots[__builtin_ctz(e)] = line->slots[j];
    if (other != f) AddSpill(t.Bucket(f), +1);  // into its second
    else AddSpill(t.Bucket(f), -1);             // back to its first
    Clear(&line->slots[j]);
    return static_cast<int>(j);
  }
  return -1;
}

void ChunkIndex::AddToOverflow(Shard& sh, const Slot& s) {
  sh.overflow.emplace(s.mixed, s);  // one slot a key: never there already
  MarkOverflow(sh, s.mixed);
}

void ChunkIndex::MarkOverflow(Shard& sh, std::uint64_t stored) {
  const std::size_t words = (sh.cur.buckets + 63) / 64;
  if (sh.marked.size() != words) sh.marked.assign(words, 0);
  const std::size_t b = sh.cur.First(stored);
  sh.marked[b / 64] |= std::uint64_t{1} << (b % 64);
}

// Half as large again: a table grown at 85 % starts at 57 %, so a grown
// index is 57-85 % full and, with 12-byte slots, takes 22-30 bytes a key
// with its key lists, at every size. (Doubling, 43-85 % full, took up to 36
// at 10 M keys; growing by 3/2 with 16-byte slots met the bound but was 78 %
// full there, and ingest lost a fifth to longer walks: docs/PERFORMANCE.md.)
std::size_t ChunkIndex::GrownBuckets(std::size_t buckets) { return buckets + (buckets + 1) / 2; }

void ChunkIndex::StartGrowth(Shard& sh) {
  std::size_t cap = GrownBuckets(sh.cur.buckets);
  std::optional<Table> prepared;
  if (preparer_ && sh.requested == cap) prepared = preparer_->Take(static_cast<std::size_t>(&sh - shards_.data()), cap);
  sh.requested = 0;
  sh.old = std::move(sh.cur);
  sh.prepared = prepared.has_value();
  sh.cur = prepared ? std::move(*prepared) : NewTable(cap);
  sh.migrate_at = 0;
  sh.used = 0;
  // Slots are counted in `used` as they arrive in the new table. The
  // overflow stays where it is; its marks are redrawn for the new buckets
  // (O(overflow): a few keys at most).
  sh.marked.clear();
  for (const auto& [stored, slot] : sh.overflow) MarkOverflow(sh, stored);
}

void ChunkIndex::MigrateStep(Shard& sh) {
  if (!sh.old.slots) return;
  const std::size_t end = sh.old.buckets;
  std::size_t n = (options_.migrate_per_op + kSlotsPerLine - 1) / kSlotsPerLine;
  while (n-- > 0 && sh.migrate_at < end) {
    const Line* line = sh.old.Bucket(sh.migrate_at);
    ++sh.migrate_at;  // from here on this bucket counts as moved
    for (const Slot& slot : line->slots)
      if (slot.ref != 0) sh.used += Put(sh, slot);
  }
  if (sh.migrate_at >= end) {
    const bool big = sh.cur.buckets * sizeof(Line) >= kHugePage;
    if (preparer_ && big) {
      preparer_->Retire(std::move(sh.old));
      if (!sh.prepared) {  // mapped here when the helper was late: advise it there
        Table view;
        view.slots = std::unique_ptr<Line[], TableMemory>(sh.cur.slots.get(), TableMemory{0, TableMemory::kHeap});
        view.buckets = sh.cur.buckets;
        preparer_->Advise(std::move(view));
      }
    } else {
      AdviseHugePages(sh.cur);
    }
    sh.old = Table{};
  }
}

void ChunkIndex::PopulateHugePages(void* p, std::size_t bytes) {
  constexpr int kMadvPopulateWrite = 23;  // MADV_POPULATE_WRITE (Linux 5.14)
  if (!p || bytes < kHugePage) return;
  (void)madvise(p, bytes, MADV_HUGEPAGE);  // before populating: huge pages at once (best effort)
  // One huge page at a time. The memory is all zeros either way, so nothing is written.
  auto* base = static_cast<unsigned char*>(p);
  for (std::size_t off = 0; off < bytes; off += kHugePage) {
    const std::size_t len = std::min(kHugePage, bytes - off);
    if (madvise(base + off, len, kMadvPopulateWrite) == 0) continue;
    if (errno != EINVAL) throw std::bad_alloc();  // out of memory: refused, not OOM-killed later
    for (std::size_t b = off; b < off + len; b += 4096)
      reinterpret_cast<volatile unsigned char*>(base)[b] = 0;  // kernels before 5.14
  }
}

// The kernel's khugepaged collapses an advised, already-populated table into
// huge pages in the background (lookups then miss the TLB far less), without
// ever stalling the controller's thread.
void ChunkIndex::AdviseHugePages(const Table& t) {
  const std::size_t bytes = t.buckets * sizeof(Line);
  if (t.slots && bytes >= kHugePage) (void)madvise(t.slots.get(), bytes, MADV_HUGEPAGE);  // best effort
}

void ChunkIndex::SetPos(std::uint64_t key, HolderId holder, std::uint32_t pos) {
  const std::uint64_t m = Mix(key);
  Shard& sh = ShardOf(m);
  Where where;
  Slot* s = FindKey(sh, Stored(m), &where);
  if (!s) return;
  if ((s->ref & kGroupBit) == 0) {
    if (ChunkOf(s->ref).holder == holder) s->ref = holders_[holder]->RefAt(pos);
    return;
  }
  for (GroupEntry& e : sh.groups[s->ref & ~kGroupBit])
    if (e.holder == holder) e.pos = pos;
}

AddResult ChunkIndex::Add(std::uint64_t key, HolderId holder) {
  if (holder > kMaxHolder) return AddResult::kOverQuota;
  const std::uint64_t m = Mix(key), st = Stored(m);
  Shard& sh = ShardOf(m);
  MigrateStep(sh);
  Where where;
  Slot* slot = FindKey(sh, st, &where);
  if (slot && HeldBy(sh, *slot, holder)) return AddResult::kAlreadyPresent;
  HolderKeys& hk = Keys(holder);
  if ((options_.per_holder_quota && hk.size >= options_.per_holder_quota) || hk.size >= kMaxKeysPerHolder ||
      (hk.NeedsNewChunkId() && list_chunks_.Exhausted())) {  // the last: 2^31 keys in all
    ++over_quota_;
    return AddResult::kOverQuota;
  }
  ++pairs_;
  if (slot) {  // another holder of a key already here: its slot names a group
    if ((slot->ref & kGroupBit) == 0) {
      std::uint32_t id;
      if (!sh.free_groups.empty()) {
        id = sh.free_groups.back();
        sh.free_groups.pop_back();
      } else {
        id = static_cast<std::uint32_t>(sh.groups.size());
        sh.groups.emplace_back();
      }
      sh.groups[id].assign({GroupEntry{ChunkOf(slot->ref).holder, PosOf(slot->ref)}});
      slot->ref = kGroupBit | id;
      ++grouped_keys_;
    }
    sh.groups[slot->ref & ~kGroupBit].push_back(GroupEntry{holder, hk.Push(key)});
    return AddResult::kAdded;
  }
  // At 3/4, have the next big table prepared off this thread.
  const std::size_t next = GrownBuckets(sh.cur.buckets);
  if (preparer_ && sh.requested == 0 && next * sizeof(Line) >= kHugePage && (sh.used + 1) * 4 > sh.cur.capacity() * 3) {
    sh.requested = next;
    preparer_->Request(static_cast<std::size_t>(&sh - shards_.data()), next);
  }
  // Grow at 85 %: the new table is half as large again, so it absorbs the
  // rest of the old one and the inserts made while it drains (at most one an
  // op, while each op moves migrate_per_op slots); below 85 %, walks are short.
  if ((sh.used + 1) * 20 > sh.cur.capacity() * 17) {
    while (sh.old.slots) MigrateStep(sh);  // only if growth outran migration
    StartGrowth(sh);
    MigrateStep(sh);
  }
  sh.used += Put(sh, Slot{st, hk.RefAt(hk.Push(key))});
  return AddResult::kAdded;
}

bool ChunkIndex::Remove(std::uint64_t key, HolderId holder) {
  const std::uint64_t m = Mix(key), st = Stored(m);
  Shard& sh = ShardOf(m);
  MigrateStep(sh);
  Where where;
  Slot* s = FindKey(sh, st, &where);
  if (!s) return false;
  std::uint32_t pos;
  if (s->ref & kGroupBit) {
    const std::uint32_t id = s->ref & ~kGroupBit;
    std::vector<GroupEntry>& g = sh.groups[id];
    auto it = g.begin();
    while (it != g.end() && it->holder != holder) ++it;
    if (it == g.end()) return false;
    pos = it->pos;
    *it = g.back();
    g.pop_back();
    if (g.size() == 1) {  // one holder left: the slot holds it again
      s->ref = holders_[g[0].holder]->RefAt(g[0].pos);
      g.clear();
      sh.free_groups.push_back(id);
      --grouped_keys_;
    }
  } else {
    if (ChunkOf(s->ref).holder != holder) return false;
    pos = PosOf(s->ref);
    switch (where) {
      case Where::kSecond:
        AddSpill(sh.cur.Bucket(sh.cur.First(st)), -1);  // it had spilled to its second bucket
        [[fallthrough]];
      case Where::kFirst:
        Clear(s);
        --sh.used;
        break;
      case Where::kOld:
        Clear(s);  // a slot not yet moved: it simply is not moved
        break;
      case Where::kOverflow:
        sh.overflow.erase(st);
        if (sh.overflow.empty()) sh.marked.clear();
        break;
      case Where::kNone:
        return false;
    }
  }
  if (const std::optional<std::uint64_t> moved = holders_[holder]->Remove(pos)) SetPos(*moved, holder, pos);
  --pairs_;
  return true;
}

bool ChunkIndex::Contains(std::uint64_t key, HolderId holder) const {
  bool found = false;
  ForEachHolder(key, [&](HolderId h) { found |= h == holder; });
  return found;
}

std::size_t ChunkIndex::HolderCount(std::uint64_t key) const {
  std::size_t n = 0;
  ForEachHolder(key, [&](HolderId) { ++n; });
  return n;
}

std::size_t ChunkIndex::DropHolderSlice(HolderId holder, std::size_t budget) {
  if (holder >= holders_.size() || !holders_[holder]) return 0;
  HolderKeys& hk = *holders_[holder];
  while (budget-- > 0 && hk.size > 0) Remove(*hk.Address(hk.head), holder);  // the first: nothing moves
  std::size_t left = hk.size;
  if (left == 0) holders_[holder].reset();
  return left;
}

// Its own loop, not one over Locate(): written that way (the probes thrown
// away), g++ 12 -O2 compiled this function to a bare return, prefetches and
// all, and 1 M-key churn ran twice as slow (2026-11-26).
void ChunkIndex::Prefetch(std::span<const std::uint64_t> keys) const {
  for (std::uint64_t key : keys) {
    const std::uint64_t m = Mix(key), st = Stored(m);
    const Shard& sh = ShardOf(m);
    __builtin_prefetch(sh.cur.Bucket(sh.cur.First(st)));
    __builtin_prefetch(sh.cur.Bucket(sh.cur.Second(st)));
    if (sh.old.slots) {  // a growing shard is probed in both tables
      __builtin_prefetch(sh.old.Bucket(sh.old.First(st)));
      __builtin_prefetch(sh.old.Bucket(sh.old.Second(st)));
    }
  }
}

std::size_t ChunkIndex::MemoryBytes() const {
  // An overflow slot: its node (key, slot, next pointer, cached hash) and a bucket pointer.
  constexpr std::size_t kOverflowSlotBytes = 2 * sizeof(std::uint64_t) + sizeof(Slot) + 2 * sizeof(void*);
  std::size_t bytes = shards_.capacity() * sizeof(Shard) + holders_.capacity() * sizeof(void*);
  for (const auto& sh : shards_) {
    bytes += sh.cur.buckets * sizeof(Line) + sh.marked.capacity() * sizeof(std::uint64_t) +
             sh.overflow.size() * kOverflowSlotBytes + sh.groups.capacity() * sizeof(sh.groups[0]) +
             sh.free_groups.capacity() * sizeof(std::uint32_t);
    for (const auto& g : sh.groups) bytes += g.capacity() * sizeof(GroupEntry);
    if (sh.old.slots) bytes += sh.old.buckets * sizeof(Line);
  }
  for (const auto& h : holders_)
    if (h) bytes += sizeof(HolderKeys) + h->chunks.capacity() * sizeof(void*) +
                    (h->Chunks() + (h->spare ? 1 : 0)) * HolderKeys::kChunk * sizeof(std::uint64_t);
  return bytes;
}

std::size_t ChunkIndex::GrowingShards() const {
  std::size_t n = 0;
  for (const auto& sh : shards_) n += sh.old.slots != nullptr;
  return n;
}

std::size_t ChunkIndex::OverflowKeys() const {
  std::size_t n = 0;
  for (const auto& sh : shards_) n += sh.overflow.size();
  return n;
}

}  // namespace kvring::index
