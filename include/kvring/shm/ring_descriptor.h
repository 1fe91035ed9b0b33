// Shared-memory layout of one kvring SPSC byte ring. Read by the producer, the
// consumer and the read-only inspection tool; the layout version in the
// segment header (segment_descriptor.h) changes whenever anything here does.
//
//   ring region (offset of the region is 4096-aligned inside its segment)
//   +--------------------------------------------------------------+ 0
//   | tail        u64  published write position (producer's line)  |
//   | records_published u64  records below tail (for inspection)   |
//   | ...                                                          |
//   +--------------------------------------------------------------+ 128
//   | head        u64  published read position (consumer's line)   |
//   | records_consumed u64  records below head (for inspection)    |
//   | ...                                                          |
//   +--------------------------------------------------------------+ 256
//   | consumer_waiting u32  1 while the consumer sleeps (wake-up)  |
//   | producer_waiting u32  1 while the producer waits for space   |
//   | ...                                                          |
//   +--------------------------------------------------------------+ 384
//   | (reserved)                                                   |
//   +--------------------------------------------------------------+ 512 = kRingDataOffset
//   | data: capacity bytes (a power of two), records back to back  |
//   +--------------------------------------------------------------+
//
//   record (8-byte aligned, never split across the end of data)
//   +----------------+----------------+------------------------------+
//   | length u32     | type u32       | payload (length - 8 bytes)   |
//   +----------------+----------------+------------------------------+
//   `length` counts the header; the next record starts at align8(length).
//   The header is one 8-byte word, stored and loaded in one access. A
//   header slot of zero means "no record here yet". When a record does not
//   fit before the end of data, the producer writes one padding record (type
//   kRecordPadding) that fills the rest, and the record starts at offset 0.
//
// Positions are free-running 64-bit byte counters (never wrap in practice);
// the offset in data is position & (capacity - 1). Invariants a consumer
// checks before trusting anything (a faulty peer may write any value):
//   tail - head <= capacity when tail > head (a consumer ahead of the
//   published tail is normal), tail never goes back, both multiples of 8,
//   8 <= length, record inside data, length - 8 <= max record, known type,
//   and a published tail beyond head means a record at head.
//
// Visibility (as in Aeron): a record becomes visible when its header is
// stored with release; the consumer polls the header slot at its own
// position with acquire, so a hand-off moves one cache line, not two (a
// position word, then the record). The producer clears the header slot
// after a record before it publishes the record (and the slot at offset 0
// before a padding record), so the slot the consumer polls reads zero until
// the record there is complete: a producer killed at any instruction leaves
// nothing half-visible. For that clear the producer keeps 8 bytes free
// beyond every record. The producer stores `tail` (what inspection and a
// sleeping consumer go by) once per batch; the consumer may therefore run
// ahead of the published tail, by any amount (a producer may commit many
// capacities' worth between two publishes). The consumer frees
// space by storing `head` with release after reading, once per batch.
// Nothing in the region is a pointer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace kvring::ring {

inline constexpr std::size_t kCacheLine = 64;
// Two lines between hot words: adjacent-line prefetch would otherwise couple them.
inline constexpr std::size_t kLineSpacing = 2 * kCacheLine;

inline constexpr std::size_t kTailOffset = 0;
inline constexpr std::size_t kHeadOffset = kTailOffset + kLineSpacing;
inline constexpr std::size_t kWaitOffset = kHeadOffset + kLineSpacing;
inline constexpr std::size_t kRingDataOffset = 512;

inline constexpr std::size_t kRecordHeaderBytes = 8;
inline constexpr std::size_t kRecordAlignment = 8;

// The one type the ring reserves: a padding record fills the tail end of
// data. Every other type is its user's (the transport's: framing.h).
inline constexpr std::uint32_t kRecordPadding = 0;
inline constexpr std::size_t kMinCapacity = 4096;
inline constexpr std::size_t kMaxCapacity = std::size_t{1} << 30;

struct alignas(kCacheLine) RingControl {
  std::atomic<std::uint64_t> tail;
  std::atomic<std::uint64_t> records_published;  // statistics only: never trusted
  char pad0[kLineSpacing - 2 * sizeof(std::atomic<std::uint64_t>)];
  std::atomic<std::uint64_t> head;
  std::atomic<std::uint64_t> records_consumed;   // statistics only: never trusted
  char pad1[kLineSpacing - 2 * sizeof(std::atomic<std::uint64_t>)];
  std::atomic<std::uint32_t> consumer_waiting;
  std::atomic<std::uint32_t> producer_waiting;
  char pad2[kRingDataOffset - kWaitOffset - 2 * sizeof(std::atomic<std::uint32_t>)];
};

static_assert(offsetof(RingControl, tail) == kTailOffset);
static_assert(offsetof(RingControl, records_published) == kTailOffset + 8);
static_assert(offsetof(RingControl, head) == kHeadOffset);
static_assert(offsetof(RingControl, records_consumed) == kHeadOffset + 8);
static_assert(offsetof(RingControl, consumer_waiting) == kWaitOffset);
static_assert(offsetof(RingControl, producer_waiting) == kWaitOffset + 4);
static_assert(sizeof(RingControl) == kRingDataOffset);
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);
static_assert(std::atomic<std::uint32_t>::is_always_lock_free);
// A lock-free std::atomic is its value's bytes: it can live in shared memory.
static_assert(sizeof(std::atomic<std::uint64_t>) == 8 && sizeof(std::atomic<std::uint32_t>) == 4);

constexpr std::size_t Align8(std::size_t n) { return (n + 7) & ~std::size_t{7}; }
// Bytes a ring of `capacity` occupies in its segment.
constexpr std::size_t RegionBytes(std::size_t capacity) { return kRingDataOffset + capacity; }

}  // namespace kvring::ring
