#include "kvring/index/registry.h"

#include <algorithm>
#include <charconv>

namespace kvring::registry {
namespace {

// Map keys are built in a caller-owned buffer: lookups on the hot path reuse
// its capacity instead of allocating a string per message.
const std::string& WorkerKey(std::string_view instance, std::int64_t worker_id, std::string* buf) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, worker_id);
  (void)ec;
  buf->assign(instance);
  buf->push_back('\0');
  buf->append(digits, end);
  return *buf;
}
const std::string& RemoteWorkerKey(std::string_view node, std::string_view instance, std::int64_t worker_id,
                                   std::string* buf) {
  std::string tail;
  WorkerKey(instance, worker_id, &tail);
  buf->assign(node);
  buf->push_back('\0');
  buf->append(tail);
  return *buf;
}
const std::string& HolderKey(std::uint32_t worker, std::string_view location, std::string* buf) {
  char digits[16];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, worker);
  (void)ec;
  buf->assign(digits, end);
  buf->push_back('\0');
  buf->append(location);
  return *buf;
}

}  // namespace

std::uint32_t Registry::Upsert(const WorkerRecord& w, bool* is_new) {
  auto& names = w.node.empty() ? by_name_ : by_remote_name_;
  std::string key = w.node.empty() ? WorkerKey(w.instance_id, w.worker_id, &scratch_)
                                   : RemoteWorkerKey(w.node, w.instance_id, w.worker_id, &scratch_);
  auto it = names.find(key);
  if (it != names.end()) {
    // Unlike LMCache, a worker that comes back on a new address is updated.
    WorkerRecord& cur = workers_[it->second];
    cur.ip = w.ip;
    cur.port = w.port;
    cur.peer_init_url = w.peer_init_url;
    *is_new = false;
    return it->second;
  }
  std::uint32_t idx;
  if (!free_workers_.empty()) {
    idx = free_workers_.back();
    free_workers_.pop_back();
  } else {
    idx = static_cast<std::uint32_t>(workers_.size());
    workers_.emplace_back();
    live_.push_back(false);
    holders_of_worker_.emplace_back();
  }
  workers_[idx] = w;
  workers_[idx].order = next_order_++;
  live_[idx] = true;
  ++live_workers_;
  names.emplace(std::move(key), idx);
  InstanceRecord& inst = instances_[w.instance_id];
  if (inst.workers++ == 0) inst.order = workers_[idx].order;
  *is_new = true;
  return idx;
}

std::optional<std::uint32_t> Registry::Find(std::string_view instance_id, std::int64_t worker_id) const {
  auto it = by_name_.find(WorkerKey(instance_id, worker_id, &scratch_));
  if (it == by_name_.end()) return std::nullopt;
  return it->second;
}

std::optional<std::uint32_t> Registry::FindRemote(std::string_view node, std::string_view instance_id,
                                                  std::int64_t worker_id) const {
  auto it = by_remote_name_.find(RemoteWorkerKey(node, instance_id, worker_id, &scratch_));
  if (it == by_remote_name_.end()) return std::nullopt;
  return it->second;
}

std::vector<HolderId> Registry::Remove(std::uint32_t worker) {
  std::vector<HolderId> gone;
  if (!worker_live(worker)) return gone;
  const WorkerRecord& rec = workers_[worker];
  if (rec.node.empty()) by_name_.erase(WorkerKey(rec.instance_id, rec.worker_id, &scratch_));
  else by_remote_name_.erase(RemoteWorkerKey(rec.node, rec.instance_id, rec.worker_id, &scratch_));
  auto inst = instances_.find(workers_[worker].instance_id);
  if (inst != instances_.end() && --inst->second.workers == 0) instances_.erase(inst);
  for (HolderId h : holders_of_worker_[worker]) {
    holders_[h].live = false;
    holder_by_name_.erase(HolderKey(worker, holders_[h].location, &scratch_));
    gone.push_back(h);
  }
  holders_of_worker_[worker].clear();
  live_[worker] = false;
  --live_workers_;
  free_workers_.push_back(worker);
  return gone;
}

void Registry::ReleaseHolder(HolderId h) {
  if (h < holders_.size() && !holders_[h].live) {
    holders_[h] = HolderInfo{};
    free_holders_.push_back(h);
  }
}

HolderId Registry::Holder(std::uint32_t worker, std::string_view location) {
  auto it = holder_by_name_.find(HolderKey(worker, location, &scratch_));
  if (it != holder_by_name_.end()) return it->second;
  std::string key = scratch_;
  HolderId h;
  if (!free_holders_.empty()) {
    h = free_holders_.back();
    free_holders_.pop_back();
  } else {
    h = static_cast<HolderId>(holders_.size());
    holders_.emplace_back();
  }
  holders_[h] = HolderInfo{worker, std::string(location), next_location_order_++, true};
  holders_of_worker_[worker].push_back(h);
  holder_by_name_.emplace(std::move(key), h);
  return h;
}

std::optional<HolderId> Registry::RetireHolder(std::uint32_t worker, std::string_view location) {
  auto it = holder_by_name_.find(HolderKey(worker, location, &scratch_));
  if (it == holder_by_name_.end()) return std::nullopt;
  HolderId h = it->second;
  holder_by_name_.erase(it);
  holders_[h].live = false;
  auto& mine = holders_of_worker_[worker];
  mine.erase(std::find(mine.begin(), mine.end(), h));
  return h;
}

std::vector<std::string> Registry::Instances() const {
  std::vector<std::pair<std::uint64_t, std::string>> v;
  for (const auto& [name, rec] : instances_) v.emplace_back(rec.order, name);
  std::sort(v.begin(), v.end());
  std::vector<std::string> out;
  for (auto& [order, name] : v) out.push_back(std::move(name));
  return out;
}

std::optional<HolderId> Registry::FindHolder(std::uint32_t worker, std::string_view location) const {
  auto it = holder_by_name_.find(HolderKey(worker, location, &scratch_));
  if (it == holder_by_name_.end()) return std::nullopt;
  return it->second;
}

std::vector<std::uint32_t> Registry::Workers() const {
  std::vector<std::uint32_t> out;
  for (std::uint32_t w = 0; w < workers_.size(); ++w)
    if (live_[w]) out.push_back(w);
  std::sort(out.begin(), out.end(), [&](std::uint32_t a, std::uint32_t b) { return workers_[a].order < workers_[b].order; });
  return out;
}

std::uint64_t Registry::InstanceOrder(std::string_view instance_id) const {
  scratch_.assign(instance_id);
  auto it = instances_.find(scratch_);
  return it == instances_.end() ? 0 : it->second.order;
}

}  // namespace kvring::registry
