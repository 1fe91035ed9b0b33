#include "kvring/shm/transport.h"

#include "kvring/protocol/codec.h"
#include "kvring/shm/framing.h"

#include <dirent.h>
#include <signal.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <thread>

#include <gtest/gtest.h>

namespace kvring::transport {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Computed once in the test process: forked children must use the same name.
const std::string kPid = std::to_string(getpid());
std::string Name(const char* what) { return "t" + kPid + "-" + what; }

ListenerOptions Small(const std::string& name) {
  ListenerOptions o;
  o.name = name;
  o.request_capacity = 1 << 16;
  o.reply_capacity = 1 << 14;
  return o;
}

// Whether this process holds a descriptor of the segment's memory file.
bool HeldHere(const std::string& segment_name) {
  const std::string want = "/memfd:" + segment_name + " (deleted)";
  bool held = false;
  if (DIR* d = opendir("/proc/self/fd")) {
    while (dirent* e = readdir(d)) {
      char link[512];
      ssize_t n = readlinkat(dirfd(d), e->d_name, link, sizeof link);
      if (n > 0 && std::string(link, static_cast<std::size_t>(n)) == want) held = true;
    }
    closedir(d);
  }
  return held;
}

// Whether any file of controller `name` is in /dev/shm (there never is one).
bool AnythingInDevShm(const std::string& name) {
  bool found = false;
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d))
      if (std::string(e->d_name).rfind(segment::SegmentPrefix(name), 0) == 0) found = true;
    closedir(d);
  }
  return found;
}

// Polls the listener until `done` or the timeout; returns whether done.
bool PumpUntil(Listener& l, const std::function<bool(const Listener::Events&)>& done,
               std::chrono::milliseconds timeout = 5000ms) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline)
    if (done(l.Poll(10ms))) return true;
  return false;
}

// Forks a client that attaches to `name`, then runs `then` (its return value
// is the exit code). Returns once the client has attached and mapped its
// segment, with the segment's name.
struct AttachedClient {
  pid_t pid = -1;
  std::string shm;
};
AttachedClient StartClient(Listener& l, const std::string& name, const std::function<int(Connection&)>& then) {
  int ready[2];
  if (pipe(ready) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    auto c = Connection::Open({name, segment::Role::kWorker, 5000ms});
    char b = c.ok() ? 1 : 0;
    (void)!write(ready[1], &b, 1);
    _exit(c.ok() ? then(**c) : 100);
  }
  close(ready[1]);
  AttachedClient a{pid, ""};
  bool seen = PumpUntil(l, [&](const Listener::Events& e) {
    if (!e.attached.empty()) a.shm = l.Find(e.attached[0])->segment.name();
    return !a.shm.empty();
  });
  char b = 0;
  if (!seen || read(ready[0], &b, 1) != 1 || b != 1) a.shm.clear();
  close(ready[0]);
  return a;
}

std::span<const std::uint8_t> Bytes(const char* s) { return {reinterpret_cast<const std::uint8_t*>(s), std::strlen(s)}; }

TEST(Transport, ClientAttachesExchangesRecordsAndDetachesOnExit) {
  auto l = Listener::Start(Small(Name("basic")));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    auto c = Connection::Open({Name("basic"), segment::Role::kWorker, 5000ms});
    if (!c.ok()) _exit(1);
    if ((*c)->requests().TryWrite(Bytes("ping"), framing::kMessage) != ring::ClaimResult::kOk) _exit(2);
    (*c)->requests().Publish();
    if (!(*c)->replies().WaitForData(5s)) _exit(3);
    ring::Record r;
    if ((*c)->replies().Peek(&r) != ring::PollResult::kRecord) _exit(4);
    _exit(std::string(r.payload.begin(), r.payload.end()) == "pong" ? 0 : 5);
  }
  std::uint64_t id = 0;
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) {
    if (!e.attached.empty()) id = e.attached[0];
    return id != 0;
  }));
  Client* c = (*l)->Find(id);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->pid, pid);
  EXPECT_EQ(c->segment.header()->client_pid, static_cast<std::uint32_t>(pid));
  std::string shm = c->segment.name();
  EXPECT_TRUE(HeldHere(shm));
  ASSERT_TRUE(c->requests.WaitForData(5s));
  std::string got;
  c->requests.Drain(1, SIZE_MAX, [&](const ring::Record& r) { got.assign(r.payload.begin(), r.payload.end()); });
  EXPECT_EQ(got, "ping");
  ASSERT_EQ(c->replies.TryWrite(Bytes("pong"), framing::kMessage), ring::ClaimResult::kOk);
  c->replies.Publish();
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) { return !e.detached.empty(); }));
  EXPECT_EQ((*l)->Find(id), nullptr);
  EXPECT_FALSE(HeldHere(shm));  // the controller let go of it: the memory goes with the client
}

