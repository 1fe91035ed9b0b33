// The cluster publisher: one thread that drains the controller's change feed
// (controller/change_feed.h) and publishes it, batched into delta messages
// (delta_message.h), to the node's subject `kvring.<cluster>.<node>` of the
// cluster's JetStream stream `KVRING_<cluster>` (created if missing, with the
// given replication). The controller never waits on it: when NATS is slow or
// gone, the feed's ring is the buffer; when the ring is full the controller
// counts an overflow and the feed turns lost().
//
// Delivery: each message is published with js_Publish and kept until the
// stream acknowledges it (retried every `retry_wait` while NATS is away), so
// an acknowledged message is in the stream, and the records of one epoch
// reach it in order, without gaps, as long as the feed is not lost().
//
// Liveness: the thread also keeps the node's lease (key = node, value = its
// epoch) in the cluster's lease bucket, refreshed every lease_ttl / 3; the
// other nodes' subscribers drop this node's holders once it is gone.
//
// Where a joiner starts: the node's lease (delta_message.h, LeaseValue) names
// the stream sequence from which the stream rebuilds the node exactly: its
// epoch's first message (an empty one, sent at start) and then its latest
// dump's. Subscribers that join start at the smallest of the live nodes'.
//
// Snapshots (when snapshot_min_keys is set): the publisher asks the
// controller for a dump of its local holders (change_feed.h, kResync ...
// kResyncEnd) whenever the key operations published since the last dump reach
// the larger of snapshot_min_keys and the last dump's size, so a joiner reads
// about one node state and the changes since, never the node's history; the
// dumps cost at most as much as the changes (that rule). With cut_at_dumps,
// the node's subject is also purged below each dump once acknowledged.
// Retention by age (when retention is set; no purge, so it suits Debian's
// nats-server 2.9): the stream (created by the first node, MaxAge =
// retention) drops messages older than the retention, and every node dumps
// its holders at least every retention / 3, idle or not, so the stream
// always holds a complete recent dump of every live node. A joiner that
// starts after the start of a node's history aged out applies what it reads
// up to that node's next dump (keys of holders it has not seen are skipped,
// counted), which then replaces everything (controller.cc: a reader that
// missed records resets at a dump).
// Always: a forced dump (readers drop what they had first) repairs a lost
// feed (overflowed while NATS was slow or away) and a lease found lapsed
// while the node was alive (the others dropped it).
//
// Thread-safety: Start and the destructor from one thread; stats() and
// epoch() from any.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>

#include "kvring/controller/change_feed.h"
#include "kvring/status.h"

