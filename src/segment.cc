#include "kvring/segment.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <boost/interprocess/mapped_region.hpp>
#include <boost/interprocess/shared_memory_object.hpp>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "kvring/ring.h"

namespace kvring::segment {

namespace bip = boost::interprocess;

// Where the rings are, read once (from the creator's own values, or from a
// validated copy of an attached header) and kept here: the header is
// writable by the other side, so nothing later follows its offset words.
struct Placement {
  std::uint64_t offset[2] = {0, 0};
  std::uint64_t capacity[2] = {0, 0};
  std::uint64_t max_record[2] = {0, 0};
};

struct Segment::Impl {
  std::string name;
  bip::mapped_region region;
  Placement rings;
  unsigned owner_uid = 0;
  unsigned mode = 0;
};

namespace {
Status ValidateInto(const void* base, std::size_t mapped, bool require_ready, Placement* out);
}  // namespace

Segment::Segment(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Segment::Segment(Segment&&) noexcept = default;
Segment& Segment::operator=(Segment&&) noexcept = default;
Segment::~Segment() = default;

SegmentHeader* Segment::header() const { return static_cast<SegmentHeader*>(impl_->region.get_address()); }
void* Segment::ring_region(int ring) const {
  return static_cast<char*>(impl_->region.get_address()) + impl_->rings.offset[ring];
}
std::size_t Segment::capacity(int ring) const { return impl_->rings.capacity[ring]; }
std::size_t Segment::max_record(int ring) const { return impl_->rings.max_record[ring]; }
std::size_t Segment::size() const { return impl_->region.get_size(); }
const std::string& Segment::shm_name() const { return impl_->name; }
unsigned Segment::owner_uid() const { return impl_->owner_uid; }
unsigned Segment::mode() const { return impl_->mode; }

namespace {

Status Errno(const std::string& what, int err) {
  return Status(ErrorKind::kIo, what + ": " + std::strerror(err));
}

Status CheckName(const std::string& name) {
  if (name.empty() || name.size() > 200 || name.find('/') != std::string::npos)
    return Status(ErrorKind::kInvalidArgument, "invalid shared memory name '" + name + "'");
  return Status();
}

}  // namespace

Result<Segment> Segment::Create(const CreateOptions& o) {
  if (Status s = CheckName(o.shm_name); !s.ok()) return s;
  std::size_t rec0 = o.request_max_record ? o.request_max_record : ring::DefaultMaxRecord(o.request_capacity);
  std::size_t rec1 = o.reply_max_record ? o.reply_max_record : ring::DefaultMaxRecord(o.reply_capacity);
  if (Status s = ring::ValidateGeometry(o.request_capacity, rec0); !s.ok()) return s;
  if (Status s = ring::ValidateGeometry(o.reply_capacity, rec1); !s.ok()) return s;
  if (o.controller_name.size() >= sizeof(SegmentHeader::controller_name))
    return Status(ErrorKind::kInvalidArgument, "controller name too long");
  const std::size_t bytes = SegmentBytes(o.request_capacity, o.reply_capacity);

  auto impl = std::make_unique<Impl>();
  impl->name = o.shm_name;
  try {
    // create_only: fails if the name exists, whoever made it.
    bip::shared_memory_object shm(bip::create_only, o.shm_name.c_str(), bip::read_write,
                                  bip::permissions(o.mode));
    int fd = shm.get_mapping_handle().handle;
    auto fail = [&](Status s) {
      bip::shared_memory_object::remove(o.shm_name.c_str());
      return s;
    };
    if (fchmod(fd, o.mode) != 0) return fail(Errno("fchmod " + o.shm_name, errno));  // umask-proof
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0)
      return fail(Errno("sizing " + o.shm_name, errno));
    if (int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0) {
      return fail(Status(ErrorKind::kIo,
                         "cannot allocate " + std::to_string(bytes) + " bytes for shared memory segment " +
                             o.shm_name + " (is /dev/shm large enough?): " + std::strerror(err)));
    }
    impl->region = bip::mapped_region(shm, bip::read_write, 0, bytes);
    impl->owner_uid = geteuid();
    impl->mode = o.mode;
  } catch (const bip::interprocess_exception& e) {
    if (e.get_error_code() == bip::already_exists_error)
      return Status(ErrorKind::kInvalidArgument,
                    "shared memory segment " + o.shm_name + " already exists; refusing to adopt it");
    return Status(ErrorKind::kIo, "creating shared memory segment " + o.shm_name + ": " + e.what());
  }

  auto* base = static_cast<char*>(impl->region.get_address());
  auto* h = new (base) SegmentHeader;
  h->magic = kMagic;
  h->layout_version = kLayoutVersion;
  h->header_bytes = kHeaderBytes;
  h->segment_bytes = bytes;
  impl->rings = Placement{{RingOffset(0, o.request_capacity), RingOffset(1, o.request_capacity)},
                          {o.request_capacity, o.reply_capacity},
                          {rec0, rec1}};
  h->ring_offset[0] = impl->rings.offset[0];
  h->ring_offset[1] = impl->rings.offset[1];
  h->ring_capacity[0] = o.request_capacity;
  h->ring_capacity[1] = o.reply_capacity;
  h->max_record[0] = static_cast<std::uint32_t>(rec0);
  h->max_record[1] = static_cast<std::uint32_t>(rec1);
  h->role = static_cast<std::uint32_t>(o.role);
  h->controller_pid = static_cast<std::uint32_t>(getpid());
  h->controller_start_ticks = ProcessStartTicks(getpid());
  h->client_pid = static_cast<std::uint32_t>(o.client_pid);
  h->client_start_ticks = o.client_start_ticks;
  h->client_id = o.client_id;
  h->generation = o.generation;
  std::memset(h->controller_name, 0, sizeof h->controller_name);
  std::memcpy(h->controller_name, o.controller_name.data(), o.controller_name.size());
  h->controller_heartbeat_ns.store(MonotonicNs(), std::memory_order_relaxed);
  h->client_heartbeat_ns.store(0, std::memory_order_relaxed);
  h->quarantined.store(0, std::memory_order_relaxed);
  for (int r = 0; r < 2; ++r) {
    Status s = ring::InitializeRegion(base + impl->rings.offset[r], impl->rings.capacity[r]);
    if (!s.ok()) {
      bip::shared_memory_object::remove(o.shm_name.c_str());
      return s;
    }
  }
  h->state.store(kReady, std::memory_order_release);  // pairs with the acquire load in Validate
  return Segment(std::move(impl));
}

Status Segment::Validate(const void* base, std::size_t mapped, bool require_ready) {
  Placement unused;
  return ValidateInto(base, mapped, require_ready, &unused);
}

namespace {

// Each header word is read once into a local, checked there and only the
// checked copy is used: the other side may rewrite the header meanwhile.
Status ValidateInto(const void* base, std::size_t mapped, bool require_ready, Placement* out) {
  if (mapped < kHeaderBytes)
    return Status(ErrorKind::kCorrupt, "segment of " + std::to_string(mapped) +
                                           " bytes is smaller than its header (" +
                                           std::to_string(kHeaderBytes) + ")");
  const auto* h = static_cast<const SegmentHeader*>(base);
  // Ready first: everything else was written before it (release/acquire).
  std::uint32_t state = h->state.load(std::memory_order_acquire);  // pairs with Create's release store
  if (require_ready && state != kReady)
    return Status(ErrorKind::kUnavailable,
                  state == kClosed ? "segment is closed" : "segment is not initialised (no ready word)");
  auto once = [](const auto& field) { return __atomic_load_n(&field, __ATOMIC_RELAXED); };  // one read per word
  const std::uint64_t magic = once(h->magic);
  if (magic != kMagic) {
    std::ostringstream m;
    m << "bad magic 0x" << std::hex << magic << " (expected 0x" << kMagic << "): not a kvring segment";
    return Status(ErrorKind::kCorrupt, m.str());
  }
  const std::uint64_t version = once(h->layout_version);
  if (version != kLayoutVersion)
    return Status(ErrorKind::kCorrupt, "segment layout version " + std::to_string(version) +
                                           ", this build reads version " + std::to_string(kLayoutVersion));
  const std::uint64_t header_bytes = once(h->header_bytes), segment_bytes = once(h->segment_bytes);
  if (header_bytes != kHeaderBytes || segment_bytes != mapped)
    return Status(ErrorKind::kCorrupt, "segment says " + std::to_string(segment_bytes) +
                                           " bytes with a " + std::to_string(header_bytes) +
                                           "-byte header, but " + std::to_string(mapped) + " are mapped");
  Placement p;
  for (int r = 0; r < 2; ++r) {
    p.capacity[r] = once(h->ring_capacity[r]);
    p.offset[r] = once(h->ring_offset[r]);
    p.max_record[r] = once(h->max_record[r]);
  }
  for (int r = 0; r < 2; ++r) {
    if (Status s = ring::ValidateGeometry(p.capacity[r], p.max_record[r]); !s.ok())
      return Status(ErrorKind::kCorrupt, "ring " + std::to_string(r) + ": " + s.message());
    if (p.offset[r] != RingOffset(r, p.capacity[0]) || p.offset[r] + ring::RegionBytes(p.capacity[r]) > mapped)
      return Status(ErrorKind::kCorrupt, "ring " + std::to_string(r) + " at offset " + std::to_string(p.offset[r]) +
                                             " does not fit the segment");
  }
  if (SegmentBytes(p.capacity[0], p.capacity[1]) != mapped)
    return Status(ErrorKind::kCorrupt, "segment size does not match its rings");
  *out = p;
  return Status();
}

}  // namespace

Result<Segment> Segment::Attach(const std::string& shm_name, std::chrono::milliseconds timeout,
                                bool read_only) {
  if (Status s = CheckName(shm_name); !s.ok()) return s;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  auto mode = read_only ? bip::read_only : bip::read_write;
  for (;;) {
    Status last;
    try {
      bip::shared_memory_object shm(bip::open_only, shm_name.c_str(), mode);
      bip::offset_t size = 0;
      if (!shm.get_size(size)) return Status(ErrorKind::kIo, "cannot stat " + shm_name);
      if (size <= 0) {
        last = Status(ErrorKind::kUnavailable, "segment " + shm_name + " is empty (not yet sized)");
      } else {
        auto impl = std::make_unique<Impl>();
        impl->name = shm_name;
        struct stat st {};
        if (fstat(shm.get_mapping_handle().handle, &st) != 0) return Errno("fstat " + shm_name, errno);
        impl->owner_uid = st.st_uid;
        impl->mode = st.st_mode & 07777;
        impl->region = bip::mapped_region(shm, mode, 0, static_cast<std::size_t>(size));
        last = ValidateInto(impl->region.get_address(), impl->region.get_size(), true, &impl->rings);
        if (last.ok()) return Segment(std::move(impl));
        if (last.kind() != ErrorKind::kUnavailable) return Status(last.kind(), shm_name + ": " + last.message());
      }
    } catch (const bip::interprocess_exception& e) {
      if (e.get_error_code() != bip::not_found_error)
        return Status(ErrorKind::kIo, "opening " + shm_name + ": " + e.what());
      last = Status(ErrorKind::kUnavailable, "no shared memory segment " + shm_name);
    }
    if (std::chrono::steady_clock::now() >= deadline)
      return Status(last.kind(), last.message() + " (gave up after " + std::to_string(timeout.count()) + " ms)");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

Status Segment::Remove(const std::string& shm_name) {
  if (Status s = CheckName(shm_name); !s.ok()) return s;
  if (!bip::shared_memory_object::remove(shm_name.c_str()))
    return Status(ErrorKind::kIo, "cannot remove " + shm_name);
  return Status();
}

std::uint64_t ProcessStartTicks(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s;
  if (!f || !std::getline(f, s)) return 0;
  // Field 2 (comm) may hold spaces and parentheses: parse after the last ')'.
  auto close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(s.substr(close + 2));
  std::string field;
  for (int i = 3; i <= 22; ++i)
    if (!(rest >> field)) return 0;
  return std::strtoull(field.c_str(), nullptr, 10);
}

bool ProcessAlive(pid_t pid, std::uint64_t start_ticks) {
  if (pid <= 0) return false;
  std::uint64_t now = ProcessStartTicks(pid);
  return now != 0 && (start_ticks == 0 || now == start_ticks);
}

std::uint64_t MonotonicNs() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

Status ValidateControllerName(std::string_view name) {
  if (name.empty() || name.size() > 48)
    return Status(ErrorKind::kInvalidArgument, "controller name must be 1..48 characters");
  for (char c : name)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'))
      return Status(ErrorKind::kInvalidArgument,
                    "controller name '" + std::string(name) + "' may use only letters, digits, '_' and '-'");
  return Status();
}

std::string SegmentPrefix(std::string_view controller_name) {
  return "kvring." + std::string(controller_name) + ".";
}

}  // namespace kvring::segment
