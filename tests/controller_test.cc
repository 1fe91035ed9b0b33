// The controller core with real worker processes on real shared memory.
#include "kvring/controller/controller.h"
#include "kvring/client/client.h"
#include "kvring/shm/framing.h"

#include "alloc_counter.h"
#include "support/small_controller.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <functional>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace kvring::controller {
namespace {

using namespace std::chrono_literals;
using namespace kvring::protocol;
using Clock = std::chrono::steady_clock;

const std::string kPid = std::to_string(getpid());
std::string Name(const char* what) { return "c" + kPid + "-" + what; }

Options Small(const std::string& name) { return testing::SmallController(name); }

bool PumpUntil(Controller& c, const std::function<bool()>& done, std::chrono::milliseconds timeout = 10000ms) {
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (done()) return true;
    c.PollOnce(1ms);
  }
  return done();
}

// What a worker process does: send messages, wait for replies.
struct Worker {
  std::unique_ptr<transport::Connection> conn;
  bool Send(const Message& m) {
    std::string b = Encode(m);
    if (conn->requests().TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()}, framing::kMessage) !=
        ring::ClaimResult::kOk)
      return false;
    conn->PublishRequests();
    return true;
  }
  bool SendRaw(const std::string& b, std::uint32_t type = framing::kMessage) {
    bool ok = conn->requests().TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()}, type) ==
              ring::ClaimResult::kOk;
    conn->PublishRequests();
    return ok;
  }
  std::optional<Message> Receive() {
    if (!conn->replies().WaitForData(5s)) return std::nullopt;
    ring::Record r;
    if (conn->replies().Peek(&r) != ring::PollResult::kRecord) return std::nullopt;
    auto m = Decode(r.payload);
    conn->replies().Release();
    conn->replies().PublishHead();
    if (!m.ok()) return std::nullopt;
    return std::move(m).value();
  }
  std::optional<Message> Ask(const Message& m) { return Send(m) ? Receive() : std::nullopt; }
};

RegisterMsg Reg(const std::string& inst, int wid) {
  return RegisterMsg{inst, Int(wid), "127.0.0.1", Int(8000 + wid), inst + ":" + std::to_string(8200 + wid)};
}
BatchedKVOperationMsg Ops(const std::string& inst, int wid, OpType op, std::vector<std::int64_t> keys, int seq0) {
  BatchedKVOperationMsg m{inst, Int(wid), "LocalCPUBackend", {}};
  for (auto k : keys) m.operations.push_back({op, Int::FromI64(k), Int(seq0++)});
  return m;
}

// Runs `body` in a forked worker process; its return value is the exit code.
pid_t Spawn(const std::string& name, const std::function<int(Worker&)>& body) {
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive a failed test
    auto c = transport::Connection::Open({name, segment::Role::kWorker, 5000ms});
    if (!c.ok()) _exit(100);
    Worker w{std::move(c).value()};
    _exit(body(w));
  }
  return pid;
}

int Exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// Runs the controller loop until the worker process exits; its exit code.
int RunUntilExit(Controller& ctl, pid_t pid) {
  std::atomic<bool> stop{false};
  int code = -2;
  std::thread waiter([&] {
    code = Exit(pid);
    stop = true;
  });
  ctl.Run(stop, 100);
  waiter.join();
  return code;
}

TEST(Controller, RegisterAdmitLookupEvictLookup) {
  auto ctl = Controller::Start(Small(Name("basic")));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  pid_t pid = Spawn(Name("basic"), [](Worker& w) {
    auto r = w.Ask(Reg("A", 0));
    if (!r || !std::holds_alternative<RegisterRetMsg>(*r)) return 1;
    if (!w.Send(Ops("A", 0, OpType::kAdmit, {11, 12, 13}, 0))) return 2;
    // Another instance asks: all three chunks, from A's worker 0.
    auto hit = w.Ask(BatchedP2PLookupMsg{{Int(11), Int(12), Int(13), Int(14)}, "B", Int(0)});
    if (!hit) return 3;
    const auto& l = std::get<BatchedP2PLookupRetMsg>(*hit).layout_info;
    if (l.size() != 1 || l[0].instance_id != "A" || l[0].num_hit_chunks != Int(3) || l[0].peer_init_url != "A:8200")
      return 4;
    if (!w.Send(Ops("A", 0, OpType::kEvict, {11}, 3))) return 5;
    auto miss = w.Ask(BatchedP2PLookupMsg{{Int(11), Int(12)}, "B", Int(0)});
    if (!miss) return 6;
    const auto& m = std::get<BatchedP2PLookupRetMsg>(*miss).layout_info;
    if (m.size() != 1 || m[0].instance_id != "" || m[0].num_hit_chunks != Int(0)) return 7;
    // The requester's own instance never answers itself.
    auto self = w.Ask(BatchedP2PLookupMsg{{Int(12)}, "A", Int(0)});
    if (!self || std::get<BatchedP2PLookupRetMsg>(*self).layout_info[0].num_hit_chunks != Int(0)) return 8;
    return 0;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  EXPECT_EQ((*ctl)->stats().kv_ops, 4u);
  EXPECT_EQ((*ctl)->stats().p2p_lookups, 3u);
  EXPECT_EQ((*ctl)->stats().errors, 0u);
}

// Chunks cached by workers of two instances have two holders each: one index
// slot and a holder group apiece, which the stats report beside the keys.
TEST(Controller, KeysHeldByTwoInstancesAreGroupedKeysInTheStats) {
  auto ctl = Controller::Start(Small(Name("groups")));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  pid_t pid = Spawn(Name("groups"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0)) || !w.Ask(Reg("B", 0))) return 1;
    if (!w.Send(Ops("A", 0, OpType::kAdmit, {1, 2, 3}, 0)) || !w.Send(Ops("B", 0, OpType::kAdmit, {2, 3, 4}, 0)))
      return 2;
    // Answered after both batches (one ring, in order): B holds all three.
    auto hit = w.Ask(BatchedP2PLookupMsg{{Int(2), Int(3), Int(4)}, "C", Int(0)});
    if (!hit) return 3;
    const auto& l = std::get<BatchedP2PLookupRetMsg>(*hit).layout_info;
    if (l[0].instance_id != "B" || l[0].num_hit_chunks != Int(3)) return 3;
    auto stats = client::ControlRequest(Name("groups"), R"({"op":"stats"})", 5000ms);
    if (!stats.ok()) return 4;
    const std::string& t = *stats;
    for (const char* want : {"\"keys\":6", "\"index_grouped_keys\":2", "\"index_overflow_keys\":0"})
      if (t.find(want) == std::string::npos) return 5;
    if (!w.Send(Ops("B", 0, OpType::kEvict, {2}, 3))) return 6;
    if (!w.Ask(BatchedP2PLookupMsg{{Int(2)}, "C", Int(0)})) return 7;
    auto after = client::ControlRequest(Name("groups"), R"({"op":"stats"})", 5000ms);
    if (!after.ok() || after->find("\"index_grouped_keys\":1") == std::string::npos) return 8;
    return 0;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

TEST(Controller, KilledWorkerLosesItsKeys) {
  auto ctl = Controller::Start(Small(Name("kill")));
  ASSERT_TRUE(ctl.ok());
  pid_t pid = Spawn(Name("kill"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    std::vector<std::int64_t> keys;
    for (int i = 0; i < 5000; ++i) keys.push_back(i * 7);
    for (int i = 0; i < 5000; i += 250)  // 250 ops: ~8 KiB, under the 16 KiB record limit
      while (!w.Send(Ops("A", 0, OpType::kAdmit, std::vector<std::int64_t>(keys.begin() + i, keys.begin() + i + 250), i)))
        w.conn->requests().WaitForSpace(8192, 1s);
    pause();
    return 0;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 5000; }));
  EXPECT_EQ((*ctl)->registry().worker_count(), 1u);
  kill(pid, SIGKILL);
  Exit(pid);
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 0; }, 2000ms));
  EXPECT_EQ((*ctl)->registry().worker_count(), 0u);
}