TEST(Transport, SecondControllerWithTheSameNameRefusesToStart) {
  auto l = Listener::Start(Small(Name("twice")));
  ASSERT_TRUE(l.ok());
  auto again = Listener::Start(Small(Name("twice")));
  ASSERT_FALSE(again.ok());
  EXPECT_NE(again.status().message().find("already running"), std::string::npos) << again.status().message();
  pid_t pid = fork();
  if (pid == 0) _exit(Listener::Start(Small(Name("twice"))).ok() ? 1 : 0);
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(Transport, KilledClientIsNoticedWithinOneHundredMilliseconds) {
  auto l = Listener::Start(Small(Name("kill-client")));
  ASSERT_TRUE(l.ok());
  AttachedClient c = StartClient(**l, Name("kill-client"), [](Connection&) { pause(); return 0; });
  ASSERT_FALSE(c.shm.empty());
  EXPECT_TRUE(HeldHere(c.shm));
  kill(c.pid, SIGKILL);
  auto t0 = Clock::now();
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) { return !e.detached.empty(); }));
  auto took = Clock::now() - t0;
  waitpid(c.pid, nullptr, 0);
  EXPECT_LT(took, 100ms);
  EXPECT_FALSE(HeldHere(c.shm));
  EXPECT_TRUE((*l)->clients().empty());
}

// A sleeping controller is woken by one byte per publish that made new
// requests visible. A caller that publishes on every pass of its loop (the
// ZeroMQ front) rings nothing when nothing is new: each byte is a system call
// on both sides, and one per pass cost the front's requests several.
TEST(Transport, TheDoorbellRingsOnlyForNewRequests) {
  auto l = Listener::Start(Small(Name("doorbell")));
  ASSERT_TRUE(l.ok());
  int go[2], done[2];
  ASSERT_EQ(pipe(go), 0);
  ASSERT_EQ(pipe(done), 0);
  AttachedClient c = StartClient(**l, Name("doorbell"), [&](Connection& conn) {
    char b = 0;
    if (read(go[0], &b, 1) != 1) return 1;
    if (conn.requests().TryWrite(Bytes("one"), framing::kMessage) != ring::ClaimResult::kOk) return 2;
    conn.PublishRequests();  // rings
    conn.PublishRequests();  // nothing new: silent
    conn.PublishRequests();
    if (conn.requests().TryWrite(Bytes("two"), framing::kMessage) != ring::ClaimResult::kOk) return 3;
    conn.PublishRequests();  // rings
    (void)!write(done[1], "d", 1);
    pause();
    return 0;
  });
  // The child's ends: a child that fails early closes its copy of done[1], and
  // the read below then ends instead of waiting for ever.
  close(go[0]);
  close(done[1]);
  ASSERT_FALSE(c.shm.empty());
  ASSERT_EQ((*l)->clients().size(), 1u);
  const int socket = (*l)->clients()[0]->socket;
  (*l)->SetControllerSleeping(true);
  ASSERT_EQ(write(go[1], "g", 1), 1);
  char b = 0;
  ASSERT_EQ(read(done[0], &b, 1), 1);
  int rung = -1;
  ASSERT_EQ(ioctl(socket, FIONREAD, &rung), 0);
  EXPECT_EQ(rung, 2);
  kill(c.pid, SIGKILL);
  waitpid(c.pid, nullptr, 0);
  close(go[1]);
  close(done[0]);
}

[[noreturn]] void RunController(const std::string& name, int ready_fd) {
  auto l = Listener::Start(Small(name));
  char b = l.ok() ? 1 : 0;
  (void)!write(ready_fd, &b, 1);
  if (!l.ok()) _exit(1);
  for (;;) (*l)->Poll(100ms);
}

