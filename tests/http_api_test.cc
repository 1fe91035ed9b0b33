// The HTTP API (src/http/server.cc) end to end: a real kvringd --http process,
// workers built on the client library in forked processes, and the project's
// own HTTP client. Every endpoint, a worker that never answers, a worker that
// answers an error, unknown instances, malformed requests, and a token lookup
// whose chunk hashes come from CPython itself (tests/data/cpython-chunk-hash).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <atomic>
#include <fstream>
#include <regex>
#include <thread>
#include <stdexcept>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support/http_client.h"
#include "kvring/protocol/orchestration.h"
#include "process_util.h"
#include "test_util.h"
#include "worker_process.h"

namespace kvring {
namespace {

using namespace std::chrono_literals;
using namespace kvring::protocol;
using Json = nlohmann::json;
using testing::Daemon;
using testing::StartWorker;
using testing::WorkerProcess;

const std::string kPid = std::to_string(getpid());

// A CPython-made case: 257 tokens (two chunks of 256) under PYTHONHASHSEED=0,
// NONE_HASH 0, with the chunk hashes CPython computed.
struct VectorCase {
  std::vector<std::int64_t> tokens;
  std::vector<std::pair<std::int64_t, std::int64_t>> chunks;  // (end, hash)
};
VectorCase TwoChunkCase() {
  Json d = Json::parse(testing::ReadFile(std::string(KVRING_TEST_DATA) + "/cpython-chunk-hash/seed0.json"));
  for (const Json& c : d["cases"])
    if (c["chunk_size"] == 256 && c["none_hash"]["kind"] == "int" && c["none_hash"]["value"] == 0 &&
        c["chunks"].size() >= 2) {
      VectorCase v;
      for (const Json& t : c["tokens"]) v.tokens.push_back(t.get<std::int64_t>());
      for (const Json& ch : c["chunks"]) v.chunks.emplace_back(ch[1].get<std::int64_t>(), ch[2].get<std::int64_t>());
      return v;
    }
  throw std::runtime_error("no two-chunk case in seed0.json");
}

client::CommandHandlers Healthy(std::int64_t clear_tokens) {
  client::CommandHandlers h;
  h.health = [](const HealthWorkerMsg&) { return HealthWorkerRetMsg{Int(0)}; };
  h.clear = [clear_tokens](const ClearWorkerMsg&) { return ClearWorkerRetMsg{Int::FromI64(clear_tokens)}; };
  h.pin = [](const PinWorkerMsg& m) { return PinWorkerRetMsg{Int::FromI64(static_cast<std::int64_t>(m.tokens.size()))}; };
  h.compress = [](const CompressWorkerMsg& m) {
    return CompressWorkerRetMsg{Int(m.method == "cachegen" && m.tokens && m.tokens->empty() ? 3 : -1)};
  };
  h.decompress = [](const DecompressWorkerMsg&) { return DecompressWorkerRetMsg{Int(4)}; };
  h.move = [](const MoveWorkerMsg& m) {
    return MoveWorkerRetMsg{Int(m.new_position.first == "B:8200" && m.copy == std::optional<bool>(true) ? 11 : -1)};
  };
  return h;
}

// The port a kvringd started with --http 127.0.0.1:0 serves on, from its
// log line; 0 (a test failure naming the log) if it did not say in 10 s.
std::uint16_t HttpPortOf(const Daemon& d) {
  const std::string log = d.AwaitLog("HTTP API on http://", 10s);
  std::smatch m;
  if (!std::regex_search(log, m, std::regex("HTTP API on http://127\\.0\\.0\\.1:([0-9]+)/"))) {
    ADD_FAILURE() << "no HTTP port in the log of kvringd (" << d.log << "):\n" << log;
    return 0;
  }
  return static_cast<std::uint16_t>(std::stoi(m[1]));
}

class HttpApi : public ::testing::Test {
 protected:
  void SetUp() override {
    name_ = "h" + kPid;
    daemon_ = Daemon::Start(name_, {"--http", "127.0.0.1:0", "--command-timeout", "0.5", "--no-full-sync-on-start"});
    port_ = HttpPortOf(daemon_);
    ASSERT_NE(port_, 0);
    auto c = http::HttpClient::Connect("127.0.0.1", port_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    http_ = std::move(c).value();
  }
  void TearDown() override {
    for (WorkerProcess& w : workers_) EXPECT_EQ(w.Release(), 0);
    EXPECT_EQ(daemon_.Stop(SIGTERM), 0);
  }
  // POST path body -> (status, parsed JSON body).
  std::pair<int, Json> Post(const std::string& path, const std::string& body) {
    auto r = http_->Post(path, body);
    if (!r.ok()) return {0, Json(r.status().ToString())};
    return {r->status, Json::parse(r->body, nullptr, false)};
  }
  // Waits until the controller has `workers` registered and `keys` keys.
  bool AwaitIndex(std::size_t workers, std::size_t keys) {
    auto deadline = std::chrono::steady_clock::now() + 10s;
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = http_->Send("GET", "/metrics");
      if (r.ok() && r->body.find("registered_workers_count{role=\"controller\"} " + std::to_string(workers) + "\n") !=
                        std::string::npos &&
          r->body.find("kv_pool_keys_count{role=\"controller\"} " + std::to_string(keys) + "\n") != std::string::npos)
        return true;
    }
    return false;
  }

