// kvring lookup, workers, clear, health and check-finish: orchestrator requests to a running
// controller over the rings (no HTTP needed), printed as tables or as JSON in
// the `kvring decode` format of the reply.
#include <cstdio>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "kvring/client/client.h"
#include "kvring/protocol/orchestration.h"
#include "kvring/protocol/json.h"

namespace kvring::tools {
namespace {

using namespace kvring::protocol;

// "1,2,3", "1 2 3" or "[1, 2, 3]": the token ids.
Result<std::vector<Int>> ParseTokens(const std::string& text) {
  std::vector<Int> out;
  std::string cleaned = text;
  for (char& c : cleaned)
    if (c == ',' || c == '[' || c == ']' || c == '\n' || c == '\t') c = ' ';
  std::istringstream in(cleaned);
  std::string word;
  while (in >> word) {
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(word.c_str(), &end, 10);
    if (errno != 0 || end == word.c_str() || *end != '\0')
      return Status(ErrorKind::kInvalidArgument, "not a token id: '" + word + "'");
    out.push_back(Int::FromI64(v));
  }
  return out;
}

// The reply, or an exit code with the message printed.
template <typename Reply>
int Ask(const std::string& name, const Message& request, int timeout_ms, Reply* out) {
  auto r = client::OrchestratorRequest(name, request, std::chrono::milliseconds(timeout_ms));
  if (!r.ok()) {
    std::cerr << "error: " << r.status().message() << "\n";
    return 1;
  }
  if (auto* e = std::get_if<ErrorMsg>(&*r)) {
    std::cerr << "error: the controller answered: " << e->error << "\n";
    return 1;
  }
  auto* reply = std::get_if<Reply>(&*r);
  if (!reply) {
    std::cerr << "error: unexpected reply " << TagOf(*r) << "\n";
    return 1;
  }
  *out = std::move(*reply);
  return 0;
}

std::string OrDash(const std::optional<std::string>& s) { return s ? *s : "-"; }

// The flags every orchestrator request shares.
struct RequestFlags {
  std::string name = "kvring";
  bool json = false;
  int timeout_ms;
  explicit RequestFlags(int default_timeout_ms) : timeout_ms(default_timeout_ms) {}
  void Add(CLI::App& app, const char* timeout_help = "Milliseconds to wait") {
    app.add_option("--name", name, "Controller name")->capture_default_str();
    app.add_flag("--json", json, "The reply as JSON (kvring decode's format)");
    app.add_option("--timeout", timeout_ms, timeout_help)->check(CLI::Range(1, 600000))->capture_default_str();
  }
};
// Fan-out commands wait for the workers: keep above kvringd --command-timeout.
constexpr int kFanOutTimeoutMs = 10000;
constexpr const char* kFanOutTimeoutHelp = "Milliseconds to wait (keep above kvringd --command-timeout)";

}  // namespace

Command AddLookup(CLI::App& app) {
  struct State : RequestFlags {
    State() : RequestFlags(2000) {}
    std::string tokens, event_id = "kvring-cli-lookup";
  };
  auto st = std::make_shared<State>();
  app.description(
      "Which instances hold the longest prefix of these tokens (LookupMsg): the tokens are chunked\n"
      "and hashed as LMCache does (kvringd --lookup-chunk-size/--lookup-none-hash). Exit 0 when the\n"
      "controller answered (a miss too), 1 on failure, 2 on bad arguments.");
  st->Add(app);
  app.add_option("--tokens", st->tokens, "Token ids: \"1,2,3\", \"1 2 3\" or \"[1, 2, 3]\"; - reads them from stdin")
      ->required();
  app.add_option("--event-id", st->event_id, "event_id of the request")->capture_default_str();
  return [st]() -> int {
    std::string text = st->tokens;
    if (text == "-") {
      std::ostringstream all;
      all << std::cin.rdbuf();
      text = all.str();
    }
    auto tokens = ParseTokens(text);
    if (!tokens.ok()) {
      std::cerr << "error: " << tokens.status().message() << "\n";
      return 2;
    }
    LookupRetMsg ret;
    if (int rc = Ask(st->name, LookupMsg{st->event_id, std::move(tokens).value()}, st->timeout_ms, &ret)) return rc;
    if (st->json) {
      std::cout << ToJson(Message(ret)).dump() << std::endl;
      return 0;
    }
    if (ret.layout_info.empty()) std::cout << "no instance holds the first chunk\n";
    else std::printf("%-32s %-24s %s\n", "instance", "location", "prefix end (tokens)");
    for (const auto& [inst, le] : ret.layout_info)
      std::printf("%-32s %-24s %lld\n", inst.c_str(), le.location.c_str(), static_cast<long long>(le.end.AsI64()));
    return 0;
  };
}

Command AddWorkers(CLI::App& app) {
  struct State : RequestFlags {
    State() : RequestFlags(2000) {}
    std::string instance = "all";
    std::vector<long long> ids;
  };
  auto st = std::make_shared<State>();
  app.description("The registered workers (QueryWorkerInfoMsg): address, peer URL, registration and last heartbeat.");
  st->Add(app);
  app.add_option("--instance", st->instance, "An instance id, or all")->capture_default_str();
  app.add_option("--worker-ids", st->ids, "Only these worker ids")->delimiter(',');
  return [st]() -> int {
    QueryWorkerInfoMsg q{"kvring-cli-workers", st->instance, std::nullopt};
    if (!st->ids.empty()) {
      q.worker_ids.emplace();
      for (long long id : st->ids) q.worker_ids->push_back(Int::FromI64(id));
    }
    QueryWorkerInfoRetMsg ret;
    if (int rc = Ask(st->name, q, st->timeout_ms, &ret)) return rc;
    if (st->json) {
      std::cout << ToJson(Message(ret)).dump() << std::endl;
      return 0;
    }
    std::printf("%-24s %6s %-16s %6s %-24s %s\n", "instance", "worker", "ip", "port", "peer_init_url", "heartbeat age (s)");
    double now = static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                         std::chrono::system_clock::now().time_since_epoch()).count()) / 1e6;
    for (const WorkerInfo& w : ret.worker_infos)
      std::printf("%-24s %6lld %-16s %6lld %-24s %.1f\n", w.instance_id.c_str(),
                  static_cast<long long>(w.worker_id.AsI64()), w.ip.c_str(), static_cast<long long>(w.port.AsI64()),
                  OrDash(w.peer_init_url).c_str(), now - w.last_heartbeat_time);
    return 0;
  };
}