TEST(Controller, MalformedRecordsAreCountedAndBadRequestsGetErrorMsg) {
  auto ctl = Controller::Start(Small(Name("bad")));
  ASSERT_TRUE(ctl.ok());
  pid_t pid = Spawn(Name("bad"), [](Worker& w) {
    // Records that name no request get no reply: an unsolicited ErrorMsg
    // would be taken as the answer to the worker's next request.
    if (!w.SendRaw("\x81\xa4type\xa9NoSuchMsg")) return 1;  // unknown tag
    if (!w.SendRaw("\x92\x01\x02")) return 2;             // not a map at all
    // A record type the framing does not know, whatever it carries: refused
    // by the controller (the ring carries any type), neither applied nor answered.
    if (!w.SendRaw(Encode(Reg("B", 7)), framing::kMaxType + 72)) return 7;
    // A malformed request is answered with an ErrorMsg that names the field.
    std::string bad = Encode(Reg("A", 0));
    bad[bad.find("worker_id") + 9] = static_cast<char>(0xa1);  // worker_id: 0 -> a 1-char str
    bad.insert(bad.find("worker_id") + 10, "x");
    if (!w.SendRaw(bad)) return 3;
    auto e = w.Receive();
    if (!e || !std::holds_alternative<ErrorMsg>(*e)) return 4;
    if (std::get<ErrorMsg>(*e).error.find("field 'worker_id': expected int, got str") == std::string::npos) {
      fprintf(stderr, "got: %s\n", std::get<ErrorMsg>(*e).error.c_str());
      return 5;
    }
    // And the controller carries on.
    auto r = w.Ask(Reg("A", 0));
    return r && std::holds_alternative<RegisterRetMsg>(*r) ? 0 : 6;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  EXPECT_EQ((*ctl)->stats().errors, 4u);
  EXPECT_EQ((*ctl)->stats().quarantined_rings, 0u);
  EXPECT_FALSE((*ctl)->registry().Find("B", 7).has_value());  // the unknown record was not applied
}

TEST(Controller, SequenceGapAsksForAFullSyncInTheNextHeartbeat) {
  auto ctl = Controller::Start(Small(Name("gap")));
  ASSERT_TRUE(ctl.ok());
  pid_t pid = Spawn(Name("gap"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    HeartbeatMsg hb{"A", Int(0), "127.0.0.1", Int(8000), std::string("A:8200")};
    auto quiet = w.Ask(hb);
    if (!quiet || !std::get<HeartbeatRetMsg>(*quiet).commands.empty()) return 2;
    w.Send(Ops("A", 0, OpType::kAdmit, {1, 2}, 0));
    w.Send(Ops("A", 0, OpType::kAdmit, {3}, 5));  // 2, 3, 4 went missing
    auto asked = w.Ask(hb);
    if (!asked) return 3;
    const auto& cmds = std::get<HeartbeatRetMsg>(*asked).commands;
    if (cmds.size() != 1 || cmds[0].kind != CommandKind::kFullSync) return 4;
    // An unknown worker's heartbeat re-registers it and asks for a full sync.
    auto rereg = w.Ask(HeartbeatMsg{"Z", Int(9), "127.0.0.1", Int(1), std::nullopt});
    if (!rereg || std::get<HeartbeatRetMsg>(*rereg).commands.size() != 1) return 5;
    return 0;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  EXPECT_EQ((*ctl)->stats().seq_discontinuities, 1u);
}

TEST(Controller, KvBatchesAndP2PLookupsAllocateNothingOnceWarm) {
  auto ctl = Controller::Start(Small(Name("alloc")));
  ASSERT_TRUE(ctl.ok());
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  constexpr int kRounds = 40;
  pid_t pid = Spawn(Name("alloc"), [&](Worker& w) {
    const std::string inst = "lmcache_instance_0";  // longer than the small-string buffer
    if (!w.Ask(Reg(inst, 0))) return 1;
    auto lookup = BatchedP2PLookupMsg{{Int(1), Int(2), Int(3)}, "lmcache_instance_1", Int(0)};
    w.Send(Ops(inst, 0, OpType::kAdmit, {1, 2, 3}, 0));  // warm-up round
    if (!w.Ask(lookup)) return 2;
    char b;
    if (read(go[0], &b, 1) != 1) return 3;  // the parent counts from here
    for (int i = 0; i < kRounds; ++i) {
      w.Send(Ops(inst, 0, i % 2 ? OpType::kAdmit : OpType::kEvict, {3}, 3 + i));
      w.Send(lookup);
    }
    for (int i = 0; i < kRounds; ++i)
      if (!w.Receive()) return 4;
    return 0;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->stats().p2p_lookups == 1; }));
  long allocations;
  {
    kvring::testing::AllocationCounter counter;
    ASSERT_EQ(write(go[1], "g", 1), 1);
    while ((*ctl)->stats().p2p_lookups < 1 + kRounds) (*ctl)->PollOnce(std::chrono::milliseconds(1));
    allocations = counter.count();
  }
  EXPECT_EQ(Exit(pid), 0);
  EXPECT_EQ((*ctl)->stats().kv_ops, 3u + kRounds);
  EXPECT_EQ(allocations, 0);
}

}  // namespace
}  // namespace kvring::controller

namespace kvring::controller {
namespace {

std::string HolderKeysOf(Controller& c, const std::string& inst, int wid, const std::string& loc) {
  auto w = c.registry().Find(inst, wid);
  if (!w) return "no worker";
  auto h = c.registry().FindHolder(*w, loc);
  if (!h) return "no holder";
  std::vector<std::uint64_t> keys;
  c.index().ForEachKeyOf(*h, [&](std::uint64_t k) { keys.push_back(k); });
  std::sort(keys.begin(), keys.end());
  std::string out;
  for (auto k : keys) out += std::to_string(k) + ",";
  return out;
}

FullSyncBatchMsg SyncBatch(const std::string& id, int batch, std::vector<std::int64_t> keys) {
  FullSyncBatchMsg m{"A", Int(0), "LocalCPUBackend", id, Int(batch), {}};
  for (auto k : keys) m.keys.push_back(Int::FromI64(k));
  return m;
}

TEST(Controller, FullSyncReplacesTheLocationAndReportsMissingBatchesUntilResent) {
  Options o = Small(Name("sync"));
  o.full_sync_on_start = true;
  auto ctl = Controller::Start(o);
  ASSERT_TRUE(ctl.ok());
  int checked[2], release[2];
  ASSERT_EQ(pipe(checked), 0);
  ASSERT_EQ(pipe(release), 0);
  pid_t pid = Spawn(Name("sync"), [&](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    HeartbeatMsg hb{"A", Int(0), "127.0.0.1", Int(8000), std::string("A:8200")};
    // A fresh controller asks every worker once (LMCache: controller_restart).
    auto first = w.Ask(hb);
    if (!first || std::get<HeartbeatRetMsg>(*first).commands.size() != 1 ||
        std::get<HeartbeatRetMsg>(*first).commands[0].reason != std::optional<std::string>("controller_restart"))
      return 2;
    w.Send(Ops("A", 0, OpType::kAdmit, {1, 2, 3}, 0));  // stale keys the sync must replace
    auto start = w.Ask(FullSyncStartMsg{"A", Int(0), "LocalCPUBackend", "s1", Int(4), Int(2)});
    if (!start || !std::get<FullSyncStartRetMsg>(*start).accepted) return 3;
    // A second sync id while the first runs is refused, naming the running one.
    auto other = w.Ask(FullSyncStartMsg{"A", Int(0), "LocalCPUBackend", "s2", Int(0), Int(1)});
    if (!other || std::get<FullSyncStartRetMsg>(*other).accepted ||
        std::get<FullSyncStartRetMsg>(*other).error_msg->find("s1") == std::string::npos)
      return 4;
    w.Send(Ops("A", 0, OpType::kAdmit, {99}, 3));  // during the sync: discarded, as LMCache
    w.Send(SyncBatch("s1", 0, {10, 11}));
    w.Send(FullSyncEndMsg{"A", Int(0), "LocalCPUBackend", "s1", Int(4)});
    auto st = w.Ask(FullSyncStatusMsg{"A", Int(0), "s1"});
    if (!st) return 5;
    auto& s = std::get<FullSyncStatusRetMsg>(*st);
    if (s.is_complete || s.missing_batches != std::vector<Int>{Int(1)} || s.can_exit_freeze) return 6;
    w.Send(SyncBatch("s1", 1, {12, 13}));
    auto done = w.Ask(FullSyncStatusMsg{"A", Int(0), "s1"});
    if (!done) return 7;
    auto& d = std::get<FullSyncStatusRetMsg>(*done);
    if (!d.is_complete || !d.missing_batches.empty() || !d.can_exit_freeze || d.global_progress != 1.0) return 8;
    // Completed: no further request in heartbeats.
    auto quiet = w.Ask(hb);
    if (!quiet || !std::get<HeartbeatRetMsg>(*quiet).commands.empty()) return 9;
    if (write(checked[1], "c", 1) != 1) return 10;
    char c;
    return read(release[0], &c, 1) == 1 ? 0 : 11;  // stay registered while the parent looks
  });
  pollfd p{checked[0], POLLIN, 0};
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return poll(&p, 1, 0) == 1; }));
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 4; }));  // stale keys drained
  EXPECT_EQ(HolderKeysOf(**ctl, "A", 0, "LocalCPUBackend"), "10,11,12,13,");
  ASSERT_EQ(write(release[1], "d", 1), 1);
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  EXPECT_EQ((*ctl)->stats().full_syncs_started, 1u);
  EXPECT_EQ((*ctl)->stats().full_syncs_completed, 1u);
  EXPECT_EQ((*ctl)->stats().dropped_syncing, 1u);
  EXPECT_FALSE((*ctl)->full_sync_all_pending());
}