  std::string name_;
  Daemon daemon_;
  std::uint16_t port_ = 0;
  std::unique_ptr<http::HttpClient> http_;
  std::vector<WorkerProcess> workers_;
};

TEST_F(HttpApi, EveryEndpointAnswersInLMCachesShapeAndFailuresGetAClearStatus) {
  const VectorCase v = TwoChunkCase();
  // A0 holds both chunks, A1 none, B0 the first; "slow" never reads its
  // commands; "err" throws.
  auto admit = [&](std::size_t n) {
    return [&v, n](client::Worker& w) {
      for (std::size_t i = 0; i < n; ++i) w.Admit("LocalCPUBackend", static_cast<std::uint64_t>(v.chunks[i].second));
      return w.Flush().ok();
    };
  };
  client::CommandHandlers failing = Healthy(0);
  failing.clear = [](const ClearWorkerMsg&) -> ClearWorkerRetMsg { throw std::runtime_error("disk on fire"); };
  workers_.push_back(StartWorker(name_, "A", 0, Healthy(7), true, admit(2)));
  ASSERT_TRUE(AwaitIndex(1, 2));  // A registers first (QueryInst answers the first instance of an ip)
  workers_.push_back(StartWorker(name_, "A", 1, Healthy(7)));
  workers_.push_back(StartWorker(name_, "B", 0, Healthy(7), true, admit(1)));
  workers_.push_back(StartWorker(name_, "slow", 0, Healthy(7), /*ticks=*/false));
  workers_.push_back(StartWorker(name_, "err", 0, failing));
  ASSERT_TRUE(AwaitIndex(5, 3));

  // /lookup: every holder instance of chunk 0, each with the end of its own prefix.
  Json tokens = v.tokens;
  auto [ls, lookup] = Post("/lookup", Json{{"tokens", tokens}}.dump());
  ASSERT_EQ(ls, 200) << lookup;
  EXPECT_TRUE(lookup["event_id"].get<std::string>().starts_with("Lookup"));
  EXPECT_EQ(lookup["layout_info"], (Json{{"A", {"LocalCPUBackend", v.chunks[1].first}},
                                         {"B", {"LocalCPUBackend", v.chunks[0].first}}}));

  // /health: per-worker codes; a silent worker at the deadline; LMCache's UI check.
  auto [hs, health] = Post("/health", R"({"instance_id":"A"})");
  EXPECT_EQ(hs, 200);
  EXPECT_TRUE(health["event_id"].get<std::string>().starts_with("health"));
  EXPECT_EQ(health["error_codes"], (Json{{"0", 0}, {"1", 0}}));
  auto [ss, slow] = Post("/health", R"({"instance_id":"slow"})");
  EXPECT_EQ(ss, 200);
  EXPECT_EQ(slow["error_codes"], (Json{{"0", orchestration::kHealthNoReply}}));
  auto [ts, test] = Post("/health", R"({"instance_id":"test"})");
  EXPECT_EQ(ts, 200);
  EXPECT_EQ(test["error_codes"], Json::object());

  // The fan-outs.
  auto [cs, clear] = Post("/clear", R"({"instance_id":"A","location":"LocalCPUBackend"})");
  EXPECT_EQ(cs, 200) << clear;
  EXPECT_TRUE(clear["event_id"].get<std::string>().starts_with("Clear"));
  EXPECT_EQ(clear["num_tokens"], 7);
  auto [ps, pin] = Post("/pin", R"({"instance_id":"A","location":"LocalCPUBackend","tokens":[1,2,3]})");
  EXPECT_EQ(ps, 200);
  EXPECT_TRUE(pin["event_id"].get<std::string>().starts_with("Pin"));
  EXPECT_EQ(pin["num_tokens"], 3);
  auto [zs, compress] = Post("/compress", R"({"instance_id":"A","method":"cachegen","location":"LocalCPUBackend"})");
  EXPECT_EQ(zs, 200);
  EXPECT_TRUE(compress["event_id"].get<std::string>().starts_with("Compress"));
  EXPECT_EQ(compress["num_tokens"], 3);  // tokens default to [] as in LMCache's API
  auto [ds, decompress] = Post("/decompress", R"({"instance_id":"B","method":"cachegen","location":"LocalCPUBackend"})");
  EXPECT_EQ(ds, 200);
  EXPECT_TRUE(decompress["event_id"].get<std::string>().starts_with("Decompress"));
  EXPECT_EQ(decompress["num_tokens"], 4);
  auto [ms, move] = Post("/move", R"({"old_position":["A","LocalCPUBackend"],"new_position":["B","LocalCPUBackend"],)"
                                  R"("should_copy":true})");
  EXPECT_EQ(ms, 200) << move;
  EXPECT_TRUE(move["event_id"].get<std::string>().starts_with("Move"));
  EXPECT_EQ(move["num_tokens"], 11);  // A0 -> B0 only: B has one worker

  // /check_finish reports what became of an earlier event.
  auto [fs, finished] = Post("/check_finish", Json{{"event_id", clear["event_id"]}}.dump());
  EXPECT_EQ(fs, 200);
  EXPECT_EQ(finished, (Json{{"status", "finished"}}));
  auto [us, unknown_event] = Post("/check_finish", R"({"event_id":"never"})");
  EXPECT_EQ(us, 404);
  EXPECT_TRUE(unknown_event["detail"].get<std::string>().starts_with("unknown event id"));

  // Failures: deadline, worker error, unknown instance.
  auto [dl, deadline] = Post("/clear", R"({"instance_id":"slow","location":"LocalCPUBackend"})");
  EXPECT_EQ(dl, 504) << deadline;
  EXPECT_NE(deadline["detail"].get<std::string>().find("worker 0: no answer within"), std::string::npos) << deadline;
  auto [es, error] = Post("/clear", R"({"instance_id":"err","location":"LocalCPUBackend"})");
  EXPECT_EQ(es, 502);
  EXPECT_NE(error["detail"].get<std::string>().find("Worker error: disk on fire"), std::string::npos) << error;
  for (const char* path : {"/clear", "/pin", "/compress", "/decompress"}) {
    auto [st, body] = Post(path, R"({"instance_id":"nope","location":"L","method":"m","tokens":[]})");
    EXPECT_EQ(st, 404) << path;
    EXPECT_TRUE(body["detail"].get<std::string>().starts_with("unknown instance 'nope'")) << path << body;
  }
  auto [mv, bad_move] = Post("/move", R"({"old_position":["A","L"],"new_position":["nope","L"]})");
  EXPECT_EQ(mv, 404) << bad_move;

  // Queries.
  auto [qs, query] = Post("/query_worker_info", R"({"instance_id":"A","worker_ids":[1]})");
  EXPECT_EQ(qs, 200);
  EXPECT_TRUE(query["event_id"].get<std::string>().starts_with("QueryWorkerInfo"));
  ASSERT_EQ(query["worker_infos"].size(), 1u);
  EXPECT_EQ(query["worker_infos"][0]["instance_id"], "A");
  EXPECT_EQ(query["worker_infos"][0]["worker_id"], 1);
  EXPECT_EQ(query["worker_infos"][0]["peer_init_url"], "A:8201");
  EXPECT_GT(query["worker_infos"][0]["last_heartbeat_time"].get<double>(), 0);
  auto [as, all] = Post("/query_worker_info", R"({"instance_id":"all","worker_ids":[]})");
  EXPECT_EQ(as, 200);
  EXPECT_EQ(all["worker_infos"].size(), 5u);
  auto [ns, none] = Post("/query_worker_info", R"({"instance_id":"nobody"})");
  EXPECT_EQ(ns, 200);
  EXPECT_EQ(none["worker_infos"], Json::array());
  auto [is, inst] = Post("/query_instance", R"({"event_id":"ignored","ip":"127.0.0.1"})");
  EXPECT_EQ(is, 200);
  EXPECT_EQ(inst["res"], "A");  // the first instance to register with that ip
  EXPECT_TRUE(inst["event_id"].get<std::string>().starts_with("QueryInst"));
  auto [ni, no_inst] = Post("/query_instance", R"({"event_id":"","ip":"10.1.2.3"})");
  EXPECT_EQ(ni, 404);

  // Malformed requests.
  EXPECT_EQ(Post("/clear", "{not json").first, 400);
  EXPECT_EQ(Post("/clear", "[1,2]").first, 400);
  auto [ms2, missing] = Post("/clear", R"({"instance_id":"A"})");
  EXPECT_EQ(ms2, 400);
  EXPECT_EQ(missing["detail"], "field 'location' is required");
  auto [ts2, typed] = Post("/lookup", R"({"tokens":["a"]})");
  EXPECT_EQ(ts2, 400);
  EXPECT_EQ(typed["detail"], "field 'tokens' must be a list of integers");
  EXPECT_EQ(Post("/no_such_endpoint", "{}").first, 404);
  auto get = http_->Send("GET", "/clear");
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->status, 405);
  auto big = http_->Post("/lookup", std::string(9u << 20, ' '));
  ASSERT_TRUE(big.ok()) << big.status().ToString();
  EXPECT_EQ(big->status, 413);

