// Full sync, per worker: LMCache's protocol (lmcache-controller.md §3.8) with
// kvring's fixes (docs/LMCACHE-SEMANTICS.md). Owned by the Controller and
// used on its thread only. Bookkeeping alone: it neither touches the index
// nor replies; the controller does both from what these calls return.
//
// A worker is asked to sync through its heartbeat reply (ReasonToAsk):
// after a controller start (every worker once, while the restart-wide request
// holds), after a sequence gap in its KV events, and after a failed sync.
// Start announces batch_count batches and total_keys; Batch marks one in;
// End may come before the last batch.
//
// Invariants:
//   - every worker index has one Sync, reset to kNone by Forget;
//   - while kSyncing: batches.size() is the announced batch_count (at most
//     max_batches), batches_missing counts its false entries, received_keys
//     sums the keys of each batch's first copy;
//   - kCompleted only once End was seen and no batch is missing (a resent
//     batch completes an ended sync);
//   - a sync with no Start/Batch/End for timeout_s fails, as does a request
//     never started; the next heartbeat asks again (LMCache's timeout check
//     never runs);
//   - the restart-wide request ends when a Status reply lets workers leave
//     freeze (global progress at the threshold), as LMCache's does; progress
//     counts only workers heard from within two heartbeat intervals.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvring/controller/controller.h"

namespace kvring::controller {

class FullSync {
 public:
  struct Options {
    double threshold = 0.8;
    double timeout_s = 30;
    double heartbeat_interval_s = 10;
    std::uint32_t max_batches = 1u << 20;
    bool on_start = true;
  };
  FullSync(const Options& options, Stats* stats) : o_(options), stats_(stats), restart_wide_(options.on_start) {}

  // A worker index the registry handed out (new: fresh state), or one forgotten.
  void Track(std::uint32_t w, bool is_new);
  void Forget(std::uint32_t w);

  SyncState state(std::uint32_t w) const { return w < syncs_.size() ? syncs_[w].state : SyncState::kNone; }
  bool syncing(std::uint32_t w) const { return state(w) == SyncState::kSyncing; }
  bool restart_wide() const { return restart_wide_; }
  std::size_t batches_missing(std::uint32_t w) const { return syncs_[w].batches_missing; }

  // A gap in the worker's KV event sequence: ask it for a sync next time.
  void SequenceGap(std::uint32_t w) { syncs_[w].seq_gap = true; }
  // Whether the worker's heartbeat reply should carry a FullSyncCommand, and
  // why (LMCache's reason strings); nullptr: no.
  const char* ReasonToAsk(std::uint32_t w) const;
  // A FullSyncCommand went out (reason: ReasonToAsk's, or "worker_re_registered").
  void Asked(std::uint32_t w, double now);

  // FullSyncStartMsg: "" when accepted (the controller then retires the
  // location's holder), else why not.
  std::string Start(std::uint32_t w, std::string_view sync_id, std::int64_t batch_count, std::int64_t total_keys,
                    double now);
  // Whether `sync_id` is the worker's running sync (Batch and End need one).
  bool Running(std::uint32_t w, std::string_view sync_id) const;
  // FullSyncBatchMsg of a running sync: false when batch_id is outside the
  // announced count.
  bool Batch(std::uint32_t w, std::int64_t batch_id, std::size_t keys, double now);
  // FullSyncEndMsg of a running sync: the keys the batches brought (the
  // controller warns when End reports another number).
  std::int64_t End(std::uint32_t w, double now);
  // FullSyncStatusMsg: whether `sync_id` completed, and the batches it still misses.
  bool Completed(std::uint32_t w, std::string_view sync_id) const;
  std::vector<std::size_t> MissingBatches(std::uint32_t w, std::string_view sync_id) const;
  // Answers a status query's can_exit_freeze; true ends the restart-wide request.
  bool MayLeaveFreeze(double global_progress);

  // Fraction of the awaited workers whose sync completed (1 when none is
  // awaited). `live(w)` says whether a worker index is registered,
  // `last_heartbeat(w)` when it last heartbeated (monotonic seconds).
  template <typename Live, typename LastHeartbeat>
  double GlobalProgress(double now, const Live& live, const LastHeartbeat& last_heartbeat) const {
    const double silent_after = 2 * std::max(o_.heartbeat_interval_s, 0.05);
    std::size_t awaited = 0, completed = 0;
    for (std::uint32_t w = 0; w < syncs_.size(); ++w) {
      if (!live(w)) continue;
      const Sync& s = syncs_[w];
      const double last_heard = std::max(last_heartbeat(w), s.activity_mono);  // sync messages count
      if (s.state != SyncState::kCompleted && now - last_heard > silent_after) continue;
      ++awaited;
      completed += s.state == SyncState::kCompleted ? 1 : 0;
    }
    return awaited == 0 ? 1.0 : static_cast<double>(completed) / static_cast<double>(awaited);
  }
  // Fails syncs stalled past timeout_s (and requests never started). `log`
  // receives a line per failed sync.
  template <typename Log>
  void Expire(std::uint32_t w, double now, const Log& log) {
    Sync& s = syncs_[w];
    if (o_.timeout_s <= 0 || now - s.activity_mono <= o_.timeout_s) return;
    if (s.state == SyncState::kSyncing) {
      s.state = SyncState::kFailed;
      ++stats_->full_syncs_failed;
      log("full sync " + s.id + " stalled: failed, will be asked again");
    } else if (s.state == SyncState::kRequested) {
      s.state = SyncState::kFailed;  // asked, never started: ask again
    }
  }

 private:
  struct Sync {
    SyncState state = SyncState::kNone;
    bool seq_gap = false;      // ask for a sync in the next heartbeat reply
    double activity_mono = 0;  // last Start/Batch/End, or when the sync was asked for
    std::string id;
    std::int64_t expected_keys = 0;
    std::int64_t received_keys = 0;
    std::vector<bool> batches;  // received flags, one per announced batch
    std::size_t batches_missing = 0;
    bool end_seen = false;
  };
  void CompleteIfWhole(Sync& s);

  Options o_;
  Stats* stats_;
  bool restart_wide_;
  std::vector<Sync> syncs_;  // by worker index
};

}  // namespace kvring::controller
