// The worker client library against a real controller, the workers in forked
// processes on real shared memory.
#include "kvring/client/client.h"

#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "kvring/controller/controller.h"
#include "process_util.h"
#include "support/small_controller.h"

namespace kvring::client {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

const std::string kPid = std::to_string(getpid());
std::string Name(const char* what) { return "cl" + kPid + "-" + what; }

controller::Options Small(const std::string& name) { return testing::SmallController(name); }

WorkerOptions Opts(const std::string& name, const std::string& inst, int rank) {
  WorkerOptions o;
  o.controller = name;
  o.instance_id = inst;
  o.worker_id = rank;
  o.peer_init_url = inst + ":" + std::to_string(8200 + rank);
  o.attach_timeout = 5000ms;
  return o;
}

bool Readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1;
}

bool PumpUntil(controller::Controller& c, const std::function<bool()>& done, std::chrono::milliseconds timeout = 10000ms) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (done()) return true;
    c.PollOnce(1ms);
  }
  return done();
}

using testing::RunUntilExit;
using testing::Spawn;

TEST(Client, BatchedEventsReachTheControllerInOrderAndPeersFindThem) {
  auto ctl = controller::Controller::Start(Small(Name("basic")));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  pid_t pid = Spawn([&] {
    auto a = Worker::Connect(Opts(Name("basic"), "A", 0));
    auto b = Worker::Connect(Opts(Name("basic"), "B", 0));
    if (!a.ok() || !b.ok()) return 1;
    for (std::uint64_t k = 0; k < 1000; ++k) (*a)->Admit("LocalCPUBackend", 5000 + k);  // 3 full batches + 232 queued
    for (std::uint64_t k = 0; k < 10; ++k) (*a)->Evict("LocalCPUBackend", 5000 + 990 + k);
    // A's heartbeat is answered after A's events are applied (one ring, in
    // order); across clients requests go first, so B could overtake them.
    if (!(*a)->Flush().ok() || !(*a)->Heartbeat().ok()) return 2;
    std::vector<std::uint64_t> hashes(40);
    std::iota(hashes.begin(), hashes.end(), 5000);
    auto hit = (*b)->Lookup(hashes, 2000ms);
    if (!hit.ok() || hit->instance_id != "A" || hit->num_hit_chunks != 40 || hit->peer_init_url != "A:8200") return 3;
    std::vector<std::uint64_t> evicted{5995, 5996};
    auto miss = (*b)->Lookup(evicted, 2000ms);
    if (!miss.ok() || miss->num_hit_chunks != 0 || !miss->instance_id.empty()) return 4;
    if ((*a)->counters().ops_sent != 1010 || (*a)->counters().batches_sent != 4) return 5;
    return (*a)->Close().ok() && (*b)->Close().ok() ? 0 : 6;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  EXPECT_EQ((*ctl)->stats().kv_ops, 1010u);
  EXPECT_EQ((*ctl)->stats().seq_discontinuities, 0u);  // seq numbers run on across batches
  EXPECT_EQ((*ctl)->stats().errors, 0u);
}

TEST(Client, ReplyThatMissedItsDeadlineIsNotTakenForTheNextOne) {
  auto ctl = controller::Controller::Start(Small(Name("late")));
  ASSERT_TRUE(ctl.ok());
  int ready[2], go[2], timed_out[2];
  ASSERT_EQ(pipe(ready), 0);
  ASSERT_EQ(pipe(go), 0);
  ASSERT_EQ(pipe(timed_out), 0);
  pid_t pid = Spawn([&] {
    auto a = Worker::Connect(Opts(Name("late"), "A", 0));
    auto b = Worker::Connect(Opts(Name("late"), "B", 0));
    if (!a.ok() || !b.ok()) return 1;
    (*a)->Admit("LocalCPUBackend", 1);
    (*a)->Admit("LocalCPUBackend", 2);
    if (!(*a)->Heartbeat().ok()) return 2;  // its reply comes after the events were applied
    char c;
    if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1) return 3;
    std::vector<std::uint64_t> one{1};
    auto late = (*b)->Lookup(one, 50ms);  // the parent is not polling now
    if (late.ok() || late.status().kind() != ErrorKind::kTimeout) return 4;
    if (write(timed_out[1], "t", 1) != 1) return 5;
    std::vector<std::uint64_t> two{1, 2};
    auto hit = (*b)->Lookup(two, 5000ms);
    if (!hit.ok() || hit->num_hit_chunks != 2) return 6;  // not the 1-chunk answer to the late request
    return (*b)->counters().late_replies_skipped == 1 ? 0 : 7;
  });
  close(timed_out[1]);  // a child that fails closes it: the read below returns instead of hanging
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return Readable(ready[0]); }));
  ASSERT_EQ(write(go[1], "g", 1), 1);
  char c;
  ASSERT_EQ(read(timed_out[0], &c, 1), 1);  // no polling until the lookup gave up
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