  // /metrics: LMCache's names and kvring's own; the deadline and fan-outs show.
  auto metrics = http_->Send("GET", "/metrics");
  ASSERT_TRUE(metrics.ok());
  EXPECT_EQ(metrics->status, 200);
  EXPECT_TRUE(metrics->content_type.starts_with("text/plain"));
  for (const char* line : {"lmcache:cache_controller_kv_pool_keys_count{role=\"controller\"} 3\n",
                           "lmcache:cache_controller_registered_workers_count{role=\"controller\"} 5\n",
                           "lmcache:cache_controller_full_sync_global_progress{role=\"controller\"}",
                           "kvring_token_lookups_total 1\n", "kvring_commands_timed_out_total 2\n",
                           "kvring_token_lookup_seconds_count 1\n", "kvring_ring_fill_ratio{client=",
                           "kvring_dropped_total{reason=\"over_quota\"} 0\n"})
    EXPECT_NE(metrics->body.find(line), std::string::npos) << line;
}

}  // namespace
}  // namespace kvring

namespace kvring {
namespace {

// kvringd's peak resident set (VmHWM), in bytes.
std::size_t PeakResident(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
  return 0;
}

// Bodies that are small but explode into JSON trees (8 MB of '[' took ~500 MB
// to parse, eight at once ~4.7 GB) are refused before any tree is built; the
// daemon's peak memory stays a small multiple of the bodies it was sent.
// kvringd --http-token-file: the endpoints that change caches want the
// bearer token (LMCache's /clear and /move are open to anyone on the port);
// lookups, queries and /health stay open, /metrics too unless asked.
TEST(HttpApiAuth, EndpointsThatChangeCachesWantTheBearerTokenAndTheRestStayOpen) {
  char path[] = "/tmp/kvring-token-XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string token = "s3cr3t-" + kPid;
  ASSERT_EQ(write(fd, (token + "\n").data(), token.size() + 1), static_cast<ssize_t>(token.size() + 1));
  close(fd);
  auto start = [&](const std::string& name, std::vector<std::string> extra) -> std::pair<Daemon, std::uint16_t> {
    extra.insert(extra.begin(), {"--http", "127.0.0.1:0", "--http-token-file", path});
    Daemon d = Daemon::Start(name, extra);
    const std::uint16_t port = HttpPortOf(d);
    return {std::move(d), port};
  };
  auto [daemon, port] = start("ha" + kPid, {});
  ASSERT_NE(port, 0);
  auto c = http::HttpClient::Connect("127.0.0.1", port);
  ASSERT_TRUE(c.ok());
  const std::string clear = R"({"instance_id":"A","location":"LocalCPUBackend"})";
  for (const char* p : {"/clear", "/pin", "/compress", "/decompress", "/move"}) {
    auto r = (*c)->Post(p, clear);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->status, 401) << p;
    EXPECT_NE(r->body.find("Authorization: Bearer"), std::string::npos) << r->body;
  }
  auto open_lookup = (*c)->Post("/lookup", R"({"tokens":[1,2,3]})");
  ASSERT_TRUE(open_lookup.ok());
  EXPECT_EQ(open_lookup->status, 200);
  auto open_health = (*c)->Post("/health", R"({"instance_id":"A"})");
  ASSERT_TRUE(open_health.ok());
  EXPECT_NE(open_health->status, 401);
  auto open_metrics = (*c)->Send("GET", "/metrics");
  ASSERT_TRUE(open_metrics.ok());
  EXPECT_EQ(open_metrics->status, 200);
  (*c)->SetBearerToken(token + "x");  // wrong, and as long as a prefix match would need
  EXPECT_EQ((*c)->Post("/clear", clear)->status, 401);
  (*c)->SetBearerToken(token.substr(0, token.size() - 1));
  EXPECT_EQ((*c)->Post("/clear", clear)->status, 401);
  (*c)->SetBearerToken(token);
  auto authorized = (*c)->Post("/clear", clear);
  ASSERT_TRUE(authorized.ok());
  EXPECT_EQ(authorized->status, 404);  // let in: no instance A here
  EXPECT_EQ(daemon.Stop(SIGTERM), 0);