TEST(Controller, StalledFullSyncFailsAndIsAskedAgain) {
  Options o = Small(Name("stall"));
  o.full_sync_timeout_s = 0.1;
  o.full_sync_on_start = false;
  auto ctl = Controller::Start(o);
  ASSERT_TRUE(ctl.ok());
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t pid = Spawn(Name("stall"), [&](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    auto start = w.Ask(FullSyncStartMsg{"A", Int(0), "LocalCPUBackend", "s1", Int(10), Int(5)});
    if (!start || !std::get<FullSyncStartRetMsg>(*start).accepted) return 2;
    char b;
    if (read(go[0], &b, 1) != 1) return 3;  // the parent saw the sync fail
    auto hb = w.Ask(HeartbeatMsg{"A", Int(0), "127.0.0.1", Int(8000), std::nullopt});
    if (!hb) return 4;
    const auto& cmds = std::get<HeartbeatRetMsg>(*hb).commands;
    return cmds.size() == 1 && cmds[0].reason == std::optional<std::string>("sync_failed_retry") ? 0 : 5;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->stats().full_syncs_failed == 1; }));
  ASSERT_EQ(write(go[1], "g", 1), 1);
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

TEST(Controller, SilentWorkerIsDeregisteredAfterTheHeartbeatTimeout) {
  Options o = Small(Name("reap"));
  o.worker_timeout_s = 0.2;
  auto ctl = Controller::Start(o);
  ASSERT_TRUE(ctl.ok());
  pid_t pid = Spawn(Name("reap"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    // B registers and never heartbeats: not configured to, so never reaped.
    if (!w.Ask(Reg("B", 0))) return 1;
    if (!w.Ask(HeartbeatMsg{"A", Int(0), "127.0.0.1", Int(8000), std::nullopt})) return 2;
    w.Send(Ops("A", 0, OpType::kAdmit, {1, 2, 3}, 0));
    w.Send(Ops("B", 0, OpType::kAdmit, {4, 5}, 0));
    w.conn->PublishRequests();
    pause();  // alive, attached, but silent
    return 0;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 5; }));
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->registry().worker_count() == 1 && (*ctl)->index().pairs() == 2; }));
  EXPECT_EQ((*ctl)->stats().workers_reaped, 1u);
  EXPECT_TRUE((*ctl)->registry().Find("B", 0).has_value());  // the heartbeat-less worker stays
  // Three timeouts later (the controller keeps serving), B is still there.
  const auto until = Clock::now() + 600ms;
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return Clock::now() > until; }));
  EXPECT_EQ((*ctl)->registry().worker_count(), 1u);
  EXPECT_EQ((*ctl)->stats().workers_reaped, 1u);
  EXPECT_EQ((*ctl)->listener().clients().size(), 1u);  // the process itself is still attached
  kill(pid, SIGKILL);
  Exit(pid);
}