TEST(Client, FullSyncAskedInAHeartbeatRebuildsTheLocationFromKeysOf) {
  controller::Options o = Small(Name("sync"));
  o.full_sync_on_start = true;
  auto ctl = controller::Controller::Start(o);
  ASSERT_TRUE(ctl.ok());
  int synced[2], release[2];
  ASSERT_EQ(pipe(synced), 0);
  ASSERT_EQ(pipe(release), 0);
  pid_t pid = Spawn([&] {
    WorkerOptions wo = Opts(Name("sync"), "A", 0);
    wo.full_sync_batch_keys = 1000;
    wo.keys_of = [](const std::string& loc) {
      std::vector<std::uint64_t> keys;
      if (loc == "LocalCPUBackend")
        for (std::uint64_t k = 100; k < 5000; ++k) keys.push_back(k);
      return keys;
    };
    auto a = Worker::Connect(wo);
    if (!a.ok()) return 1;
    (*a)->Admit("LocalCPUBackend", 7);  // not in keys_of: the sync's snapshot replaces it
    if (Status s = (*a)->Heartbeat(); !s.ok()) return 2;
    if ((*a)->counters().full_syncs != 1) return 3;
    if (write(synced[1], "s", 1) != 1) return 4;
    char c;
    return read(release[0], &c, 1) == 1 ? 0 : 5;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return Readable(synced[0]); }));
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 4900; }));
  auto w = (*ctl)->registry().Find("A", 0);
  ASSERT_TRUE(w.has_value());
  auto h = (*ctl)->registry().FindHolder(*w, "LocalCPUBackend");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ((*ctl)->index().KeysOf(*h), 4900u);
  EXPECT_FALSE((*ctl)->index().Contains(7, *h));
  EXPECT_TRUE((*ctl)->index().Contains(4999, *h));
  EXPECT_EQ((*ctl)->stats().full_syncs_completed, 1u);
  ASSERT_EQ(write(release[1], "r", 1), 1);
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

// A registered worker that never heartbeats (so it can never be asked to
// sync), until the test writes to `release`.
pid_t SpawnSilentWorker(const std::string& name, int registered, int release) {
  return Spawn([=] {
    auto s = Worker::Connect(Opts(name, "S", 0));
    if (!s.ok() || write(registered, "r", 1) != 1) return 1;
    char c;
    return read(release, &c, 1) == 1 ? 0 : 2;
  });
}