namespace kvring::cluster {

struct PublisherOptions {
  std::string nats_url = "nats://127.0.0.1:4222";  // a comma-separated list for a NATS cluster
  std::string cluster;                             // [A-Za-z0-9_-]{1,64}
  std::string node;                                // likewise
  std::string creds_file;                          // NATS user credentials (JWT + seed); "" none
  std::string tls_ca_file, tls_cert_file, tls_key_file;  // "" none; a CA turns TLS on
  int stream_replicas = 1;                         // 3 for a three-server NATS cluster
  std::size_t max_message_bytes = 256 << 10;       // below NATS' default max_payload (1 MiB)
  // Batching under load (Kafka's linger.ms): when a message is to be filled
  // and at least min_message_bytes / 16 of changes wait but less than
  // min_message_bytes, the publisher waits up to `linger` for more.
  // nats-server's cost is mostly per message (its scheduler wakes for each),
  // so fewer, larger messages leave more of a shared machine to the
  // controller (docs/PERFORMANCE.md "Cluster"); a change waits at most
  // `linger` longer to leave, and a trickle (less than a sixteenth waiting)
  // goes at once. linger 0: every message goes as soon as the last is
  // acknowledged.
  std::size_t min_message_bytes = 64 << 10;
  std::chrono::microseconds linger{1000};
  std::chrono::milliseconds retry_wait{200};       // between attempts while NATS is away
  // The node's lease in the bucket KVRING_<cluster>_LEASES: refreshed every
  // lease_ttl / 3; a node whose lease is gone is dropped by the others.
  std::chrono::milliseconds lease_ttl{3000};
  // Dumps (snapshots) once this many key operations were published since
  // the last, or the last dump's key count if larger; 0 (the default):
  // never, a joiner replays the node's history from its epoch's start
  // (bounded by retention, if set). Forced dumps (repairs) happen either way.
  std::uint64_t snapshot_min_keys = 0;
  // Purge the node's subject below each dump (and, at a clean start, what its
  // earlier epochs left), and have subscribers purge gone nodes' subjects.
  // Off by default: Debian 12's nats-server (2.9.10) stalls every consumer
  // with a backlog at each purge (docs/PERFORMANCE.md "Cluster"), i.e.
  // exactly the nodes catching up; retention (below) bounds the stream without.
  bool cut_at_dumps = false;
  // Messages older than this leave the stream (its MaxAge, set when this
  // node creates it: all nodes should agree), and this node dumps its
  // holders at least every retention / 3. 0 (the default): the stream keeps
  // everything. Choose it well above the time a dump takes (a few seconds
  // for millions of keys) and above how long a node may be away and still
  // catch up by replay rather than from dumps.
  std::chrono::milliseconds retention{0};
  std::function<void(std::string_view)> log;
};

struct PublisherStats {
  std::uint64_t messages = 0;        // acknowledged by the stream
  std::uint64_t records = 0;         // change records in them
  std::uint64_t bytes = 0;
  std::uint64_t publish_failures = 0;  // attempts that failed (each retried)
  std::uint64_t last_seq = 0;        // the last acknowledged record's sequence number
  std::uint64_t snapshots = 0;       // dumps asked for because the log grew (kSnapshot)
  std::uint64_t repairs = 0;         // forced dumps asked for: the feed overflowed, or the lease lapsed
  std::uint64_t purges = 0;          // the node's subject cut below a dump
  std::uint64_t lease_lapses = 0;    // the lease found gone while this node was alive
  std::uint64_t rebuild_from_seq = 0;  // what the lease says (LeaseValue): the stream rebuilds this node from there
  bool connected = false;
};

// Whether `name` may be a cluster or node name (a NATS subject token and a
// part of a stream name).
bool ValidClusterName(std::string_view name);

class Publisher {
 public:
  // Connects in the background (NATS need not be up yet) and starts the thread.
  static Result<std::unique_ptr<Publisher>> Start(const PublisherOptions& options, feed::ChangeFeed* feed);
  ~Publisher();  // publishes what the feed holds if NATS is there (bounded), then stops
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  PublisherStats stats() const;
  // For `kvring stats --json` ("cluster": {...}) and /metrics (kvring_cluster_*).
  std::string StatsJson() const;
  std::string MetricsText() const;
  std::uint64_t epoch() const { return epoch_; }
  const std::string& subject() const { return subject_; }
  const std::string& stream() const { return stream_; }

 private:
  struct Nats;
  Publisher(const PublisherOptions& options, feed::ChangeFeed* feed);
  void Run();
  bool EnsureStream();
  bool PublishPending();
  void Linger();  // waits (bounded by linger) for a message's worth of changes
  void RefreshLease();
  // What a record just drained from the feed means for dumps: counts keys,
  // notes a kResync for the purge, asks for a dump when one is due.
  void NoteRecord(std::span<const std::uint8_t> record);
  void AskForDump(feed::ResyncRequest r);
  void PurgeBelow(std::uint64_t stream_seq);
  // With retention: asks for a dump once retention / 3 passed since the last.
  void DumpWhenDue();

  PublisherOptions options_;
  feed::ChangeFeed* feed_;
  std::unique_ptr<Nats> nats_;
  std::string subject_, stream_;
  std::uint64_t epoch_ = 0;
  std::uint64_t next_seq_ = 1;
  bool stream_ready_ = false;
  std::chrono::steady_clock::time_point next_lease_{};
  std::chrono::steady_clock::time_point next_dump_{};  // with retention: when the next dump is due
  std::uint64_t lease_rev_ = 0;         // the lease's revision as last written (0: not yet)
  std::uint64_t overflows_seen_ = 0;    // the feed's overflows already answered with a forced dump
  std::uint64_t keys_since_dump_ = 0;   // key operations drained since the last kResync
  std::uint64_t dump_keys_ = 0;         // keys between the last kResync and its kResyncEnd
  bool in_dump_ = false;                // between a kResync and its kResyncEnd
  bool dump_asked_ = false;             // asked, its kResync not drained yet
  bool pending_has_resync_ = false;     // the pending message carries a kResync
  bool started_ = false;                // the epoch's first (empty) message is acknowledged
  std::atomic<bool> stop_{false};
  // Written by the publisher thread, read by stats() (relaxed: counters).
  std::atomic<std::uint64_t> messages_{0}, records_{0}, bytes_{0}, failures_{0}, last_seq_{0};
  std::atomic<std::uint64_t> snapshots_{0}, repairs_{0}, purges_{0}, lease_lapses_{0}, rebuild_from_{0};
  std::thread thread_;
};

}  // namespace kvring::cluster