// A client that writes garbage into its reply ring's consumer position is
// quarantined like one whose request ring is corrupt, not counted as a full
// reply ring forever; other clients are served on.
TEST(Controller, AClientThatCorruptsItsReplyRingHeadIsQuarantined) {
  auto ctl = Controller::Start(Small(Name("rhead")));
  ASSERT_TRUE(ctl.ok());
  pid_t bad = Spawn(Name("rhead"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    auto* rc = static_cast<ring::RingControl*>(w.conn->segment().ring_region(segment::kReplyRing));
    rc->head.store(std::uint64_t{1} << 40, std::memory_order_relaxed);  // beyond anything the controller wrote
    // Requests whose replies fill the ring: the controller must look at the head.
    HeartbeatMsg hb{"A", Int(0), "127.0.0.1", Int(8000), std::nullopt};
    for (int i = 0; i < 1000; ++i)
      while (!w.Send(hb)) w.conn->requests().WaitForSpace(256, 1s);
    pause();
    return 0;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->stats().quarantined_rings == 1; }));
  EXPECT_EQ((*ctl)->stats().reply_ring_full, 0u);
  auto& clients = (*ctl)->listener().clients();
  ASSERT_EQ(clients.size(), 1u);
  EXPECT_TRUE(clients[0]->quarantined);
  EXPECT_NE(clients[0]->segment.header()->quarantined.load() & (1u << segment::kReplyRing), 0u);
  // Another worker is served as before.
  pid_t good = Spawn(Name("rhead"), [](Worker& w) { return w.Ask(Reg("B", 0)) ? 0 : 1; });
  EXPECT_EQ(RunUntilExit(**ctl, good), 0);
  kill(bad, SIGKILL);
  Exit(bad);
}

TEST(Controller, AClientThatRewritesItsSegmentHeaderCannotMoveTheRingsTheControllerReads) {
  // The ring placement words of the header are the client's to write; the
  // controller's metrics and rate sampling once followed them (a fault
  // within a second). They are read once, at attach, and kept.
  auto ctl = Controller::Start(Small(Name("scribble")));
  ASSERT_TRUE(ctl.ok());
  pid_t bad = Spawn(Name("scribble"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    segment::SegmentHeader* h = w.conn->segment().header();
    for (int r = 0; r < 2; ++r) {
      h->ring_offset[r] = std::uint64_t{1} << 46;  // far outside any mapping
      h->ring_capacity[r] = std::uint64_t{1} << 40;
      h->max_record[r] = 0xffffffffu;
    }
    h->segment_bytes = 1;
    // Keep publishing, so the controller samples this client's rings.
    HeartbeatMsg hb{"A", Int(0), "127.0.0.1", Int(8000), std::nullopt};
    for (;;) {
      if (w.Send(hb)) (void)w.Receive();
      else w.conn->requests().WaitForSpace(256, 1s);
    }
    return 0;
  });
  // Rates come from two samples a second apart: wait for this client's.
  std::string metrics;
  ASSERT_TRUE(PumpUntil(**ctl, [&] {
    metrics = (*ctl)->MetricsText();
    const std::string series = "kvring_ring_records_per_second{client=\"";
    for (std::size_t at = metrics.find(series); at != std::string::npos; at = metrics.find(series, at + 1)) {
      const std::size_t end = metrics.find('\n', at);
      const std::string line = metrics.substr(at, end - at);
      if (line.find("ring=\"requests\"") != std::string::npos && line.substr(line.rfind(' ') + 1) != "0")
        return true;
    }
    return false;
  }, 20000ms)) << metrics;
  EXPECT_EQ((*ctl)->stats().quarantined_rings, 0u);  // the rings themselves are intact
  pid_t good = Spawn(Name("scribble"), [](Worker& w) { return w.Ask(Reg("B", 0)) ? 0 : 1; });
  EXPECT_EQ(RunUntilExit(**ctl, good), 0);
  kill(bad, SIGKILL);
  Exit(bad);
}