// A controller that asks every worker for a full sync at start, and one
// registered worker that never heartbeats (so never syncs) until released:
// the set-up of the tests of full sync beside a silent worker.
class ClientFullSync : public ::testing::Test {
 protected:
  void StartBesideASilentWorker(const char* name, double heartbeat_interval_s) {
    name_ = Name(name);
    controller::Options o = Small(name_);
    o.full_sync_on_start = true;
    o.heartbeat_interval_s = heartbeat_interval_s;
    auto c = controller::Controller::Start(o);
    ASSERT_TRUE(c.ok());
    ctl_ = std::move(c).value();
    int registered[2];
    ASSERT_EQ(pipe(registered), 0);
    ASSERT_EQ(pipe(release_), 0);
    silent_ = SpawnSilentWorker(name_, registered[1], release_[0]);
    ASSERT_TRUE(PumpUntil(*ctl_, [&] { return Readable(registered[0]); }));
  }
  // Lets the silent worker go and checks it exits cleanly.
  void ReleaseTheSilentWorker() {
    ASSERT_EQ(write(release_[1], "g", 1), 1);
    EXPECT_EQ(RunUntilExit(*ctl_, silent_), 0);
  }
  WorkerOptions SyncingWorkerOptions(std::vector<std::uint64_t> keys) const {
    WorkerOptions wo = Opts(name_, "A", 0);
    wo.full_sync_status_poll = 5ms;
    wo.full_sync_max_polls = 4000;  // 20 s: giving up would take longer than any of these tests
    wo.keys_of = [keys](const std::string&) { return keys; };
    return wo;
  }

  std::string name_;
  std::unique_ptr<controller::Controller> ctl_;
  int release_[2] = {-1, -1};
  pid_t silent_ = -1;
};

TEST_F(ClientFullSync, AFullSyncWaitingForFreezeToEndDoesNotBlockTheEngine) {
  // After a controller start, the worker's sync polls for leave-freeze;
  // that held the Worker's mutex for up to 10 s per location, and the
  // engine's Admit and Lookup waited on it. Here a silent worker keeps the
  // sync in freeze while the engine admits and looks up.
  StartBesideASilentWorker("freeze", 60);  // the silent worker is awaited the whole test
  int polling[2];
  ASSERT_EQ(pipe(polling), 0);
  pid_t engine = Spawn([&] {
    auto a = Worker::Connect(SyncingWorkerOptions({1, 2, 3}));
    if (!a.ok()) return 1;
    Worker& w = **a;
    w.Admit("LocalCPUBackend", 1);
    if (!w.Flush().ok()) return 2;
    Status synced = Status(ErrorKind::kUnavailable, "not yet");
    std::thread sync_thread([&] { synced = w.Heartbeat(); });  // syncs, then polls for leave-freeze
    while (w.counters().full_sync_status_polls < 3) std::this_thread::yield();
    // In freeze: the engine carries on.
    w.Admit("LocalCPUBackend", 42);
    const Status flushed = w.Flush();
    const std::uint64_t chain[] = {1, 2, 3};
    auto hit = w.Lookup(chain, 2000ms);
    const bool still_in_freeze = w.counters().full_syncs == 0;
    if (write(polling[1], flushed.ok() && hit.ok() && still_in_freeze ? "y" : "n", 1) != 1) return 3;
    sync_thread.join();  // the silent worker goes: freeze ends
    if (!synced.ok() || w.counters().full_syncs != 1) return 4;
    return flushed.ok() && hit.ok() && still_in_freeze ? 0 : 5;
  });
  ASSERT_TRUE(PumpUntil(*ctl_, [&] { return Readable(polling[0]); }));
  char answer = 0;
  ASSERT_EQ(read(polling[0], &answer, 1), 1);
  EXPECT_EQ(answer, 'y') << "Admit/Flush/Lookup did not complete during the sync's freeze";
  // The admit made in freeze is in the index beside the synced keys.
  auto holder = [&]() -> std::optional<index::HolderId> {
    auto w = ctl_->registry().Find("A", 0);
    return w ? ctl_->registry().FindHolder(*w, "LocalCPUBackend") : std::nullopt;
  };
  ASSERT_TRUE(PumpUntil(*ctl_, [&] { return holder() && ctl_->index().Contains(42, *holder()); }));
  ReleaseTheSilentWorker();
  EXPECT_EQ(RunUntilExit(*ctl_, engine), 0);
}

