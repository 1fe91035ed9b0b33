// The controller core: one thread drains every client's request ring, applies
// KV events to the chunk index, answers registrations, heartbeats, full-sync
// requests and P2P lookups into the client's reply ring, and forgets a
// client's workers when the client goes away (or stops heartbeating).
//
// Scheduling: each pass first serves the requests (lookups, registrations,
// heartbeats, control records) waiting at the head of every client's ring,
// then every client's ring round-robin with a record and byte budget, so one
// flooding worker cannot starve the others. While KV events are applied, every
// `request_check_ops` ops (across batches, inside a 10,000-op batch too) the
// controller again serves the requests waiting at the head of the other
// clients' rings: a lookup waits behind at most that much ingest work.
// Registrations, deregistrations and full-sync messages are left for the full
// pass, so a batch applies to the worker it named at its start, wholly. Within
// one client's ring everything stays in order.
//
// Full sync (LMCache's protocol, lmcache-controller.md §3.8, with fixes): a
// worker is asked to full-sync through its heartbeat reply after a controller
// start (every worker once, until the global completed fraction reaches
// `full_sync_threshold`), after it re-registers through a heartbeat, after a
// sequence gap, and after a sync of its stalled past `full_sync_timeout_s`.
// Start retires the location's keys (dropped in slices) and collects the
// batches into a fresh holder; End completes the sync only when no batch is
// missing (Status lists the missing ones, so the worker resends them).
//
// Orchestration (Clear, Pin, Compress, Decompress, Move, Health): the
// controller sends the matching ControlMsg to every worker of the instance as
// a command record (framing.h: kCommand, numbered by the
// controller), gathers the workers' answers as they come, in any order, and
// answers the orchestrator when the last one is in or `command_timeout_s`
// has passed (a silent worker is reported, never waited for). Many fan-outs
// may be in flight; none blocks the loop. CheckFinishMsg reports the state of
// the last `events_remembered` fan-outs by event id.
//
// Replies go back in the framing of their request: a framing::kRequest gets a
// framing::kRequest of the same id, so an orchestrator can keep many requests in
// flight and match answers that finish out of order.
//
// Parts, each owned by the controller and stating its invariants at its top:
// FullSync (src/controller/full_sync.h), FanOuts (src/controller/fan_outs.h),
// the counters (counters.h). A handler gets where its reply goes (ReplyRoute)
// as a parameter; nothing about "the request being handled" is controller
// state, since a KV batch lets other clients' requests in while it is applied.
//
// Hot paths (BatchedKVOperationMsg, BatchedP2PLookupMsg) decode straight from
// ring memory into reused views and encode the reply straight into the reply
// ring: no heap allocation per message once warmed up.
//
// Thread-safety: a Controller belongs to one thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <iterator>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kvring/protocol/chunk_hash.h"
#include "kvring/index/index.h"
#include "kvring/index/p2p.h"
#include "kvring/protocol/codec.h"
#include "kvring/index/registry.h"
#include "kvring/shm/transport.h"
#include "kvring/controller/change_feed.h"
#include "kvring/controller/remote_feed.h"
#include "kvring/controller/counters.h"
#include "kvring/shm/framing.h"