TEST(Controller, EveryStatsCounterIsInTheJsonAndInTheMetricsOnce) {
  // One table feeds `kvring stats --json` and /metrics; a counter added to
  // Stats but not to the table is caught by the count.
  constexpr std::size_t kCounterWords = (sizeof(Stats) - 2 * sizeof(LatencyBuckets)) / sizeof(std::uint64_t);
  ASSERT_EQ(StatsCounters().size(), kCounterWords);
  auto ctl = Controller::Start(Small(Name("counters")));
  ASSERT_TRUE(ctl.ok());
  // Some of them non-zero: a registration and an undecodable record.
  pid_t w = Spawn(Name("counters"), [](Worker& worker) {
    if (!worker.Ask(Reg("A", 0))) return 1;
    const std::uint8_t junk[] = {0xc1};
    return worker.conn->requests().TryWrite(junk, framing::kMessage) == ring::ClaimResult::kOk ? (worker.conn->PublishRequests(), 0) : 2;
  });
  EXPECT_EQ(RunUntilExit(**ctl, w), 0);
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->stats().errors > 0; }));
  const auto json = nlohmann::json::parse((*ctl)->StatsJson());
  const std::string metrics = (*ctl)->MetricsText();
  auto count = [&](const std::string& what) {
    std::size_t n = 0;
    for (std::size_t at = metrics.find(what); at != std::string::npos; at = metrics.find(what, at + 1))
      n += at == 0 || metrics[at - 1] == '\n';
    return n;
  };
  std::set<std::string> families;
  for (const StatsCounter& c : StatsCounters()) {
    const std::uint64_t value = (*ctl)->stats().*c.member;
    ASSERT_TRUE(json.contains(c.json_key)) << c.json_key;
    EXPECT_EQ(json[c.json_key].get<std::uint64_t>(), value) << c.json_key;
    const std::string series = std::string(c.metric) + c.labels + " ";
    EXPECT_EQ(count(series), 1u) << series;
    EXPECT_NE(metrics.find("\n" + series + std::to_string(value) + "\n"), std::string::npos) << series;
    families.insert(c.metric);
  }
  for (const std::string& f : families) {
    EXPECT_EQ(count("# TYPE " + f + " "), 1u) << f;
    EXPECT_EQ(count("# HELP " + f + " "), 1u) << f;
  }
  EXPECT_GT(json["errors_total"].get<std::uint64_t>(), 0u);
}

TEST(Controller, AClientCannotTruncateItsSegmentUnderTheController) {
  // A client that ftruncate-d its /dev/shm segment to 0 killed the
  // controller with SIGBUS on its next peek. The segment is a sealed memory
  // file now: every way the client has to it refuses a change of size.
  auto ctl = Controller::Start(Small(Name("truncate")));
  ASSERT_TRUE(ctl.ok());
  const pid_t controller_pid = getpid();
  pid_t bad = Spawn(Name("truncate"), [controller_pid](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    const int received = w.conn->segment().fd();  // the descriptor the controller passed
    if (ftruncate(received, 0) == 0 || errno != EPERM) return 2;
    const auto twice = static_cast<off_t>(w.conn->segment().size() * 2);
    if (fallocate(received, 0, 0, twice) == 0 || errno != EPERM) return 3;  // nor grow it
    // The controller's own descriptor, reopened read-write through /proc
    // (a same-uid process may): sealed all the same.
    int found = 0;
    for (const auto& f : segment::FindSegments(w.conn->segment().name())) {
      if (f.holder != controller_pid) continue;
      int fd = open(f.path.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0) return 4;
      if (ftruncate(fd, 0) == 0 || errno != EPERM) return 5;
      if (fcntl(fd, F_ADD_SEALS, 0) == 0 || errno != EPERM) return 6;  // F_SEAL_SEAL: seals are final
      close(fd);
      ++found;
    }
    if (found != 1) return 7;
    struct stat st {};
    if (fstat(received, &st) != 0 || static_cast<std::size_t>(st.st_size) != w.conn->segment().size()) return 8;
    // And the controller still answers this client.
    return w.Ask(HeartbeatMsg{"A", Int(0), "127.0.0.1", Int(8000), std::nullopt}) ? 0 : 9;
  });
  EXPECT_EQ(RunUntilExit(**ctl, bad), 0);
  pid_t good = Spawn(Name("truncate"), [](Worker& w) { return w.Ask(Reg("B", 0)) ? 0 : 1; });
  EXPECT_EQ(RunUntilExit(**ctl, good), 0);
  EXPECT_EQ((*ctl)->stats().quarantined_rings, 0u);
}

TEST(Controller, AWorkerIdentityBelongsToTheConnectionThatRegisteredIt) {
  auto ctl = Controller::Start(Small(Name("owner")));
  ASSERT_TRUE(ctl.ok());
  Controller& c = **ctl;
  // The owner: registers A/0 and admits three chunks, then stays connected.
  int owner_done[2];
  ASSERT_EQ(pipe(owner_done), 0);
  pid_t owner = Spawn(Name("owner"), [&](Worker& w) {
    if (!w.Ask(Reg("A", 0)) || !w.Send(Ops("A", 0, OpType::kAdmit, {11, 12, 13}, 0))) return 1;
    char b;
    return read(owner_done[0], &b, 1) == 1 ? 0 : 2;  // until the test lets it go
  });
  ASSERT_TRUE(PumpUntil(c, [&] { return c.index().pairs() == 3; }));
  // Another process names A/0 in everything it sends.
  pid_t hostile = Spawn(Name("owner"), [](Worker& w) {
    auto is_error = [](const std::optional<Message>& m) { return m && std::holds_alternative<ErrorMsg>(*m); };
    if (!w.Send(Ops("A", 0, OpType::kEvict, {11, 12}, 3))) return 1;            // evict the owner's keys
    if (!w.Send(Ops("A", 0, OpType::kAdmit, {66, 67}, 5))) return 2;            // phantom keys
    if (!w.Send(KVAdmitMsg{"A", Int(0), Int(68), "LocalCPUBackend", Int(7)})) return 3;
    RegisterMsg takeover{"A", Int(0), "10.0.0.66", Int(6666), "evil:6666"};      // redirect the peers
    if (!is_error(w.Ask(takeover))) return 4;
    if (!is_error(w.Ask(HeartbeatMsg{"A", Int(0), "10.0.0.66", Int(6666), "evil:6666"}))) return 5;
    auto start = w.Ask(FullSyncStartMsg{"A", Int(0), "LocalCPUBackend", "s1", Int(0), Int(1)});
    if (!start || std::get<FullSyncStartRetMsg>(*start).accepted) return 6;
    if (!is_error(w.Ask(FullSyncStatusMsg{"A", Int(0), "s1"}))) return 7;
    if (!w.Send(DeRegisterMsg{"A", Int(0), "10.0.0.66", Int(6666)})) return 8;
    // Its own identity is its own: B/0 registers and admits as usual.
    if (!w.Ask(Reg("B", 0)) || !w.Send(Ops("B", 0, OpType::kAdmit, {90}, 0))) return 9;
    auto hit = w.Ask(BatchedP2PLookupMsg{{Int(11), Int(12), Int(13)}, "C", Int(0)});
    if (!hit) return 10;
    const auto& l = std::get<BatchedP2PLookupRetMsg>(*hit).layout_info;
    if (l.size() != 1 || l[0].instance_id != "A" || l[0].num_hit_chunks != Int(3) || l[0].peer_init_url != "A:8200")
      return 11;
    auto phantom = w.Ask(BatchedP2PLookupMsg{{Int(66)}, "C", Int(0)});
    if (!phantom || std::get<BatchedP2PLookupRetMsg>(*phantom).layout_info[0].num_hit_chunks != Int(0)) return 12;
    return 0;
  });
  EXPECT_EQ(RunUntilExit(c, hostile), 0);
  // B left with its process; A's 11, 12, 13 remain: none evicted, no phantom.
  ASSERT_TRUE(PumpUntil(c, [&] { return c.index().pairs() == 3; }));
  EXPECT_EQ(c.stats().dropped_not_owner, 5u);                // 2 + 2 + 1 ops
  EXPECT_EQ(c.stats().identity_refused, 8u);                 // 3 KV messages, Register, Heartbeat, Start, Status, DeRegister
  auto a = c.registry().Find("A", 0);
  ASSERT_TRUE(a.has_value());
  EXPECT_EQ(c.registry().worker(*a).peer_init_url, "A:8200");
  // Once the owner's connection is gone, the identity is free again.
  ASSERT_EQ(write(owner_done[1], "x", 1), 1);
  EXPECT_EQ(RunUntilExit(c, owner), 0);
  ASSERT_TRUE(PumpUntil(c, [&] { return !c.registry().Find("A", 0).has_value(); }));
  pid_t heir = Spawn(Name("owner"), [](Worker& w) {
    auto r = w.Ask(RegisterMsg{"A", Int(0), "10.0.0.7", Int(7000), "heir:7000"});
    return r && std::holds_alternative<RegisterRetMsg>(*r) ? 0 : 1;
  });
  EXPECT_EQ(RunUntilExit(c, heir), 0);
  close(owner_done[0]);
  close(owner_done[1]);
}