TEST_F(ClientFullSync, AFullSyncDoesNotWaitForAWorkerThatCannotBeAskedToSync) {
  // Progress counted every registered worker: one that never heartbeats
  // (it cannot be told to sync) kept every other worker in freeze for good.
  // It is not awaited once silent for two heartbeat intervals.
  StartBesideASilentWorker("silent", 0.2);
  pid_t syncing = Spawn([&] {
    auto a = Worker::Connect(SyncingWorkerOptions({7, 8}));
    if (!a.ok()) return 1;
    if (!(*a)->Heartbeat().ok()) return 2;  // returns once the controller lets it leave freeze
    return (*a)->counters().full_syncs == 1 && (*a)->counters().full_sync_status_polls < 4000 ? 0 : 3;
  });
  EXPECT_EQ(RunUntilExit(*ctl_, syncing), 0);
  EXPECT_TRUE(PumpUntil(*ctl_, [&] { return ctl_->registry().worker_count() == 1; }));  // the syncing one left...
  EXPECT_TRUE(ctl_->registry().Find("S", 0).has_value());  // ...the silent one is still registered
  ReleaseTheSilentWorker();
}

TEST(Client, BackgroundTicksSendAPartialBatchAfterTheFlushInterval) {
  auto ctl = controller::Controller::Start(Small(Name("timer")));
  ASSERT_TRUE(ctl.ok());
  int release[2];
  ASSERT_EQ(pipe(release), 0);
  pid_t pid = Spawn([&] {
    WorkerOptions wo = Opts(Name("timer"), "A", 0);
    wo.flush_interval = 2ms;
    auto a = Worker::Connect(wo);
    if (!a.ok()) return 1;
    (*a)->StartBackgroundTicks();
    for (std::uint64_t k : {1, 2, 3}) (*a)->Admit("LocalCPUBackend", k);  // far below batch_ops; no Flush
    char c;
    return read(release[0], &c, 1) == 1 ? 0 : 2;
  });
  EXPECT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 3; }));
  ASSERT_EQ(write(release[1], "r", 1), 1);
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

TEST(Client, ConnectWithoutAControllerFailsWithAClearMessage) {
  WorkerOptions wo = Opts(Name("nobody"), "A", 0);
  wo.attach_timeout = 50ms;
  auto a = Worker::Connect(wo);
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().kind(), ErrorKind::kUnavailable);
  EXPECT_NE(a.status().message().find("no kvring controller named"), std::string::npos) << a.status().message();
  auto stats = ControlRequest(Name("nobody"), R"({"op":"stats"})", 50ms);
  EXPECT_FALSE(stats.ok());
}

TEST(Client, ControlRequestReturnsTheControllersCounters) {
  auto ctl = controller::Controller::Start(Small(Name("ctl")));
  ASSERT_TRUE(ctl.ok());
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  pid_t pid = Spawn([&] {
    auto r = ControlRequest(Name("ctl"), R"({"op":"stats"})", 5000ms);
    auto bad = ControlRequest(Name("ctl"), R"({"op":"nonsense"})", 5000ms);
    if (!r.ok() || !bad.ok()) return 1;
    std::string both = *r + "\n" + *bad;
    return write(out[1], both.data(), both.size()) == static_cast<ssize_t>(both.size()) ? 0 : 2;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  char buf[8192];
  ssize_t n = read(out[0], buf, sizeof buf);
  ASSERT_GT(n, 0);
  std::string text(buf, static_cast<std::size_t>(n));
  EXPECT_NE(text.find("\"kv_ops_total\":0"), std::string::npos) << text;
  EXPECT_NE(text.find("\"error\":\"unknown control request"), std::string::npos) << text;
  EXPECT_EQ((*ctl)->stats().control_requests, 2u);
}

}  // namespace
}  // namespace kvring::client
