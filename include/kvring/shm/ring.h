// Single-producer/single-consumer byte ring for variable-length records, over
// memory laid out as in ring_descriptor.h (normally a shared-memory segment).
//
// Zero-copy: the producer claims space, writes its payload in place (a message
// is msgpack-encoded straight into ring memory) and commits (the record is
// visible from then on), and publishes its position once per batch (which
// wakes a sleeping consumer); the consumer peeks at records in place (decoded straight from
// ring memory) and releases them, publishing its position once per batch.
// "Full" and "empty" are results, not errors.
//
// Trust: the two sides may be different processes and either may be faulty.
// Every position and length read from shared memory is loaded once into a
// local and validated before use; an invalid value marks the ring corrupt
// (sticky, with a reason), and from then on the side that saw it touches
// nothing but its own private state. Nothing here aborts or throws.
//
// Thread-safety: one Producer and one Consumer per ring, each used by one
// thread at a time. The control words are the only shared state.
#pragma once

#include <atomic>
#include <bit>
#include <chrono>
#include <functional>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>

#include "kvring/shm/ring_descriptor.h"
#include "kvring/status.h"

namespace kvring::ring {

// Sets up a fresh ring region (control words zeroed). Only the creator calls
// this, before the region is published to the peer.
Status InitializeRegion(void* region, std::size_t capacity);
// Checks capacity (power of two within limits) and max_record (<= capacity/4
// minus the header, the default; > 0).
Status ValidateGeometry(std::size_t capacity, std::size_t max_record);
inline std::size_t DefaultMaxRecord(std::size_t capacity) { return capacity / 4 - kRecordHeaderBytes; }

enum class ClaimResult : std::uint8_t {
  kOk,
  kFull,      // no room now: retry after the consumer frees space
  kTooLarge,  // payload above max_record: will never fit
  kCorrupt,   // the shared positions are invalid; see corruption()
};

class Producer {
 public:
  Producer(void* region, std::size_t capacity, std::size_t max_record);

  // Reserves room for a payload of up to `size` bytes. On kOk, `*payload` is
  // writable ring memory until Commit() or Abort().
  ClaimResult TryClaim(std::size_t size, std::span<std::uint8_t>* payload);
  // Finishes the claimed record with its first `used` bytes (used <= claimed).
  // The record is visible to a consumer that polls from then on; Publish()
  // is what wakes a sleeping one.
  void Commit(std::size_t used, std::uint32_t type);  // type: not kRecordPadding
  void Abort();
  // Claim + copy + commit.
  ClaimResult TryWrite(std::span<const std::uint8_t> payload, std::uint32_t type);

  // Advances the published tail over every committed record (one store: what
  // inspection and a sleeping consumer go by) and wakes the consumer if it
  // sleeps. Returns whether anything new was published (the store is a
  // seq_cst one: a caller may pair a seq_cst load after it with a sleeper).
  bool Publish();
  // Moves the lines of the last committed record out of this core's caches
  // to the cache all cores share (CLDEMOTE, where the CPU has it; elsewhere
  // nothing), so that the consumer reads them from there instead of snooping
  // this core for each. A hint for after Publish(), for a record this side
  // will not touch again: the consumer may already be reading it.
  void DemoteLastRecord() const;
  // Blocks until at least `bytes` of payload could be claimed, the ring turns
  // corrupt, or the timeout passes (spins first, then sleeps on a futex).
  // Returns whether there is room.
  // (The spin budget adapts per thread: src/shm/spin_wait.h; a reply-like wait.)
  bool WaitForSpace(std::size_t bytes, std::chrono::nanoseconds timeout, std::uint32_t spin = 4000);

  // Whether `bytes` of the ring are free now (the consumer's position is
  // read again when the cached one says no). A pacing hint for a producer
  // that wants to leave room for others' records, not a claim.
  bool HasRoom(std::size_t bytes) { return bytes <= FreeBytes() || (RefreshHead() && bytes <= FreeBytes()); }

  bool corrupt() const { return !corruption_.empty(); }
  const std::string& corruption() const { return corruption_; }
  std::uint64_t committed_position() const { return tail_; }
  std::size_t max_record() const { return max_record_; }

 private:
  bool RefreshHead();
  void SkipCommittedRecords();
  std::size_t FreeBytes() const { return capacity_ - static_cast<std::size_t>(tail_ - head_cache_); }

