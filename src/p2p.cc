#include "kvring/p2p.h"

#include <array>
#include <tuple>

namespace kvring::p2p {
namespace {

using index::HolderId;

// Candidate holders: few in practice (holders per key), kept on the stack;
// past the inline capacity the extras are ignored, which can only shorten a
// tie list, never lose the longest prefix of those kept.
constexpr std::size_t kMaxCandidates = 64;  // a bit each in a 64-bit mask
constexpr std::size_t kPrefetchAhead = 32;  // a 32-hash request is prefetched whole before its first probe
constexpr std::size_t kFollowAhead = 16;    // a located probe's first line is in by then, most of the time
constexpr std::size_t kGatherAhead = 8;     // and a followed group's header

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
  // Each hash is located (mixed, its buckets found, the first prefetched)
  // kPrefetchAhead hashes before its probe, followed (its second bucket
  // prefetched if the first says it may hold the key, or its holder group's
  // header if it has one) kFollowAhead before and gathered (the group's
  // entries prefetched) kGatherAhead before,
  // so that a request's random reads overlap instead of waiting one after
  // another, most hashes read one line, and each key is mixed and placed
  // once. Candidates keep their places (a bit each in `alive`).
  std::array<index::ChunkIndex::Probe, kPrefetchAhead> ahead;
  const std::size_t count = hashes.size();
  for (std::size_t i = 0; i < std::min(kPrefetchAhead, count); ++i) ahead[i] = idx.Locate(hashes[i]);
  for (std::size_t i = 0; i < std::min(kFollowAhead, count); ++i) idx.Follow(ahead[i], kGroups);
  if constexpr (kGroups)
    for (std::size_t i = 0; i < std::min(kGatherAhead, count); ++i) idx.Gather(ahead[i]);
  std::array<HolderId, kMaxCandidates> cand;
  std::size_t n = 0;
  idx.ForEachHolder(ahead[0], [&](HolderId h) {
    const auto& info = reg.holder(h);
    if (!info.live || n == kMaxCandidates) return;
    const auto& w = reg.worker(info.worker);
    if (w.instance_id == requester_instance || !w.peer_init_url) return;
    cand[n++] = h;
  });
  if (n == 0) return Hit{};
  std::uint64_t alive = n == kMaxCandidates ? ~std::uint64_t{0} : (std::uint64_t{1} << n) - 1;
  std::size_t len = 1;
  for (std::size_t i = 1; i < count; ++i) {
    // The slot hashes[i - 1] used takes the hash kPrefetchAhead on.
    if (i - 1 + kPrefetchAhead < count) ahead[(i - 1) % kPrefetchAhead] = idx.Locate(hashes[i - 1 + kPrefetchAhead]);
    if (i - 1 + kFollowAhead < count) idx.Follow(ahead[(i - 1 + kFollowAhead) % kPrefetchAhead], kGroups);
    if constexpr (kGroups)
      if (i - 1 + kGatherAhead < count) idx.Gather(ahead[(i - 1 + kGatherAhead) % kPrefetchAhead]);
    std::uint64_t holds = 0;  // bit c: cand[c] holds hashes[i]
    idx.ForEachHolder(ahead[i % kPrefetchAhead], [&](HolderId h) {
      for (std::size_t c = 0; c < n; ++c) holds |= std::uint64_t{cand[c] == h} << c;
    });
    if ((alive & holds) == 0) break;
    alive &= holds;
    len = i + 1;
  }
  // Every candidate left holds exactly `len` leading hashes; ties prefer
  // the requester's TP rank.
  std::size_t kept = 0, same_rank = 0;
  for (; alive != 0; alive &= alive - 1) cand[kept++] = cand[static_cast<std::size_t>(__builtin_ctzll(alive))];
  n = kept;
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
  std::tuple<std::uint64_t, std::uint64_t, std::uint64_t> best_rank{};
  idx.ForEachHolder(hashes[0], [&](HolderId h) {
    const auto& info = reg.holder(h);
    if (!info.live) return;
    const auto& w = reg.worker(info.worker);
    if (w.instance_id == requester_instance) return;
    auto rank = std::make_tuple(reg.InstanceOrder(w.instance_id), w.order, info.location_order);
    if (!any || rank < best_rank) {
      any = true;
      best = h;
      best_rank = rank;
    }
  });
  if (!any || !reg.worker(reg.holder(best).worker).peer_init_url) return Hit{};  // no fallback, as LMCache
  std::size_t len = 1;
  idx.Prefetch(hashes.subspan(1, std::min(kPrefetchAhead, hashes.size() - 1)));
  while (len < hashes.size() && idx.Contains(hashes[len], best)) {
    if (len + kPrefetchAhead < hashes.size()) idx.Prefetch(hashes.subspan(len + kPrefetchAhead, 1));
    ++len;
  }
  return MakeHit(reg, best, len);
}

}  // namespace kvring::p2p
