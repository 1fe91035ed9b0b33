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
// Thread-safety: Push/Gone/Publish from one thread (the subscriber), Drain
// from the controller's thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

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
  ~RemoteFeed();
  RemoteFeed(const RemoteFeed&) = delete;
  RemoteFeed& operator=(const RemoteFeed&) = delete;

  // ---- subscriber thread ----
  // False when the ring is full now (nothing written: wait and retry) or the
  // node name is longer than kMaxNodeName.
  bool Push(std::string_view node, std::uint64_t epoch, std::uint64_t seq, std::span<const std::uint8_t> change);
  bool Gone(std::string_view node);
  void Publish() { producer_.Publish(); }
  bool WaitForSpace(std::size_t bytes, std::chrono::nanoseconds timeout) {
    return producer_.WaitForSpace(bytes, timeout, 0);
  }

  // ---- controller thread ----
  bool HasRecord() const { return consumer_.HasRecord(); }
  template <typename Fn>
  std::size_t Drain(std::size_t max_records, std::size_t max_bytes, Fn&& fn) {
    return consumer_.Drain(max_records, max_bytes, [&](const ring::Record& r) { fn(r.payload); });
  }

 private:
  RemoteFeed(void* region, std::size_t capacity);
  void* region_;
  ring::Producer producer_;
  ring::Consumer consumer_;
};

}  // namespace kvring::feed