  RingControl* ctl_;
  std::uint8_t* data_;
  std::size_t capacity_;
  std::size_t max_record_;
  std::uint64_t tail_ = 0;        // private: committed, maybe not yet published
  std::uint64_t published_ = 0;   // the tail last stored for the consumer
  std::uint64_t head_cache_ = 0;  // last head seen (consumer's line is read only when needed)
  std::uint64_t records_ = 0;     // records committed (statistics)
  std::uint64_t claim_pos_ = 0;   // position of the claimed record's header (kept after Commit: the last record's)
  std::size_t claim_size_ = 0;
  bool claimed_ = false;
  std::string corruption_;
};

struct Record {
  std::uint32_t type = 0;
  std::span<const std::uint8_t> payload;  // ring memory: valid until Release()
};

enum class PollResult : std::uint8_t { kRecord, kEmpty, kCorrupt };

class Consumer {
 public:
  Consumer(void* region, std::size_t capacity, std::size_t max_record);

  // The next record, in place, without consuming it.
  PollResult Peek(Record* out);
  // Consumes the record returned by the last Peek (private until PublishHead).
  void Release();
  // Frees the released space for the producer (one release store) and wakes
  // the producer if it waits for space.
  void PublishHead();

  // Hands up to `max_records` records / `max_bytes` payload bytes to fn(const
  // Record&) in order, releases them and publishes once. Returns the count.
  template <typename Fn>
  std::size_t Drain(std::size_t max_records, std::size_t max_bytes, Fn&& fn) {
    std::size_t n = 0, bytes = 0;
    Record r;
    while (n < max_records && bytes < max_bytes && Peek(&r) == PollResult::kRecord) {
      fn(static_cast<const Record&>(r));
      bytes += r.payload.size();
      Release();
      ++n;
    }
    if (n) PublishHead();
    return n;
  }

  // Blocks until a record is available, the ring turns corrupt, or the
  // timeout passes (spins `spin` polls first, then sleeps on a futex).
  // Returns whether data is available.
  // `for_reply`: the wait starts with a request just sent (a late record then
  // teaches the thread to spin less, src/shm/spin_wait.h); otherwise the caller
  // may have been idle, and only being descheduled while spinning does.
  // `peer_progress`: a word the producer advances while it runs (the
  // controller's pass count, segment_descriptor.h); on a machine with more
  // runnable threads than cores the wait keeps polling while it moves and
  // gives the core away only once it stands still.
  bool WaitForData(std::chrono::nanoseconds timeout, std::uint32_t spin = 4000, bool for_reply = false,
                   const std::atomic<std::uint64_t>* peer_progress = nullptr);

  // Whether a record is waiting, without consuming it. When none is, it loads
  // the producer's published position with seq_cst: the sleeper's half of the
  // Dekker pairs (WaitForData, and the controller's doorbell).
  bool HasData();
  // Whether a record is waiting, by its header alone (one cache line: what a
  // spinning consumer polls).
  bool HasRecord() const;

  bool corrupt() const { return !corruption_.empty(); }
  const std::string& corruption() const { return corruption_; }
  std::uint64_t read_position() const { return head_; }

 private:
  bool RefreshTail();
  void MarkCorrupt(std::string why);

  RingControl* ctl_;
  const std::uint8_t* data_;
  std::size_t capacity_;
  std::size_t max_record_;
  std::uint64_t head_ = 0;        // private read position
  std::uint64_t tail_cache_ = 0;  // last published tail seen (may lag head_)
  std::size_t peeked_bytes_ = 0;  // aligned size of the peeked record, 0 if none
  // Empty peeks check the published tail once per kTailCheckPeriod.
  static constexpr std::uint32_t kTailCheckPeriod = 64;
  std::uint32_t empty_peeks_ = 0;
  std::uint64_t records_ = 0;     // records released (statistics)
  std::string corruption_;
};

// Read-only look at a ring (for `kvring inspect`): positions as published,
// and the records pending between them, validated like a consumer would.
struct RingSnapshot {
  std::uint64_t head = 0;
  std::uint64_t tail = 0;
  std::uint64_t records_published = 0;  // as the producer reports it (not validated)
  std::uint64_t records_consumed = 0;
  bool consumer_waiting = false;
  bool producer_waiting = false;
  std::string problem;  // empty when the positions are consistent
  // Bytes published and not consumed (0 while the consumer runs ahead of the
  // published tail, over records committed and not yet published).
  std::uint64_t pending_bytes() const { return tail > head ? tail - head : 0; }
};
RingSnapshot Snapshot(const void* region, std::size_t capacity);
// Calls fn(const Record&) for up to `max_records` records from the published
// head without consuming anything. Returns a problem description or "".
std::string PeekPending(const void* region, std::size_t capacity, std::size_t max_record,
                        std::size_t max_records, const std::function<void(const Record&)>& fn);

}  // namespace kvring::ring