TEST(Transport, ClientLearnsTheControllerDiedAndReattachesToANewOne) {
  const std::string name = Name("kill-controller");
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t ctl = fork();
  if (ctl == 0) RunController(name, ready[1]);
  char b = 0;
  ASSERT_EQ(read(ready[0], &b, 1), 1);
  auto c = Connection::Open({name, segment::Role::kWorker, 5000ms});
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  std::string old_shm = (*c)->segment().name();
  EXPECT_TRUE((*c)->ControllerAlive());
  kill(ctl, SIGKILL);
  waitpid(ctl, nullptr, 0);
  auto t0 = Clock::now();
  while ((*c)->ControllerAlive() && Clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
  EXPECT_LT(Clock::now() - t0, 100ms);
  // A killed controller leaves no file anywhere: the segment lives on only
  // in this client's mapping and descriptor, and goes with them.
  EXPECT_FALSE(AnythingInDevShm(name));
  EXPECT_TRUE(HeldHere(old_shm));

  pid_t ctl2 = fork();
  if (ctl2 == 0) RunController(name, ready[1]);
  ASSERT_EQ(read(ready[0], &b, 1), 1);
  ASSERT_EQ(b, 1);
  auto c2 = Connection::Open({name, segment::Role::kWorker, 5000ms});
  ASSERT_TRUE(c2.ok()) << c2.status().ToString();
  EXPECT_NE((*c2)->segment().name(), old_shm);
  c->reset();
  EXPECT_FALSE(HeldHere(old_shm));
  kill(ctl2, SIGKILL);
  waitpid(ctl2, nullptr, 0);
  EXPECT_FALSE(AnythingInDevShm(name));
}

TEST(Transport, NoControllerIsAClearErrorAfterTheDeadline) {
  auto t0 = Clock::now();
  auto c = Connection::Open({Name("nobody"), segment::Role::kWorker, 50ms});
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("no kvring controller named"), std::string::npos) << c.status().message();
  EXPECT_LT(Clock::now() - t0, 2s);
}

TEST(Transport, GarbageHandshakeIsRejectedAndTheControllerCarriesOn) {
  auto l = Listener::Start(Small(Name("garbage")));
  ASSERT_TRUE(l.ok());
  int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::string s = SocketName(Name("garbage"));
  std::memcpy(a.sun_path, s.data(), s.size());
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + s.size())), 0);
  ASSERT_EQ(send(fd, "hello?", 6, 0), 6);
  std::vector<std::string> rejected;
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) {
    rejected.insert(rejected.end(), e.rejected.begin(), e.rejected.end());
    return !rejected.empty();
  }));
  EXPECT_EQ(rejected[0], "handshake: not a kvring client");
  close(fd);
  // A real client still gets in.
  pid_t pid = fork();
  if (pid == 0) _exit(Connection::Open({Name("garbage"), segment::Role::kOrchestrator, 5000ms}).ok() ? 0 : 1);
  bool attached = PumpUntil(**l, [&](const Listener::Events& e) { return !e.attached.empty(); });
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(attached);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

// Connects to controller `name` without saying Hello; -1 on failure.
int IdleConnection(const std::string& name) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::string s = SocketName(name);
  std::memcpy(a.sun_path, s.data(), s.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + s.size())) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

// Forks a process that opens `n` idle connections to `name` (as uid `uid`
// when not -1), writes one byte on the returned pipe once they are open, and
// holds them until the pipe's other end closes; it exits 0 if every one was
// closed by the controller by then (EOF), else 3.
struct IdleHolder {
  pid_t pid = -1;
  int ready = -1, release = -1;
};
IdleHolder HoldIdleConnections(const std::string& name, int n, int uid) {
  int ready[2], release[2];
  if (pipe(ready) != 0 || pipe(release) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(ready[0]);
    close(release[1]);
    rlimit lim{4096, 4096};
    (void)setrlimit(RLIMIT_NOFILE, &lim);
    if (uid >= 0 && (setgid(static_cast<gid_t>(uid)) != 0 || setuid(static_cast<uid_t>(uid)) != 0)) _exit(100);
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) {
      int fd = IdleConnection(name);
      if (fd < 0) _exit(101);
      fds.push_back(fd);
    }
    if (write(ready[1], "r", 1) != 1) _exit(102);
    char b;
    (void)!read(release[0], &b, 1);  // until the test is done with them
    int open_still = 0;
    for (int fd : fds) {
      pollfd p{fd, POLLIN, 0};
      char buf[512];
      // The controller closed it: readable, and EOF after any refusal it sent.
      bool closed = poll(&p, 1, 0) == 1 && (recv(fd, buf, sizeof buf, MSG_DONTWAIT) == 0 ||
                                            recv(fd, buf, sizeof buf, MSG_DONTWAIT) == 0);
      open_still += closed ? 0 : 1;
    }
    _exit(open_still == 0 ? 0 : 3);
  }
  close(ready[1]);
  close(release[0]);
  return {pid, ready[0], release[1]};
}