namespace kvring::controller {

class FullSync;     // src/controller/full_sync.h
class FanOuts;      // src/controller/fan_outs.h
struct ReplyRoute;  // src/controller/fan_outs.h: a client, in the framing of its request

// How long an idle controller sleeps in poll() at a time. A client that
// publishes while it sleeps rings the doorbell (transport.h), so this bounds
// only the housekeeping period and how soon a stop flag is seen.
inline constexpr std::chrono::milliseconds kIdleSleep{20};

struct Options {
  transport::ListenerOptions listen;
  p2p::Policy policy = p2p::Policy::kLongestPrefix;
  index::Options index;
  std::size_t ring_budget_records = 64;        // per client per pass: one flooder cannot starve others
  std::size_t ring_budget_bytes = 1u << 20;    // likewise, in payload bytes
  // KV ops applied between scans for waiting requests: 8 keeps a 32-hash
  // lookup under full-speed ingest near 2 us p50 (16: ~2.4 us), for a few %
  // of ingest with idle clients connected (docs/PERFORMANCE.md).
  std::size_t request_check_ops = 8;
  std::size_t drop_slice = 4096;               // keys of a departed worker dropped per pass
  double heartbeat_interval_s = 10;            // told to workers in RegisterRetMsg.extra_config
  // > 0: a worker that has heartbeated and then stays silent this long is
  // deregistered (LMCache's --lmcache-worker-timeout). A worker that never
  // heartbeats is never judged by it: it may simply not be configured to.
  double worker_timeout_s = 0;
  double full_sync_threshold = 0.8;            // completed fraction at which workers may leave freeze
  double full_sync_timeout_s = 30;             // a sync idle this long fails and is asked again
  bool full_sync_on_start = true;              // ask every worker to full-sync (rebuilds after a restart)
  std::uint32_t full_sync_max_batches = 1u << 20;  // a Start announcing more is refused
  protocol::DecodeLimits limits;
  // LookupMsg turns tokens into chunk hashes as LMCache's controller does:
  // chunks of 256 tokens (the last one partial), CPython's builtin hash, the
  // first chunk chained to NONE_HASH (0 when vLLM is not importable there).
  std::uint32_t lookup_chunk_size = 256;
  std::int64_t lookup_none_hash = 0;
  double command_timeout_s = 5;          // a fan-out's deadline for its workers' answers
  std::size_t max_fanouts = 4096;        // in flight at once; more are refused
  std::size_t events_remembered = 4096;  // finished fan-outs CheckFinishMsg can report
  // Receives log lines (problems with a client are rate-limited to one per
  // client per second). Null: no logging.
  std::function<void(std::string_view)> log;
  // Where the local holders' changes go (change_feed.h: the cluster
  // publisher reads them); null: nowhere. Owned by the caller, outliving the
  // controller; written only by the controller's thread.
  feed::ChangeFeed* change_feed = nullptr;
  // The other cluster nodes' changes (remote_feed.h: the cluster subscriber
  // writes them), applied as remote holders; null: none. Owned by the caller.
  feed::RemoteFeed* remote_feed = nullptr;
  std::size_t resync_keys_per_pass = 32768;        // keys a change-feed dump (resync) writes per pass at most
  std::size_t remote_records_per_pass = 256;       // remote records applied per pass at most
  std::size_t max_remote_nodes = 1024;             // more nodes are refused (counted)
  std::size_t max_remote_holders_per_node = 65536; // a node announcing more is refused (counted)
};

enum class SyncState : std::uint8_t { kNone, kRequested, kSyncing, kCompleted, kFailed };

class Controller {
 public:
  static Result<std::unique_ptr<Controller>> Start(const Options& options);
  ~Controller();

  // One pass over transport events and every client's ring. Returns the
  // number of records handled (0: idle).
  std::size_t PollOnce(std::chrono::milliseconds idle_wait = std::chrono::milliseconds(0));
  // Runs passes until `stop`; spins `spin_passes` idle passes, then for
  // `spin_time` more, then sleeps in the
  // transport's poll for up to kIdleSleep at a time (woken at once by a
  // client's doorbell). The time matters where requests come every hundred
  // microseconds or so (the ZeroMQ front: a wake-up from poll() costs tens of
  // microseconds here, a third of a ZeroMQ round trip).
  // `after_pass`, when set, runs after every pass with whether it was idle
  // (kvringd's stats lines and start-up checks).
  void Run(const std::atomic<bool>& stop, std::uint32_t spin_passes = 2000,
           const std::function<void(bool idle)>& after_pass = {},
           std::chrono::microseconds spin_time = std::chrono::microseconds(0));

  const Stats& stats() const { return stats_; }
  const index::ChunkIndex& index() const { return index_; }
  const registry::Registry& registry() const { return registry_; }
  transport::Listener& listener() { return *listener_; }
  const Options& options() const { return options_; }
  // The counters as one JSON object (what `kvring stats --json` prints).
  std::string StatsJson() const;
  // Everything in Prometheus' text format (`GET /metrics`): LMCache's gauge
  // names where LMCache has one, kvring_* for the rest.
  std::string MetricsText() const;
  // An order-independent digest of every (key, instance, worker, location)
  // pair: equal digests mean equal indexes (for restart tests and operators).
  std::uint64_t IndexDigest() const;
  // Live workers whose full sync is in `state` (LMCache's gauges count
  // kSyncing and kCompleted).
  std::size_t WorkersIn(SyncState state) const;
  bool full_sync_all_pending() const;
  // Another part of the daemon (the ZeroMQ front) whose figures belong in
  // MetricsText() (Prometheus lines appended) and StatsJson() (a JSON object
  // under `key`). The functions run on the controller's thread.
  void AddStatsSource(std::string key, std::function<std::string()> stats_json,
                      std::function<std::string()> metrics_text) {
    extras_.push_back({std::move(key), std::move(stats_json), std::move(metrics_text)});
  }
  std::size_t fanouts_in_flight() const;

 private:
  // A registered worker as the controller sees it (its full sync: FullSync).
  struct WorkerState {
    std::uint64_t client = 0;   // the connection that registered the worker: its owner
    bool owner_is_front = false;  // the ZeroMQ front (two connections, many peers)
    double last_heartbeat_mono = 0;
    bool heartbeats = false;  // has sent a HeartbeatMsg: worker_timeout_s applies
  };

