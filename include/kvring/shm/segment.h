// A client segment (layout: segment_descriptor.h) in a sealed memfd.
//
// The controller creates the segment as an anonymous memory file
// (memfd_create), sizes it, allocates its pages up front (posix_fallocate:
// no memory is a clear error here, not a SIGBUS later), sets its mode
// (umask-proof) and seals it against resizing (F_SEAL_SHRINK | F_SEAL_GROW
// | F_SEAL_SEAL). The client receives the descriptor over the attach socket
// (SCM_RIGHTS); it has no name in any file system. A seal binds the file,
// not a descriptor, and cannot be removed: nobody, the controller included,
// can ever truncate it, so no mapping of it can fault with SIGBUS (a client
// that once could ftruncate its /dev/shm segment killed the controller).
// Whoever maps a segment (Adopt, Open) checks those seals first.
//
// Nothing is left behind: the memory goes when the last descriptor and
// mapping go (a controller killed with SIGKILL leaves no file to clean up).
// `kvring inspect` finds segments through /proc/<pid>/fd (FindSegments).
//
// Thread-safety: a Segment is a handle; one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvring/shm/segment_descriptor.h"
#include "kvring/status.h"

namespace kvring::segment {

struct CreateOptions {
  // The memfd's name: a label for /proc/<pid>/fd and `kvring inspect`
  // (e.g. "kvring.demo.1732530000.7"), not a path; need not be unique.
  std::string name;
  std::size_t request_capacity = std::size_t{4} << 20;  // a 10,000-op batch is ~280 KiB
  std::size_t reply_capacity = std::size_t{1} << 20;
  std::size_t request_max_record = 0;  // 0: capacity / 4 - 8
  std::size_t reply_max_record = 0;
  unsigned mode = 0600;
  Role role = Role::kWorker;
  pid_t client_pid = 0;
  std::uint64_t client_start_ticks = 0;
  std::uint64_t client_id = 0;
  std::uint64_t generation = 0;
  std::string controller_name;
};

class Segment {
 public:
  Segment(Segment&&) noexcept;
  Segment& operator=(Segment&&) noexcept;
  ~Segment();

  static Result<Segment> Create(const CreateOptions& options);
  // Maps a segment received as a descriptor (takes ownership of `fd`, closed
  // on failure too) once it is shown to be a sealed memory file that nobody
  // can resize, and validates its header (the ready word too, unless
  // `require_ready` is false: inspect looks at closed segments as well).
  static Result<Segment> Adopt(int fd, bool read_only = false, bool require_ready = true);
  // Opens `path` (e.g. /proc/<pid>/fd/<n>) and adopts it.
  static Result<Segment> Open(const std::string& path, bool read_only = true);
  // Whether `fd` is sealed against shrinking and growing (kPermission if
  // not: a file someone can truncate is never mapped).
  static Status CheckSealed(int fd);

  // Checks a mapped header against the mapping's real size: magic, version,
  // sizes, offsets, ring geometry. `require_ready`: the ready word too.
  static Status Validate(const void* base, std::size_t mapped_bytes, bool require_ready);

  SegmentHeader* header() const;
  void* ring_region(int ring) const;
  std::size_t capacity(int ring) const;
  std::size_t max_record(int ring) const;
  std::size_t size() const;
  const std::string& name() const;
  int fd() const;  // the memory file (sent to the client, found by inspect)
  // The shared memory object's owner and mode, as the kernel saw them when
  // it was created or attached (fstat): who could have written it.
  unsigned owner_uid() const;
  unsigned mode() const;

 private:
  struct Impl;
  explicit Segment(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// --- finding segments -----------------------------------------------------------
// A segment some process holds open, as seen in /proc/<pid>/fd: each memory
// file once (by inode), whoever holds it. Only processes whose descriptors
// this one may read (same uid, or root) are seen.
struct FoundSegment {
  std::string name;  // the memfd's name, e.g. "kvring.demo.1732530000.7"
  std::string path;  // /proc/<pid>/fd/<n>: open this to map it
  pid_t holder = 0;
};
std::vector<FoundSegment> FindSegments(std::string_view name_prefix);

// --- processes --------------------------------------------------------------------
// Start time of a process in clock ticks since boot (/proc/<pid>/stat field
// 22), or 0 when there is no such process. With the pid it names one process
// for the life of the machine (a pid alone may be reused).
std::uint64_t ProcessStartTicks(pid_t pid);
bool ProcessAlive(pid_t pid, std::uint64_t start_ticks);
std::uint64_t MonotonicNs();

// Names: a controller name is 1..48 characters of [A-Za-z0-9_.-].
Status ValidateControllerName(std::string_view name);
std::string SegmentPrefix(std::string_view controller_name);  // "kvring.<name>."

}  // namespace kvring::segment
