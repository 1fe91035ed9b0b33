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
// Thread-safety: Start and the destructor from one thread; stats() and
// epoch() from any.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
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
  std::chrono::milliseconds retry_wait{200};       // between attempts while NATS is away
  // The node's lease in the bucket KVRING_<cluster>_LEASES: refreshed every
  // lease_ttl / 3; a node whose lease is gone is dropped by the others.
  std::chrono::milliseconds lease_ttl{3000};
  std::function<void(std::string_view)> log;
};

struct PublisherStats {
  std::uint64_t messages = 0;        // acknowledged by the stream
  std::uint64_t records = 0;         // change records in them
  std::uint64_t bytes = 0;
  std::uint64_t publish_failures = 0;  // attempts that failed (each retried)
  std::uint64_t last_seq = 0;        // the last acknowledged record's sequence number
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
  void RefreshLease();

  PublisherOptions options_;
  feed::ChangeFeed* feed_;
  std::unique_ptr<Nats> nats_;
  std::string subject_, stream_;
  std::uint64_t epoch_ = 0;
  std::uint64_t next_seq_ = 1;
  bool stream_ready_ = false;
  std::chrono::steady_clock::time_point next_lease_{};
  std::atomic<bool> stop_{false};
  // Written by the publisher thread, read by stats() (relaxed: counters).
  std::atomic<std::uint64_t> messages_{0}, records_{0}, bytes_{0}, failures_{0}, last_seq_{0};
  std::thread thread_;
};

}  // namespace kvring::cluster
