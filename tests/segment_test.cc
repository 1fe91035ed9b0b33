#include "kvring/segment.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
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
  o.shm_name = name;
  o.request_capacity = 1 << 16;
  o.reply_capacity = 1 << 14;
  o.controller_name = "test";
  o.client_pid = getpid();
  return o;
}

struct Cleanup {
  std::string name;
  ~Cleanup() { shm_unlink(("/" + name).c_str()); }
};

TEST(Segment, CreateThenAttachSeesTheSameRings) {
  Cleanup c{UniqueName("basic")};
  auto s = Segment::Create(Small(c.name));
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto a = Segment::Attach(c.name, 100ms);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->capacity(kRequestRing), 1u << 16);
  EXPECT_EQ(a->capacity(kReplyRing), 1u << 14);
  EXPECT_EQ(a->header()->controller_pid, static_cast<std::uint32_t>(getpid()));
  EXPECT_EQ(a->header()->controller_start_ticks, ProcessStartTicks(getpid()));
  EXPECT_EQ(std::string(a->header()->controller_name), "test");
  EXPECT_EQ(a->size(), SegmentBytes(1 << 16, 1 << 14));
}

TEST(Segment, AnExistingNameIsNeverAdopted) {
  Cleanup c{UniqueName("precreated")};
  int fd = shm_open(("/" + c.name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(SegmentBytes(1 << 16, 1 << 14))), 0);
  close(fd);
  auto s = Segment::Create(Small(c.name));
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("already exists; refusing to adopt it"), std::string::npos)
      << s.status().message();
}

TEST(Segment, ModeIgnoresTheUmask) {
  for (mode_t mask : {0000, 0077}) {
    for (unsigned mode : {0600u, 0660u}) {
      Cleanup c{UniqueName(("umask" + std::to_string(mask) + "_" + std::to_string(mode)).c_str())};
      mode_t old = umask(mask);
      CreateOptions o = Small(c.name);
      o.mode = mode;
      auto s = Segment::Create(o);
      umask(old);
      ASSERT_TRUE(s.ok()) << s.status().ToString();
      struct stat st{};
      ASSERT_EQ(stat(("/dev/shm/" + c.name).c_str(), &st), 0);
      EXPECT_EQ(st.st_mode & 0777, mode) << "umask " << mask;
    }
  }
}

TEST(Segment, VersionMismatchIsRefusedNamingBothVersions) {
  Cleanup c{UniqueName("version")};
  auto s = Segment::Create(Small(c.name));
  ASSERT_TRUE(s.ok());
  s->header()->layout_version = 99;
  auto a = Segment::Attach(c.name, 100ms);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("segment layout version 99, this build reads version " + std::to_string(segment::kLayoutVersion)),
            std::string::npos) << a.status().message();
}

TEST(Segment, TruncatedSegmentIsRefused) {
  Cleanup c{UniqueName("truncated")};
  auto s = Segment::Create(Small(c.name));
  ASSERT_TRUE(s.ok());
  int fd = shm_open(("/" + c.name).c_str(), O_RDWR, 0);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 10000), 0);  // rings cut off
  close(fd);
  auto a = Segment::Attach(c.name, 100ms);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kCorrupt) << a.status().ToString();
  ASSERT_EQ(ftruncate(fd = shm_open(("/" + c.name).c_str(), O_RDWR, 0), 100), 0);  // smaller than a header
  close(fd);
  a = Segment::Attach(c.name, 100ms);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("smaller than its header"), std::string::npos) << a.status().message();
}

TEST(Segment, HalfInitialisedSegmentTimesOutInsteadOfHanging) {
  Cleanup c{UniqueName("half")};
  int fd = shm_open(("/" + c.name).c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, static_cast<off_t>(SegmentBytes(1 << 16, 1 << 14))), 0);  // zeros: no ready word
  close(fd);
  auto t0 = std::chrono::steady_clock::now();
  auto a = Segment::Attach(c.name, 50ms);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kUnavailable);
  EXPECT_NE(a.status().message().find("not initialised"), std::string::npos) << a.status().message();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
}

TEST(Segment, GarbageIsNotAKvringSegment) {
  Cleanup c{UniqueName("garbage")};
  auto s = Segment::Create(Small(c.name));
  ASSERT_TRUE(s.ok());
  s->header()->magic = 0x1234;
  auto a = Segment::Attach(c.name, 10ms);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("not a kvring segment"), std::string::npos);
}

TEST(Segment, TooSmallDevShmFailsAtCreationNotWithSigbus) {
  // A private mount namespace with a 1 MiB tmpfs on /dev/shm, in a child.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (unshare(CLONE_NEWNS) != 0 || mount("none", "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        mount("tmpfs", "/dev/shm", "tmpfs", 0, "size=1m") != 0)
      _exit(77);  // not allowed here
    CreateOptions o = Small("kvring.test.toosmall");
    o.request_capacity = 4 << 20;
    auto s = Segment::Create(o);
    if (s.ok()) _exit(1);
    if (s.status().message().find("is /dev/shm large enough?") == std::string::npos) _exit(2);
    // And nothing is left behind.
    _exit(access("/dev/shm/kvring.test.toosmall", F_OK) == 0 ? 3 : 0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status));
  if (WEXITSTATUS(status) == 77) GTEST_SKIP() << "cannot mount a private tmpfs here";
  EXPECT_EQ(WEXITSTATUS(status), 0);
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
