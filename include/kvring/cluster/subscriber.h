// The cluster subscriber: one thread that reads every other node's subject of
// the cluster's JetStream stream (`kvring.<cluster>.*`, one ordered consumer),
// validates each delta message whole
// (delta_message.h) and hands its records to the controller through the
// remote feed (controller/remote_feed.h), which applies them as remote
// holders. Its own node's subject is skipped. Garbage (a hostile or broken
// publisher) is counted and dropped; nothing of it reaches the controller.
//
// Where it starts: at the smallest "rebuild from" sequence of the live
// nodes' leases (delta_message.h, LeaseValue: each node's epoch start or its
// latest dump), or at the stream's start when a lease does not say; a node
// whose records it then first meets mid-epoch is rebuilt at its dump (the
// controller's rule for readers that missed records). After a lost
// subscription it resumes after the last message it read.
//
// Liveness: every lease_ttl / 3 it looks up the lease of each node it has
// heard from (the bucket the publishers keep); a node whose lease is gone
// (expired, or given back at a clean stop) is reported to the controller
// (RemoteFeed::Gone), which drops its holders. While NATS is away nobody is
// declared gone.
//
// Backpressure: when the remote feed is full the thread waits for room
// (bounded waits, the stop flag looked at between them): the stream keeps
// the messages, nothing is lost.
//
// Thread-safety: Start and the destructor from one thread; stats() from any.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "kvring/cluster/publisher.h"
#include "kvring/controller/remote_feed.h"
#include "kvring/status.h"

namespace kvring::cluster {

struct SubscriberStats {
  std::uint64_t messages = 0;   // other nodes' delta messages taken apart
  std::uint64_t records = 0;    // their records handed to the controller
  std::uint64_t garbage = 0;    // messages refused (invalid, or on a subject that names no node)
  std::uint64_t own = 0;        // this node's own messages, skipped
  std::uint64_t nodes_gone = 0; // nodes whose lease was found gone (their holders dropped)
  std::uint64_t last_lag_us = 0;  // the last remote message: from its arrival in the stream to here
  std::uint64_t purges = 0;     // gone nodes' subjects purged (up to their last message read here)
  std::uint64_t start_seq = 0;  // the stream sequence the consumer was (last) made to start at
  bool subscribed = false;
};

class Subscriber {
 public:
  // The connection options (URL, credentials, TLS, names) are the publisher's.
  static Result<std::unique_ptr<Subscriber>> Start(const PublisherOptions& options, feed::RemoteFeed* feed);
  ~Subscriber();
  Subscriber(const Subscriber&) = delete;
  Subscriber& operator=(const Subscriber&) = delete;

  SubscriberStats stats() const;
  std::string StatsJson() const;
  std::string MetricsText() const;

 private:
  struct Nats;
  Subscriber(const PublisherOptions& options, feed::RemoteFeed* feed);
  void Run();
  void Handle(std::string_view subject, std::uint64_t stream_seq, std::span<const std::uint8_t> bytes);
  void CheckLeases();
  // Where a new consumer starts (see the top of this file).
  std::uint64_t StartSequence();
  template <typename Push>
  bool PushWhenRoom(std::size_t bytes, Push&& push);

  PublisherOptions options_;
  feed::RemoteFeed* feed_;
  std::unique_ptr<Nats> nats_;
  std::string prefix_;  // "kvring.<cluster>."
  std::atomic<bool> stop_{false};
  std::atomic<bool> subscribed_{false};
  std::atomic<std::uint64_t> messages_{0}, records_{0}, garbage_{0}, own_{0}, nodes_gone_{0}, last_lag_us_{0}, purges_{0},
      start_seq_{0};
  std::uint64_t resume_seq_ = 0;  // after the last message read (0: none yet); the subscriber thread's
  // The nodes heard from, and whether their lease was last found gone (the
  // subscriber thread's own).
  struct NodeSeen {
    bool gone = false;                // its lease was last found gone
    std::uint64_t last_stream_seq = 0;  // the stream sequence of its last message read
  };
  std::unordered_map<std::string, NodeSeen> nodes_;
  std::chrono::steady_clock::time_point next_lease_check_{};
  std::thread thread_;
};

}  // namespace kvring::cluster
