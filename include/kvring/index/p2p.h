// P2P lookup: which peer holds the longest prefix of a request's chunk hashes.
//
// kLongestPrefix (kvring's default): among holders outside the requester's
// instance that have a peer_init_url, the (instance, worker, location)
// holding the longest contiguous prefix of `hashes`; ties prefer a holder of
// this node over a cluster's remote one (registry: WorkerRecord::node), then
// the requester's worker_id (same TP rank), then rotate among equal peers to
// spread load. Cost: prefix length x holders per key, independent of the
// number of workers or keys: the hashes are probed in prefetched batches, and
// where the candidates' key lists hold the prefix in the order it was admitted
// (a worker stores a request's chunks in order), the lookup walks the lists
// instead, eight hashes a cache line (p2p.cc).
//
// kLMCache: LMCache's rule exactly (lmcache-controller.md §3.4): the first
// holder of hashes[0] in registration order outside the requester's instance
// (TP rank ignored); a miss if it has no peer_init_url; the hit count is that
// one holder's contiguous prefix.
//
// Thread-safety: a Lookup belongs to the controller thread.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "kvring/index/index.h"
#include "kvring/index/registry.h"

namespace kvring::p2p {

enum class Policy : std::uint8_t { kLongestPrefix, kLMCache };

struct Hit {
  std::string_view instance_id;  // empty on a miss; views into the registry
  std::string_view location;
  std::uint64_t num_hit_chunks = 0;
  std::string_view peer_init_url;
  index::HolderId holder = 0;
  bool found() const { return num_hit_chunks > 0; }
};

class Lookup {
 public:
  Hit Run(const index::ChunkIndex& idx, const registry::Registry& reg, std::span<const std::uint64_t> hashes,
          std::string_view requester_instance, std::int64_t requester_worker, Policy policy);

 private:
  // kGroups: whether some key of the index has a holder group, whose header
  // and entries the lookup then prefetches too (a loop of its own, so that an
  // index without groups runs none of that).
  template <bool kGroups>
  Hit LongestPrefix(const index::ChunkIndex& idx, const registry::Registry& reg,
                    std::span<const std::uint64_t> hashes, std::string_view requester_instance,
                    std::int64_t requester_worker);
  Hit LMCacheRule(const index::ChunkIndex& idx, const registry::Registry& reg,
                  std::span<const std::uint64_t> hashes, std::string_view requester_instance);
  std::uint64_t rotate_ = 0;
};

}  // namespace kvring::p2p
