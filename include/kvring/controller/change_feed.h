// The controller's change feed: what its index learns about local holders,
// in order, for a reader on another thread of the same process (the cluster
// publisher, src/cluster/publisher.cc), without the controller ever waiting.
//
// The controller (one thread) appends records to an in-process SPSC ring
// (kvring's byte ring over private heap memory) and publishes once per pass;
// the reader drains it. When the ring is full the record is not written: the
// feed counts an overflow and stays `lost()` (sticky), so the reader knows the
// feed no longer tells the whole story and must fall back to a snapshot.
//
// Record format (one ring record, type kChangeRecordType; little-endian).
// The same bytes travel inside the cluster's delta messages, so this header is
// shared by the writer (controller) and every reader (publisher, consumers):
//
//    0      1              5
//   +------+--------------+-------------------------------------------+
//   | kind | holder (u32) | body by kind                              |
//   +------+--------------+-------------------------------------------+
//   kHolderUp   body: worker_id i64 | instance | location | peer_init_url
//                     (each text: u16 length + bytes, at most kMaxText;
//                      an absent peer_init_url is length 0)
//   kHolderDown body: none (the holder's keys are gone with it)
//   kKeys       body: count u32 | count x key u64 | ops: ceil(count / 8)
//                     bytes, bit i (byte i / 8, bit i % 8) of key i: 0 admit,
//                     1 evict; the last byte's unused bits are 0. (8.125
//                     bytes a key: what the cluster's messages carry most.)
//   kResync     body: forced u8 (holder 0). A dump of the controller's
//               local holders follows, interleaved with the changes made
//               meanwhile: kHolderUp for each, then their keys as kKeys
//               admits, then kResyncEnd. A reader that starts at kResync
//               (a joiner, after the stream was cut there) rebuilds the
//               node's holdings exactly by applying everything in order.
//               forced 1: what came before is wrong (the feed overflowed,
//               the node's lease lapsed): every reader drops what it had of
//               the node first. forced 0 (a periodic snapshot): a reader
//               that missed nothing may keep what it has (the dump only
//               repeats it).
//   kResyncEnd  body: none (holder 0)
//
// A holder id names one (worker, location) of this controller while it is up;
// after kHolderDown the id may name another holder after a new kHolderUp. A
// kHolderUp that repeats a live id with the same worker and location (a
// dump's) changes nothing.
//
// Resync requests: the reader thread asks (RequestResync), the controller
// takes the request at its next pass (TakeResyncRequest) and writes the dump
// over the following passes, leaving at least half the ring to its changes.
//
// Thread-safety: the Append*/Publish side belongs to the controller thread,
// the Drain/WaitForData side to one reader thread; the counters are atomics
// any thread may read.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstring>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string_view>

#include "kvring/controller/private_ring.h"
#include "kvring/protocol/messages.h"
#include "kvring/shm/ring.h"
#include "kvring/status.h"

namespace kvring::feed {

enum class ChangeKind : std::uint8_t { kHolderUp = 1, kHolderDown = 2, kKeys = 3, kResync = 4, kResyncEnd = 5 };
enum class ResyncRequest : std::uint8_t { kNone = 0, kSnapshot = 1, kForced = 2 };
inline constexpr std::uint32_t kChangeRecordType = 1;
inline constexpr std::size_t kMaxText = 1024;
// A kKeys record's body after its count: the keys, then a bit per key.
inline constexpr std::size_t KeysBytes(std::size_t count) { return count * 8 + (count + 7) / 8; }
inline constexpr std::size_t kRecordHeadBytes = 5;
// A whole kKeys record: head, count, keys and op bits.
inline constexpr std::size_t KeysRecordBytes(std::size_t count) { return kRecordHeadBytes + 4 + KeysBytes(count); }
// A KV batch longer than this is written as several records, so every record
// stays under kMaxRecordBytes (the cluster's messages are bounded by it).
inline constexpr std::size_t kMaxKeysPerRecord = 8192;
inline constexpr std::size_t kMaxHolderUpBytes = kRecordHeadBytes + 8 + 3 * (2 + kMaxText);
inline constexpr std::size_t kMaxRecordBytes =
    std::max(kMaxHolderUpBytes, KeysRecordBytes(kMaxKeysPerRecord));

// One record, decoded in place (views into the record's bytes).
struct Change {
  ChangeKind kind = ChangeKind::kKeys;
  std::uint32_t holder = 0;
  // kHolderUp
  std::int64_t worker_id = 0;
  std::string_view instance_id, location, peer_init_url;
  // kKeys: count keys and their op bits; see KeyAt, OpAt.
  std::uint32_t count = 0;
  // kResync
  bool forced = false;
  std::span<const std::uint8_t> keys, ops;

  protocol::OpType OpAt(std::size_t i) const {
    return (ops[i / 8] >> (i % 8)) & 1 ? protocol::OpType::kEvict : protocol::OpType::kAdmit;
  }
  std::uint64_t KeyAt(std::size_t i) const {
    std::uint64_t k;
    std::memcpy(&k, keys.data() + i * 8, 8);
    return k;  // little-endian hosts only (x86_64, aarch64): static_assert in change_feed.cc
  }
};

// Validates a record completely (kind, lengths, counts, no trailing bytes);
// on success `out` views into `bytes`. Garbage gives kProtocol, never a read
// past the end.
[[nodiscard]] Status DecodeChange(std::span<const std::uint8_t> bytes, Change* out);

class ChangeFeed {
 public:
  // `capacity`: ring bytes, a power of two (records up to a quarter of it).
  static Result<std::unique_ptr<ChangeFeed>> Create(std::size_t capacity);
  ChangeFeed(const ChangeFeed&) = delete;
  ChangeFeed& operator=(const ChangeFeed&) = delete;

