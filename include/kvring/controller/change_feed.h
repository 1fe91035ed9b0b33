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
//   kKeys       body: count u32 | count x (op u8: 0 admit, 1 evict | key u64)
//
// A holder id names one (worker, location) of this controller while it is up;
// after kHolderDown the id may name another holder after a new kHolderUp.
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

#include "kvring/protocol/messages.h"
#include "kvring/shm/ring.h"
#include "kvring/status.h"

namespace kvring::feed {

enum class ChangeKind : std::uint8_t { kHolderUp = 1, kHolderDown = 2, kKeys = 3 };
inline constexpr std::uint32_t kChangeRecordType = 1;
inline constexpr std::size_t kMaxText = 1024;
inline constexpr std::size_t kKeyEntryBytes = 9;  // op u8 + key u64
inline constexpr std::size_t kRecordHeadBytes = 5;
// A KV batch longer than this is written as several records, so every record
// stays under kMaxRecordBytes (the cluster's messages are bounded by it).
inline constexpr std::size_t kMaxKeysPerRecord = 8192;
inline constexpr std::size_t kMaxHolderUpBytes = kRecordHeadBytes + 8 + 3 * (2 + kMaxText);
inline constexpr std::size_t kMaxRecordBytes =
    std::max(kMaxHolderUpBytes, kRecordHeadBytes + 4 + kMaxKeysPerRecord * kKeyEntryBytes);

// One record, decoded in place (views into the record's bytes).
struct Change {
  ChangeKind kind = ChangeKind::kKeys;
  std::uint32_t holder = 0;
  // kHolderUp
  std::int64_t worker_id = 0;
  std::string_view instance_id, location, peer_init_url;
  // kKeys: count entries of kKeyEntryBytes; see KeyAt.
  std::uint32_t count = 0;
  std::span<const std::uint8_t> entries;

  protocol::OpType OpAt(std::size_t i) const {
    return entries[i * kKeyEntryBytes] == 0 ? protocol::OpType::kAdmit : protocol::OpType::kEvict;
  }
  std::uint64_t KeyAt(std::size_t i) const {
    std::uint64_t k;
    std::memcpy(&k, entries.data() + i * kKeyEntryBytes + 1, 8);
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
  ~ChangeFeed();
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
  // Makes the records appended since the last call visible to the reader
  // (one store) and wakes it if it sleeps.
  void Publish() { producer_.Publish(); }

  // ---- reader thread ----
  // Hands each record's bytes (valid during the call) to fn, in order.
  template <typename Fn>
  std::size_t Drain(std::size_t max_records, std::size_t max_bytes, Fn&& fn) {
    return consumer_.Drain(max_records, max_bytes, [&](const ring::Record& r) { fn(r.payload); });
  }
  bool WaitForData(std::chrono::nanoseconds timeout) { return consumer_.WaitForData(timeout, 0); }

  // ---- any thread ----
  std::uint64_t records() const { return records_.load(std::memory_order_relaxed); }
  std::uint64_t overflows() const { return overflows_.load(std::memory_order_relaxed); }
  bool lost() const { return overflows() != 0; }

 private:
  ChangeFeed(void* region, std::size_t capacity);
  // Claims a record of `size` bytes or counts an overflow.
  std::uint8_t* Claim(std::size_t size);
  template <typename Entry>
  bool KeyRecords(std::uint32_t holder, std::span<const Entry> entries);
  void Commit(std::size_t size);

  void* region_;
  ring::Producer producer_;
  ring::Consumer consumer_;
  std::atomic<std::uint64_t> records_{0};
  std::atomic<std::uint64_t> overflows_{0};
};

}  // namespace kvring::feed
