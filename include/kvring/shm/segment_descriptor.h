// Shared-memory layout of one client segment: a versioned header page and the
// client's two rings. One segment per attached client (worker, orchestrator
// or front), created by the controller as a sealed memfd (segment.h) named
//   kvring.<controller name>.<controller generation>.<client id>
//
//   +--------------------------------------------------------------+ 0
//   | SegmentHeader (one 4 KiB page)                               |
//   |   magic "KVRSEG\0\1", layout version, header/segment sizes   |
//   |   ring offsets, capacities, max record                       |
//   |   controller pid + start time, client pid + start time       |
//   |   role, client id, generation                                |
//   |   heartbeats (CLOCK_MONOTONIC ns) of both sides              |
//   |   quarantine word, ready word (written last, with release)   |
//   |   controller-sleeping word (a client that publishes while it |
//   |   is set rings the doorbell: a byte on the attach socket)    |
//   |   client-sleeping word (the controller rings the client's    |
//   |   doorbell after it publishes replies while it is set)       |
//   |   controller-progress word (the controller's pass count: a   |
//   |   client waiting for a reply sees whether it runs)           |
//   |   at 2048: 32 client counters (u64), the client's own report |
//   |   of itself for `kvring inspect` (names by role; never       |
//   |   trusted, never read by the controller)                     |
//   +--------------------------------------------------------------+ 4096
//   | ring 0: client -> controller (requests and events)           |
//   |   RingControl (512 B) + data (capacity 0)                    |
//   +--------------------------------------------------------------+ 4096 + region 0, page-aligned
//   | ring 1: controller -> client (replies and commands)          |
//   +--------------------------------------------------------------+ segment_bytes
//
// Nothing here is a pointer. A reader checks magic, version, every size and
// offset against the segment's real size before it touches a ring; the ready
// word is stored last (release) and loaded first (acquire), so a segment seen
// ready is completely initialised.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "kvring/shm/ring_descriptor.h"

