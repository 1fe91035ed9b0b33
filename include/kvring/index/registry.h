// Registry: the instances, workers and storage locations the controller
// knows, in registration order (LMCache's RegistryTree keeps insertion order
// and its P2P rule depends on it), and the interning of (instance, worker,
// location) into the dense HolderIds the chunk index stores.
//
// Thread-safety: none; owned by the single controller thread.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvring/index/index.h"

namespace kvring::registry {

using index::HolderId;

struct WorkerRecord {
  std::string instance_id;
  std::int64_t worker_id = 0;
  std::string ip;
  std::int64_t port = 0;
  std::optional<std::string> peer_init_url;
  double registration_time = 0;
  double last_heartbeat_time = 0;
  std::uint64_t order = 0;  // registration sequence (LMCache's insertion order)
  // "" for this controller's own workers; else the cluster node whose
  // controller owns it (a remote worker, learnt from that node's deltas).
  // Remote workers have a name space of their own: Find never returns one,
  // so no local message can speak for a remote worker or shadow it.
  std::string node;
};

struct HolderInfo {
  std::uint32_t worker = 0;      // index into the worker table
  std::string location;
  std::uint64_t location_order = 0;  // first-seen order of this location within its worker
  bool live = false;
};

class Registry {
 public:
  // Registers a worker or refreshes its address; returns its worker index.
  // `is_new` tells whether it was unknown.
  std::uint32_t Upsert(const WorkerRecord& w, bool* is_new);
  // A local worker (node "") by its LMCache identity.
  std::optional<std::uint32_t> Find(std::string_view instance_id, std::int64_t worker_id) const;
  // A remote worker: Upsert with a non-empty w.node registers one.
  std::optional<std::uint32_t> FindRemote(std::string_view node, std::string_view instance_id,
                                          std::int64_t worker_id) const;
  // Forgets the worker; returns its holders (one per location), now dead:
  // lookups skip them while the index drops their keys in slices, and each is
  // handed back with ReleaseHolder once it holds no key.
  std::vector<HolderId> Remove(std::uint32_t worker);
  void ReleaseHolder(HolderId h);
  // Detaches the worker's holder for `location` (a full sync starts that
  // location afresh): the old holder turns dead like Remove's, and the next
  // Holder(worker, location) interns a new one, so the old keys can drain in
  // slices while the new ones arrive. Returns the old holder, if there was one.
  std::optional<HolderId> RetireHolder(std::uint32_t worker, std::string_view location);

  // The holder for (worker, location), created on first use.
  HolderId Holder(std::uint32_t worker, std::string_view location);
  std::optional<HolderId> FindHolder(std::uint32_t worker, std::string_view location) const;

  const WorkerRecord& worker(std::uint32_t w) const { return workers_[w]; }
  WorkerRecord& worker(std::uint32_t w) { return workers_[w]; }
  const HolderInfo& holder(HolderId h) const { return holders_[h]; }
  bool worker_live(std::uint32_t w) const { return w < live_.size() && live_[w]; }
  std::size_t worker_count() const { return live_workers_; }
  // Live worker indices in registration order.
  std::vector<std::uint32_t> Workers() const;
  // The worker's live holders, in first-seen order of their locations.
  const std::vector<HolderId>& HoldersOf(std::uint32_t worker) const { return holders_of_worker_[worker]; }
  // Live instances in order of first appearance.
  std::vector<std::string> Instances() const;
  // When the instance first appeared (it keeps its place while any of its
  // workers stays registered, as in LMCache); 0 for an unknown instance.
  std::uint64_t InstanceOrder(std::string_view instance_id) const;

 private:
  struct InstanceRecord {
    std::uint64_t order = 0;
    std::size_t workers = 0;
  };
  std::unordered_map<std::string, InstanceRecord> instances_;
  std::vector<WorkerRecord> workers_;
  std::vector<bool> live_;
  std::vector<std::uint32_t> free_workers_;
  std::unordered_map<std::string, std::uint32_t> by_name_;  // "<instance>\0<worker id>"
  std::unordered_map<std::string, std::uint32_t> by_remote_name_;  // "<node>\0<instance>\0<worker id>"
  std::vector<HolderInfo> holders_;
  std::vector<HolderId> free_holders_;
  std::unordered_map<std::string, HolderId> holder_by_name_;  // "<worker index>\0<location>"
  std::vector<std::vector<HolderId>> holders_of_worker_;
  mutable std::string scratch_;  // map keys are built here (see registry.cc)
  std::uint64_t next_order_ = 1;
  std::uint64_t next_location_order_ = 1;
  std::size_t live_workers_ = 0;
};

}  // namespace kvring::registry
