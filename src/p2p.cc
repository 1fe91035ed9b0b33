#include "kvring/p2p.h"

#include <array>
#include <tuple>

namespace kvring::p2p {
namespace {

using index::HolderId;

// Candidate holders: few in practice (holders per key), kept on the stack;
// past the inline capacity the extras are ignored, which can only shorten a
// tie list, never lose the longest prefix of those kept.
constexpr std::size_t kMaxCandidates = 64;
constexpr std::size_t kPrefetchAhead = 32;  // a 32-hash request is prefetched whole before its first probe

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
                                    : LongestPrefix(idx, reg, hashes, requester_instance, requester_worker);
}

Hit Lookup::LongestPrefix(const index::ChunkIndex& idx, const registry::Registry& reg,
                          std::span<const std::uint64_t> hashes, std::string_view requester_instance,
                          std::int64_t requester_worker) {
  // Keep kPrefetchAhead home slots in flight: the random reads of a long
  // request then overlap instead of waiting one after another.
  idx.Prefetch(hashes.subspan(0, std::min(kPrefetchAhead, hashes.size())));
  std::array<HolderId, kMaxCandidates> cand;
  std::size_t n = 0;
  idx.ForEachHolder(hashes[0], [&](HolderId h) {
    const auto& info = reg.holder(h);
    if (!info.live || n == kMaxCandidates) return;
    const auto& w = reg.worker(info.worker);
    if (w.instance_id == requester_instance || !w.peer_init_url) return;
    cand[n++] = h;
  });
  if (n == 0) return Hit{};
  std::size_t len = 1;
  std::array<bool, kMaxCandidates> keep;
  for (std::size_t i = 1; i < hashes.size(); ++i) {
    if (i + kPrefetchAhead < hashes.size()) idx.Prefetch(hashes.subspan(i + kPrefetchAhead, 1));
    keep.fill(false);
    std::size_t kept = 0;
    idx.ForEachHolder(hashes[i], [&](HolderId h) {
      for (std::size_t c = 0; c < n; ++c)
        if (cand[c] == h && !keep[c]) { keep[c] = true; ++kept; }
    });
    if (kept == 0) break;
    std::size_t w = 0;
    for (std::size_t c = 0; c < n; ++c)
      if (keep[c]) cand[w++] = cand[c];
    n = w;
    len = i + 1;
  }
  // Every remaining candidate holds exactly `len` leading hashes.
  std::size_t same_rank = 0;
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