TEST(Controller, FloodingWorkerIsHeldToItsQuotaWhileOthersAreServed) {
  Options o = Small(Name("quota"));
  o.index.per_holder_quota = 1000;
  auto ctl = Controller::Start(o);
  ASSERT_TRUE(ctl.ok());
  pid_t flooder = Spawn(Name("quota"), [](Worker& w) {
    if (!w.Ask(Reg("F", 0))) return 1;
    for (int i = 0; i < 5000; i += 250) {
      std::vector<std::int64_t> keys;
      for (int k = i; k < i + 250; ++k) keys.push_back(1000000 + k);
      while (!w.Send(Ops("F", 0, OpType::kAdmit, keys, i))) w.conn->requests().WaitForSpace(8192, 1s);
    }
    HeartbeatMsg hb{"F", Int(0), "127.0.0.1", Int(1), std::nullopt};
    while (!w.Send(hb)) w.conn->requests().WaitForSpace(256, 1s);
    return w.Receive() ? 0 : 2;  // the reply comes after everything before it was applied
  });
  pid_t good = Spawn(Name("quota"), [](Worker& w) {
    if (!w.Ask(Reg("G", 0))) return 1;
    w.Send(Ops("G", 0, OpType::kAdmit, {7, 8}, 0));
    auto hit = w.Ask(BatchedP2PLookupMsg{{Int(7), Int(8)}, "X", Int(0)});
    return hit && std::get<BatchedP2PLookupRetMsg>(*hit).layout_info[0].num_hit_chunks == Int(2) ? 0 : 2;
  });
  std::atomic<bool> stop{false};
  int code_f = -1, code_g = -1;
  std::thread waiter([&] {
    code_f = Exit(flooder);
    code_g = Exit(good);
    stop = true;
  });
  (*ctl)->Run(stop, 100);
  waiter.join();
  EXPECT_EQ(code_f, 0);
  EXPECT_EQ(code_g, 0);
  EXPECT_EQ((*ctl)->index().over_quota(), 4000u);
}

TEST(Controller, EventsPublishedJustBeforeAWorkerExitsAreStillApplied) {
  auto ctl = Controller::Start(Small(Name("exit")));
  ASSERT_TRUE(ctl.ok());
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  pid_t pid = Spawn(Name("exit"), [&](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    char c;
    if (read(go[0], &c, 1) != 1) return 2;
    for (int b = 0; b < 20; ++b) {
      std::vector<std::int64_t> keys;
      for (int k = 0; k < 50; ++k) keys.push_back(b * 50 + k);
      if (!w.Send(Ops("A", 0, OpType::kAdmit, keys, b * 50))) return 3;
    }
    return 0;  // exits at once: the records are in the ring, nobody consumed them yet
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->registry().worker_count() == 1; }));
  ASSERT_EQ(write(go[1], "g", 1), 1);
  EXPECT_EQ(Exit(pid), 0);  // no polling until the worker has gone
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->listener().clients().empty(); }));
  EXPECT_EQ((*ctl)->stats().kv_ops, 1000u);
  EXPECT_EQ((*ctl)->stats().seq_discontinuities, 0u);
}

TEST(Controller, SleepingControllerIsWokenByTheDoorbellOfAClientThatPublishes) {
  auto ctl = Controller::Start(Small(Name("bell")));
  ASSERT_TRUE(ctl.ok());
  pid_t pid = Spawn(Name("bell"), [](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    // Publish only once the controller has announced its sleep.
    while (w.conn->segment().header()->controller_sleeping.load() == 0) {
    }
    auto r = w.Ask(HeartbeatMsg{"A", Int(0), "127.0.0.1", Int(1), std::nullopt});
    return r && std::holds_alternative<HeartbeatRetMsg>(*r) ? 0 : 2;
  });
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->registry().worker_count() == 1; }));
  // One long sleep: without the doorbell it would last the whole minute.
  auto t0 = Clock::now();
  std::size_t handled = 0;
  while (handled == 0 && Clock::now() - t0 < 60s) handled = (*ctl)->PollOnce(60000ms);
  EXPECT_LT(Clock::now() - t0, 30s);
  EXPECT_EQ(handled, 1u);
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