  auto [guarded, guarded_port] = start("hm" + kPid, {"--http-metrics-auth"});
  ASSERT_NE(guarded_port, 0);
  auto g = http::HttpClient::Connect("127.0.0.1", guarded_port);
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->Send("GET", "/metrics")->status, 401);
  (*g)->SetBearerToken(token);
  EXPECT_EQ((*g)->Send("GET", "/metrics")->status, 200);
  EXPECT_EQ(guarded.Stop(SIGTERM), 0);

  // A token file without a token is a usage error at start.
  ASSERT_EQ(truncate(path, 0), 0);
  auto bad = testing::RunProcess({KVRINGD_PATH, "--name", "hb" + kPid, "--http", "127.0.0.1:0", "--http-token-file", path});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("must hold one token"), std::string::npos) << bad.err;
  unlink(path);
}

// Slowloris: a thousand connections that send half a request head and stop
// do not keep real clients out (each one no longer holds a thread; past the
// per-address bound the oldest reader is closed), and a connection that stops
// mid-request is closed at its read deadline.
TEST(HttpApiSlowClients, AThousandStalledConnectionsDoNotKeepRequestsOut) {
  rlimit nofile{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &nofile), 0);
  nofile.rlim_cur = std::min<rlim_t>(nofile.rlim_max, 4096);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &nofile), 0);
  const std::size_t stalled_count = std::min<std::size_t>(1000, nofile.rlim_cur - 64);
  const std::string name = "hs" + kPid;
  Daemon d = Daemon::Start(name, {"--http", "127.0.0.1:0", "--http-read-timeout", "1", "--http-idle-timeout", "30"});
  const std::uint16_t port = HttpPortOf(d);
  ASSERT_NE(port, 0);
  auto stall = [port] {
    const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return -1;
    const std::string head = "POST /lookup HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    return send(fd, head.data(), head.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(head.size()) ? fd : -1;
  };
  std::vector<int> stalled;
  for (std::size_t i = 0; i < stalled_count; ++i) {
    const int fd = stall();
    ASSERT_GE(fd, 0) << "connection " << i;
    stalled.push_back(fd);
  }
  auto c = http::HttpClient::Connect("127.0.0.1", port);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  for (int i = 0; i < 20; ++i) {
    auto r = (*c)->Post("/lookup", R"({"tokens":[1,2,3]})");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->status, 200) << r->body;
  }
  for (int fd : stalled) close(fd);
  // A connection that stops mid-head is closed once --http-read-timeout passes.
  const int late = stall();
  ASSERT_GE(late, 0);
  pollfd p{late, POLLIN, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1) << "not closed within 10 s";
  char b;
  EXPECT_EQ(recv(late, &b, 1, 0), 0);  // EOF: the server closed it
  close(late);
  EXPECT_EQ(d.Stop(SIGTERM), 0);
}

