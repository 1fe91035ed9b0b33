#include "controller/full_sync.h"

namespace kvring::controller {

void FullSync::Track(std::uint32_t w, bool is_new) {
  if (w >= syncs_.size()) syncs_.resize(w + 1);
  if (is_new) syncs_[w] = Sync{};
}

void FullSync::Forget(std::uint32_t w) {
  if (w < syncs_.size()) syncs_[w] = Sync{};
}

const char* FullSync::ReasonToAsk(std::uint32_t w) const {
  const Sync& s = syncs_[w];
  if (restart_wide_ && (s.state == SyncState::kNone || s.state == SyncState::kFailed)) return "controller_restart";
  if (s.state == SyncState::kFailed) return "sync_failed_retry";
  if (s.seq_gap && s.state != SyncState::kSyncing && s.state != SyncState::kRequested) return "kv_op_seq_gap";
  return nullptr;
}

void FullSync::Asked(std::uint32_t w, double now) {
  Sync& s = syncs_[w];
  s.state = SyncState::kRequested;
  s.activity_mono = now;
  s.seq_gap = false;
  ++stats_->full_sync_requests;
}

std::string FullSync::Start(std::uint32_t w, std::string_view sync_id, std::int64_t batch_count,
                            std::int64_t total_keys, double now) {
  Sync& s = syncs_[w];
  if (s.state == SyncState::kSyncing && s.id != sync_id)
    return "Failed to start sync: worker already syncing with sync_id " + s.id;
  if (batch_count < 0 || batch_count > o_.max_batches || total_keys < 0)
    return "Failed to start sync: batch_count " + std::to_string(batch_count) + " / total_keys " +
           std::to_string(total_keys) + " out of range (batch_count at most " + std::to_string(o_.max_batches) + ")";
  s.state = SyncState::kSyncing;
  s.id = std::string(sync_id);
  s.activity_mono = now;
  s.expected_keys = total_keys;
  s.received_keys = 0;
  s.batches.assign(static_cast<std::size_t>(batch_count), false);
  s.batches_missing = static_cast<std::size_t>(batch_count);
  s.end_seen = false;
  s.seq_gap = false;
  ++stats_->full_syncs_started;
  return {};
}

bool FullSync::Running(std::uint32_t w, std::string_view sync_id) const {
  return syncs_[w].state == SyncState::kSyncing && syncs_[w].id == sync_id;
}

void FullSync::CompleteIfWhole(Sync& s) {
  if (s.end_seen && s.batches_missing == 0) {
    s.state = SyncState::kCompleted;
    ++stats_->full_syncs_completed;
  }
}

bool FullSync::Batch(std::uint32_t w, std::int64_t batch_id, std::size_t keys, double now) {
  Sync& s = syncs_[w];
  if (batch_id < 0 || static_cast<std::size_t>(batch_id) >= s.batches.size()) return false;
  if (!s.batches[static_cast<std::size_t>(batch_id)]) {
    s.batches[static_cast<std::size_t>(batch_id)] = true;
    --s.batches_missing;
    s.received_keys += static_cast<std::int64_t>(keys);
  }
  s.activity_mono = now;
  CompleteIfWhole(s);  // a resent batch completes an ended sync
  return true;
}

std::int64_t FullSync::End(std::uint32_t w, double now) {
  Sync& s = syncs_[w];
  s.end_seen = true;
  s.activity_mono = now;
  // Unlike LMCache, End with missing batches does not complete the sync:
  // Status lists them and the worker resends.
  CompleteIfWhole(s);
  return s.received_keys;
}

bool FullSync::Completed(std::uint32_t w, std::string_view sync_id) const {
  return syncs_[w].state == SyncState::kCompleted && syncs_[w].id == sync_id;
}

std::vector<std::size_t> FullSync::MissingBatches(std::uint32_t w, std::string_view sync_id) const {
  std::vector<std::size_t> out;
  if (!Running(w, sync_id)) return out;
  const Sync& s = syncs_[w];
  for (std::size_t i = 0; i < s.batches.size(); ++i)
    if (!s.batches[i]) out.push_back(i);
  return out;
}

bool FullSync::MayLeaveFreeze(double global_progress) {
  const bool may = global_progress >= o_.threshold;
  if (may) restart_wide_ = false;  // as LMCache: the restart-wide request ends here
  return may;
}

}  // namespace kvring::controller
