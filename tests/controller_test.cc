// The controller core with real worker processes on real shared memory.
#include "kvring/controller.h"

#include "alloc_counter.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>

#include <gtest/gtest.h>

namespace kvring::controller {
namespace {

using namespace std::chrono_literals;
using namespace kvring::protocol;
using Clock = std::chrono::steady_clock;

const std::string kPid = std::to_string(getpid());
std::string Name(const char* what) { return "c" + kPid + "-" + what; }

Options Small(const std::string& name) {
  Options o;
  o.listen.name = name;
  o.listen.request_capacity = 1 << 16;
  o.listen.reply_capacity = 1 << 14;
  o.index.shard_bits = 2;
  return o;
}

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
    if (conn->requests().TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()}) !=
        ring::ClaimResult::kOk)
      return false;
    conn->requests().Publish();
    return true;
  }
  bool SendRaw(const std::string& b) {
    bool ok = conn->requests().TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()}) ==
              ring::ClaimResult::kOk;
    conn->requests().Publish();
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
  EXPECT_EQ((*ctl)->stats().errors, 3u);
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
