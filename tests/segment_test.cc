#include "kvring/shm/segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

namespace kvring::segment {
namespace {

using namespace std::chrono_literals;

std::string UniqueName(const char* what) {
  return "kvring.test-" + std::to_string(getpid()) + "." + what;
}

CreateOptions Small(const std::string& name) {
  CreateOptions o;
  o.name = name;
  o.request_capacity = 1 << 16;
  o.reply_capacity = 1 << 14;
  o.controller_name = "test";
  o.client_pid = getpid();
  return o;
}

// A second, independent descriptor of the segment's memory file (what a
// client receives over the socket, or inspect opens through /proc).
int Reopen(const Segment& s, int flags = O_RDWR) {
  return open(("/proc/self/fd/" + std::to_string(s.fd())).c_str(), flags | O_CLOEXEC);
}

// The bytes of a segment copied into a new memory file, sealed or not:
// what a hostile or broken controller could pass.
int CopyOf(const Segment& s, std::size_t bytes, bool seal) {
  int fd = memfd_create("kvring.test.copy", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      pwrite(fd, s.header(), std::min(bytes, s.size()), 0) != static_cast<ssize_t>(std::min(bytes, s.size())) ||
      (seal && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0)) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(Segment, CreateThenAdoptSeesTheSameRings) {
  auto s = Segment::Create(Small(UniqueName("basic")));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto a = Segment::Adopt(Reopen(*s));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->name(), UniqueName("basic"));
  EXPECT_EQ(a->capacity(kRequestRing), 1u << 16);
  EXPECT_EQ(a->capacity(kReplyRing), 1u << 14);
  EXPECT_EQ(a->header()->controller_pid, static_cast<std::uint32_t>(getpid()));
  EXPECT_EQ(a->header()->controller_start_ticks, ProcessStartTicks(getpid()));
  EXPECT_EQ(std::string(a->header()->controller_name), "test");
  EXPECT_EQ(a->size(), SegmentBytes(1 << 16, 1 << 14));
  EXPECT_EQ(a->owner_uid(), geteuid());
  a->header()->client_heartbeat_ns.store(42);  // one memory, two mappings
  EXPECT_EQ(s->header()->client_heartbeat_ns.load(), 42u);
}

TEST(Segment, NobodyCanResizeASegmentSoNoMappingCanFault) {
  // A client that could ftruncate its segment killed the controller with
  // SIGBUS on its next peek. Every descriptor of the memory file, the
  // creator's own and any reopened one, is refused a change of size.
  auto s = Segment::Create(Small(UniqueName("sealed")));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  const int other = Reopen(*s);
  ASSERT_GE(other, 0);
  for (int fd : {s->fd(), other}) {
    errno = 0;
    EXPECT_EQ(ftruncate(fd, 0), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(ftruncate(fd, static_cast<off_t>(s->size()) * 2), -1);
    EXPECT_EQ(fallocate(fd, 0, 0, static_cast<off_t>(s->size()) * 2), -1);
    EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);  // and the seals are final
  }
  struct stat st {};
  ASSERT_EQ(fstat(other, &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), s->size());
  close(other);
  EXPECT_EQ(s->header()->state.load(), kReady);  // still mapped, still readable
}

TEST(Segment, AFileThatCanBeResizedIsNeverMapped) {
  auto s = Segment::Create(Small(UniqueName("unsealed")));
  ASSERT_TRUE(s.ok());
  const int unsealed = CopyOf(*s, s->size(), /*seal=*/false);
  ASSERT_GE(unsealed, 0);
  auto a = Segment::Adopt(unsealed);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kPermission);
  EXPECT_NE(a.status().message().find("not sealed against resizing"), std::string::npos) << a.status().message();
  // A plain file cannot even be sealed.
  char path[] = "/tmp/kvring-segment-test-XXXXXX";
  int file = mkstemp(path);
  ASSERT_GE(file, 0);
  unlink(path);
  ASSERT_EQ(ftruncate(file, static_cast<off_t>(s->size())), 0);
  a = Segment::Adopt(file);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kPermission);
  EXPECT_NE(a.status().message().find("not a sealable memory file"), std::string::npos) << a.status().message();
  EXPECT_FALSE(Segment::Adopt(-1).ok());
}

