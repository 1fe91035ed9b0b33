#include "kvring/index/index.h"

#include "alloc_counter.h"

#include <random>
#include <set>
#include <unordered_map>

#include <gtest/gtest.h>

namespace kvring::index {
namespace {

TEST(ChunkIndex, AddFindRemoveOneHolder) {
  ChunkIndex idx;
  EXPECT_EQ(idx.Add(42, 1), AddResult::kAdded);
  EXPECT_EQ(idx.Add(42, 1), AddResult::kAlreadyPresent);  // idempotent admit
  EXPECT_TRUE(idx.Contains(42, 1));
  EXPECT_FALSE(idx.Contains(42, 2));
  EXPECT_FALSE(idx.Contains(43, 1));
  EXPECT_EQ(idx.pairs(), 1u);
  EXPECT_TRUE(idx.Remove(42, 1));
  EXPECT_FALSE(idx.Remove(42, 1));  // evicting a missing key is not an error
  EXPECT_FALSE(idx.Contains(42, 1));
  EXPECT_EQ(idx.pairs(), 0u);
}

TEST(ChunkIndex, KeysWithSeveralHoldersListThemAll) {
  ChunkIndex idx;
  for (HolderId h : {3u, 1u, 7u}) ASSERT_EQ(idx.Add(~0ULL, h), AddResult::kAdded);
  std::set<HolderId> got;
  idx.ForEachHolder(~0ULL, [&](HolderId h) { got.insert(h); });
  EXPECT_EQ(got, (std::set<HolderId>{1, 3, 7}));
  EXPECT_TRUE(idx.Remove(~0ULL, 3));
  EXPECT_EQ(idx.HolderCount(~0ULL), 2u);
  EXPECT_EQ(idx.KeysOf(3), 0u);
  EXPECT_EQ(idx.KeysOf(7), 1u);
}

// A holder whose key count sits on a boundary of its list's chunks, admitting
// and evicting in turn (a steady cache), must not free and remake a chunk on
// every pair of operations.
TEST(ChunkIndex, ChurnAtAHolderListChunkBoundaryAllocatesNothing) {
  ChunkIndex idx;
  std::uint64_t next = 1;
  for (; next <= 1024; ++next) ASSERT_EQ(idx.Add(ChunkIndex::Mix(next), 0), AddResult::kAdded);
  // One round first: the tables have room for the churn below after it.
  ASSERT_EQ(idx.Add(ChunkIndex::Mix(next), 0), AddResult::kAdded);
  ASSERT_TRUE(idx.Remove(ChunkIndex::Mix(next), 0));
  ++next;
  ASSERT_EQ(idx.KeysOf(0), 1024u);
  kvring::testing::AllocationCounter allocations;
  for (int i = 0; i < 1000; ++i, ++next) {
    ASSERT_EQ(idx.Add(ChunkIndex::Mix(next), 0), AddResult::kAdded);  // 1,025 keys: a second chunk
    ASSERT_TRUE(idx.Remove(ChunkIndex::Mix(next), 0));                // back to 1,024
  }
  EXPECT_EQ(allocations.count(), 0);
  EXPECT_EQ(idx.KeysOf(0), 1024u);
}

// The SIMD compare of a bucket reports what the slot-by-slot one does,
// including keys that share one 32-bit half with the probed key (SSE2
// compares halves) and empty slots.
TEST(ChunkIndex, BucketCompareAgreesWithTheSlotBySlotCompare) {
  std::mt19937_64 rng(5);
  alignas(ChunkIndex::kLineBytes) ChunkIndex::Line line;
  ChunkIndex::Slot* bucket = line.slots;
  for (int round = 0; round < 20000; ++round) {
    const std::uint64_t key = rng() | 1;
    line.spilled = static_cast<std::uint32_t>(rng());
    for (auto& s : line.slots) {
      switch (rng() % 5) {
        case 0: s.mixed = key; break;
        case 1: s.mixed = key ^ (std::uint64_t{1} << (32 + rng() % 32)); break;  // low half equal
        case 2: s.mixed = key ^ (std::uint64_t{1} << (rng() % 32)); break;       // high half equal
        case 3: s.mixed = 0; break;
        default: s.mixed = rng(); break;
      }
      s.ref = static_cast<std::uint32_t>(rng());
    }
    ASSERT_EQ(ChunkIndex::BucketMatches(&line, key), ChunkIndex::BucketMatchesScalar(&line, key)) << round;
  }
  // Every bit pattern of the five slots.
  for (unsigned bits = 0; bits < 32; ++bits) {
    unsigned want = 0;
    for (std::size_t j = 0; j < ChunkIndex::kSlotsPerLine; ++j) {
      bucket[j].mixed = bits >> j & 1 ? 42 : 43;
      want |= (bits >> j & 1) << (2 * j);
    }
    ASSERT_EQ(ChunkIndex::BucketMatches(&line, 42), want) << bits;
  }
}

// A key with many holders (a prefix every worker of a deployment caches)
// keeps them all in one slot's holder group, whose holders come and go
// (back to a plain slot at one holder), and other keys are served as before.
TEST(ChunkIndex, AKeyWithManyHoldersKeepsThemAllInOneGroup) {
  for (bool reserve : {false, true}) {
    Options o;
    o.shard_bits = 1;
    if (reserve) o.reserve_keys = 20000;
    ChunkIndex idx(o);
    for (std::uint64_t k = 1; k <= 10000; ++k) ASSERT_EQ(idx.Add(k, 0), AddResult::kAdded);
    constexpr HolderId kHolders = 40;
    for (HolderId h = 1; h <= kHolders; ++h) ASSERT_EQ(idx.Add(777777, h), AddResult::kAdded) << h;
    EXPECT_EQ(idx.Add(777777, 7), AddResult::kAlreadyPresent);
    EXPECT_EQ(idx.GroupedKeys(), 1u);
    std::set<HolderId> got, located;
    idx.ForEachHolder(777777, [&](HolderId x) { EXPECT_TRUE(got.insert(x).second) << x; });
    auto probe = idx.Locate(777777);
    idx.Follow(probe);
    if (probe.first) {  // a group found on the fast path is prefetched
      EXPECT_NE(probe.group, nullptr);
    }
    idx.Gather(probe);
    idx.ForEachHolder(probe, [&](HolderId x) { located.insert(x); });
    EXPECT_EQ(got.size(), kHolders);
    EXPECT_EQ(located, got);
    for (std::uint64_t k = 1; k <= 10000; ++k) ASSERT_EQ(idx.HolderCount(k), 1u) << k;
    for (HolderId h = 1; h <= kHolders; h += 2) ASSERT_TRUE(idx.Remove(777777, h)) << h;
    EXPECT_FALSE(idx.Remove(777777, 1));
    EXPECT_EQ(idx.HolderCount(777777), kHolders / 2);
    EXPECT_FALSE(idx.Contains(777777, 1));
    EXPECT_TRUE(idx.Contains(777777, 2));
    for (HolderId h = 2; h < kHolders; h += 2) ASSERT_EQ(idx.DropHolderSlice(h, 10), 0u) << h;
    EXPECT_EQ(idx.GroupedKeys(), 0u);  // one holder left: a plain slot again
    EXPECT_EQ(idx.HolderCount(777777), 1u);
    EXPECT_TRUE(idx.Contains(777777, kHolders));
    EXPECT_TRUE(idx.Remove(777777, kHolders));
    EXPECT_EQ(idx.HolderCount(777777), 0u);
    EXPECT_EQ(idx.OverflowKeys(), 0u);
    EXPECT_EQ(idx.pairs(), 10000u);
  }
}

// Keys with several holders each, filled to the reserve's 3/4 load: each key
// takes one slot, so nothing overflows (a slot a pair overflowed 29 % of the
// pairs of four-holder keys), and all of them stay listed.
TEST(ChunkIndex, KeysWithSeveralHoldersFillTheTableLikeKeysWithOne) {
  Options o;
  o.shard_bits = 2;
  o.reserve_keys = 50000;
  ChunkIndex idx(o);
  std::mt19937_64 rng(23);
  std::vector<std::uint64_t> keys(50000);
  for (auto& k : keys) {
    k = rng();
    for (HolderId h = 0; h < 4; ++h) ASSERT_EQ(idx.Add(k, h), AddResult::kAdded);
  }
  EXPECT_EQ(idx.GrowingShards(), 0u);
  EXPECT_EQ(idx.OverflowKeys(), 0u);
  EXPECT_EQ(idx.GroupedKeys(), keys.size());
  for (HolderId h = 0; h < 4; ++h) EXPECT_EQ(idx.KeysOf(h), keys.size());
  for (std::uint64_t k : keys) ASSERT_EQ(idx.HolderCount(k), 4u) << k;
}

// A random mix of admits and evicts against a simple model, through many
// incremental growths.
void CheckAgainstAModel(const Options& o) {
  ChunkIndex idx(o);
  std::unordered_map<std::uint64_t, std::set<HolderId>> model;
  std::size_t model_pairs = 0;
  std::mt19937_64 rng(99);
  bool saw_growth = false;
  for (int op = 0; op < 400000; ++op) {
    // A small key space makes evictions hit; sequential keys test structure.
    std::uint64_t key = op % 3 ? rng() % 50000 : static_cast<std::uint64_t>(op / 3);
    HolderId h = static_cast<HolderId>(rng() % 5);
    if (rng() % 3) {
      bool added = idx.Add(key, h) == AddResult::kAdded;
      bool model_added = model[key].insert(h).second;
      ASSERT_EQ(added, model_added) << op;
      model_pairs += model_added;
    } else {
      bool removed = idx.Remove(key, h);
      auto it = model.find(key);
      bool model_removed = it != model.end() && it->second.erase(h) == 1;
      ASSERT_EQ(removed, model_removed) << op;
      model_pairs -= model_removed;
    }
    saw_growth |= idx.GrowingShards() > 0;
    ASSERT_EQ(idx.pairs(), model_pairs);
    // All holders of the key just touched, growing or not: its pairs may be
    // in its two buckets, in the old table's, or in the overflow.
    std::set<HolderId> got;
    idx.ForEachHolder(key, [&](HolderId x) { ASSERT_TRUE(got.insert(x).second) << "reported twice: " << x; });
    ASSERT_EQ(got, model[key]) << op;
    // The same through a probe located ahead, as long lookups use it.
    std::set<HolderId> located;
    idx.ForEachHolder(idx.Locate(key), [&](HolderId x) { located.insert(x); });
    ASSERT_EQ(located, model[key]) << op;
  }
  EXPECT_TRUE(saw_growth);
  std::vector<std::size_t> per_holder(5, 0);
  for (const auto& [key, holders] : model) {
    std::set<HolderId> got;
    idx.ForEachHolder(key, [&](HolderId x) { got.insert(x); });
    ASSERT_EQ(got, holders) << key;
    for (HolderId x : holders) ++per_holder[x];
  }
  for (HolderId h = 0; h < 5; ++h) EXPECT_EQ(idx.KeysOf(h), per_holder[h]);
  // Each holder's list, holes left by its removals and all, lists its keys once.
  for (HolderId h = 0; h < 5; ++h) {
    std::multiset<std::uint64_t> listed;
    idx.ForEachKeyOf(h, [&](std::uint64_t k) { listed.insert(k); });
    std::multiset<std::uint64_t> want;
    for (const auto& [key, holders] : model)
      if (holders.count(h)) want.insert(key);
    ASSERT_EQ(listed, want) << "holder " << h;
  }
  // Every position a probe reports is where the holder's list has the key
  // (a P2P lookup walks the lists from there).
  for (const auto& [key, holders] : model) {
    std::size_t seen = 0;
    idx.ForEachHolderAt(idx.Locate(key), [&](HolderId x, std::uint32_t pos) {
      const auto listed = idx.KeysFrom(x, pos);
      ASSERT_FALSE(listed.empty()) << key;
      ASSERT_EQ(listed[0], key) << "holder " << x;
      ++seen;
    });
    ASSERT_EQ(seen, holders.size()) << key;
  }
  // Dropping one holder in slices takes exactly its keys.
  while (idx.DropHolderSlice(0, 97) > 0) {}
  EXPECT_EQ(idx.KeysOf(0), 0u);
  for (auto& [key, holders] : model) {
    holders.erase(0);
    std::set<HolderId> got;
    idx.ForEachHolder(key, [&](HolderId x) { got.insert(x); });
    ASSERT_EQ(got, holders) << key;
  }
}

TEST(ChunkIndex, MatchesAModelThroughIncrementalGrowth) {
  Options o;
  o.shard_bits = 1;
  o.initial_shard_lines = 4;  // tiny tables, two shards: many growths, walks and overflows
  CheckAgainstAModel(o);
}

TEST(ChunkIndex, MatchesAModelWithTablesThatAreNotPowersOfTwo) {
  Options o;
  o.shard_bits = 1;
  o.reserve_keys = 3000;  // 2,001 slots a shard, then 4,002, 8,004, ...: runs wrap at odd ends
  CheckAgainstAModel(o);
}

TEST(ChunkIndex, MatchesAModelWithListPositionsWrapping) {
  Options o;
  o.shard_bits = 1;
  // Each removal moves a list's first position on: ~27,000 a holder here, past 2^28.
  o.list_position_start = (std::uint32_t{1} << ChunkIndex::kPosBits) - 5000;
  CheckAgainstAModel(o);
}

// The cluster's resync walks a holder's keys in slices while the holder
// keeps changing (admits at the tail, evictions anywhere: each moves the
// list's first key into its hole). Every key the holder has from the walk's
// first slice to its last must be handed at least once; nothing handed may be
// a key the holder never had. Positions start near the wrap, so the walk also
// crosses it.
TEST(ChunkIndex, AKeyWalkHandsEveryKeyKeptThroughoutWhileTheHolderChurns) {
  for (std::uint32_t start : {0u, (std::uint32_t{1} << ChunkIndex::kPosBits) - 3000}) {
    Options o;
    o.shard_bits = 1;
    o.list_position_start = start;
    ChunkIndex idx(o);
    std::mt19937_64 rng(start + 7);
    std::set<std::uint64_t> present;
    std::uint64_t next_key = 1;
    for (int i = 0; i < 20000; ++i) {
      ASSERT_NE(idx.Add(next_key, 0), AddResult::kOverQuota);
      present.insert(next_key++);
    }
    const std::set<std::uint64_t> at_start = present;
    std::set<std::uint64_t> removed_meanwhile, handed;
    std::set<std::uint64_t> ever = present;  // every key the holder had at some point
    ChunkIndex::KeyWalk walk;
    bool more = true;
    int slices = 0;
    while (more) {
      more = idx.WalkKeys(0, &walk, 1 + rng() % 700, [&](std::span<const std::uint64_t> run) {
        for (std::uint64_t k : run) handed.insert(k);
      });
      ++slices;
      // Churn between slices: evictions anywhere (most from the middle), admits at the tail.
      for (int j = 0, n = static_cast<int>(rng() % 300); j < n && !present.empty(); ++j) {
        auto it = present.lower_bound(1 + rng() % next_key);
        if (it == present.end()) it = present.begin();
        ASSERT_TRUE(idx.Remove(*it, 0));
        removed_meanwhile.insert(*it);
        present.erase(it);
      }
      for (int j = 0, n = static_cast<int>(rng() % 250); j < n; ++j) {
        ASSERT_NE(idx.Add(next_key, 0), AddResult::kOverQuota);
        ever.insert(next_key);
        present.insert(next_key++);
      }
    }
    EXPECT_GT(slices, 20);
    for (std::uint64_t k : at_start) {
      if (!removed_meanwhile.count(k)) {
        ASSERT_TRUE(handed.count(k)) << "kept throughout but not handed: " << k;
      }
    }
    for (std::uint64_t k : handed) ASSERT_TRUE(ever.count(k)) << "handed a key never held: " << k;
    EXPECT_EQ(idx.KeysOf(0), present.size());
  }
}

// Keys leave a cache mostly oldest first; when they do, nothing in a
// holder's list moves, and the keys admitted after them stay side by side in
// the order they came, for a lookup to walk. A key leaving from the middle
// takes the list's first (oldest) key into its place, not its newest.
TEST(ChunkIndex, KeyListsKeepTheOrderKeysCameInWhileTheOldestLeave) {
  for (const std::uint32_t start : {0u, (std::uint32_t{1} << ChunkIndex::kPosBits) - 2500}) {
    ChunkIndex idx(Options{.list_position_start = start});
    constexpr HolderId kHolder = 3;
    std::uint64_t next = 0, oldest = 0;
    auto key = [](std::uint64_t i) { return ChunkIndex::Mix(i + 1); };
    for (; next < 3000; ++next) ASSERT_EQ(idx.Add(key(next), kHolder), AddResult::kAdded);
    for (int round = 0; round < 5000; ++round) {  // a steady cache: one in, the oldest out
      ASSERT_EQ(idx.Add(key(next++), kHolder), AddResult::kAdded);
      ASSERT_TRUE(idx.Remove(key(oldest++), kHolder));
    }
    auto position = [&](std::uint64_t k) {
      std::uint32_t at = 0;
      std::size_t n = 0;
      idx.ForEachHolderAt(idx.Locate(k), [&](HolderId h, std::uint32_t pos) {
        EXPECT_EQ(h, kHolder);
        at = pos;
        ++n;
      });
      EXPECT_EQ(n, 1u);
      return at;
    };
    // Walking from the oldest key meets every key in the order it came.
    auto walk = [&](std::uint64_t from, std::uint64_t to) {
      std::size_t pos = position(key(from));
      for (std::uint64_t i = from; i < to;) {
        const auto keys = idx.KeysFrom(kHolder, pos);
        ASSERT_FALSE(keys.empty()) << i;
        for (std::size_t j = 0; j < keys.size() && i < to; ++j, ++i, ++pos) ASSERT_EQ(keys[j], key(i)) << i;
      }
      if (to == next) {
        EXPECT_TRUE(idx.KeysFrom(kHolder, pos).empty());  // past the last key
      }
    };
    walk(oldest, next);
    // One key leaves from the middle: the oldest takes its place, the rest stay.
    const std::uint64_t middle = oldest + 1500;
    const std::uint32_t hole = position(key(middle));
    ASSERT_TRUE(idx.Remove(key(middle), kHolder));
    EXPECT_EQ(position(key(oldest)), hole);
    walk(oldest + 1, middle);
    walk(middle + 1, next);
    EXPECT_EQ(idx.KeysOf(kHolder), next - oldest - 1);
  }
}

// A reserve is room made at start: filling it never grows a shard (no
// migration, no new table on the insert path); past it, growth goes on.
// Held at its reserve's 3/4 load, where pairs spill to their second bucket
// and walks move them back and forth, the index never grows, so every lookup
// takes the fast path: one bucket unless the first's spill count says two.
// Every pair stays visible that way, and through a located, followed probe.
TEST(ChunkIndex, ChurnAtThreeQuartersLoadKeepsEveryPairVisible) {
  Options o;
  o.shard_bits = 1;
  o.reserve_keys = 20000;
  ChunkIndex idx(o);
  std::unordered_map<std::uint64_t, std::set<HolderId>> model;
  std::vector<std::pair<std::uint64_t, HolderId>> live;
  std::mt19937_64 rng(17);
  auto add = [&](std::uint64_t key, HolderId h) {
    ASSERT_EQ(idx.Add(key, h), AddResult::kAdded);
    model[key].insert(h);
    live.emplace_back(key, h);
  };
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t key = rng();
    add(key, 0);
    if (i % 7 == 0) add(key, 1 + static_cast<HolderId>(rng() % 3));  // some keys have two holders
  }
  // Past the reserve's 20,000 keys: back to 20,000 pairs before the churn.
  while (live.size() > 20000) {
    auto [key, h] = live.back();
    live.pop_back();
    ASSERT_TRUE(idx.Remove(key, h));
    model[key].erase(h);
  }
  for (int op = 0; op < 200000; ++op) {
    const std::size_t victim = rng() % live.size();
    auto [key, h] = live[victim];
    live[victim] = live.back();
    live.pop_back();
    ASSERT_TRUE(idx.Remove(key, h)) << op;
    model[key].erase(h);
    if (op % 5 == 0) add(key, h);  // straight back, maybe to the other bucket
    else add(rng(), static_cast<HolderId>(rng() % 4));
    ASSERT_EQ(idx.GrowingShards(), 0u) << op;
    if (op % 20000 != 0) continue;
    for (const auto& [k, holders] : model) {
      std::set<HolderId> got, located;
      idx.ForEachHolder(k, [&](HolderId x) { got.insert(x); });
      auto probe = idx.Locate(k);
      idx.Follow(probe, (k & 1) != 0);  // either way the same holders
      idx.Gather(probe);
      idx.ForEachHolder(probe, [&](HolderId x) { located.insert(x); });
      ASSERT_EQ(got, holders) << op;
      ASSERT_EQ(located, holders) << op;
    }
  }
  EXPECT_EQ(idx.pairs(), live.size());
}

TEST(ChunkIndex, ReserveHoldsItsKeysWithoutGrowingThenGrowsPastIt) {
  Options o;
  o.shard_bits = 1;
  o.reserve_keys = 300000;  // 204,001 slots a shard (3.1 MiB: huge pages, populated at start)
  ChunkIndex idx(o);
  const std::size_t tables = idx.MemoryBytes();
  EXPECT_GE(tables, 2 * 204001 * sizeof(ChunkIndex::Slot));
  EXPECT_LT(tables, 2 * 262144 * sizeof(ChunkIndex::Slot));  // not rounded up to a power of two
  for (std::uint64_t k = 1; k <= 300000; ++k) {
    ASSERT_EQ(idx.Add(ChunkIndex::Mix(k), static_cast<HolderId>(k % 3)), AddResult::kAdded) << k;
    ASSERT_EQ(idx.GrowingShards(), 0u) << k;
  }
  bool grew = false;
  for (std::uint64_t k = 300001; k <= 450000; ++k) {
    ASSERT_EQ(idx.Add(ChunkIndex::Mix(k), static_cast<HolderId>(k % 3)), AddResult::kAdded) << k;
    grew |= idx.GrowingShards() > 0;
  }
  EXPECT_TRUE(grew);
  for (std::uint64_t k = 1; k <= 450000; k += 2) ASSERT_TRUE(idx.Remove(ChunkIndex::Mix(k), static_cast<HolderId>(k % 3)));
  for (std::uint64_t k = 1; k <= 450000; ++k)
    ASSERT_EQ(idx.Contains(ChunkIndex::Mix(k), static_cast<HolderId>(k % 3)), k % 2 == 0) << k;
  EXPECT_EQ(idx.pairs(), 225000u);
}

TEST(ChunkIndex, DroppingAHolderInSlicesLeavesOthersServed) {
  ChunkIndex idx;
  for (std::uint64_t k = 0; k < 200000; ++k) {
    ASSERT_EQ(idx.Add(k * 7919, 1), AddResult::kAdded);
    if (k % 4 == 0) {
      ASSERT_EQ(idx.Add(k * 7919, 2), AddResult::kAdded);
    }
  }
  std::size_t left = idx.KeysOf(1);
  int slices = 0;
  while ((left = idx.DropHolderSlice(1, 10000)) > 0) {
    ++slices;
    // Between slices the index answers correctly for both holders.
    EXPECT_TRUE(idx.Contains(4 * 7919, 2));
    EXPECT_EQ(idx.KeysOf(1), left);
  }
  EXPECT_EQ(slices, 19);
  EXPECT_EQ(idx.KeysOf(1), 0u);
  EXPECT_EQ(idx.KeysOf(2), 50000u);
  EXPECT_EQ(idx.pairs(), 50000u);
  EXPECT_FALSE(idx.Contains(7919, 1));
  EXPECT_TRUE(idx.Contains(8 * 7919, 2));
}

// A slot names its key's holder and list position through the id of the
// list chunk the key is in; ids a holder gives back (chunks emptied, a
// dropped holder) serve other holders' new chunks, and no key is ever
// reported for a holder whose chunk once had that id.
TEST(ChunkIndex, ListChunkIdsGivenBackServeOtherHoldersWithoutMixingThemUp) {
  ChunkIndex idx;
  std::unordered_map<std::uint64_t, HolderId> held;  // every key here has one holder
  std::uint64_t next = 1;
  auto admit = [&](HolderId h, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i, ++next) {
      ASSERT_EQ(idx.Add(next, h), AddResult::kAdded);
      held[next] = h;
    }
  };
  auto check = [&] {
    for (const auto& [key, h] : held) {
      std::size_t seen = 0;
      idx.ForEachHolderAt(idx.Locate(key), [&](HolderId x, std::uint32_t pos) {
        ASSERT_EQ(x, h) << key;
        const auto listed = idx.KeysFrom(x, pos);
        ASSERT_FALSE(listed.empty()) << key;
        ASSERT_EQ(listed[0], key) << key;
        ++seen;
      });
      ASSERT_EQ(seen, 1u) << key;
    }
  };
  admit(1, 5000);  // five chunks and a part
  admit(2, 3000);
  const std::uint64_t first_of_1 = 1;
  while (idx.DropHolderSlice(1, 1000) > 0) {}
  for (std::uint64_t k = first_of_1; k < first_of_1 + 5000; ++k) held.erase(k);
  admit(3, 6000);  // takes holder 1's ids
  ASSERT_NO_FATAL_FAILURE(check());
  // Holder 2's oldest half leaves (its first chunks let go, spares replaced),
  // one in the middle too (the first key moves into its place), and holder 3
  // and a new holder grow meanwhile.
  for (std::uint64_t k = 5001; k < 5001 + 1500; ++k) {
    ASSERT_TRUE(idx.Remove(k, 2));
    held.erase(k);
  }
  ASSERT_TRUE(idx.Remove(7000, 2));
  held.erase(7000);
  admit(4, 2500);
  admit(3, 1100);
  ASSERT_NO_FATAL_FAILURE(check());
  EXPECT_EQ(idx.KeysOf(1), 0u);
  EXPECT_EQ(idx.KeysOf(2), 1499u);
  EXPECT_EQ(idx.KeysOf(3), 7100u);
  EXPECT_EQ(idx.KeysOf(4), 2500u);
  for (std::uint64_t k = first_of_1; k < first_of_1 + 5000; ++k) ASSERT_EQ(idx.HolderCount(k), 0u) << k;
}