namespace kvring::segment {

inline constexpr std::uint64_t kMagic = 0x01'00'47'45'53'52'56'4bULL;  // "KVRSEG\0\1" little-endian
inline constexpr std::uint32_t kLayoutVersion = 6;  // 2: control records, 3: correlated records,
                                                    // 4: records visible by their header (ring_descriptor.h),
                                                    // 5: client-sleeping word, front role, routed commands,
                                                    // 6: controller-progress word
inline constexpr std::size_t kHeaderBytes = 4096;
inline constexpr std::size_t kPageBytes = 4096;
inline constexpr std::uint32_t kReady = 0x52454459;  // "READY"-ish; anything else is not ready
inline constexpr std::uint32_t kClosed = 0x434c5344;

// kFront: a gateway that carries other processes' messages (the ZeroMQ front,
// zmq/front.h). The controller sends it fan-out commands as
// framing::kRoutedCommand, naming the worker each is for.
enum class Role : std::uint32_t { kWorker = 1, kOrchestrator = 2, kFront = 3 };
// The role word as written (a segment's header may hold any value).
inline const char* RoleName(std::uint32_t role) {
  switch (role) {
    case static_cast<std::uint32_t>(Role::kWorker): return "worker";
    case static_cast<std::uint32_t>(Role::kOrchestrator): return "orchestrator";
    case static_cast<std::uint32_t>(Role::kFront): return "front";
    default: return "unknown";
  }
}

inline constexpr int kRequestRing = 0;  // client -> controller
inline constexpr int kReplyRing = 1;    // controller -> client

struct SegmentHeader {
  std::uint64_t magic;
  std::uint32_t layout_version;
  std::uint32_t header_bytes;
  std::uint64_t segment_bytes;
  std::uint64_t ring_offset[2];
  std::uint64_t ring_capacity[2];
  std::uint32_t max_record[2];
  std::uint32_t role;
  std::uint32_t controller_pid;
  std::uint64_t controller_start_ticks;  // /proc/<pid>/stat field 22: tells a reused pid apart
  std::uint32_t client_pid;
  std::uint32_t reserved0;
  std::uint64_t client_start_ticks;
  std::uint64_t client_id;
  std::uint64_t generation;               // the controller's start time, ns since the epoch
  char controller_name[64];               // NUL-terminated
  alignas(64) std::atomic<std::uint64_t> controller_heartbeat_ns;  // CLOCK_MONOTONIC
  alignas(64) std::atomic<std::uint64_t> client_heartbeat_ns;
  alignas(64) std::atomic<std::uint32_t> quarantined;  // bit per ring: its consumer found it corrupt
  std::atomic<std::uint32_t> state;                    // kReady once initialised; kClosed at shutdown
  alignas(64) std::atomic<std::uint32_t> controller_sleeping;  // 1 while the controller sleeps in poll()
  // 1 while the client sleeps in poll() on its attach socket rather than on
  // the reply ring's futex (a ZeroMQ front waits on its sockets and the ring
  // at once): the controller then rings it after publishing replies.
  alignas(64) std::atomic<std::uint32_t> client_sleeping;
  // The controller's pass count, stored every pass while the controller runs
  // above normal priority (relaxed: a hint, nothing is read by it). A client
  // waiting for a reply on an oversubscribed machine keeps polling while it
  // moves (the controller runs: the answer is being made) and gives its core
  // away when it stands still (ring.h, WaitForData).
  alignas(64) std::atomic<std::uint64_t> controller_progress;
};

static_assert(offsetof(SegmentHeader, magic) == 0);
static_assert(offsetof(SegmentHeader, layout_version) == 8);
static_assert(offsetof(SegmentHeader, segment_bytes) == 16);
static_assert(offsetof(SegmentHeader, ring_offset) == 24);
static_assert(offsetof(SegmentHeader, ring_capacity) == 40);
static_assert(offsetof(SegmentHeader, max_record) == 56);
static_assert(offsetof(SegmentHeader, role) == 64);
static_assert(offsetof(SegmentHeader, controller_pid) == 68);
static_assert(offsetof(SegmentHeader, controller_start_ticks) == 72);
static_assert(offsetof(SegmentHeader, client_pid) == 80);
static_assert(offsetof(SegmentHeader, client_start_ticks) == 88);
static_assert(offsetof(SegmentHeader, client_id) == 96);
static_assert(offsetof(SegmentHeader, generation) == 104);
static_assert(offsetof(SegmentHeader, controller_name) == 112);
static_assert(offsetof(SegmentHeader, controller_heartbeat_ns) == 192);
static_assert(offsetof(SegmentHeader, client_heartbeat_ns) == 256);
static_assert(offsetof(SegmentHeader, quarantined) == 320);
static_assert(offsetof(SegmentHeader, state) == 324);
static_assert(offsetof(SegmentHeader, controller_sleeping) == 384);
static_assert(offsetof(SegmentHeader, client_sleeping) == 448);
static_assert(offsetof(SegmentHeader, controller_progress) == 512);
static_assert(sizeof(SegmentHeader) <= kHeaderBytes);

// Counters a client publishes about itself in its header page, for
// inspection only (a ZeroMQ front's: zmq/front.h, FrontCounter). Written by
// the client with relaxed stores, read by tools; any value is possible.
inline constexpr std::size_t kClientCountersOffset = 2048;
inline constexpr std::size_t kClientCounterSlots = 32;
struct ClientCounters {
  std::atomic<std::uint64_t> slot[kClientCounterSlots];
};
static_assert(sizeof(SegmentHeader) <= kClientCountersOffset);
static_assert(kClientCountersOffset + sizeof(ClientCounters) <= kHeaderBytes);
inline ClientCounters* CountersOf(SegmentHeader* h) {
  return reinterpret_cast<ClientCounters*>(reinterpret_cast<char*>(h) + kClientCountersOffset);
}
inline const ClientCounters* CountersOf(const SegmentHeader* h) {
  return reinterpret_cast<const ClientCounters*>(reinterpret_cast<const char*>(h) + kClientCountersOffset);
}

constexpr std::size_t PageAlign(std::size_t n) { return (n + kPageBytes - 1) & ~(kPageBytes - 1); }
// Where each ring lives and how large the segment is, for given capacities.
constexpr std::size_t RingOffset(int ring, std::size_t cap0) {
  return ring == 0 ? kHeaderBytes : kHeaderBytes + PageAlign(ring::RegionBytes(cap0));
}
constexpr std::size_t SegmentBytes(std::size_t cap0, std::size_t cap1) {
  return RingOffset(1, cap0) + PageAlign(ring::RegionBytes(cap1));
}

}  // namespace kvring::segment