TEST(Segment, ModeIgnoresTheUmask) {
  for (mode_t mask : {0000, 0077}) {
    for (unsigned mode : {0600u, 0660u}) {
      mode_t old = umask(mask);
      CreateOptions o = Small(UniqueName("umask"));
      o.mode = mode;
      auto s = Segment::Create(o);
      umask(old);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      struct stat st{};
      ASSERT_EQ(fstat(s->fd(), &st), 0);
      EXPECT_EQ(st.st_mode & 0777, mode) << "umask " << mask;
      auto a = Segment::Adopt(Reopen(*s));
      ASSERT_TRUE(a.ok());
      EXPECT_EQ(a->mode(), mode);
    }
  }
}

TEST(Segment, VersionMismatchIsRefusedNamingBothVersions) {
  auto s = Segment::Create(Small(UniqueName("version")));
  ASSERT_TRUE(s.ok());
  s->header()->layout_version = 99;
  auto a = Segment::Adopt(Reopen(*s));
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("segment layout version 99, this build reads version " + std::to_string(segment::kLayoutVersion)),
            std::string::npos) << a.status().message();
}

TEST(Segment, ASegmentSmallerThanItsHeaderSaysIsRefused) {
  auto s = Segment::Create(Small(UniqueName("truncated")));
  ASSERT_TRUE(s.ok());
  auto a = Segment::Adopt(CopyOf(*s, 10000, /*seal=*/true));  // rings cut off
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kCorrupt) << a.status().ToString();
  a = Segment::Adopt(CopyOf(*s, 100, /*seal=*/true));  // smaller than a header
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("smaller than its header"), std::string::npos) << a.status().message();
}

TEST(Segment, AHalfInitialisedSegmentIsRefusedAtOnce) {
  auto s = Segment::Create(Small(UniqueName("half")));
  ASSERT_TRUE(s.ok());
  s->header()->state.store(0);  // no ready word
  auto a = Segment::Adopt(Reopen(*s));
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kUnavailable);
  EXPECT_NE(a.status().message().find("not initialised"), std::string::npos) << a.status().message();
  EXPECT_TRUE(Segment::Adopt(Reopen(*s), /*read_only=*/true, /*require_ready=*/false).ok());  // inspect's look
}

TEST(Segment, GarbageIsNotAKvringSegment) {
  auto s = Segment::Create(Small(UniqueName("garbage")));
  ASSERT_TRUE(s.ok());
  s->header()->magic = 0x1234;
  auto a = Segment::Adopt(Reopen(*s));
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("not a kvring segment"), std::string::npos);
}

TEST(Segment, SegmentsAreFoundThroughTheDescriptorsThatHoldThem) {
  const std::string prefix = UniqueName("found") + ".";
  auto one = Segment::Create(Small(prefix + "1"));
  auto two = Segment::Create(Small(prefix + "2"));
  ASSERT_TRUE(one.ok() && two.ok());
  const int dup_of_one = Reopen(*one);  // one memory file, two descriptors: listed once
  auto found = FindSegments(prefix);
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].name, prefix + "1");
  EXPECT_EQ(found[1].name, prefix + "2");
  EXPECT_EQ(found[0].holder, getpid());
  auto mapped = Segment::Open(found[1].path);
  ASSERT_TRUE(mapped.ok()) << mapped.status().ToString();
  EXPECT_EQ(mapped->size(), two->size());
  close(dup_of_one);
  two = Status(ErrorKind::kUnavailable, "closed");  // its last descriptor goes with it
  mapped = Status(ErrorKind::kUnavailable, "closed");
  found = FindSegments(prefix);
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].name, prefix + "1");
}

TEST(Processes, StartTicksTellAReusedPidApart) {
  EXPECT_TRUE(ProcessAlive(getpid(), ProcessStartTicks(getpid())));
  EXPECT_FALSE(ProcessAlive(getpid(), ProcessStartTicks(getpid()) + 1));
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  waitpid(pid, nullptr, 0);
  EXPECT_FALSE(ProcessAlive(pid, 0));
}

TEST(Names, ControllerNamesAreRestricted) {
  EXPECT_TRUE(ValidateControllerName("kvring").ok());
  EXPECT_TRUE(ValidateControllerName("gpu-node_7").ok());
  EXPECT_FALSE(ValidateControllerName("").ok());
  EXPECT_FALSE(ValidateControllerName("a.b").ok());
  EXPECT_FALSE(ValidateControllerName("../etc").ok());
  EXPECT_FALSE(ValidateControllerName(std::string(49, 'x')).ok());
}

}  // namespace
}  // namespace kvring::segment
