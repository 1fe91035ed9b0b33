// kvringd and the controller-facing CLI commands as real processes: the
// command-line contract, clean shutdown, and a kill -9 restart that the
// workers repair by full sync.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <utility>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "kvring/protocol/chunk_hash.h"
#include "kvring/client/client.h"
#include "kvring/shm/segment.h"
#include "process_util.h"
#include "worker_process.h"

namespace kvring {
namespace {

using namespace std::chrono_literals;
using Json = nlohmann::json;
using testing::RunProcess;

const std::string kPid = std::to_string(getpid());
std::string Name(const char* what) { return "d" + kPid + "-" + what; }

using testing::Daemon;

// `kvring stats --json`, waiting up to `timeout` for the controller.
Json Stats(const std::string& name, bool digest = false, int timeout_ms = 5000) {
  std::vector<std::string> argv{KVRING_CLI_PATH, "stats", "--name", name, "--json", "--timeout",
                                std::to_string(timeout_ms)};
  if (digest) argv.push_back("--digest");
  auto r = RunProcess(argv);
  if (r.exit_code != 0) return Json();
  return Json::parse(r.out, nullptr, false);
}

// The segments of controller `name` any process here still holds.
std::vector<std::string> Segments(const std::string& name) {
  std::vector<std::string> out;
  for (const auto& f : segment::FindSegments(segment::SegmentPrefix(name))) out.push_back(f.name);
  return out;
}

TEST(Kvringd, StatsAndLoadFollowTheCommandLineContractAndShutdownIsClean) {
  const std::string name = Name("contract");
  Daemon d = Daemon::Start(name);
  Json s = Stats(name);
  ASSERT_TRUE(s.is_object()) << "kvring stats did not answer";
  for (const char* k : {"clients", "workers", "keys", "kv_ops_total", "p2p_lookups_total", "quarantined_rings",
                        "errors_total"})
    EXPECT_TRUE(s.contains(k)) << k;
  auto load = RunProcess({KVRING_CLI_PATH, "load", "--name", name, "--instances", "2", "--tp", "2", "--seconds",
                          "0.5", "--json"});
  ASSERT_EQ(load.exit_code, 0) << load.out << load.err;
  Json l = Json::parse(load.out, nullptr, false);
  ASSERT_TRUE(l.is_object()) << load.out;
  for (const char* k : {"kv_ops_per_s", "p2p_lookups", "p2p_p50_us", "p2p_p99_us", "p2p_hit_rate", "errors"})
    EXPECT_TRUE(l.contains(k)) << k;
  EXPECT_EQ(l["errors"], 0);
  EXPECT_GT(l["kv_ops_per_s"].get<double>(), 0);
  EXPECT_GT(l["p2p_lookups"].get<int>(), 0);
  EXPECT_GT(l["p2p_hit_rate"].get<double>(), 0);  // instances share prefixes
  Json after = Stats(name);
  EXPECT_GE(after["kv_ops_total"].get<std::uint64_t>(), l["kv_ops"].get<std::uint64_t>());
  EXPECT_EQ(after["p2p_lookups_total"], l["p2p_lookups"]);
  EXPECT_EQ(after["errors_total"], 0);
  // The index's own counters are in the contract's object too (their values, which the
  // load's departing workers are still dropping here, are tested in controller_test).
  EXPECT_TRUE(after.contains("index_overflow_keys"));
  EXPECT_TRUE(after.contains("index_grouped_keys"));
  // The human summary too.
  auto human = RunProcess({KVRING_CLI_PATH, "load", "--name", name, "--seconds", "0.2"});
  EXPECT_EQ(human.exit_code, 0) << human.err;
  EXPECT_NE(human.out.find("lookup round trip"), std::string::npos) << human.out;

  EXPECT_EQ(d.Stop(SIGTERM), 0);
  EXPECT_TRUE(Segments(name).empty());
  auto gone = RunProcess({KVRING_CLI_PATH, "stats", "--name", name, "--timeout", "100"});
  EXPECT_EQ(gone.exit_code, 1);
  EXPECT_NE(gone.err.find("no kvring controller named '" + name + "'"), std::string::npos) << gone.err;
  auto no_load = RunProcess({KVRING_CLI_PATH, "load", "--name", name, "--seconds", "0.1"});
  EXPECT_EQ(no_load.exit_code, 1);
}

TEST(Kvringd, SecondDaemonOfTheSameNameRefusesToStart) {
  const std::string name = Name("twice");
  Daemon first = Daemon::Start(name);
  ASSERT_TRUE(Stats(name).is_object());
  auto second = RunProcess({KVRINGD_PATH, "--name", name});
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.err.find("cannot start"), std::string::npos) << second.err;
  EXPECT_TRUE(Stats(name).is_object());  // the first one is unharmed
  EXPECT_EQ(first.Stop(SIGINT), 0);
}

TEST(Kvringd, IndexReserveTheMachineCannotHoldIsRefusedAtStart) {
  const std::string name = Name("reserve");
  auto r = RunProcess({KVRINGD_PATH, "--name", name, "--index-reserve-keys", "100000000000"});  // ~2 TB of tables
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("not enough memory for an index reserve of 100000000000 keys"), std::string::npos) << r.err;
  // Nothing of it is left behind: the name is free for a daemon that fits.
  Daemon ok = Daemon::Start(name, {"--index-reserve-keys", "100000"});
  EXPECT_TRUE(Stats(name).is_object());
  EXPECT_EQ(ok.Stop(SIGINT), 0);
}