  // ---- controller thread ----
  // Each returns whether the record was written (false: full, counted).
  bool HolderUp(std::uint32_t holder, std::int64_t worker_id, std::string_view instance_id,
                std::string_view location, std::optional<std::string_view> peer_init_url);
  bool HolderDown(std::uint32_t holder);
  // A KV batch, in order (several records when longer than kMaxKeysPerRecord).
  bool Keys(std::uint32_t holder, std::span<const protocol::KVOpEvent> ops);
  bool Admits(std::uint32_t holder, std::span<const protocol::Int> keys);      // a full-sync batch
  bool Key(std::uint32_t holder, protocol::OpType op, std::uint64_t key);
  bool Resync(bool forced);
  bool ResyncEnd();
  // A dump's admits: written only while that leaves half the ring free
  // (false, not counted as an overflow: try again next pass).
  bool DumpAdmits(std::uint32_t holder, std::span<const std::uint64_t> keys);
  // Whether a dump record of `keys` keys would leave half the ring free.
  bool DumpHasRoom(std::size_t keys);
  // Keys a record holds at most: kMaxKeysPerRecord, or fewer in a ring too
  // small for such records (a longer batch is split accordingly).
  std::size_t keys_per_record() const { return keys_per_record_; }
  // The request the reader made since the last call, if any (the stronger
  // of several).
  ResyncRequest TakeResyncRequest() {
    // relaxed: the request carries no data; the dump reads the controller's own state.
    if (resync_request_.load(std::memory_order_relaxed) == 0) return ResyncRequest::kNone;
    return static_cast<ResyncRequest>(resync_request_.exchange(0, std::memory_order_relaxed));
  }
  // Makes the records appended since the last call visible to the reader
  // (one store) and wakes it if it sleeps.
  void Publish() { ring_.producer().Publish(); }

  // ---- reader thread ----
  // Hands each record's bytes (valid during the call) to fn, in order. A
  // kResync record is only ever the first of a call: a dump starts a message
  // of its own, so the stream can be cut right before it.
  template <typename Fn>
  std::size_t Drain(std::size_t max_records, std::size_t max_bytes, Fn&& fn) {
    ring::Consumer& c = ring_.consumer();
    std::size_t n = 0, bytes = 0;
    ring::Record r;
    while (n < max_records && bytes < max_bytes && c.Peek(&r) == ring::PollResult::kRecord) {
      if (n > 0 && !r.payload.empty() && r.payload[0] == static_cast<std::uint8_t>(ChangeKind::kResync)) break;
      fn(r.payload);
      bytes += r.payload.size();
      c.Release();
      ++n;
    }
    if (n) c.PublishHead();
    return n;
  }
  bool WaitForData(std::chrono::nanoseconds timeout) { return ring_.consumer().WaitForData(timeout, 0); }
  // Asks the controller for a dump (kResync ... kResyncEnd).
  void RequestResync(ResyncRequest r) {
    std::uint8_t want = static_cast<std::uint8_t>(r), had = resync_request_.load(std::memory_order_relaxed);
    while (had < want && !resync_request_.compare_exchange_weak(had, want, std::memory_order_relaxed)) {
    }
  }

  // ---- any thread ----
  std::uint64_t records() const { return records_.load(std::memory_order_relaxed); }
  std::uint64_t overflows() const { return overflows_.load(std::memory_order_relaxed); }
  bool lost() const { return overflows() != 0; }
  // What the reader has yet to take: the buffer while NATS is slow or away.
  std::size_t buffered_bytes() const { return ring_.pending_bytes(); }

 private:
  ChangeFeed(PrivateRing ring, std::size_t capacity)
      : ring_(std::move(ring)),
        capacity_(capacity),
        keys_per_record_(std::min(kMaxKeysPerRecord,
                                  // 8 + 1/8 bytes a key, rounded down
                                  (ring::DefaultMaxRecord(capacity) - kRecordHeadBytes - 5) * 8 / 65)) {}
  // Claims a record of `size` bytes or counts an overflow.
  std::uint8_t* Claim(std::size_t size);
  // A kKeys record of `count` keys claimed, its head and count written and
  // its op bits zeroed (all admits): where its keys go, `*ops` where their
  // bits are; null on an overflow (counted). Committed with
  // Commit(KeysRecordBytes(count)).
  std::uint8_t* ClaimKeys(std::uint32_t holder, std::size_t count, std::uint8_t** ops);
  template <typename Entry>
  bool KeyRecords(std::uint32_t holder, std::span<const Entry> entries);
  void Commit(std::size_t size);

  PrivateRing ring_;
  std::size_t capacity_;
  std::size_t keys_per_record_;
  std::atomic<std::uint8_t> resync_request_{0};
  std::atomic<std::uint64_t> records_{0};
  std::atomic<std::uint64_t> overflows_{0};
};

}  // namespace kvring::feed