bool WaitReadable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

// A thousand idle connections from another user are turned away at once,
// before anything is kept for them; a real client still gets in meanwhile.
TEST(Transport, IdleConnectionsOfAnotherUserCannotLockOutRealClients) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  auto l = Listener::Start(Small(Name("otheruid")));
  ASSERT_TRUE(l.ok());
  IdleHolder h = HoldIdleConnections(Name("otheruid"), 1000, 65534);
  ASSERT_GT(h.pid, 0);
  std::size_t refused = 0;
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) {
    for (const auto& r : e.rejected) refused += r.rfind("uid 65534 may not attach", 0) == 0 ? 1 : 0;
    return refused == 1000 && WaitReadable(h.ready, 0ms);
  }, 20000ms));
  pid_t pid = fork();
  if (pid == 0) _exit(Connection::Open({Name("otheruid"), segment::Role::kOrchestrator, 5000ms}).ok() ? 0 : 1);
  EXPECT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) { return !e.attached.empty(); }));
  int status = 0;
  waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(h.release);
  waitpid(h.pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit " << WEXITSTATUS(status);  // every one closed
  close(h.ready);
}

// After a controller dies any local user can listen under its name: a client
// checks who listens (SO_PEERCRED) and who owns the segment before it trusts
// the controller with anything.
TEST(Transport, AControllerOfAnotherUserIsNotTrustedUnlessThatUserIsExpected) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to act as another user";
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t impostor = fork();
  ASSERT_GE(impostor, 0);
  if (impostor == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(90);
    ListenerOptions o = Small(Name("impostor"));
    o.allow_other_uids = true;  // so that root's clients get as far as the segment
    auto l = Listener::Start(o);
    if (!l.ok()) _exit(91);
    if (write(ready[1], "r", 1) != 1) _exit(92);
    for (;;) (void)(*l)->Poll(10ms);
  }
  char b;
  ASSERT_EQ(read(ready[0], &b, 1), 1);
  auto refused = Connection::Open({Name("impostor"), segment::Role::kWorker, 2000ms});
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().kind(), ErrorKind::kPermission);
  EXPECT_NE(refused.status().message().find("runs as uid 65534"), std::string::npos) << refused.status().message();
  // Expected: the same controller is trusted, its segment owned by 65534.
  auto trusted = Connection::Open({Name("impostor"), segment::Role::kWorker, 2000ms, 65534u});
  ASSERT_TRUE(trusted.ok()) << trusted.status().ToString();
  EXPECT_EQ((*trusted)->segment().owner_uid(), 65534u);
  kill(impostor, SIGKILL);
  int status = 0;
  waitpid(impostor, &status, 0);
  close(ready[0]);
  close(ready[1]);
}