TEST(ChunkIndex, QuotaStopsAFloodingHolderOnly) {
  Options o;
  o.per_holder_quota = 1000;
  ChunkIndex idx(o);
  for (std::uint64_t k = 0; k < 1500; ++k) (void)idx.Add(k, 9);
  EXPECT_EQ(idx.KeysOf(9), 1000u);
  EXPECT_EQ(idx.over_quota(), 500u);
  EXPECT_EQ(idx.Add(5000, 3), AddResult::kAdded);  // others are unaffected
  EXPECT_EQ(idx.Add(5001, 9), AddResult::kOverQuota);
  EXPECT_TRUE(idx.Remove(0, 9));
  EXPECT_EQ(idx.Add(5001, 9), AddResult::kAdded);  // room again after an evict
}

// With prepare_tables, big tables come from the helper thread (or, when it is
// late, from the owner as before): either way every pair survives growth.
TEST(ChunkIndex, PreparedTablesKeepEveryPairThroughGrowth) {
  Options o;
  o.shard_bits = 1;
  o.prepare_tables = true;
  ChunkIndex idx(o);
  constexpr std::uint64_t kKeys = 700000;  // 2 shards of 512 Ki slots (8 MiB): several prepared growths
  for (std::uint64_t k = 1; k <= kKeys; ++k) {
    ASSERT_EQ(idx.Add(ChunkIndex::Mix(k), static_cast<HolderId>(k % 3)), AddResult::kAdded) << k;
    if (k % 5 == 0) {
      ASSERT_TRUE(idx.Remove(ChunkIndex::Mix(k - 1), static_cast<HolderId>((k - 1) % 3))) << k;
    }
  }
  EXPECT_EQ(idx.pairs(), kKeys - kKeys / 5);
  std::size_t per_holder[3] = {};
  for (std::uint64_t k = 1; k <= kKeys; ++k) {
    const bool removed = k % 5 == 4;
    ASSERT_EQ(idx.Contains(ChunkIndex::Mix(k), static_cast<HolderId>(k % 3)), !removed) << k;
    if (!removed) ++per_holder[k % 3];
  }
  for (HolderId h = 0; h < 3; ++h) EXPECT_EQ(idx.KeysOf(h), per_holder[h]);
  EXPECT_GE(idx.MemoryBytes(), 2 * (std::size_t{1} << 19) * sizeof(ChunkIndex::Slot));
}

}  // namespace
}  // namespace kvring::index
