// Orchestration fan-outs (src/controller/controller_commands.cc) end to end: a real
// controller, workers built on the client library in forked processes with
// their command handlers, and an orchestrator process keeping several
// requests in flight on one ring.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <stdexcept>
#include <thread>

#include <gtest/gtest.h>

#include "kvring/client/client.h"
#include "kvring/controller/controller.h"
#include "kvring/protocol/orchestration.h"
#include "kvring/shm/framing.h"
#include "process_util.h"
#include "support/small_controller.h"
#include "worker_process.h"

namespace kvring::controller {
namespace {

using namespace std::chrono_literals;
using namespace kvring::protocol;
using client::CommandHandlers;
using client::Orchestrator;
using client::Worker;
using client::WorkerOptions;
namespace orch = kvring::orchestration;
using testing::StartWorker;
using testing::WorkerProcess;

const std::string kPid = std::to_string(getpid());
std::string Name(const char* what) { return "cc" + kPid + "-" + what; }

Options Small(const std::string& name, double command_timeout_s) {
  Options o = testing::SmallController(name);
  o.command_timeout_s = command_timeout_s;
  return o;
}

using testing::RunUntilExit;
using testing::Spawn;

// Pumps the controller until `n` workers are registered.
bool AwaitWorkers(Controller& ctl, std::size_t n) {
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (ctl.registry().worker_count() < n && std::chrono::steady_clock::now() < deadline) ctl.PollOnce(1ms);
  return ctl.registry().worker_count() == n;
}

void Finish(Controller& ctl, std::vector<WorkerProcess>& ws) {
  for (auto& w : ws) w.LetGo();
  for (auto& w : ws) {
    int status = 0;
    while (waitpid(w.pid, &status, WNOHANG) == 0) ctl.PollOnce(1ms);  // the controller serves their goodbyes
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
}

std::int64_t CodeOf(const HealthRetMsg& h, std::int64_t worker) {
  for (const auto& [w, code] : h.error_codes)
    if (w == Int(worker)) return code.AsI64();
  return 12345;  // absent
}

TEST(ControllerCommands, HealthReportsEveryWorkersCodeAndASilentWorkerAtTheDeadlineWithoutBlockingOtherRequests) {
  const std::string name = Name("health");
  auto ctl = Controller::Start(Small(name, 2.0));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  CommandHandlers healthy, throwing, none;
  healthy.health = [](const HealthWorkerMsg&) { return HealthWorkerRetMsg{Int(0)}; };
  throwing.health = [](const HealthWorkerMsg&) -> HealthWorkerRetMsg { throw std::runtime_error("GPU lost"); };
  std::vector<WorkerProcess> ws = {StartWorker(name, "A", 0, healthy), StartWorker(name, "A", 1, throwing),
                                   StartWorker(name, "A", 2, healthy, /*ticks=*/false),
                                   StartWorker(name, "A", 3, none)};
  ASSERT_TRUE(AwaitWorkers(**ctl, 4));

  pid_t orchestrator = Spawn([&] {
    auto o = Orchestrator::Connect(name, 5000ms);
    if (!o.ok()) return 1;
    std::atomic<bool> health_done{false};
    Result<Message> health = Status(ErrorKind::kTimeout, "not yet");
    std::thread t([&] {
      health = (*o)->Request(HealthMsg{"health-1", "A"}, 10000ms);
      health_done = true;
    });
    // While the health check waits for worker 2, the same ring keeps serving.
    auto info = (*o)->Request(QueryWorkerInfoMsg{"q", "A", std::nullopt}, 5000ms);
    if (!info.ok() || std::get<QueryWorkerInfoRetMsg>(*info).worker_infos.size() != 4 || health_done) return 2;
    t.join();
    if (!health.ok() || !std::holds_alternative<HealthRetMsg>(*health)) return 3;
    const auto& h = std::get<HealthRetMsg>(*health);
    if (h.event_id != "health-1" || h.error_codes.size() != 4) return 4;
    if (CodeOf(h, 0) != 0 || CodeOf(h, 1) != orch::kHealthWorkerError || CodeOf(h, 2) != orch::kHealthNoReply ||
        CodeOf(h, 3) != orch::kHealthWorkerError)
      return 5;
    auto status = (*o)->Request(CheckFinishMsg{"health-1"}, 5000ms);
    if (!status.ok() || !std::holds_alternative<CheckFinishRetMsg>(*status)) return 6;
    const std::string& s = std::get<CheckFinishRetMsg>(*status).status;
    if (!s.starts_with("failed; worker 0: finished; worker 1: failed (Worker error: GPU lost)") ||
        s.find("worker 2: failed (no answer within") == std::string::npos ||
        s.find("worker 3: failed (Unknown message: HealthWorkerMsg") == std::string::npos)
      return 7;
    // Unknown instance: an empty map, as LMCache (its UI's connectivity check).
    auto empty = (*o)->Request(HealthMsg{"health-2", "test"}, 5000ms);
    if (!empty.ok() || !std::get<HealthRetMsg>(*empty).error_codes.empty()) return 8;
    return 0;
  });
  EXPECT_EQ(RunUntilExit(**ctl, orchestrator), 0);
  EXPECT_EQ((*ctl)->stats().commands_timed_out, 1u);
  EXPECT_EQ((*ctl)->fanouts_in_flight(), 0u);
  Finish(**ctl, ws);
}

TEST(ControllerCommands, ClearPinAndMoveAggregateWorkerAnswersAndNameWhatWentWrong) {
  const std::string name = Name("clear");
  auto ctl = Controller::Start(Small(name, 5.0));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  auto handlers = [](int rank) {
    CommandHandlers h;
    h.clear = [](const ClearWorkerMsg& m) {
      return ClearWorkerRetMsg{Int(m.location == "LocalCPUBackend" ? 7 : 0)};
    };
    h.pin = [rank](const PinWorkerMsg& m) {
      return PinWorkerRetMsg{Int::FromI64(static_cast<std::int64_t>(m.tokens.size()) + rank)};  // ranks disagree
    };
    h.move = [](const MoveWorkerMsg& m) {
      // The destination's peer URL and backend, as LMCache's executor builds them.
      bool right = m.old_position == "LocalCPUBackend" && m.new_position.first == "B:8200" &&
                   m.new_position.second == "LocalDiskBackend" && m.worker_event_id.starts_with("MoveWorker0");
      return MoveWorkerRetMsg{Int(right ? 1000 : -1)};
    };
    return h;
  };
  std::vector<WorkerProcess> ws = {StartWorker(name, "A", 0, handlers(0)), StartWorker(name, "A", 1, handlers(1)),
                                   StartWorker(name, "B", 0, handlers(0))};
  ASSERT_TRUE(AwaitWorkers(**ctl, 3));

  pid_t orchestrator = Spawn([&] {
    auto o = Orchestrator::Connect(name, 5000ms);
    if (!o.ok()) return 1;
    auto clear = (*o)->Request(ClearMsg{"clear-1", "A", "LocalCPUBackend"}, 5000ms);
    if (!clear.ok() || !std::holds_alternative<ClearRetMsg>(*clear)) return 2;
    if (std::get<ClearRetMsg>(*clear).event_id != "clear-1" || std::get<ClearRetMsg>(*clear).num_tokens != Int(7))
      return 3;
    auto pin = (*o)->Request(PinMsg{"pin-1", "A", "LocalCPUBackend", {Int(1), Int(2)}}, 5000ms);
    if (!pin.ok() || !std::holds_alternative<ErrorMsg>(*pin)) return 4;
    const std::string& why = std::get<ErrorMsg>(*pin).error;
    if (orch::ErrorClassOf(why) != orch::ErrorClass::kWorkerFailed ||
        why.find("disagree on num_tokens (worker 0: 2, worker 1: 3)") == std::string::npos)
      return 5;
    auto unknown = (*o)->Request(ClearMsg{"clear-2", "nope", "LocalCPUBackend"}, 5000ms);
    if (!unknown.ok() || orch::ErrorClassOf(std::get<ErrorMsg>(*unknown).error) != orch::ErrorClass::kUnknownInstance)
      return 6;
    auto move = (*o)->Request(MoveMsg{"move-1", {"A", "LocalCPUBackend"}, {"B", "LocalDiskBackend"}, std::nullopt,
                                      false},
                              5000ms);
    if (!move.ok() || !std::holds_alternative<MoveRetMsg>(*move) ||
        std::get<MoveRetMsg>(*move).num_tokens != Int(1000))  // one pair: B has one worker
      return 7;
    auto done = (*o)->Request(CheckFinishMsg{"clear-1"}, 5000ms);
    if (!done.ok() || std::get<CheckFinishRetMsg>(*done).status != orch::kStatusFinished) return 8;
    auto never = (*o)->Request(CheckFinishMsg{"never-sent"}, 5000ms);
    if (!never.ok() || orch::ErrorClassOf(std::get<ErrorMsg>(*never).error) != orch::ErrorClass::kUnknownEvent)
      return 9;
    return 0;
  });
  EXPECT_EQ(RunUntilExit(**ctl, orchestrator), 0);
  EXPECT_EQ((*ctl)->stats().fanouts, 3u);  // clear, pin, move (the unknown instance is refused up front)
  EXPECT_EQ((*ctl)->stats().commands_sent, 5u);
  Finish(**ctl, ws);
}

TEST(ControllerCommands, WorkerThatDiesMidCommandIsReportedAtOnceNotAtTheDeadline) {
  const std::string name = Name("dies");
  auto ctl = Controller::Start(Small(name, 600.0));  // the test would time out if the deadline were needed
  ASSERT_TRUE(ctl.ok());
  CommandHandlers h;
  h.health = [](const HealthWorkerMsg&) -> HealthWorkerRetMsg { _exit(0); };  // dies instead of answering
  std::vector<WorkerProcess> ws = {StartWorker(name, "A", 0, h)};
  ASSERT_TRUE(AwaitWorkers(**ctl, 1));
  pid_t orchestrator = Spawn([&] {
    auto o = Orchestrator::Connect(name, 5000ms);
    if (!o.ok()) return 1;
    auto health = (*o)->Request(HealthMsg{"h", "A"}, 60000ms);
    if (!health.ok()) return 2;
    const auto& codes = std::get<HealthRetMsg>(*health).error_codes;
    return codes.size() == 1 && codes[0].second == Int(orch::kHealthUnreachable) ? 0 : 3;
  });
  EXPECT_EQ(RunUntilExit(**ctl, orchestrator), 0);
  Finish(**ctl, ws);
}

// A worker speaking the ring protocol by hand: registers, then answers each
// command record it gets with `answer(command bytes)` (the payload after the id).
pid_t RawWorker(const std::string& name, int rank, const std::function<std::string(const Message&)>& answer) {
  return Spawn([=] {
    auto c = transport::Connection::Open({name, segment::Role::kWorker, 5000ms});
    if (!c.ok()) return 1;
    transport::Connection& conn = **c;
    auto send = [&](std::uint32_t type, const std::string& bytes) {
      if (conn.requests().TryWrite({reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()}, type) !=
          ring::ClaimResult::kOk)
        return false;
      conn.PublishRequests();
      return true;
    };
    if (!send(framing::kMessage, Encode(RegisterMsg{"raw", Int(rank), "127.0.0.1", Int(1), "raw:1"}))) return 2;
    for (;;) {  // until the controller goes away
      if (!conn.replies().WaitForData(100ms)) {
        if (!conn.ControllerAlive()) return 0;
        continue;
      }
      ring::Record r;
      if (conn.replies().Peek(&r) != ring::PollResult::kRecord) return 3;
      auto cr = framing::SplitCorrelated(r);
      if (cr) {
        auto m = Decode(cr->message);
        if (!m.ok()) return 4;
        std::string reply(framing::kCorrelationIdBytes, '\0');
        framing::StoreCorrelationId({reinterpret_cast<std::uint8_t*>(reply.data()), reply.size()}, cr->id);
        reply += answer(*m);
        if (!send(framing::kCommand, reply)) return 5;
      }
      conn.replies().Release();
      conn.replies().PublishHead();
    }
  });
}

TEST(ControllerCommands, WrongAndUndecodableWorkerAnswersGetLMCachesHealthCodes) {
  const std::string name = Name("raw");
  auto ctl = Controller::Start(Small(name, 5.0));
  ASSERT_TRUE(ctl.ok());
  pid_t wrong = RawWorker(name, 0, [](const Message&) { return Encode(ClearWorkerRetMsg{Int(1)}); });
  pid_t garbage = RawWorker(name, 1, [](const Message&) { return std::string("\xc1 not msgpack"); });
  pid_t fine = RawWorker(name, 2, [](const Message& m) {
    return std::holds_alternative<HealthWorkerMsg>(m) ? Encode(HealthWorkerRetMsg{Int(7)}) : std::string();
  });
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while ((*ctl)->registry().worker_count() < 3 && std::chrono::steady_clock::now() < deadline) (*ctl)->PollOnce(1ms);
  ASSERT_EQ((*ctl)->registry().worker_count(), 3u);
  pid_t orchestrator = Spawn([&] {
    auto o = Orchestrator::Connect(name, 5000ms);
    if (!o.ok()) return 1;
    auto h = (*o)->Request(HealthMsg{"raw-health", "raw"}, 5000ms);
    if (!h.ok() || !std::holds_alternative<HealthRetMsg>(*h)) return 2;
    const auto& r = std::get<HealthRetMsg>(*h);
    if (CodeOf(r, 0) != orch::kHealthWrongReply || CodeOf(r, 1) != orch::kHealthUndecodable || CodeOf(r, 2) != 7)
      return 3;
    // A clear: worker 0's answer fits; 1 and 2 (an empty answer) are named.
    auto c = (*o)->Request(ClearMsg{"raw-clear", "raw", "LocalCPUBackend"}, 5000ms);
    if (!c.ok() || !std::holds_alternative<ErrorMsg>(*c)) return 4;
    const std::string& why = std::get<ErrorMsg>(*c).error;
    if (orch::ErrorClassOf(why) != orch::ErrorClass::kWorkerFailed || why.find("worker 0") != std::string::npos)
      return 5;
    if (why.find("worker 1: its answer could not be decoded") == std::string::npos ||
        why.find("worker 2: its answer could not be decoded") == std::string::npos)
      return 6;
    // A pin answered with ClearWorkerRetMsg: the wrong type is named.
    auto p = (*o)->Request(PinMsg{"raw-pin", "raw", "LocalCPUBackend", {}}, 5000ms);
    if (!p.ok() || !std::holds_alternative<ErrorMsg>(*p)) return 7;
    return std::get<ErrorMsg>(*p).error.find("worker 0: it answered ClearWorkerRetMsg where PinWorkerRetMsg was due") !=
                   std::string::npos
               ? 0
               : 8;
  });
  EXPECT_EQ(RunUntilExit(**ctl, orchestrator), 0);
  ctl = Status(ErrorKind::kUnavailable, "stopped");  // the raw workers see the controller go and exit
  for (pid_t p : {wrong, garbage, fine}) {
    int status = 0;
    waitpid(p, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  }
}

TEST(ControllerCommands, AnswerCommandGivesLMCachesWorkerErrors) {
  CommandHandlers h;
  h.clear = [](const ClearWorkerMsg&) -> ClearWorkerRetMsg { throw std::runtime_error("disk full"); };
  Message thrown = client::AnswerCommand(h, ClearWorkerMsg{"e", "LocalCPUBackend"});
  ASSERT_TRUE(std::holds_alternative<ErrorMsg>(thrown));
  EXPECT_EQ(std::get<ErrorMsg>(thrown).error, "Worker error: disk full");
  Message missing = client::AnswerCommand(h, PinWorkerMsg{"e", "LocalCPUBackend", {}});
  EXPECT_TRUE(std::get<ErrorMsg>(missing).error.starts_with("Unknown message: PinWorkerMsg"));
  Message not_a_command = client::AnswerCommand(h, LookupMsg{"e", {}});
  EXPECT_TRUE(std::get<ErrorMsg>(not_a_command).error.starts_with("Unknown message: LookupMsg"));
}

}  // namespace
}  // namespace kvring::controller