// What a client waiting for a reply on a machine with more runnable threads
// than cores goes by (ring.h, WaitForData's peer_progress): the word moves in
// its segment while a controller above normal priority passes, and stands
// still while it does not.
TEST(Controller, ItsProgressWordMovesWhileItPassesAndStandsStillWhileItDoesNot) {
  errno = 0;
  const int nice_before = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  if (setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), -1) != 0)
    GTEST_SKIP() << "raising this thread's priority needs CAP_SYS_NICE (CI runs as root)";
  struct Restore {
    int nice;
    ~Restore() { (void)setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), nice); }
  } restore{nice_before};
  auto ctl = Controller::Start(Small(Name("progress")));
  ASSERT_TRUE(ctl.ok());
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  pid_t pid = Spawn(Name("progress"), [&](Worker& w) {
    if (!w.Ask(Reg("A", 0))) return 1;
    const auto& progress = w.conn->segment().header()->controller_progress;
    const std::uint64_t first = progress.load(std::memory_order_relaxed);
    const auto deadline = Clock::now() + 10s;
    while (progress.load(std::memory_order_relaxed) == first && Clock::now() < deadline) {
    }
    if (progress.load(std::memory_order_relaxed) == first) return 2;  // it never moved while the controller passed
    char b = 'p';
    if (write(to_parent[1], &b, 1) != 1) return 3;  // asks the controller to stop passing
    if (read(to_child[0], &b, 1) != 1) return 4;    // it has stopped
    const std::uint64_t still = progress.load(std::memory_order_relaxed);
    for (int i = 0; i < 100000; ++i)
      if (progress.load(std::memory_order_relaxed) != still) return 5;
    return write(to_parent[1], &b, 1) == 1 ? 0 : 6;  // looked: the controller may go on
  });
  close(to_parent[1]);  // the child's ends: its exit then ends the reads below
  close(to_child[0]);
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->registry().worker_count() == 1; }));
  ASSERT_EQ(fcntl(to_parent[0], F_SETFL, O_NONBLOCK), 0);
  char b = 0;
  const auto deadline = Clock::now() + 10s;
  while (read(to_parent[0], &b, 1) != 1 && Clock::now() < deadline) (*ctl)->PollOnce(0ms);
  // No pass from here until the child has looked twice.
  ASSERT_EQ(write(to_child[1], "s", 1), 1);
  ASSERT_EQ(fcntl(to_parent[0], F_SETFL, 0), 0);
  EXPECT_EQ(read(to_parent[0], &b, 1), 1);
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  close(to_parent[0]);
  close(to_child[1]);
}

// At normal priority the word never moves: the controller is descheduled
// as often as its clients then, and their polling would only cost ingest.
TEST(Controller, AtNormalPriorityItsProgressWordStandsStill) {
  errno = 0;
  if (getpriority(PRIO_PROCESS, static_cast<id_t>(gettid())) < 0 && errno == 0)
    GTEST_SKIP() << "this test process runs above normal priority";
  auto ctl = Controller::Start(Small(Name("progress0")));
  ASSERT_TRUE(ctl.ok());
  pid_t pid = Spawn(Name("progress0"), [](Worker& w) {
    for (int i = 0; i < 20; ++i)  // every answer took passes
      if (!w.Ask(HeartbeatMsg{"A", Int(0), "127.0.0.1", Int(1), std::nullopt})) return 1;
    return w.conn->segment().header()->controller_progress.load(std::memory_order_relaxed) == 0 ? 0 : 2;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
}

TEST(Controller, TokenLookupCreditsEveryChunkZeroHolderWithItsOwnPrefixAndQueriesAnswerLive) {
  auto ctl = Controller::Start(Small(Name("orch")));
  ASSERT_TRUE(ctl.ok());
  // 700 tokens: chunks ending at 256, 512 and 700 (the last one partial).
  std::vector<std::int64_t> tokens(700);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<std::int64_t>(i * 7 + 1);
  std::vector<ChunkHash> chunks = ChunkHasher(256, pyhash::HashInt(0)).Hash(tokens);
  ASSERT_EQ(chunks.size(), 3u);
  pid_t pid = Spawn(Name("orch"), [&](Worker& w) {
    // B registers first but holds only chunk 1: no prefix, so it is not credited
    // (LMCache's current walk would credit it with 512).
    if (!w.Ask(Reg("B", 0)) || !w.Ask(Reg("A", 0)) || !w.Ask(Reg("A", 1)) || !w.Ask(Reg("C", 0))) return 1;
    w.Send(Ops("B", 0, OpType::kAdmit, {chunks[1].hash}, 0));
    w.Send(Ops("A", 0, OpType::kAdmit, {chunks[0].hash, chunks[1].hash, chunks[2].hash}, 0));
    w.Send(Ops("C", 0, OpType::kAdmit, {chunks[0].hash}, 0));
    LookupMsg lookup{"ev-1", {}};
    for (auto t : tokens) lookup.tokens.push_back(Int::FromI64(t));
    auto r = w.Ask(lookup);
    if (!r || !std::holds_alternative<LookupRetMsg>(*r)) return 2;
    const auto& ret = std::get<LookupRetMsg>(*r);
    LayoutDict want{{"A", LocationEnd{"LocalCPUBackend", Int(700)}}, {"C", LocationEnd{"LocalCPUBackend", Int(256)}}};
    if (ret.event_id != "ev-1" || ret.layout_info != want) return 3;
    auto miss = w.Ask(LookupMsg{"ev-2", {Int(999999)}});
    if (!miss || !std::get<LookupRetMsg>(*miss).layout_info.empty()) return 4;
    auto inst = w.Ask(QueryInstMsg{"ev-3", "127.0.0.1"});
    if (!inst || std::get<QueryInstRetMsg>(*inst).instance_id != std::optional<std::string>("B")) return 5;
    auto none = w.Ask(QueryInstMsg{"ev-4", "10.9.9.9"});
    if (!none || std::get<QueryInstRetMsg>(*none).instance_id.has_value()) return 6;
    auto one = w.Ask(QueryWorkerInfoMsg{"ev-5", "A", std::vector<Int>{Int(1)}});
    if (!one) return 7;
    const auto& infos = std::get<QueryWorkerInfoRetMsg>(*one).worker_infos;
    if (infos.size() != 1 || infos[0].worker_id != Int(1) || infos[0].port != Int(8001) ||
        infos[0].peer_init_url != std::optional<std::string>("A:8201") || infos[0].registration_time <= 0)
      return 8;
    auto all = w.Ask(QueryWorkerInfoMsg{"ev-6", "all", std::nullopt});
    if (!all || std::get<QueryWorkerInfoRetMsg>(*all).worker_infos.size() != 4) return 9;
    auto unknown = w.Ask(QueryWorkerInfoMsg{"ev-7", "nobody", std::nullopt});
    return unknown && std::get<QueryWorkerInfoRetMsg>(*unknown).worker_infos.empty() ? 0 : 10;
  });
  EXPECT_EQ(RunUntilExit(**ctl, pid), 0);
  EXPECT_EQ((*ctl)->stats().errors, 0u);
}

TEST(Controller, WaitingLookupIsServedAheadOfBulkEventsQueuedBeforeIt) {
  auto ctl = Controller::Start(Small(Name("prio")));
  ASSERT_TRUE(ctl.ok());
  int go_a[2], a_wrote[2], go_b[2], b_wrote[2], done[2];
  for (int* p : {go_a, a_wrote, go_b, b_wrote, done}) ASSERT_EQ(pipe(p), 0);
  auto wait_on = [](int fd) {
    char c;
    return read(fd, &c, 1) == 1;
  };
  pid_t a = Spawn(Name("prio"), [&](Worker& w) {
    if (!w.Ask(Reg("A", 0)) || !wait_on(go_a[0])) return 1;
    if (!w.Send(Ops("A", 0, OpType::kAdmit, {5, 6}, 0))) return 2;
    if (write(a_wrote[1], "a", 1) != 1) return 3;
    return wait_on(done[0]) ? 0 : 4;  // stay attached: a detach would drop A's keys
  });
  pid_t b = Spawn(Name("prio"), [&](Worker& w) {
    if (!wait_on(go_b[0])) return 1;
    if (!w.Send(BatchedP2PLookupMsg{{Int(5), Int(6)}, "B", Int(0)})) return 2;
    if (write(b_wrote[1], "b", 1) != 1) return 3;
    auto r = w.Receive();
    if (!r) return 4;
    // Served before A's events, although they were queued first.
    return std::get<BatchedP2PLookupRetMsg>(*r).layout_info[0].num_hit_chunks == Int(0) ? 0 : 5;
  });
  close(a_wrote[1]);  // a child that fails closes them: the reads below return instead of hanging
  close(b_wrote[1]);
  ASSERT_TRUE(PumpUntil(**ctl, [&] {
    return (*ctl)->registry().worker_count() == 1 && (*ctl)->listener().clients().size() == 2;
  }));
  // The controller is not polled while both records are written: A's batch,
  // then B's lookup.
  ASSERT_EQ(write(go_a[1], "g", 1), 1);
  ASSERT_TRUE(wait_on(a_wrote[0]));
  ASSERT_EQ(write(go_b[1], "g", 1), 1);
  ASSERT_TRUE(wait_on(b_wrote[0]));
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->stats().p2p_lookups == 1 && (*ctl)->index().pairs() == 2; }));
  EXPECT_EQ(Exit(b), 0);
  ASSERT_EQ(write(done[1], "d", 1), 1);
  EXPECT_EQ(Exit(a), 0);
}

