#include "kvring/shm/segment.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <tuple>
#include <sstream>
#include <utility>

#include "kvring/shm/ring.h"

namespace kvring::segment {

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
  int fd = -1;
  void* base = nullptr;
  std::size_t bytes = 0;
  Placement rings;
  unsigned owner_uid = 0;
  unsigned mode = 0;
  ~Impl() {
    if (base) munmap(base, bytes);
    if (fd >= 0) close(fd);
  }
};

namespace {
Status ValidateInto(const void* base, std::size_t mapped, bool require_ready, Placement* out);

// Sealed against any change of size, and against changes of the seals.
constexpr int kSizeSeals = F_SEAL_SHRINK | F_SEAL_GROW;
constexpr int kAllSeals = kSizeSeals | F_SEAL_SEAL;
}  // namespace

Segment::Segment(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Segment::Segment(Segment&&) noexcept = default;
Segment& Segment::operator=(Segment&&) noexcept = default;
Segment::~Segment() = default;

SegmentHeader* Segment::header() const { return static_cast<SegmentHeader*>(impl_->base); }
void* Segment::ring_region(int ring) const { return static_cast<char*>(impl_->base) + impl_->rings.offset[ring]; }
std::size_t Segment::capacity(int ring) const { return impl_->rings.capacity[ring]; }
std::size_t Segment::max_record(int ring) const { return impl_->rings.max_record[ring]; }
std::size_t Segment::size() const { return impl_->bytes; }
const std::string& Segment::name() const { return impl_->name; }
int Segment::fd() const { return impl_->fd; }
unsigned Segment::owner_uid() const { return impl_->owner_uid; }
unsigned Segment::mode() const { return impl_->mode; }

namespace {

Status Errno(const std::string& what, int err) {
  return Status(ErrorKind::kIo, what + ": " + std::strerror(err));
}

Status CheckName(const std::string& name) {
  // memfd names are at most 249 bytes; '/' would confuse the /proc link.
  if (name.empty() || name.size() > 200 || name.find('/') != std::string::npos)
    return Status(ErrorKind::kInvalidArgument, "invalid segment name '" + name + "'");
  return Status();
}

// What a /proc/<pid>/fd/<n> link points to ("" if it cannot be read).
std::string LinkTarget(const std::string& path) {
  char link[512];
  const ssize_t n = readlink(path.c_str(), link, sizeof link);
  return n > 0 ? std::string(link, static_cast<std::size_t>(n)) : std::string();
}

// The memfd's name in such a link ("/memfd:NAME (deleted)"), or nothing
// when the link is not a memfd's.
std::optional<std::string> MemfdNameOf(std::string_view link) {
  constexpr std::string_view kPrefix = "/memfd:", kDeleted = " (deleted)";
  if (!link.starts_with(kPrefix)) return std::nullopt;
  link.remove_prefix(kPrefix.size());
  if (link.ends_with(kDeleted)) link.remove_suffix(kDeleted.size());
  return std::string(link);
}

// The name a descriptor's segment goes by: its memfd name, else its path.
std::string MemfdName(int fd) {
  const std::string link = LinkTarget("/proc/self/fd/" + std::to_string(fd));
  return MemfdNameOf(link).value_or(link);
}

}  // namespace

Result<Segment> Segment::Create(const CreateOptions& o) {
  if (Status s = CheckName(o.name); !s.ok()) return s;
  std::size_t rec0 = o.request_max_record ? o.request_max_record : ring::DefaultMaxRecord(o.request_capacity);
  std::size_t rec1 = o.reply_max_record ? o.reply_max_record : ring::DefaultMaxRecord(o.reply_capacity);
  if (Status s = ring::ValidateGeometry(o.request_capacity, rec0); !s.ok()) return s;
  if (Status s = ring::ValidateGeometry(o.reply_capacity, rec1); !s.ok()) return s;
  if (o.controller_name.size() >= sizeof(SegmentHeader::controller_name))
    return Status(ErrorKind::kInvalidArgument, "controller name too long");
  const std::size_t bytes = SegmentBytes(o.request_capacity, o.reply_capacity);

  auto impl = std::make_unique<Impl>();
  impl->name = o.name;
  impl->fd = memfd_create(o.name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (impl->fd < 0) return Errno("memfd_create " + o.name, errno);
  const int fd = impl->fd;
  if (fchmod(fd, o.mode) != 0) return Errno("fchmod " + o.name, errno);  // umask-proof
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0) return Errno("sizing " + o.name, errno);
  if (int err = posix_fallocate(fd, 0, static_cast<off_t>(bytes)); err != 0)
    return Status(ErrorKind::kIo, "cannot allocate " + std::to_string(bytes) + " bytes of shared memory for segment " +
                                      o.name + ": " + std::strerror(err));
  if (fcntl(fd, F_ADD_SEALS, kAllSeals) != 0) return Errno("sealing " + o.name, errno);
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return Errno("mapping " + o.name, errno);
  impl->base = base;
  impl->bytes = bytes;
  impl->owner_uid = geteuid();
  impl->mode = o.mode;

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
  for (int r = 0; r < 2; ++r)
    if (Status s = ring::InitializeRegion(static_cast<char*>(base) + impl->rings.offset[r], impl->rings.capacity[r]);
        !s.ok())
      return s;
  h->state.store(kReady, std::memory_order_release);  // pairs with the acquire load in Validate
  return Segment(std::move(impl));
}

Status Segment::CheckSealed(int fd) {
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0)
    return Status(ErrorKind::kPermission, std::string("not a sealable memory file (") + std::strerror(errno) +
                                              "): its size could change under a mapping");
  if ((seals & kSizeSeals) != kSizeSeals)
    return Status(ErrorKind::kPermission, "memory file not sealed against resizing (seals 0x" + [&] {
      std::ostringstream h;
      h << std::hex << seals;
      return h.str();
    }() + "): its size could change under a mapping");
  return Status();
}