TEST(Kvringd, BadFlagsAreAUsageError) {
  EXPECT_EQ(RunProcess({KVRINGD_PATH, "--p2p-policy", "random"}).exit_code, 2);
  EXPECT_EQ(RunProcess({KVRINGD_PATH, "--full-sync-threshold", "2"}).exit_code, 2);
  EXPECT_EQ(RunProcess({KVRINGD_PATH, "--request-check-ops", "0"}).exit_code, 2);
  // The cluster's batching: a linger past a second, or a batch larger than a message.
  for (const char* bad : {"--cluster-linger=5000", "--cluster-linger=-1", "--cluster-batch-bytes=0",
                          "--cluster-batch-bytes=524288"}) {
    auto r = RunProcess({KVRINGD_PATH, "--name", "kvd-flags-" + std::to_string(getpid()), "--cluster", "c", "--nats",
                         "nats://127.0.0.1:1", bad});
    EXPECT_EQ(r.exit_code, 2) << bad << ": " << r.err;
    EXPECT_NE(r.err.find("--cluster"), std::string::npos) << bad << ": " << r.err;
  }
  auto help = RunProcess({KVRINGD_PATH, "--help"});
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.out.find("--heartbeat-interval"), std::string::npos);
}

TEST(Kvringd, LookupAndWorkersCommandsAnswerFromTheLiveIndex) {
  const std::string name = Name("orch");
  Daemon d = Daemon::Start(name);
  ASSERT_TRUE(Stats(name).is_object());
  // 600 tokens: three chunks (256, 256, 88), hashed as LMCache's controller does.
  std::vector<std::int64_t> tokens(600);
  std::string token_list;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<std::int64_t>(1000 + i);
    token_list += (i ? "," : "") + std::to_string(tokens[i]);
  }
  std::vector<ChunkHash> chunks = ChunkHasher(256, pyhash::HashInt(0)).Hash(tokens);
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  pid_t worker = fork();
  if (worker == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    client::WorkerOptions o;
    o.controller = name;
    o.instance_id = "lmcache_instance_7";
    o.worker_id = 0;
    o.port = 8500;
    o.peer_init_url = "localhost:8200";
    std::vector<std::uint64_t> held;
    for (const ChunkHash& c : chunks) held.push_back(static_cast<std::uint64_t>(c.hash));
    o.keys_of = [&](const std::string&) { return held; };  // a fresh kvringd asks for a full sync
    auto w = client::Worker::Connect(o);
    if (!w.ok()) _exit(1);
    for (const ChunkHash& c : chunks) (*w)->Admit("LocalCPUBackend", static_cast<std::uint64_t>(c.hash));
    // The heartbeat's reply comes after the admits were applied.
    if (!(*w)->Heartbeat().ok() || write(ready[1], "r", 1) != 1) _exit(2);
    pause();
    _exit(0);
  }
  close(ready[1]);  // a worker that fails closes the pipe instead of leaving this read hanging
  char c;
  ASSERT_EQ(read(ready[0], &c, 1), 1);
  auto hit = RunProcess({KVRING_CLI_PATH, "lookup", "--name", name, "--tokens", token_list, "--json"});
  ASSERT_EQ(hit.exit_code, 0) << hit.err;
  EXPECT_EQ(Json::parse(hit.out)["layout_info"], Json::parse(R"({"lmcache_instance_7": ["LocalCPUBackend", 600]})"))
      << hit.out;
  auto half = RunProcess({KVRING_CLI_PATH, "lookup", "--name", name, "--tokens", "-"},
                         "[" + token_list.substr(0, token_list.find(",1300,")) + "]");  // 300 tokens
  EXPECT_EQ(half.exit_code, 0) << half.err;
  EXPECT_NE(half.out.find("lmcache_instance_7"), std::string::npos) << half.out;
  EXPECT_NE(half.out.find(" 256"), std::string::npos) << half.out;  // chunk 1 differs: a 300-token tail
  auto miss = RunProcess({KVRING_CLI_PATH, "lookup", "--name", name, "--tokens", "5,6,7", "--json"});
  EXPECT_EQ(miss.exit_code, 0);
  EXPECT_TRUE(Json::parse(miss.out)["layout_info"].empty()) << miss.out;
  EXPECT_EQ(RunProcess({KVRING_CLI_PATH, "lookup", "--name", name, "--tokens", "1,x"}).exit_code, 2);
  auto workers = RunProcess({KVRING_CLI_PATH, "workers", "--name", name, "--json"});
  ASSERT_EQ(workers.exit_code, 0) << workers.err;
  Json infos = Json::parse(workers.out)["worker_infos"];
  ASSERT_EQ(infos.size(), 1u) << workers.out;
  EXPECT_EQ(infos[0]["instance_id"], "lmcache_instance_7");
  EXPECT_EQ(infos[0]["port"], 8500);
  auto table = RunProcess({KVRING_CLI_PATH, "workers", "--name", name, "--instance", "lmcache_instance_7"});
  EXPECT_EQ(table.exit_code, 0);
  EXPECT_NE(table.out.find("localhost:8200"), std::string::npos) << table.out;
  kill(worker, SIGKILL);
  waitpid(worker, nullptr, 0);
  EXPECT_EQ(d.Stop(SIGTERM), 0);
  EXPECT_EQ(RunProcess({KVRING_CLI_PATH, "workers", "--name", name, "--timeout", "100"}).exit_code, 1);
}

