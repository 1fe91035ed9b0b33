// The controller's counters: one Stats value owned by the controller and
// written only on its thread, and one table (StatsCounters) naming every
// counter once for `kvring stats --json` (Controller::StatsJson) and
// Prometheus (Controller::MetricsText), so the two lists cannot drift apart.
//
// Invariants: every std::uint64_t member of Stats is in the table exactly
// once (test Controller.EveryStatsCounterIsInTheJsonAndInTheMetricsOnce);
// counters only grow; entries of one metric family are adjacent in the table
// (the exposition format wants a family's samples together).
//
// Thread-safety: Stats is a plain value of the controller's thread; the table
// is constant.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <span>

namespace kvring::controller {

// Service time of lookups inside the controller (decode to reply encoded), in
// Prometheus' cumulative-bucket form.
struct LatencyBuckets {
  static constexpr double kBoundsSeconds[] = {1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 1e-2, 1e-1};
  static constexpr std::size_t kBounds = std::size(kBoundsSeconds);
  std::uint64_t le[kBounds] = {};  // observations <= each bound (cumulative)
  std::uint64_t count = 0;
  double sum_seconds = 0;
  void Record(double seconds) {
    for (std::size_t i = kBounds; i > 0 && seconds <= kBoundsSeconds[i - 1]; --i) ++le[i - 1];
    ++count;
    sum_seconds += seconds;
  }
};

struct Stats {
  std::uint64_t messages = 0;
  std::uint64_t kv_ops = 0;
  std::uint64_t p2p_lookups = 0;
  std::uint64_t errors = 0;            // undecodable, unknown or out-of-place messages
  std::uint64_t dropped_unknown_worker = 0;
  std::uint64_t dropped_not_owner = 0;  // KV ops naming a worker another connection registered
  std::uint64_t identity_refused = 0;   // messages naming such a worker (a KV batch counts once)
  std::uint64_t dropped_syncing = 0;   // KV ops of a worker in the middle of a full sync
  std::uint64_t seq_discontinuities = 0;
  std::uint64_t quarantined_rings = 0;
  std::uint64_t reply_ring_full = 0;
  std::uint64_t full_syncs_started = 0;
  std::uint64_t full_syncs_completed = 0;
  std::uint64_t full_syncs_failed = 0;  // timed out
  std::uint64_t full_sync_requests = 0; // FullSyncCommands sent in heartbeat replies
  std::uint64_t workers_reaped = 0;     // missed-heartbeat timeouts
  std::uint64_t control_requests = 0;
  std::uint64_t fanouts = 0;               // orchestrator commands fanned out to workers
  std::uint64_t commands_sent = 0;         // ControlMsgs sent to workers
  std::uint64_t commands_timed_out = 0;    // ... not answered before the deadline
  std::uint64_t commands_failed = 0;       // ... answered ErrorMsg, wrong or undecodable, undeliverable
  std::uint64_t late_command_replies = 0;  // answers after the deadline or from the wrong client
  std::uint64_t token_lookups = 0;         // LookupMsg
  std::uint64_t change_feed_records = 0;   // records written to the change feed (cluster publisher)
  std::uint64_t change_feed_overflows = 0; // ... not written: the feed was full (the reader needs a snapshot)
  std::uint64_t change_feed_resyncs = 0;   // dumps of the local holders begun (the reader asked)
  std::uint64_t remote_resyncs = 0;        // other nodes' dumps that reset what this controller had of them
  std::uint64_t remote_records = 0;        // other nodes' change records applied
  std::uint64_t remote_kv_ops = 0;         // ... their admits and evicts
  std::uint64_t remote_refused = 0;        // ... refused: undecodable, stale epoch, unknown holder, over a limit
  std::uint64_t remote_seq_gaps = 0;       // ... whose sequence number was past the one expected
  std::uint64_t remote_before_dump = 0;    // ... of a holder unknown here while a dump is awaited (its
                                           //     holder-up was cut or aged out of the stream), skipped
  std::uint64_t remote_duplicates = 0;     // ... already applied (delivered again), skipped
  std::uint64_t remote_node_restarts = 0;  // a node seen with a newer epoch: its old holders dropped
  std::uint64_t remote_nodes_gone = 0;     // a node's lease expired: its holders dropped
  LatencyBuckets p2p_latency;
  LatencyBuckets token_lookup_latency;
};

// Every Stats counter once: its key in `kvring stats --json` (StatsJson()),
// its Prometheus series in MetricsText() and its help text. Both are made
// from this table, so the lists cannot drift apart. Entries of one metric
// family are adjacent (the exposition format wants a family's samples
// together).
struct StatsCounter {
  const char* json_key;
  const char* metric;  // the family's name
  const char* labels;  // "" or e.g. "{reason=\"syncing\"}"
  const char* type;    // "counter" or "gauge"
  const char* help;
  std::uint64_t Stats::*member;
};
std::span<const StatsCounter> StatsCounters();
// The label LMCache's controller gauges carry (dashboards select on it).
inline constexpr const char* kControllerRoleLabel = "{role=\"controller\"}";

}  // namespace kvring::controller