TEST_F(HttpApi, DeepOrHugeJsonIsRefusedBeforeItIsBuilt) {
  const std::string deep(7u << 20, '[');
  auto [ds, deep_reply] = Post("/lookup", deep);
  EXPECT_EQ(ds, 413);
  EXPECT_NE(deep_reply["detail"].get<std::string>().find("deeper than 64"), std::string::npos) << deep_reply;
  std::string many = R"({"tokens": [)";
  for (int i = 0; i < (1 << 20) + 10; ++i) many += i ? ",0" : "0";
  many += "]}";
  auto [ms, many_reply] = Post("/lookup", many);
  EXPECT_EQ(ms, 413);
  EXPECT_NE(many_reply["detail"].get<std::string>().find("JSON values"), std::string::npos) << many_reply;
  // Just inside the limits: an ordinary answer.
  std::string nested = R"({"tokens": [1, 2], "x": )" + std::string(60, '[') + std::string(60, ']') + "}";
  auto [ns, nested_reply] = Post("/lookup", nested);
  EXPECT_EQ(ns, 200) << nested_reply;
  // Eight deep bodies at once.
  const std::size_t before = PeakResident(daemon_.pid);
  std::vector<std::thread> senders;
  std::atomic<int> refused{0};
  for (int i = 0; i < 8; ++i)
    senders.emplace_back([&] {
      auto c = http::HttpClient::Connect("127.0.0.1", port_);
      if (!c.ok()) return;
      auto r = (*c)->Post("/lookup", deep);
      if (r.ok() && r->status == 413) ++refused;
    });
  for (auto& t : senders) t.join();
  EXPECT_EQ(refused.load(), 8);
  const std::size_t after = PeakResident(daemon_.pid);
  // Eight 7 MiB bodies are 56 MiB read; their trees would have been ~4.7 GB.
  // The bound leaves room for the buffers that hold the bodies and for a
  // sanitizer's shadow memory (growth seen: release ~55 MB, TSan ~230 MB).
  EXPECT_LT(after - std::min(after, before), std::size_t{512} << 20) << before << " -> " << after;
  auto [hs, health] = Post("/health", R"({"instance_id":"test"})");
  EXPECT_EQ(hs, 200);
}

}  // namespace
}  // namespace kvring