// Registrations, deregistrations and full-sync starts are not served between
// the slices of a KV batch: the batch applies to the worker it resolved at its
// start, wholly, or (when the change comes first in the pass) not at all. The
// two connections are a ZeroMQ front's (both speak for the front's workers):
// its requests connection deregisters the worker its bulk connection admits for.
TEST(Controller, WorkerChangesWaitForTheKvBatchInFlight) {
  const std::string name = Name("whole");
  auto ctl = Controller::Start(Small(name));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  std::unique_ptr<transport::Connection> conns[2];
  std::thread opener([&] {
    for (auto& c : conns)
      if (auto r = transport::Connection::Open({name, segment::Role::kFront, 5000ms}); r.ok()) c = std::move(r).value();
  });
  PumpUntil(**ctl, [&] { return (*ctl)->listener().clients().size() == 2; });
  opener.join();
  ASSERT_TRUE(conns[0] && conns[1]);
  Worker bulk{std::move(conns[0])}, requests{std::move(conns[1])};
  const std::size_t kOps = 8 * Small(name).request_check_ops;  // eight slices
  // Each round is one controller pass; the round-robin start alternates with
  // every pass, so of two rounds an odd number of passes apart, one serves the
  // bulk connection first and the other the requests connection.
  auto round = [&](int r, std::uint64_t* applied, std::uint64_t* dropped) {
    ASSERT_TRUE(requests.Send(Reg("F", 0)));
    (*ctl)->PollOnce();
    auto ret = requests.Receive();
    ASSERT_TRUE(ret && std::holds_alternative<RegisterRetMsg>(*ret));
    std::vector<std::int64_t> keys;
    for (std::size_t i = 0; i < kOps; ++i) keys.push_back(r * 100000 + static_cast<std::int64_t>(i) + 1);
    ASSERT_TRUE(bulk.Send(Ops("F", 0, OpType::kAdmit, keys, 0)));
    ASSERT_TRUE(requests.Send(DeRegisterMsg{"F", Int(0), "127.0.0.1", Int(8000)}));
    const Stats before = (*ctl)->stats();
    (*ctl)->PollOnce();
    EXPECT_EQ((*ctl)->registry().worker_count(), 0u);  // the deregistration was served in that pass
    *applied = (*ctl)->stats().kv_ops - before.kv_ops;
    *dropped = (*ctl)->stats().dropped_unknown_worker - before.dropped_unknown_worker;
  };
  std::uint64_t applied[2], dropped[2];
  round(0, &applied[0], &dropped[0]);
  (*ctl)->PollOnce();  // with the registration's pass: two passes between the rounds' passes
  round(1, &applied[1], &dropped[1]);
  std::set<std::pair<std::uint64_t, std::uint64_t>> seen;
  for (int r = 0; r < 2; ++r) {
    EXPECT_TRUE((applied[r] == kOps && dropped[r] == 0) || (applied[r] == 0 && dropped[r] == kOps))
        << "round " << r << ": " << applied[r] << " applied, " << dropped[r] << " dropped";
    seen.insert({applied[r], dropped[r]});
  }
  EXPECT_EQ(seen.size(), 2u) << "one round applies the batch before the deregistration, the other after it";
  ASSERT_TRUE(PumpUntil(**ctl, [&] { return (*ctl)->index().pairs() == 0; }));
}

}  // namespace
}  // namespace kvring::controller
