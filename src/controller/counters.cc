#include "kvring/controller/counters.h"

namespace kvring::controller {
namespace {


// The family kvring_dropped_total ends the table: MetricsText adds its one
// sample that is not a Stats member (over_quota, from the index) after it.
constexpr StatsCounter kStatsCounters[] = {
    {"messages_total", "kvring_messages_total", "", "counter", "records handled", &Stats::messages},
    {"kv_ops_total", "kvring_kv_ops_total", "", "counter", "admit and evict operations applied", &Stats::kv_ops},
    {"p2p_lookups_total", "kvring_p2p_lookups_total", "", "counter", "BatchedP2PLookupMsg answered",
     &Stats::p2p_lookups},
    {"token_lookups_total", "kvring_token_lookups_total", "", "counter", "LookupMsg (POST /lookup) answered",
     &Stats::token_lookups},
    {"errors_total", "kvring_errors_total", "", "counter", "undecodable, unknown or out-of-place messages",
     &Stats::errors},
    {"identity_refused", "kvring_identity_refused_total", "", "counter",
     "messages naming a worker that another connection registered, refused", &Stats::identity_refused},
    {"quarantined_rings", "kvring_quarantined_rings_total", "", "counter", "rings quarantined for corruption",
     &Stats::quarantined_rings},
    {"kv_op_seq_discontinuity_count", "lmcache:cache_controller_kv_op_seq_discontinuity_count", kControllerRoleLabel, "gauge",
     "KV batches whose sequence numbers had a gap", &Stats::seq_discontinuities},
    {"full_sync_requests", "kvring_full_sync_requests_total", "", "counter",
     "FullSyncCommands sent in heartbeat replies", &Stats::full_sync_requests},
    {"full_syncs_started", "kvring_full_syncs_started_total", "", "counter", "full syncs started (accepted)",
     &Stats::full_syncs_started},
    {"full_syncs_completed", "kvring_full_syncs_completed_total", "", "counter", "full syncs completed",
     &Stats::full_syncs_completed},
    {"full_syncs_failed", "kvring_full_syncs_failed_total", "", "counter", "full syncs that stalled past the timeout",
     &Stats::full_syncs_failed},
    {"workers_reaped", "kvring_workers_reaped_total", "", "counter", "workers deregistered for missed heartbeats",
     &Stats::workers_reaped},
    {"control_requests", "kvring_control_requests_total", "", "counter", "kvring control requests (kvring stats, ...)",
     &Stats::control_requests},
    {"fanouts_total", "kvring_fanouts_total", "", "counter", "orchestrator commands fanned out to workers",
     &Stats::fanouts},
    {"commands_sent_total", "kvring_commands_sent_total", "", "counter", "ControlMsgs sent to workers",
     &Stats::commands_sent},
    {"commands_timed_out_total", "kvring_commands_timed_out_total", "", "counter",
     "worker commands unanswered at the deadline", &Stats::commands_timed_out},
    {"commands_failed_total", "kvring_commands_failed_total", "", "counter", "worker commands that failed",
     &Stats::commands_failed},
    {"late_command_replies_total", "kvring_late_command_replies_total", "", "counter",
     "worker answers after the deadline or from the wrong client", &Stats::late_command_replies},
    {"change_feed_records", "kvring_change_feed_records_total", "", "counter",
     "records written to the change feed (the cluster publisher's input)", &Stats::change_feed_records},
    {"change_feed_overflows", "kvring_change_feed_overflows_total", "", "counter",
     "change feed records not written because the feed was full", &Stats::change_feed_overflows},
    {"change_feed_resyncs", "kvring_change_feed_resyncs_total", "", "counter",
     "dumps of the local holders into the change feed (snapshots, repairs)", &Stats::change_feed_resyncs},
    {"remote_resyncs", "kvring_remote_resyncs_total", "", "counter",
     "other nodes' dumps that replaced what this controller had of them", &Stats::remote_resyncs},
    {"remote_records", "kvring_remote_records_total", "", "counter", "other cluster nodes' change records applied",
     &Stats::remote_records},
    {"remote_kv_ops", "kvring_remote_kv_ops_total", "", "counter", "other cluster nodes' admits and evicts applied",
     &Stats::remote_kv_ops},
    {"remote_refused", "kvring_remote_refused_total", "", "counter",
     "other nodes' records refused: undecodable, stale epoch, unknown holder, over a limit", &Stats::remote_refused},
    {"remote_seq_gaps", "kvring_remote_seq_gaps_total", "", "counter",
     "other nodes' records whose sequence number was not the one expected", &Stats::remote_seq_gaps},
    {"remote_before_dump", "kvring_remote_before_dump_total", "", "counter",
     "other nodes' records of holders unknown here, skipped until the node's next dump (the stream's start was cut "
     "or aged out)",
     &Stats::remote_before_dump},
    {"remote_duplicates", "kvring_remote_duplicates_total", "", "counter",
     "other nodes' records delivered again and skipped", &Stats::remote_duplicates},
    {"remote_node_restarts", "kvring_remote_node_restarts_total", "", "counter",
     "cluster nodes seen with a newer epoch (their old holders dropped)", &Stats::remote_node_restarts},
    {"remote_nodes_gone", "kvring_remote_nodes_gone_total", "", "counter",
     "cluster nodes whose lease expired (their holders dropped)", &Stats::remote_nodes_gone},
    {"dropped_unknown_worker", "kvring_dropped_total", "{reason=\"unknown_worker\"}", "counter",
     "messages or operations dropped, by reason", &Stats::dropped_unknown_worker},
    {"dropped_syncing", "kvring_dropped_total", "{reason=\"syncing\"}", "counter", "", &Stats::dropped_syncing},
    {"dropped_not_owner", "kvring_dropped_total", "{reason=\"not_owner\"}", "counter", "", &Stats::dropped_not_owner},
    {"reply_ring_full", "kvring_dropped_total", "{reason=\"reply_ring_full\"}", "counter", "",
     &Stats::reply_ring_full},
};

}  // namespace

std::span<const StatsCounter> StatsCounters() { return kStatsCounters; }

}  // namespace kvring::controller