// Connections of the controller's own user that never say Hello hold at most
// max_pending places, for at most handshake_timeout each; real clients get in.
TEST(Transport, ConnectionsThatNeverSayHelloTimeOutAndDoNotCountAsClients) {
  ListenerOptions o = Small(Name("silent"));
  o.max_clients = 2;
  o.max_pending = 16;
  o.handshake_timeout = 300ms;
  auto l = Listener::Start(o);
  ASSERT_TRUE(l.ok());
  IdleHolder h = HoldIdleConnections(Name("silent"), 200, -1);
  ASSERT_GT(h.pid, 0);
  std::size_t evicted = 0, timed_out = 0;
  auto count = [&](const Listener::Events& e) {
    for (const auto& r : e.rejected) {
      evicted += r.find("connections waiting to say Hello") != std::string::npos ? 1 : 0;
      timed_out += r.rfind("handshake timed out", 0) == 0 ? 1 : 0;
    }
  };
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) {
    count(e);
    return WaitReadable(h.ready, 0ms) && evicted == 200 - 16;
  }, 10000ms));
  // Two real clients fill max_clients; the silent ones never counted.
  std::vector<pid_t> real;
  for (int i = 0; i < 2; ++i) {
    pid_t pid = fork();
    real.push_back(pid);
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      auto c = Connection::Open({Name("silent"), segment::Role::kOrchestrator, 5000ms});
      if (!c.ok()) _exit(1);
      pause();
    }
    ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) {
      count(e);
      return !e.attached.empty();
    }));
  }
  EXPECT_EQ((*l)->clients().size(), 2u);
  // Every silent one is gone: pushed out by a newer connection (the real
  // clients' too) or timed out.
  ASSERT_TRUE(PumpUntil(**l, [&](const Listener::Events& e) {
    count(e);
    return evicted + timed_out == 200;
  }, 5000ms)) << evicted << " evicted, " << timed_out << " timed out";
  EXPECT_GE(timed_out, 14u);
  for (pid_t pid : real) {  // first: they hold copies of the release pipe
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  close(h.release);
  int status = 0;
  waitpid(h.pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit " << WEXITSTATUS(status);
  close(h.ready);
}

TEST(Transport, CleanShutdownRemovesEverySegmentAndTellsTheClients) {
  auto l = Listener::Start(Small(Name("shutdown")));
  ASSERT_TRUE(l.ok());
  AttachedClient c = StartClient(**l, Name("shutdown"), [](Connection& conn) {
    auto t0 = Clock::now();
    while (conn.ControllerAlive() && Clock::now() - t0 < 5s) std::this_thread::sleep_for(1ms);
    // The segment it still maps is marked closed.
    bool closed = conn.segment().header()->state.load() == segment::kClosed;
    return !conn.ControllerAlive() && closed ? 0 : 2;
  });
  ASSERT_FALSE(c.shm.empty());
  EXPECT_TRUE(HeldHere(c.shm));
  l->reset();  // the controller shuts down cleanly
  EXPECT_FALSE(HeldHere(c.shm));
  int status = 0;
  waitpid(c.pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
}

TEST(Transport, IdleListenerWithEightClientsUsesUnderOnePercentOfACore) {
  auto l = Listener::Start(Small(Name("idle")));
  ASSERT_TRUE(l.ok());
  std::vector<pid_t> kids;
  for (int i = 0; i < 8; ++i) {
    AttachedClient c = StartClient(**l, Name("idle"), [](Connection&) { pause(); return 0; });
    ASSERT_FALSE(c.shm.empty());
    kids.push_back(c.pid);
  }
  // Measure the CPU the controller side burns over one idle second.
  timespec c0{}, c1{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
  auto end = Clock::now() + 1s;
  while (Clock::now() < end) (void)(*l)->Poll(100ms);
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
  double cpu_ms = (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6;
  for (pid_t pid : kids) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  EXPECT_EQ((*l)->clients().size(), 8u);
  EXPECT_LT(cpu_ms, 10.0);  // 1% of one core over the second
}

TEST(Transport, DefaultRequestRingTakesA10000OpBatchDecodedInPlace) {
  ListenerOptions defaults;
  const std::size_t cap = defaults.request_capacity;
  std::vector<std::uint64_t> mem(ring::RegionBytes(cap) / 8);
  ASSERT_TRUE(ring::InitializeRegion(mem.data(), cap).ok());
  ring::Producer p(mem.data(), cap, ring::DefaultMaxRecord(cap));
  ring::Consumer c(mem.data(), cap, ring::DefaultMaxRecord(cap));
  std::ifstream f(std::string(KVRING_TEST_DATA) + "/lmcache-msgspec/BatchedKVOperationMsg__10000ops.msgpack",
                  std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  ASSERT_GT(bytes.size(), 200000u);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(p.TryWrite({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()}, framing::kMessage),
              ring::ClaimResult::kOk);
  }
  p.Publish();
  protocol::BatchedKVOperationView view;
  std::size_t ops = 0;
  c.Drain(SIZE_MAX, SIZE_MAX, [&](const ring::Record& r) {
    ASSERT_TRUE(protocol::Decode(r.payload, &view).ok());  // straight from ring memory
    ops += view.operations.size();
  });
  EXPECT_EQ(ops, 30000u);
}

}  // namespace
}  // namespace kvring::transport
