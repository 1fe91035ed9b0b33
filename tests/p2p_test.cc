#include "kvring/index/p2p.h"

#include <algorithm>
#include <map>
#include <random>
#include <set>

#include <gtest/gtest.h>

namespace kvring::p2p {
namespace {

using index::ChunkIndex;
using index::HolderId;
using registry::Registry;
using registry::WorkerRecord;

struct Cluster {
  Registry reg;
  ChunkIndex idx;
  Lookup lookup;

  HolderId Worker(const std::string& inst, int wid, const char* location = "LocalCPUBackend",
                  bool peer = true) {
    WorkerRecord w;
    w.instance_id = inst;
    w.worker_id = wid;
    w.ip = "127.0.0.1";
    w.port = 8000 + wid;
    if (peer) w.peer_init_url = inst + ":" + std::to_string(8200 + wid);
    bool is_new;
    std::uint32_t idx_w = reg.Upsert(w, &is_new);
    return reg.Holder(idx_w, location);
  }
  void Admit(HolderId h, std::initializer_list<std::uint64_t> keys) {
    for (auto k : keys) ASSERT_EQ(idx.Add(k, h), index::AddResult::kAdded);
  }
  Hit Ask(std::vector<std::uint64_t> hashes, const std::string& inst, int wid, Policy p = Policy::kLongestPrefix) {
    return lookup.Run(idx, reg, hashes, inst, wid, p);
  }
};

TEST(P2PLookup, EmptyInputAndMissesReplyNothing) {
  Cluster c;
  HolderId a = c.Worker("A", 0);
  c.Admit(a, {1, 2});
  EXPECT_FALSE(c.Ask({}, "B", 0).found());
  EXPECT_FALSE(c.Ask({9, 1}, "B", 0).found());  // prefix must start at hashes[0]
  EXPECT_EQ(c.Ask({}, "B", 0).instance_id, "");
}

TEST(P2PLookup, RequesterInstanceIsExcluded) {
  Cluster c;
  HolderId a = c.Worker("A", 0);
  c.Admit(a, {1, 2, 3});
  EXPECT_FALSE(c.Ask({1, 2, 3}, "A", 1).found());
  Hit h = c.Ask({1, 2, 3}, "B", 0);
  EXPECT_EQ(h.instance_id, "A");
  EXPECT_EQ(h.num_hit_chunks, 3u);
  EXPECT_EQ(h.peer_init_url, "A:8200");
  EXPECT_EQ(h.location, "LocalCPUBackend");
}

TEST(P2PLookup, LongestPrefixWinsOverFirstRegistered) {
  Cluster c;
  HolderId first = c.Worker("A", 0);   // registered first, holds 2 chunks
  HolderId longer = c.Worker("B", 0);  // holds 4
  c.Admit(first, {10, 11});
  c.Admit(longer, {10, 11, 12, 13});
  Hit h = c.Ask({10, 11, 12, 13, 14}, "C", 0);
  EXPECT_EQ(h.instance_id, "B");
  EXPECT_EQ(h.num_hit_chunks, 4u);
  // LMCache's rule takes the first registered holder of hashes[0] instead.
  Hit l = c.Ask({10, 11, 12, 13, 14}, "C", 0, Policy::kLMCache);
  EXPECT_EQ(l.instance_id, "A");
  EXPECT_EQ(l.num_hit_chunks, 2u);
}

TEST(P2PLookup, SameTpRankIsPreferredAmongEqualPrefixes) {
  Cluster c;
  HolderId r0 = c.Worker("A", 0);
  HolderId r1 = c.Worker("A", 1);
  c.Admit(r0, {5, 6});
  c.Admit(r1, {5, 6});
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(c.Ask({5, 6}, "B", 1).holder, r1);
    EXPECT_EQ(c.Ask({5, 6}, "B", 0).holder, r0);
  }
  // LMCache ignores the rank: always the first worker.
  EXPECT_EQ(c.Ask({5, 6}, "B", 1, Policy::kLMCache).holder, r0);
}

TEST(P2PLookup, EqualPeersShareTheLoad) {
  Cluster c;
  HolderId a = c.Worker("A", 3);
  HolderId b = c.Worker("B", 3);
  c.Admit(a, {7});
  c.Admit(b, {7});
  std::map<HolderId, int> picks;
  for (int i = 0; i < 10; ++i) ++picks[c.Ask({7}, "C", 0).holder];
  EXPECT_EQ(picks[a], 5);
  EXPECT_EQ(picks[b], 5);
}

TEST(P2PLookup, HolderWithoutPeerUrlIsSkippedButLMCacheGivesUp) {
  Cluster c;
  HolderId no_url = c.Worker("A", 0, "LocalCPUBackend", /*peer=*/false);
  HolderId url = c.Worker("B", 0);
  c.Admit(no_url, {1, 2, 3});
  c.Admit(url, {1});
  Hit h = c.Ask({1, 2, 3}, "C", 0);
  EXPECT_EQ(h.holder, url);
  EXPECT_EQ(h.num_hit_chunks, 1u);
  EXPECT_FALSE(c.Ask({1, 2, 3}, "C", 0, Policy::kLMCache).found());  // no fallback in LMCache
}

TEST(P2PLookup, DeregisteredWorkersAreInvisibleWhileTheirKeysDrain) {
  Cluster c;
  HolderId a = c.Worker("A", 0);
  HolderId b = c.Worker("B", 0);
  c.Admit(a, {1, 2, 3});
  c.Admit(b, {1});
  auto gone = c.reg.Remove(*c.reg.Find("A", 0));
  ASSERT_EQ(gone, std::vector<HolderId>{a});
  Hit h = c.Ask({1, 2, 3}, "C", 0);  // a's keys are still in the index
  EXPECT_EQ(h.holder, b);
  while (c.idx.DropHolderSlice(a, 1) > 0) {}
  c.reg.ReleaseHolder(a);
  EXPECT_EQ(c.idx.pairs(), 1u);
}

// The LMCache policy against a direct transcription of LMCache's algorithm
// over the same random state.
TEST(P2PLookup, LMCachePolicyEqualsLMCacheRuleOnRandomStates) {
  std::mt19937 rng(5);
  for (int round = 0; round < 200; ++round) {
    Cluster c;
    struct H { std::string inst; int wid; std::string loc; HolderId id; bool peer; };
    std::vector<H> holders;  // in registration order (instance, worker, location)
    int n_inst = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n_inst; ++i)
      for (int w = 0; w < 2; ++w)
        for (const char* loc : {"LocalCPUBackend", "LocalDiskBackend"}) {
          bool peer = rng() % 4 != 0;
          std::string inst = "I" + std::to_string(i);
          holders.push_back({inst, w, loc, c.Worker(inst, w, loc, peer), peer});
        }
    // Fix peer URLs per worker (the first location's choice decides it in Cluster::Worker).
    for (auto& h : holders) h.peer = c.reg.worker(c.reg.holder(h.id).worker).peer_init_url.has_value();
    std::map<HolderId, std::set<std::uint64_t>> sets;
    for (auto& h : holders)
      for (std::uint64_t k = 0; k < 6; ++k)
        if (rng() % 2) { (void)c.idx.Add(k, h.id); sets[h.id].insert(k); }
    std::vector<std::uint64_t> hashes;
    for (std::uint64_t k = rng() % 3; k < 6; ++k) hashes.push_back(k);
    std::string requester = "I" + std::to_string(rng() % (n_inst + 1));
    // LMCache: first holder of hashes[0] outside the requester's instance.
    std::string want_inst;
    std::uint64_t want_hits = 0;
    for (auto& h : holders) {
      if (h.inst == requester || !sets[h.id].count(hashes[0])) continue;
      if (h.peer) {
        want_inst = h.inst;
        while (want_hits < hashes.size() && sets[h.id].count(hashes[want_hits])) ++want_hits;
      }
      break;
    }
    Hit got = c.Ask(hashes, requester, 0, Policy::kLMCache);
    EXPECT_EQ(std::string(got.instance_id), want_inst) << round;
    EXPECT_EQ(got.num_hit_chunks, want_hits) << round;
  }
}