  explicit Controller(const Options& options);
  std::size_t ServeClient(transport::Client& c, std::size_t max_records, std::size_t max_bytes, bool requests_only);
  std::size_t ServeWaitingRequests(const transport::Client* busy);
  void HandleRecord(transport::Client& c, const ring::Record& r, const std::optional<framing::Correlated>& corr,
                    const Result<std::string_view>& tag);
  // A request's handlers get where its reply goes (`route`: this client, in
  // the framing of the request) as a parameter: a KV batch lets other
  // clients' requests in while it is applied, so nothing about "the current
  // request" may live in the controller.
  void HandleMessage(transport::Client& c, const ReplyRoute& route, std::span<const std::uint8_t> msg,
                     std::string_view tag);
  // A KV batch is applied in slices: the scheduler (ServeKvBatch) serves the
  // requests waiting at other clients' heads between them, so a lookup waits
  // behind at most request_check_ops ops. The batch's view points into its
  // client's ring, which is not released until the whole batch is applied.
  struct KvBatch {
    std::size_t next = 0;  // the next op to apply
    std::uint32_t worker = 0;
    index::HolderId holder = 0;
    bool gap_counted = false;  // as LMCache: a batch's first gap counts once
  };
  void ServeKvBatch(transport::Client& c, std::span<const std::uint8_t> bytes);
  // Finds the batch's worker and holder (again, after requests may have
  // retired them); false: the ops from b->next on are dropped and counted.
  bool ResolveKvBatch(transport::Client& c, KvBatch* b);
  // Applies ops until request_check_ops have gone by since requests were
  // last looked for; true when ops remain.
  bool ApplyKvSlice(KvBatch* b);
  void HandleP2P(transport::Client& c, const ReplyRoute& route, std::span<const std::uint8_t> bytes);
  void HandleGeneric(transport::Client& c, const ReplyRoute& route, protocol::Message&& m);
  void HandleControl(transport::Client& c, std::span<const std::uint8_t> bytes);
  void HandleHeartbeat(transport::Client& c, const ReplyRoute& route, const protocol::HeartbeatMsg& hb);
  void HandleFullSync(transport::Client& c, const ReplyRoute& route, protocol::Message& m);
  void HandleTokenLookup(transport::Client& c, const ReplyRoute& route, const protocol::LookupMsg& m);
  void HandleQuery(transport::Client& c, const ReplyRoute& route, const protocol::Message& m);
  bool ApplyOp(std::uint32_t worker, index::HolderId holder, protocol::OpType op, std::uint64_t key,
               const protocol::Int& seq, bool* gap_counted);
  void Reply(transport::Client& c, const ReplyRoute& route, const protocol::Message& m);
  // Room for a reply of `bytes` in c's reply ring. False when there is none:
  // counted as reply_ring_full, or, when the client's consumer position is
  // inconsistent, the client is quarantined (as for its request ring).
  bool ClaimReply(transport::Client& c, std::size_t bytes, std::span<std::uint8_t>* out);
  // Writes `m` into c's reply ring as a record of `type` (with `id` when correlated).
  bool Emit(transport::Client& c, std::uint32_t type, std::uint64_t id, const protocol::Message& m);
  // Writes fan-out command `m` for `worker` into c's reply ring: a
  // framing::kCommand, or for a front (which carries many workers) a
  // framing::kRoutedCommand naming the worker.
  bool EmitCommand(transport::Client& c, std::uint64_t id, std::uint32_t worker, const protocol::Message& m);
  // Orchestration (controller_commands.cc).
  void HandleOrchestration(transport::Client& c, const ReplyRoute& route, const protocol::Message& m);
  void HandleCheckFinish(transport::Client& c, const ReplyRoute& route, const protocol::CheckFinishMsg& m);
  void HandleCommandReply(transport::Client& c, std::uint64_t id, std::span<const std::uint8_t> bytes);
  // Settles a part of a fan-out (fan_outs.h); the last one sends its reply.
  void SettlePart(std::uint64_t fanout_id, std::size_t part, bool failed, std::int64_t value, std::string error);
  void ExpireFanOuts(double now);
  void FailCommandsOf(std::uint64_t client_id);
  // The live workers of an instance, sorted by worker id (LMCache's get_workers).
  std::vector<std::uint32_t> WorkersOf(std::string_view instance_id) const;
  void ReplyControl(transport::Client& c, const std::string& json);
  void ReplyError(transport::Client& c, const ReplyRoute& route, const std::string& text);
  void Problem(const transport::Client& c, const std::string& what);
  // Registers or refreshes a worker owned by `owner` (the registering
  // connection's id, or kRemoteClient for another node's worker).
  std::uint32_t UpsertWorker(std::uint64_t owner, bool owner_is_front, const registry::WorkerRecord& rec, bool* is_new);
  // Whether `c` may speak for `worker`; if not, counts and logs the refusal
  // of `what` (and answers an ErrorMsg along `reply_to` when set).
  bool MaySpeakFor(transport::Client& c, std::uint32_t worker, std::string_view what, const ReplyRoute* reply_to);
  void ForgetWorker(std::uint32_t worker);
  void RetireHolder(index::HolderId h);
  // The change feed's holder-up record, before the holder's first keys in it.
  void FeedHolder(index::HolderId h);
  bool WriteHolderUp(index::HolderId h);
  // The change feed's dump (change_feed.h, kResync): begins on the reader's
  // request, writes up to resync_keys_per_pass keys a pass.
  void ContinueResync();
  void FeedWritten(bool written) { ++(written ? stats_.change_feed_records : stats_.change_feed_overflows); }
  // The other nodes' changes (remote_feed.h), applied as remote holders.
  struct RemoteNode {
    std::uint64_t epoch = 0;     // the newest epoch seen; older ones are stale
    std::uint64_t next_seq = 0;  // the sequence number expected next
    bool missed = false;         // a record went missing since the node's state was last reset
    std::unordered_map<std::uint32_t, index::HolderId> holders;  // the node's holder id -> ours
  };
  std::size_t ApplyRemote();  // records applied
  void ApplyRemoteRecord(std::span<const std::uint8_t> bytes);
  void RetireRemoteHolder(index::HolderId h);
  void DropRemoteNode(RemoteNode& n);
  void ClientGone(std::uint64_t client_id);
  void DropSomeKeys();
  void Housekeeping(double now);  // now: CLOCK_MONOTONIC seconds, read once per pass
  double GlobalSyncProgress() const;