// A worker process: admits its keys, then keeps ticking (heartbeats, and the
// reattach + full sync after a controller restart) until killed.
pid_t StartWorker(const std::string& name, const std::string& inst, int rank, std::uint64_t first, std::uint64_t n) {
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    std::vector<std::uint64_t> cpu, disk;
    for (std::uint64_t k = first; k < first + n; ++k) (k % 3 ? cpu : disk).push_back(k);
    client::WorkerOptions o;
    o.controller = name;
    o.instance_id = inst;
    o.worker_id = rank;
    o.peer_init_url = inst + ":" + std::to_string(9000 + rank);
    o.attach_timeout = 5000ms;
    o.full_sync_batch_keys = 500;
    o.keys_of = [&](const std::string& loc) { return loc == "LocalCPUBackend" ? cpu : disk; };
    auto w = client::Worker::Connect(o);
    if (!w.ok()) _exit(1);
    for (auto k : cpu) (*w)->Admit("LocalCPUBackend", k);
    for (auto k : disk) (*w)->Admit("LocalDiskBackend", k);
    if (!(*w)->Flush().ok()) _exit(2);
    for (;;) {
      (void)(*w)->Tick();  // a failed reattach is retried on the next tick
      std::this_thread::sleep_for(1ms);  // the worker's own pace, not a test synchronisation
    }
  }
  return pid;
}