namespace {
// The flags of the fan-out commands aimed at one instance.
struct FanOutFlags : RequestFlags {
  std::string instance;
  FanOutFlags() : RequestFlags(kFanOutTimeoutMs) {}
  void Add(CLI::App& app) {
    RequestFlags::Add(app, kFanOutTimeoutHelp);
    app.add_option("--instance", instance, "The instance id")->required();
  }
};
}  // namespace

Command AddClear(CLI::App& app) {
  auto st = std::make_shared<FanOutFlags>();
  auto location = std::make_shared<std::string>("LocalCPUBackend");
  app.description(
      "Clear a storage location on every worker of an instance (ClearMsg, fanned out as ClearWorkerMsg).\n"
      "Exit 0 when every worker cleared it, 1 otherwise (the reason is printed).");
  st->Add(app);
  app.add_option("--location", *location, "The storage location (backend name)")->capture_default_str();
  return [st, location]() -> int {
    ClearRetMsg ret;
    std::string id = orchestration::NewEventId("Clear");
    if (int rc = Ask(st->name, ClearMsg{id, st->instance, *location}, st->timeout_ms, &ret)) return rc;
    if (st->json) std::cout << ToJson(Message(ret)).dump() << std::endl;
    else std::printf("cleared %lld tokens (event %s)\n", static_cast<long long>(ret.num_tokens.AsI64()), ret.event_id.c_str());
    return 0;
  };
}

Command AddHealth(CLI::App& app) {
  auto st = std::make_shared<FanOutFlags>();
  app.description(
      "Health codes of every worker of an instance (HealthMsg): 0 healthy; -1001 the worker answered an error,\n"
      "-1002 a wrong reply, -1003 an undecodable one, -1004 no answer before the deadline, -1005 unreachable.\n"
      "Exit 0 when every worker reports 0 (an unknown instance has no workers), 1 otherwise.");
  st->Add(app);
  return [st]() -> int {
    HealthRetMsg ret;
    if (int rc = Ask(st->name, HealthMsg{orchestration::NewEventId("health"), st->instance}, st->timeout_ms, &ret))
      return rc;
    bool healthy = true;
    for (const auto& [w, code] : ret.error_codes) healthy &= code == Int(0);
    if (st->json) {
      std::cout << ToJson(Message(ret)).dump() << std::endl;
      return healthy ? 0 : 1;
    }
    if (ret.error_codes.empty()) std::cout << "instance '" << st->instance << "' has no registered worker\n";
    else std::printf("%6s %s\n", "worker", "code");
    for (const auto& [w, code] : ret.error_codes)
      std::printf("%6lld %lld\n", static_cast<long long>(w.AsI64()), static_cast<long long>(code.AsI64()));
    return healthy ? 0 : 1;
  };
}

Command AddCheckFinish(CLI::App& app) {
  auto st = std::make_shared<RequestFlags>(kFanOutTimeoutMs);
  auto event = std::make_shared<std::string>();
  app.description(
      "The state of an earlier clear, pin, compress, decompress, move or health command (CheckFinishMsg):\n"
      "pending, finished or failed, with each worker's state unless all finished. Exit 0 when finished.");
  st->Add(app);
  app.add_option("--event-id", *event, "The command's event_id")->required();
  return [st, event]() -> int {
    CheckFinishRetMsg ret;
    if (int rc = Ask(st->name, CheckFinishMsg{*event}, st->timeout_ms, &ret)) return rc;
    if (st->json) std::cout << ToJson(Message(ret)).dump() << std::endl;
    else std::cout << ret.status << "\n";
    return ret.status == orchestration::kStatusFinished ? 0 : 1;
  };
}

}  // namespace kvring::tools
