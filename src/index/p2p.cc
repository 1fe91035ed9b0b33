#include "kvring/index/p2p.h"

#include <array>
#include <tuple>

namespace kvring::p2p {
namespace {

using index::HolderId;

// Candidate holders: few in practice (holders per key), kept on the stack;
// past the inline capacity the extras are ignored, which can only shorten a
// tie list, never lose the longest prefix of those kept.
constexpr std::size_t kMaxCandidates = 64;  // a bit each in a 64-bit mask
constexpr std::size_t kPrefetchAhead = 32;  // probes in flight: a 32-hash request is located whole before its first probe
constexpr std::size_t kLocateAhead = kPrefetchAhead - 1;
constexpr std::size_t kFollowAhead = 15;  // a located probe's first line is in by then, most of the time
constexpr std::size_t kGatherAhead = 7;   // and a followed group's header
// A key-list line prefetched at an anchor is in when the probes have gone
// this far (~20 ns a probe, ~300 ns a miss); probes re-anchor this often.
constexpr std::size_t kRunLead = 16;
constexpr std::size_t kAnchorEvery = 64;
// An anchor is worth its list line only if a walk from its check could skip
// this many probes: a 32-hash request's probes are all in flight at once, and
// waiting for the line there cost ~15 % (p2p_bench, 2026-11-26).
constexpr std::size_t kMinWalk = 32;
// A walk checks a key out of its place with a probe (one miss, waited for)
// at most once every this many hashes walked; past that it gives way to a new
// run of probes, so that a list in no useful order costs a probe a hash at
// most, as probing does, plus a walk's compares.
constexpr std::size_t kWalkedPerSkip = 32;

// How many of a[0, n) and b[0, n) are equal before the first difference;
// four at a time where it can (a walk compares hundreds).
std::size_t MatchingPrefix(const std::uint64_t* a, const std::uint64_t* b, std::size_t n) {
  std::size_t k = 0;
  for (; k + 4 <= n; k += 4)
    if (((a[k] ^ b[k]) | (a[k + 1] ^ b[k + 1]) | (a[k + 2] ^ b[k + 2]) | (a[k + 3] ^ b[k + 3])) != 0) break;
  while (k < n && a[k] == b[k]) ++k;
  return k;
}

// Walks `holder`'s key list from position `pos`, where it lists hashes[i],
// on through `hashes`; returns where the list stops saying the holder holds
// them (hashes.size() if it never does): hashes[i, returned) are all held.
std::size_t Walk(const index::ChunkIndex& idx, HolderId holder, std::size_t pos, std::span<const std::uint64_t> hashes,
                 std::size_t i) {
  const std::size_t end = hashes.size();
  std::size_t j = i, skipped = 0;
  while (j < end) {
    const auto keys = idx.KeysFrom(holder, pos);
    const std::size_t m = std::min(keys.size(), end - j);
    const std::size_t same = MatchingPrefix(keys.data(), hashes.data() + j, m);
    j += same;
    pos += same;
    if (same == m) {
      if (keys.empty()) break;
      continue;  // the next piece of the list
    }
    // Another key here. If the list goes on with the next hash, this one is
    // likely a key taken out of its place (evicted and admitted again: it
    // went to the list's end): one probe settles it, and the walk goes on,
    // instead of a new run of probes.
    if (skipped * kWalkedPerSkip > j - i || j + 1 >= end) break;
    const auto next = idx.KeysFrom(holder, pos + 1);
    if (next.empty() || next[0] != hashes[j + 1] || !idx.Contains(hashes[j], holder)) break;
    ++skipped;
    ++j;
    ++pos;
  }
  return j;
}

Hit MakeHit(const registry::Registry& reg, HolderId h, std::uint64_t hits) {
  const auto& info = reg.holder(h);
  const auto& w = reg.worker(info.worker);
  return Hit{w.instance_id, info.location, hits, w.peer_init_url ? std::string_view(*w.peer_init_url) : "", h};
}

}  // namespace

Hit Lookup::Run(const index::ChunkIndex& idx, const registry::Registry& reg, std::span<const std::uint64_t> hashes,
                std::string_view requester_instance, std::int64_t requester_worker, Policy policy) {
  if (hashes.empty()) return Hit{};
  return policy == Policy::kLMCache ? LMCacheRule(idx, reg, hashes, requester_instance)
         : idx.HasGroups() ? LongestPrefix<true>(idx, reg, hashes, requester_instance, requester_worker)
                           : LongestPrefix<false>(idx, reg, hashes, requester_instance, requester_worker);
}

template <bool kGroups>
Hit Lookup::LongestPrefix(const index::ChunkIndex& idx, const registry::Registry& reg,
                          std::span<const std::uint64_t> hashes, std::string_view requester_instance,
                          std::int64_t requester_worker) {
  // Two ways to learn whether the candidates hold hashes[i]:
  //
  //  * Probing: each hash is located (mixed, its buckets found, the first
  //    prefetched) kLocateAhead hashes before its probe, followed (its second
  //    bucket prefetched if the first says it may hold the key, or its holder
  //    group's header if it has one) kFollowAhead before and gathered (the
  //    group's entries prefetched) kGatherAhead before, so that a request's
  //    random reads overlap instead of waiting one after another, most hashes
  //    read one line, and each key is mixed and placed once.
  //  * Walking the candidates' key lists (ChunkIndex::KeysFrom): a prefix a
  //    worker admitted in order sits there side by side, eight keys a line,
  //    and a key found in a holder's list is one it holds. Where a probe
  //    (an anchor: the first of each run of probes, then every kAnchorEvery)
  //    finds the hash in each candidate's list, their lines kRunLead places on are
  //    prefetched, and when the probes reach that hash, if every candidate
  //    lists it there, the lookup walks the lists instead, until some
  //    candidate's list says something else (another key, or its end); there
  //    it probes again, from that hash on. Whatever the lists' order, the
  //    answer is the probes' answer: a walk only skips probes whose result
  //    the lists prove.
  //
  // Candidates keep their places (a bit each in `alive`).
  const std::size_t count = hashes.size();
  std::array<index::ChunkIndex::Probe, kPrefetchAhead> ahead;
  // Starts probing at hashes[from]: the first kLocateAhead are located, and
  // so on; step(i) then keeps the pipeline full and gives hashes[i]'s probe.
  auto warm = [&](std::size_t from) __attribute__((always_inline)) {
    for (std::size_t i = from; i < std::min(from + kLocateAhead, count); ++i)
      ahead[i % kPrefetchAhead] = idx.Locate(hashes[i]);
    for (std::size_t i = from; i < std::min(from + kFollowAhead, count); ++i)
      idx.Follow(ahead[i % kPrefetchAhead], kGroups);
    if constexpr (kGroups)
      for (std::size_t i = from; i < std::min(from + kGatherAhead, count); ++i) idx.Gather(ahead[i % kPrefetchAhead]);
  };
  auto step = [&](std::size_t i) __attribute__((always_inline)) -> const index::ChunkIndex::Probe& {
    if (i + kLocateAhead < count) ahead[(i + kLocateAhead) % kPrefetchAhead] = idx.Locate(hashes[i + kLocateAhead]);
    if (i + kFollowAhead < count) idx.Follow(ahead[(i + kFollowAhead) % kPrefetchAhead], kGroups);
    if constexpr (kGroups)
      if (i + kGatherAhead < count) idx.Gather(ahead[(i + kGatherAhead) % kPrefetchAhead]);
    return ahead[i % kPrefetchAhead];
  };

  warm(0);
  std::array<HolderId, kMaxCandidates> cand;
  std::array<std::uint32_t, kMaxCandidates> at;  // cand[c] lists hashes[anchor] at at[c]
  std::size_t n = 0;
  idx.ForEachHolderAt(step(0), [&](HolderId h, std::uint32_t pos) {
    const auto& info = reg.holder(h);
    if (!info.live || n == kMaxCandidates) return;
    const auto& w = reg.worker(info.worker);
    if (w.instance_id == requester_instance || !w.peer_init_url) return;
    cand[n] = h;
    at[n++] = pos;
  });
  if (n == 0) return Hit{};
  std::uint64_t alive = n == kMaxCandidates ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
  auto for_alive = [&](auto&& fn) {
    for (std::uint64_t a = alive; a != 0; a &= a - 1) fn(static_cast<std::size_t>(__builtin_ctzll(a)));
  };
  // The anchor whose list positions `at` holds, and the hash at which the lists are checked.
  std::size_t anchor = 0, check = count;
  auto worth_anchoring = [&](std::size_t i) { return i + kRunLead + kMinWalk <= count; };
  auto anchor_at = [&](std::size_t i) {
    anchor = i;
    check = worth_anchoring(i) ? i + kRunLead : count;
    if (check < count) for_alive([&](std::size_t c) { idx.PrefetchKeyAt(cand[c], at[c] + kRunLead); });
  };
  anchor_at(0);

  std::size_t len = 1, i = 1, run_start = 0;  // run_start: the first probe after a walk
  while (i < count) {
    if (i == check) {
      bool listed = true;  // every candidate lists hashes[i] kRunLead places after hashes[anchor]
      for_alive([&](std::size_t c) {
        const auto keys = idx.KeysFrom(cand[c], at[c] + kRunLead);
        listed &= !keys.empty() && keys[0] == hashes[i];
      });
      check = count;
      if (listed) {
        // Walk: every alive candidate holds hashes[i, end).
        std::size_t end = count;
        for_alive([&](std::size_t c) { end = Walk(idx, cand[c], at[c] + kRunLead, hashes.first(end), i); });
        len = end;
        i = end;
        if (i == count) break;
        warm(i);  // some candidate lists something else here: probe again
        run_start = i;
      }
    }
    const index::ChunkIndex::Probe& probe = step(i);
    std::uint64_t holds = 0;  // bit c: cand[c] holds hashes[i]
    const bool anchoring = (i == anchor + kAnchorEvery || i == run_start) && worth_anchoring(i);
    if (anchoring) {
      idx.ForEachHolderAt(probe, [&](HolderId h, std::uint32_t pos) {
        for (std::size_t c = 0; c < n; ++c)
          if (cand[c] == h) {
            holds |= std::uint64_t{1} << c;
            at[c] = pos;
          }
      });
    } else {
      idx.ForEachHolder(probe, [&](HolderId h) {
        for (std::size_t c = 0; c < n; ++c) holds |= std::uint64_t{cand[c] == h} << c;
      });
    }
    if ((alive & holds) == 0) break;
    alive &= holds;
    len = i + 1;
    if (anchoring) anchor_at(i);
    ++i;
  }
  // Every candidate left holds exactly `len` leading hashes; ties prefer a
  // peer of this node (a cluster's remote holders are a network hop
  // farther), then the requester's TP rank.
  std::size_t kept = 0, same_rank = 0, local = 0;
  for (; alive != 0; alive &= alive - 1) cand[kept++] = cand[static_cast<std::size_t>(__builtin_ctzll(alive))];
  n = kept;
  for (std::size_t c = 0; c < n; ++c)
    if (reg.worker(reg.holder(cand[c]).worker).node.empty()) cand[local++] = cand[c];
  if (local) n = local;
  for (std::size_t c = 0; c < n; ++c)
    if (reg.worker(reg.holder(cand[c]).worker).worker_id == requester_worker) cand[same_rank++] = cand[c];
  std::size_t pool = same_rank ? same_rank : n;
  return MakeHit(reg, cand[rotate_++ % pool], len);
}

Hit Lookup::LMCacheRule(const index::ChunkIndex& idx, const registry::Registry& reg,
                        std::span<const std::uint64_t> hashes, std::string_view requester_instance) {
  // First holder of hashes[0] in registry order: instance, then worker, then location.
  bool any = false;
  HolderId best = 0;
  std::uint32_t best_at = 0;  // where best lists hashes[0]
  std::tuple<std::uint64_t, std::uint64_t, std::uint64_t> best_rank{};
  idx.ForEachHolderAt(idx.Locate(hashes[0]), [&](HolderId h, std::uint32_t pos) {
    const auto& info = reg.holder(h);
    if (!info.live) return;
    const auto& w = reg.worker(info.worker);
    if (w.instance_id == requester_instance) return;
    auto rank = std::make_tuple(reg.InstanceOrder(w.instance_id), w.order, info.location_order);
    if (!any || rank < best_rank) {
      any = true;
      best = h;
      best_at = pos;
      best_rank = rank;
    }
  });
  if (!any || !reg.worker(reg.holder(best).worker).peer_init_url) return Hit{};  // no fallback, as LMCache
  // One holder: its list is walked from hashes[0]'s place (its next line
  // arriving with the probes' first prefetches), then probed from where the walk stops.
  idx.Prefetch(hashes.subspan(1, std::min(kPrefetchAhead, hashes.size() - 1)));
  std::size_t len = Walk(idx, best, std::size_t{best_at} + 1, hashes, 1);
  if (len > 1 && len < hashes.size()) idx.Prefetch(hashes.subspan(len, std::min(kPrefetchAhead, hashes.size() - len)));
  while (len < hashes.size() && idx.Contains(hashes[len], best)) {
    if (len + kPrefetchAhead < hashes.size()) idx.Prefetch(hashes.subspan(len + kPrefetchAhead, 1));
    ++len;
  }
  return MakeHit(reg, best, len);
}

}  // namespace kvring::p2p