TEST(Kvringd, ClearHealthAndCheckFinishCommandsFanOutToTheWorkers) {
  const std::string name = Name("fanout");
  Daemon d = Daemon::Start(name, {"--command-timeout", "0.3", "--no-full-sync-on-start"});
  ASSERT_TRUE(Stats(name).is_object());
  client::CommandHandlers ok, sick;
  ok.health = [](const protocol::HealthWorkerMsg&) { return protocol::HealthWorkerRetMsg{protocol::Int(0)}; };
  ok.clear = [](const protocol::ClearWorkerMsg& m) {
    return protocol::ClearWorkerRetMsg{protocol::Int(m.location == "LocalDiskBackend" ? 512 : 0)};
  };
  sick.health = [](const protocol::HealthWorkerMsg&) { return protocol::HealthWorkerRetMsg{protocol::Int(3)}; };
  std::vector<testing::WorkerProcess> ws = {testing::StartWorker(name, "A", 0, ok), testing::StartWorker(name, "A", 1, ok),
                                            testing::StartWorker(name, "B", 0, sick),
                                            testing::StartWorker(name, "C", 0, ok, /*ticks=*/false)};
  auto deadline = std::chrono::steady_clock::now() + 10s;
  while (Stats(name)["workers"] != 4 && std::chrono::steady_clock::now() < deadline) {
  }
  ASSERT_EQ(Stats(name)["workers"], 4);

  // C never reads its ring: the deadline's code, and the command still
  // pending there for `kvring inspect --peek` (id and message decoded).
  auto silent = RunProcess({KVRING_CLI_PATH, "health", "--name", name, "--instance", "C", "--json"});
  EXPECT_EQ(silent.exit_code, 1);
  EXPECT_EQ(Json::parse(silent.out)["error_codes"], Json::parse(R"({"0": -1004})")) << silent.out;
  auto peek = RunProcess({KVRING_CLI_PATH, "inspect", "--name", name, "--peek", "4", "--json"});
  EXPECT_NE(peek.out.find(R"("correlation_id":)"), std::string::npos) << peek.out;
  EXPECT_NE(peek.out.find(R"("type":"HealthWorkerMsg","worker_event_id":"HealthWorker0)"), std::string::npos) << peek.out;

  auto healthy = RunProcess({KVRING_CLI_PATH, "health", "--name", name, "--instance", "A", "--json"});
  EXPECT_EQ(healthy.exit_code, 0) << healthy.err;
  EXPECT_EQ(Json::parse(healthy.out)["error_codes"], Json::parse(R"({"0": 0, "1": 0})")) << healthy.out;
  auto unhealthy = RunProcess({KVRING_CLI_PATH, "health", "--name", name, "--instance", "B"});
  EXPECT_EQ(unhealthy.exit_code, 1);
  EXPECT_NE(unhealthy.out.find("     0 3"), std::string::npos) << unhealthy.out;

  auto clear = RunProcess({KVRING_CLI_PATH, "clear", "--name", name, "--instance", "A", "--location",
                           "LocalDiskBackend", "--json"});
  ASSERT_EQ(clear.exit_code, 0) << clear.err;
  Json cleared = Json::parse(clear.out);
  EXPECT_EQ(cleared["num_tokens"], 512);
  auto finished = RunProcess({KVRING_CLI_PATH, "check-finish", "--name", name, "--event-id",
                              cleared["event_id"].get<std::string>()});
  EXPECT_EQ(finished.exit_code, 0) << finished.err;
  EXPECT_EQ(finished.out, "finished\n");
  // B's worker has no clear handler: the worker's own error text comes back.
  auto refused = RunProcess({KVRING_CLI_PATH, "clear", "--name", name, "--instance", "B"});
  EXPECT_EQ(refused.exit_code, 1);
  EXPECT_NE(refused.err.find("Unknown message: ClearWorkerMsg"), std::string::npos) << refused.err;
  auto nobody = RunProcess({KVRING_CLI_PATH, "clear", "--name", name, "--instance", "nobody"});
  EXPECT_EQ(nobody.exit_code, 1);
  EXPECT_NE(nobody.err.find("unknown instance 'nobody'"), std::string::npos) << nobody.err;

  for (auto& w : ws) EXPECT_EQ(w.Release(), 0);
  EXPECT_EQ(d.Stop(SIGTERM), 0);
}

TEST(Kvringd, KilledAndRestartedControllerIsRebuiltByTheWorkersFullSyncs) {
  const std::string name = Name("restart");
  // The first daemon asks for no full sync, so the state before the kill is
  // exactly the workers' admits (a sync in flight would retire and refill
  // locations while the "before" digest is taken).
  auto d = std::make_unique<Daemon>(Daemon::Start(name, {"--heartbeat-interval", "0.05", "--no-full-sync-on-start"}));
  ASSERT_TRUE(Stats(name).is_object());
  std::vector<pid_t> workers;
  for (int i = 0; i < 3; ++i) workers.push_back(StartWorker(name, "inst" + std::to_string(i % 2), i, 100000 * (i + 1), 3000));
  auto wait_for = [&](const std::function<bool(const Json&)>& ok, std::chrono::seconds limit) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    Json s;
    while (std::chrono::steady_clock::now() < deadline) {
      s = Stats(name, true);
      if (s.is_object() && ok(s)) return s;
    }
    return Json();
  };
  Json before = wait_for([](const Json& s) { return s["keys"] == 9000 && s["workers"] == 3; }, 20s);
  ASSERT_TRUE(before.is_object()) << "the workers' keys never all arrived";
  EXPECT_NE(before["digest"], "0x0000000000000000");

  EXPECT_EQ(d->Stop(SIGKILL), -SIGKILL);
  d = std::make_unique<Daemon>(Daemon::Start(name, {"--heartbeat-interval", "0.05"}));
  Json after = wait_for([&](const Json& s) { return s["digest"] == before["digest"] && s["keys"] == 9000; }, 30s);
  ASSERT_TRUE(after.is_object()) << "the index was not rebuilt; last stats: " << Stats(name, true).dump();
  EXPECT_EQ(after["workers"], 3);
  EXPECT_GE(after["full_syncs_completed"].get<int>(), 6);  // 3 workers x 2 locations
  EXPECT_EQ(after["errors_total"], 0);
  for (pid_t p : workers) {
    kill(p, SIGKILL);
    waitpid(p, nullptr, 0);
  }
  EXPECT_EQ(d->Stop(SIGTERM), 0);
}

}  // namespace
}  // namespace kvring