Result<Segment> Segment::Adopt(int fd, bool read_only, bool require_ready) {
  auto impl = std::make_unique<Impl>();
  impl->fd = fd;  // closed by impl on every path
  if (fd < 0) return Status(ErrorKind::kInvalidArgument, "no segment descriptor");
  impl->name = MemfdName(fd);
  if (Status s = CheckSealed(fd); !s.ok()) return Status(s.kind(), "segment " + impl->name + ": " + s.message());
  struct stat st {};
  if (fstat(fd, &st) != 0) return Errno("fstat " + impl->name, errno);
  impl->owner_uid = st.st_uid;
  impl->mode = st.st_mode & 07777;
  if (st.st_size <= 0 || static_cast<std::uint64_t>(st.st_size) > (std::uint64_t{1} << 40))
    return Status(ErrorKind::kCorrupt, "segment " + impl->name + " of " + std::to_string(st.st_size) + " bytes");
  const auto bytes = static_cast<std::size_t>(st.st_size);
  void* base = mmap(nullptr, bytes, read_only ? PROT_READ : PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) return Errno("mapping " + impl->name, errno);
  impl->base = base;
  impl->bytes = bytes;
  if (Status s = ValidateInto(base, bytes, require_ready, &impl->rings); !s.ok())
    return Status(s.kind(), impl->name + ": " + s.message());
  return Segment(std::move(impl));
}

Result<Segment> Segment::Open(const std::string& path, bool read_only) {
  int fd = open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  if (fd < 0) return Errno("opening " + path, errno);
  return Adopt(fd, read_only);
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

std::vector<FoundSegment> FindSegments(std::string_view name_prefix) {
  std::vector<FoundSegment> out;
  std::set<std::pair<dev_t, ino_t>> seen;
  DIR* proc = opendir("/proc");
  if (!proc) return out;
  while (dirent* p = readdir(proc)) {
    if (!std::isdigit(static_cast<unsigned char>(p->d_name[0]))) continue;
    const std::string dir = std::string("/proc/") + p->d_name + "/fd";
    DIR* fds = opendir(dir.c_str());
    if (!fds) continue;  // another user's, or gone
    while (dirent* f = readdir(fds)) {
      if (f->d_name[0] == '.') continue;
      const std::string path = dir + "/" + f->d_name;
      std::optional<std::string> name = MemfdNameOf(LinkTarget(path));
      if (!name || !name->starts_with(name_prefix)) continue;
      struct stat st {};
      if (stat(path.c_str(), &st) != 0 || !seen.insert({st.st_dev, st.st_ino}).second) continue;
      out.push_back({std::move(*name), path, static_cast<pid_t>(std::atoi(p->d_name))});
    }
    closedir(fds);
  }
  closedir(proc);
  std::sort(out.begin(), out.end(), [](const FoundSegment& a, const FoundSegment& b) {
    return std::tie(a.name, a.holder) < std::tie(b.name, b.holder);
  });
  return out;
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