// kvring's rule against a brute force on random states: requests longer than
// the lookup's prefetch window, many candidates that drop out at different
// hashes, holders without peer URLs, keys with several holders.
TEST(P2PLookup, LongestPrefixEqualsABruteForceOnRandomStates) {
  std::mt19937 rng(17);
  for (int round = 0; round < 300; ++round) {
    Cluster c;
    struct H { std::string inst; int wid; HolderId id; bool peer; std::size_t holds; };
    std::vector<H> holders;
    const int n_inst = 1 + static_cast<int>(rng() % 5);
    for (int i = 0; i < n_inst; ++i)
      for (int w = 0; w < 1 + static_cast<int>(rng() % 3); ++w) {
        std::string inst = "I" + std::to_string(i);
        const bool peer = rng() % 5 != 0;
        for (const char* loc : {"LocalCPUBackend", "LocalDiskBackend"}) holders.push_back({inst, w, c.Worker(inst, w, loc, peer), peer, 0});
      }
    for (auto& h : holders) h.peer = c.reg.worker(c.reg.holder(h.id).worker).peer_init_url.has_value();
    const std::size_t len = 1 + rng() % 120;
    std::vector<std::uint64_t> hashes(len);
    for (auto& x : hashes) x = (static_cast<std::uint64_t>(round) << 32) ^ rng();
    for (auto& h : holders) {
      // A prefix of the request, then (sometimes) a few later hashes past a gap.
      h.holds = rng() % 3 == 0 ? 0 : rng() % (len + 1);
      for (std::size_t k = 0; k < h.holds; ++k) ASSERT_EQ(c.idx.Add(hashes[k], h.id), index::AddResult::kAdded);
      for (std::size_t k = h.holds + 1; k < len; k += 1 + rng() % 7) ASSERT_EQ(c.idx.Add(hashes[k], h.id), index::AddResult::kAdded);
    }
    const std::string requester = "I" + std::to_string(rng() % (n_inst + 1));
    const int wid = static_cast<int>(rng() % 3);
    std::size_t best = 0;
    for (auto& h : holders)
      if (h.inst != requester && h.peer) best = std::max(best, h.holds);
    bool same_rank_best = false;
    for (auto& h : holders) same_rank_best |= h.inst != requester && h.peer && h.holds == best && h.wid == wid;
    Hit got = c.Ask(hashes, requester, wid);
    ASSERT_EQ(got.num_hit_chunks, best) << round;
    if (best == 0) {
      EXPECT_TRUE(got.instance_id.empty()) << round;
      continue;
    }
    const auto& w = c.reg.worker(c.reg.holder(got.holder).worker);
    EXPECT_NE(w.instance_id, requester) << round;
    EXPECT_TRUE(w.peer_init_url.has_value()) << round;
    if (same_rank_best) {
      EXPECT_EQ(w.worker_id, wid) << round;
    }
    const auto it = std::find_if(holders.begin(), holders.end(), [&](const H& h) { return h.id == got.holder; });
    ASSERT_NE(it, holders.end());
    EXPECT_EQ(it->holds, best) << round;
  }
}