  Options options_;
  std::unique_ptr<transport::Listener> listener_;
  registry::Registry registry_;
  index::ChunkIndex index_;
  p2p::Lookup lookup_;
  Stats stats_;
  // Reused buffers of the hot paths.
  protocol::BatchedKVOperationView kv_view_;
  protocol::BatchedP2PLookupKeys p2p_view_;
  std::vector<WorkerState> workers_;          // by worker index
  std::unique_ptr<FullSync> sync_;            // every worker's full sync (src/controller/full_sync.h)
  std::unique_ptr<FanOuts> fan_outs_;         // orchestration fan-outs in flight, and their history
  std::vector<std::int64_t> last_seq_;        // per holder; INT64_MIN: none yet
  std::vector<index::HolderId> dropping_;     // holders whose keys are being dropped
  std::vector<std::uint8_t> fed_holders_;     // by holder: its holder-up is in the change feed
  struct Resync {
    bool active = false;
    std::vector<index::HolderId> holders;  // the fed holders when it began
    std::size_t next = 0;                  // the holder being walked
    index::ChunkIndex::KeyWalk walk;
    std::vector<std::uint64_t> keys;       // one record's keys (reused)
  } resync_;
  std::unordered_map<std::string, RemoteNode> remote_nodes_;  // by node name
  std::size_t ops_since_scan_ = 0;            // KV ops applied since requests were last looked for
  std::size_t next_client_ = 0;               // round-robin start
  std::uint64_t passes_ = 0;                  // stored in every segment each pass while prioritized_ (controller_progress)
  bool prioritized_ = false;                  // this thread runs above normal priority (looked at by Housekeeping)
  double next_housekeeping_ = 0;
  double next_listener_poll_ = 0;
  double started_mono_ = 0;
  // Per-second rates, refreshed by housekeeping (controller_metrics.cc).
  struct RateSample {
    double at = 0;
    std::uint64_t kv_ops = 0, p2p_lookups = 0, token_lookups = 0, messages = 0;
    std::unordered_map<std::uint64_t, std::uint64_t> ring_records;  // (client id << 1 | ring) -> records published
  };
  RateSample rate_prev_;
  double kv_ops_per_s_ = 0, p2p_lookups_per_s_ = 0, token_lookups_per_s_ = 0, messages_per_s_ = 0;
  std::unordered_map<std::uint64_t, double> ring_records_per_s_;  // same keys as RateSample::ring_records
  void SampleRates(double now);
  std::unordered_map<std::uint64_t, double> last_problem_log_;  // client id -> monotonic seconds
  struct Extra {
    std::string key;
    std::function<std::string()> stats_json, metrics_text;
  };
  std::vector<Extra> extras_;
};

}  // namespace kvring::controller
