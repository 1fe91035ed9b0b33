// A client segment (layout: segment_descriptor.h) in POSIX shared memory,
// created, attached, validated and removed with Boost.Interprocess.
//
// Creation is exclusive (an existing name is never adopted), the mode is set
// explicitly after creation so the umask does not matter, and the pages are
// allocated up front (posix_fallocate) so that a /dev/shm too small for the
// segment fails here with a clear error rather than SIGBUS later.
//
// Thread-safety: a Segment is a handle; one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kvring/segment_descriptor.h"
#include "kvring/status.h"

namespace kvring::segment {

struct CreateOptions {
  std::string shm_name;  // without leading '/', e.g. "kvring.demo.1732530000.7"
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
  // Maps an existing segment and validates it, waiting up to `timeout` for
  // its ready word (a segment being created is not an error until then).
  static Result<Segment> Attach(const std::string& shm_name, std::chrono::milliseconds timeout,
                                bool read_only = false);
  static Status Remove(const std::string& shm_name);

  // Checks a mapped header against the mapping's real size: magic, version,
  // sizes, offsets, ring geometry. `require_ready`: the ready word too.
  static Status Validate(const void* base, std::size_t mapped_bytes, bool require_ready);

  SegmentHeader* header() const;
  void* ring_region(int ring) const;
  std::size_t capacity(int ring) const;
  std::size_t max_record(int ring) const;
  std::size_t size() const;
  const std::string& shm_name() const;
  // The shared memory object's owner and mode, as the kernel saw them when
  // it was created or attached (fstat): who could have written it.
  unsigned owner_uid() const;
  unsigned mode() const;

 private:
  struct Impl;
  explicit Segment(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

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
