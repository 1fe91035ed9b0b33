// The controller's remote feed: the other cluster nodes' changes, for the
// controller to apply as remote holders. The cluster subscriber (one thread,
// src/cluster/subscriber.cc) validates each delta message from NATS and pushes
// its records here one by one, with the node, epoch and sequence number they
// came with; the controller drains the feed between passes. The ring is
// process-private memory written only after validation, and the controller
// decodes each record again with feed::DecodeChange (bounds checked) anyway.
//
// Record (one ring record, little-endian):
//
//    0      1          2           2+n        10+n        18+n
//   +------+----------+-----------+-----------+-----------+-----------------------+
//   | what | node len | node      | epoch u64 | seq u64   | change record         |
//   |  u8  |  u8 (n)  | n bytes   |           |           | (change_feed.h)       |
//   +------+----------+-----------+-----------+-----------+-----------------------+
//   what: kRemoteChange, or kRemoteNodeGone (the node's lease expired: all of
//   its holders go; epoch, seq and the change record are absent).
//
// Doorbell: the controller may sleep in poll() (its listener's) when idle.
// Before it does it calls PrepareToSleep() (announces the sleep with a
// seq_cst store, then looks at the ring once more); Publish() stores the
// ring's tail (seq_cst) and then reads the announcement, and rings wake_fd()
// (an eventfd the controller's poll watches) only when it is set. Of the two
// stores one comes first, so either the controller sees the record or the
// subscriber sees the sleeper: no record waits for an unrelated wake-up.
//
// Thread-safety: Push/Gone/Publish/WaitForSpace from one thread (the
// subscriber); HasRecord/Drain/PrepareToSleep/Awake from the controller's.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "kvring/controller/private_ring.h"
#include "kvring/shm/ring.h"
#include "kvring/status.h"

namespace kvring::feed {

inline constexpr std::uint8_t kRemoteChange = 1;
inline constexpr std::uint8_t kRemoteNodeGone = 2;
inline constexpr std::size_t kMaxNodeName = 64;

struct RemoteRecord {
  std::uint8_t what = kRemoteChange;
  std::string_view node;
  std::uint64_t epoch = 0, seq = 0;
  std::span<const std::uint8_t> change;  // kRemoteChange: a change record, not yet decoded
};

[[nodiscard]] Status DecodeRemoteRecord(std::span<const std::uint8_t> bytes, RemoteRecord* out);

class RemoteFeed {
 public:
  static Result<std::unique_ptr<RemoteFeed>> Create(std::size_t capacity);
  ~RemoteFeed();  // closes wake_fd()
  RemoteFeed(const RemoteFeed&) = delete;
  RemoteFeed& operator=(const RemoteFeed&) = delete;

  // ---- subscriber thread ----
  // False when the ring is full now (nothing written: wait and retry) or the
  // node name is longer than kMaxNodeName.
  bool Push(std::string_view node, std::uint64_t epoch, std::uint64_t seq, std::span<const std::uint8_t> change);
  bool Gone(std::string_view node);
  // Makes the pushed records visible and rings the doorbell if the
  // controller announced a sleep.
  void Publish();
  bool WaitForSpace(std::size_t bytes, std::chrono::nanoseconds timeout) {
    return ring_.producer().WaitForSpace(bytes, timeout, 0);
  }

  // ---- controller thread ----
  bool HasRecord() const { return ring_.consumer().HasRecord(); }
  template <typename Fn>
  std::size_t Drain(std::size_t max_records, std::size_t max_bytes, Fn&& fn) {
    return ring_.consumer().Drain(max_records, max_bytes, [&](const ring::Record& r) { fn(r.payload); });
  }
  // The readable descriptor the controller's sleep watches (an eventfd).
  int wake_fd() const { return wake_fd_; }
  // Announces a sleep; returns false when a record is already waiting (do
  // not sleep then). Awake() ends the announcement.
  bool PrepareToSleep();
  void Awake() { consumer_sleeping_.store(false, std::memory_order_relaxed); }  // relaxed: a spurious ring is harmless

 private:
  RemoteFeed(PrivateRing ring, int wake_fd) : ring_(std::move(ring)), wake_fd_(wake_fd) {}
  PrivateRing ring_;
  int wake_fd_;
  std::atomic<bool> consumer_sleeping_{false};
};

}  // namespace kvring::feed