// Long lookups walk the candidates' key lists where those list the request's
// hashes in order (p2p.cc); the answer must not depend on the lists' order.
// Here holders admit prefixes in order, in pieces among other keys, across a
// list chunk's end, shuffled, or with keys evicted and admitted again (a
// removal moves the list's last key into the hole), and every answer is
// checked against each holder's prefix counted with Contains.
TEST(P2PLookup, LongestPrefixEqualsABruteForceWhateverOrderTheKeyListsHold) {
  std::mt19937_64 rng(29);
  for (int round = 0; round < 120; ++round) {
    Cluster c;
    std::vector<HolderId> holders;
    const int n_inst = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < n_inst; ++i)
      for (int w = 0; w < 1 + static_cast<int>(rng() % 2); ++w)
        holders.push_back(c.Worker("I" + std::to_string(i), w, "LocalCPUBackend", rng() % 6 != 0));
    const std::size_t len = 1 + rng() % 700;
    std::vector<std::uint64_t> hashes(len);
    for (auto& x : hashes) x = rng();
    std::uint64_t filler = 0;  // keys no request asks for
    auto other_keys = [&](HolderId h, std::size_t n) {
      for (std::size_t k = 0; k < n; ++k) ASSERT_EQ(c.idx.Add(++filler | (1ull << 63), h), index::AddResult::kAdded);
    };
    for (HolderId h : holders) {
      if (rng() % 4 == 0) continue;
      // Start anywhere in a list chunk (1,024 keys), so that some prefixes cross its end.
      other_keys(h, rng() % 2 == 0 ? rng() % 1100 : 0);
      const std::size_t holds = rng() % 2 == 0 ? len : rng() % (len + 1);
      std::vector<std::size_t> order(holds);
      for (std::size_t k = 0; k < holds; ++k) order[k] = k;
      if (rng() % 4 == 0) std::shuffle(order.begin(), order.end(), rng);  // else in order, maybe in pieces:
      for (std::size_t k = 0; k < holds; ++k) {
        ASSERT_EQ(c.idx.Add(hashes[order[k]], h), index::AddResult::kAdded);
        if (rng() % 50 == 0) other_keys(h, 1 + rng() % 20);
      }
      // Some hashes past the prefix's end, and some evicted, some of those admitted again.
      for (std::size_t k = holds + 1; k < len; k += 1 + rng() % 40) ASSERT_EQ(c.idx.Add(hashes[k], h), index::AddResult::kAdded);
      const std::size_t churn = rng() % 4 == 0 ? 0 : rng() % 30;
      for (std::size_t e = 0; e < churn && holds > 0; ++e) {
        const std::uint64_t key = hashes[rng() % holds];
        if (!c.idx.Remove(key, h)) continue;
        if (rng() % 3 != 0) {
          ASSERT_EQ(c.idx.Add(key, h), index::AddResult::kAdded);
        }
      }
      if (rng() % 3 == 0) {  // evict some other keys: their list's last keys move
        for (std::uint64_t f = filler; f > 0 && rng() % 8 != 0; --f) (void)c.idx.Remove(f | (1ull << 63), h);
      }
    }
    const std::string requester = "I" + std::to_string(rng() % (n_inst + 1));
    const int wid = static_cast<int>(rng() % 2);
    std::size_t best = 0;
    std::map<HolderId, std::size_t> prefix;
    for (HolderId h : holders) {
      const auto& w = c.reg.worker(c.reg.holder(h).worker);
      if (w.instance_id == requester || !w.peer_init_url) continue;
      std::size_t k = 0;
      while (k < len && c.idx.Contains(hashes[k], h)) ++k;
      prefix[h] = k;
      best = std::max(best, k);
    }
    // LMCache's rule picks its holder by registration order (checked against
    // LMCache's own rule elsewhere); its hit count is that holder's prefix.
    const Hit lmcache = c.Ask(hashes, requester, wid, Policy::kLMCache);
    if (lmcache.found()) {
      ASSERT_TRUE(prefix.count(lmcache.holder)) << round;
      EXPECT_EQ(lmcache.num_hit_chunks, prefix[lmcache.holder]) << round;
    }
    Hit got = c.Ask(hashes, requester, wid);
    ASSERT_EQ(got.num_hit_chunks, best) << round;
    if (best == 0) continue;
    ASSERT_TRUE(prefix.count(got.holder)) << round;
    EXPECT_EQ(prefix[got.holder], best) << round;
  }
}

}  // namespace
}  // namespace kvring::p2p
