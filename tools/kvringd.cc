// kvringd: the kvring controller daemon. Runs one single-threaded controller
// (controller.h) in the foreground until SIGINT or SIGTERM, then removes its
// segments and exits 0. Logs to stderr, with one stats line every
// --stats-interval seconds. With --http it also serves LMCache's HTTP API
// and /metrics (http/server.h) on threads of their own, as a ring client.
//
// It takes `lmcache_controller`'s flags with their meanings, so that an
// operator can swap one command line for the other: --host, --port (the HTTP
// API), --monitor-ports '{"pull": 8300, "reply": 8400, "heartbeat": 8082}'
// (or the older --monitor-port, PULL only), --health-check-interval and
// --lmcache-worker-timeout. Given any of the first four, kvringd serves
// LMCache's ZeroMQ sockets (zmq/front.h) and its HTTP API on --host:--port,
// with LMCache's defaults for whichever were not given.
//
// Exit codes: 0 clean shutdown, 1 could not start (another controller of that
// name runs, no memory for a segment, ...), 2 usage error.
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <fstream>
#include <iostream>
#include <iterator>
#include <memory>
#include <thread>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "kvring/controller/controller.h"
#include "kvring/http/server.h"
#include "kvring/version.h"
#include "kvring/zmq/front.h"
#include "kvring/cluster/publisher.h"
#include "kvring/cluster/subscriber.h"

namespace {

std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "set from a signal handler");

void OnSignal(int) { g_stop.store(true, std::memory_order_relaxed); }  // relaxed: a flag, no data rides on it

// Starts a part of the daemon that attaches to the controller as a ring
// client (the HTTP server, the ZeroMQ front) on a thread of its own: the
// attach needs the controller's loop running. The loop calls Finished()
// after each pass; it is true once, when the start is over (value() set, or
// error()).
template <typename T>
class BackgroundStart {
 public:
  template <typename Start>
  void Begin(Start start) {
    thread_ = std::thread([this, start] {
      auto r = start();
      if (r.ok()) value_ = std::move(r).value();
      else error_ = r.status();
      done_.store(true, std::memory_order_release);  // pairs with Finished's acquire: value_/error_ are set
    });
  }
  bool Finished() {
    if (!thread_.joinable() || !done_.load(std::memory_order_acquire)) return false;
    thread_.join();
    return true;
  }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  std::unique_ptr<T>& value() { return value_; }
  const kvring::Status& error() const { return error_; }

 private:
  std::thread thread_;
  std::atomic<bool> done_{false};
  std::unique_ptr<T> value_;
  kvring::Status error_;
};

}  // namespace

int main(int argc, char** argv) {
  using namespace kvring;
  controller::Options o;
  std::string policy = "longest-prefix", log_level = "info";
  double stats_interval = 10;
  std::uint32_t spin_passes = 2000;
  int spin_us = 1000;
  std::optional<int> nice_value;
  bool group_access = false, no_full_sync_on_start = false;
  std::string http_at, http_token_file;
  bool http_metrics_auth = false;
  double http_idle_timeout = 60, http_read_timeout = 10;
  std::size_t http_per_address = 64;
  // lmcache_controller's flags.
  std::string lm_host = "0.0.0.0", monitor_ports_json;
  int lm_port = 9000, monitor_port = 9001;
  double health_check_interval = 10;
  zmqfront::Options zo;

  CLI::App app{"kvringd: the kvring controller daemon (LMCache cache-controller protocol over shared memory)"};
  app.set_version_flag("--version", "kvringd " KVRING_VERSION_STRING);
  // Any option below may also come from a file (the packaged service reads
  // /etc/kvring/kvringd.conf); the command line wins over the file.
  app.set_config("--config", "", "Read options from this file (TOML: `max-clients = 64`, one per line; the command line wins)");
  app.add_option("--name", o.listen.name, "Controller name: workers and tools attach by it")->capture_default_str();
  app.add_option("--request-ring-bytes", o.listen.request_capacity, "Each client's request ring (power of two)")
      ->capture_default_str();
  app.add_option("--reply-ring-bytes", o.listen.reply_capacity, "Each client's reply ring (power of two)")
      ->capture_default_str();
  app.add_option("--max-clients", o.listen.max_clients, "Attached clients at most")->capture_default_str();
  app.add_flag("--group-access", group_access, "Segments 0660 and clients of other uids accepted (default 0600, own uid)");
  app.add_option("--heartbeat-interval", o.heartbeat_interval_s, "Seconds between worker heartbeats (told at registration)")
      ->check(CLI::Range(0.01, 86400.0))->capture_default_str();
  o.worker_timeout_s = 300;
  app.add_option("--lmcache-worker-timeout,--worker-timeout", o.worker_timeout_s,
                 "Deregister a worker that heartbeats and then stays silent this many seconds (0: never; a worker "
                 "that never heartbeats is never reaped; a dead shared-memory client is noticed at once anyway)")
      ->check(CLI::Range(0.0, 1e7))->capture_default_str();
  app.add_option("--health-check-interval", health_check_interval,
                 "LMCache's flag: <= 0 turns the heartbeat timeout off; kvring checks every 0.1 s whatever the value")
      ->capture_default_str();
  auto* lm_host_opt = app.add_option("--host", lm_host, "LMCache's flag: bind host of the ZeroMQ sockets and the HTTP API")
                          ->capture_default_str();
  auto* lm_port_opt = app.add_option("--port", lm_port, "LMCache's flag: the HTTP API's port (on --host)")
                          ->check(CLI::Range(0, 65535))->capture_default_str();
  auto* ports_opt = app.add_option("--monitor-ports", monitor_ports_json,
                                   "LMCache's flag: ZeroMQ ports as JSON, e.g. '{\"pull\": 8300, \"reply\": 8400, "
                                   "\"heartbeat\": 8082}' (0: any free port; default {\"pull\": 8300, \"reply\": 8400})");
  auto* port_opt = app.add_option("--monitor-port", monitor_port, "LMCache's older flag: a PULL socket only, on this port")
                       ->check(CLI::Range(0, 65535));
  port_opt->excludes(ports_opt);
  app.add_option("--advertise-host", zo.advertise_host,
                 "Host put into heartbeat_url (default: the bind host, or for 0.0.0.0 one the worker can reach)");
  app.add_option("--zmq-max-message-bytes", zo.max_message_bytes,
                 "Largest ZeroMQ frame accepted (a larger one disconnects its peer; 0: the request ring's largest record)")
      ->capture_default_str();
  app.add_option("--zmq-hwm", zo.receive_hwm, "Frames queued per ZeroMQ peer at most")
      ->check(CLI::Range(1, 1 << 20))->capture_default_str();
  app.add_option("--full-sync-threshold", o.full_sync_threshold,
                 "Completed fraction of workers at which full-syncing workers may leave freeze")
      ->check(CLI::Range(0.0, 1.0))->capture_default_str();
  app.add_option("--full-sync-timeout", o.full_sync_timeout_s, "Seconds a full sync may stall before it fails and is asked again")
      ->check(CLI::Range(0.0, 1e7))->capture_default_str();
  app.add_flag("--no-full-sync-on-start", no_full_sync_on_start,
               "Do not ask every worker to full-sync after start (LMCache always asks)");
  app.add_option("--p2p-policy", policy, "longest-prefix (kvring) or lmcache (LMCache's exact rule)")
      ->check(CLI::IsMember({"longest-prefix", "lmcache"}))->capture_default_str();
  app.add_option("--lookup-chunk-size", o.lookup_chunk_size, "Tokens per chunk when LookupMsg hashes tokens (LMCache: 256)")
      ->check(CLI::Range(1u, 1u << 20))->capture_default_str();
  app.add_option("--lookup-none-hash", o.lookup_none_hash,
                 "NONE_HASH that the first chunk hash chains to (LMCache without vLLM: 0)")->capture_default_str();
  app.add_option("--command-timeout", o.command_timeout_s,
                 "Seconds the workers of an instance get to answer an orchestrator command (clear, health, ...)")
      ->check(CLI::Range(0.001, 3600.0))->capture_default_str();
  app.add_option("--http", http_at,
                 "Serve LMCache's HTTP API and /metrics on HOST:PORT (port 0: any free port; the log names it). "
                 "Given without a value: 127.0.0.1:9000")
      ->expected(0, 1)->default_str("127.0.0.1:9000");
  app.add_option("--http-token-file", http_token_file,
                 "A file whose content (surrounding whitespace trimmed) is the bearer token the HTTP API wants on "
                 "/clear, /pin, /compress, /decompress and /move (\"Authorization: Bearer <token>\"; 401 without)")
      ->check(CLI::ExistingFile);
  app.add_flag("--http-metrics-auth", http_metrics_auth, "GET /metrics wants the bearer token too (default: open)");
  app.add_option("--http-idle-timeout", http_idle_timeout, "Seconds an HTTP connection may wait before a request starts")
      ->check(CLI::Range(0.01, 86400.0))->capture_default_str();
  app.add_option("--http-read-timeout", http_read_timeout,
                 "Seconds from a request's first byte to its last (and for a reply's write); slower peers are closed")
      ->check(CLI::Range(0.01, 3600.0))->capture_default_str();
  app.add_option("--http-connections-per-address", http_per_address,
                 "HTTP connections per client address; past it the oldest one still reading a request is closed")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))->capture_default_str();
  app.add_flag("--index-prepare-tables", o.index.prepare_tables,
               "Have a helper thread prepare the index's big tables with huge pages (lookups -20 %, ingest +20 %, "
               "but a growing index may pause inserts for 15-25 ms; docs/PERFORMANCE.md)");
  app.add_option("--index-reserve-keys", o.index.reserve_keys,
                 "Make room for this many keys at start (sized tables on huge pages, populated before the first "
                 "insert: no growth, no insert pause; ~26 resident bytes a key at 10 M keys: 12-byte slots at 3/4 load and 8 for the key lists; the index still grows past it)")
      ->capture_default_str();
  app.add_option("--key-quota", o.index.per_holder_quota, "Keys per (worker, location) at most (0: unlimited)")
      ->capture_default_str();
  app.add_option("--request-check-ops", o.request_check_ops,
                 "KV ops applied between looks for waiting requests (lookups, heartbeats): a lookup waits behind "
                 "at most this many ops of someone's ingest; fewer cost ingest a few % (docs/PERFORMANCE.md)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))->capture_default_str();
  app.add_option("--spin", spin_passes, "Idle passes spun before sleeping (latency vs. idle CPU)")->capture_default_str();
  app.add_option("--spin-us", spin_us,
                 "Microseconds spun after those passes before sleeping: covers the gap between ZeroMQ requests "
                 "(a wake-up from sleep costs tens of microseconds; docs/PERFORMANCE.md)")
      ->check(CLI::Range(0, 1000000))->capture_default_str();
  app.add_option("--nice", nice_value,
                 "Scheduling niceness for the controller (-20..19; below 0 needs CAP_SYS_NICE or RLIMIT_NICE, "
                 "else a warning and the default): the one thread every client waits for, on a machine with more "
                 "runnable threads than cores (docs/PERFORMANCE.md \"Under CPU contention\")")
      ->check(CLI::Range(-20, 19));
  app.add_option("--stats-interval", stats_interval, "Seconds between stats lines in the log (0: none)")
      ->check(CLI::Range(0.0, 86400.0))->capture_default_str();
  cluster::PublisherOptions co;
  std::size_t change_feed_bytes = std::size_t{64} << 20;
  auto* cluster_opt = app.add_option("--cluster", co.cluster,
                                     "Cluster name: publish this node's changes to NATS JetStream (docs/DESIGN.md)");
  app.add_option("--node", co.node, "This node's name in the cluster (default: the controller name)");
  app.add_option("--nats,--cluster-nats-url", co.nats_url, "NATS server URL(s), comma-separated")
      ->capture_default_str();
  app.add_option("--cluster-creds", co.creds_file, "NATS user credentials file (JWT and seed)");
  app.add_option("--cluster-tls-ca", co.tls_ca_file, "CA certificates for NATS over TLS");
  app.add_option("--cluster-tls-cert", co.tls_cert_file, "Client certificate chain for NATS over TLS");
  app.add_option("--cluster-tls-key", co.tls_key_file, "Client certificate key for NATS over TLS");
  app.add_option("--cluster-replicas", co.stream_replicas, "Replicas of the cluster's stream (3 for a 3-server NATS)")
      ->check(CLI::Range(1, 5))->capture_default_str();
  double cluster_lease_s = 3;
  app.add_option("--cluster-lease", cluster_lease_s,
                 "Seconds this node's lease lives unrefreshed (refreshed every third of it): the others drop a "
                 "node's holders once its lease is gone")
      ->check(CLI::Range(0.3, 600.0))->capture_default_str();
  double cluster_retention_s = 3600;
  app.add_option("--cluster-retention", cluster_retention_s,
                 "Seconds the cluster's stream keeps a message (its max age, set by the node that creates it), "
                 "with a dump of this node's holders at least every third of it so a joiner finds every node's "
                 "state; 0: keep everything (a joiner replays each node's whole history)")
      ->check(CLI::Number)->capture_default_str();
  co.snapshot_min_keys = 4'000'000;
  app.add_option("--cluster-snapshot-keys", co.snapshot_min_keys,
                 "Dump this node's holders into the stream once this many key operations, or the last dump's "
                 "size if larger, were published since the last dump (a joiner reads from the latest dump on); "
                 "0: only by time (--cluster-retention)")
      ->capture_default_str();
  app.add_flag("--cluster-cut-at-dumps", co.cut_at_dumps,
               "Also purge this node's subject below each dump, and gone nodes' subjects (nats-server 2.9 stalls "
               "consumers with a backlog at each purge: docs/DESIGN.md)");
  double cluster_linger_ms = 1;
  app.add_option("--cluster-linger", cluster_linger_ms,
                 "Under load (a sixteenth of --cluster-batch-bytes waiting), milliseconds a change may wait for "
                 "more to fill a message (fewer, larger messages cost NATS less); 0: send as soon as the last "
                 "message is acknowledged")
      ->check(CLI::Range(0.0, 1000.0))->capture_default_str();
  app.add_option("--cluster-batch-bytes", co.min_message_bytes,
                 "A message this large goes without waiting (see --cluster-linger)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{1} << 20))->capture_default_str();
  app.add_option("--change-feed-bytes", change_feed_bytes,
                 "The change feed's buffer between the controller and the publisher (power of two)")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "error, warn, info or debug")
      ->check(CLI::IsMember({"error", "warn", "info", "debug"}))->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  auto log = spdlog::stderr_color_mt("kvringd");
  log->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%L%$ kvringd[%P]: %v");
  log->set_level(spdlog::level::from_str(log_level));
  if (group_access) {
    o.listen.segment_mode = 0660;
    o.listen.allow_other_uids = true;
  }
  o.full_sync_on_start = !no_full_sync_on_start;
  if (nice_value) {
    // Before any thread starts: Linux's niceness is per thread, and threads
    // inherit it. The HTTP and ZeroMQ threads serve the controller, so they
    // share its priority.
    errno = 0;
    if (setpriority(PRIO_PROCESS, 0, *nice_value) != 0)
      log->warn("--nice {}: {} (running at niceness {})", *nice_value, std::strerror(errno),
                getpriority(PRIO_PROCESS, 0));
    else
      log->info("niceness {}", *nice_value);
  }
  o.policy = policy == "lmcache" ? p2p::Policy::kLMCache : p2p::Policy::kLongestPrefix;
  o.log = [log](std::string_view line) { log->warn("{}", line); };

  struct sigaction sa{};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);

  if (health_check_interval <= 0) o.worker_timeout_s = 0;
  // LMCache's command line: its sockets and its HTTP API, its defaults for the rest.
  const bool lmcache_mode = lm_host_opt->count() || lm_port_opt->count() || ports_opt->count() || port_opt->count();
  if (lmcache_mode) {
    zo.controller = o.listen.name;
    zo.host = lm_host;
    zo.command_timeout_s = o.command_timeout_s;
    zo.limits = o.limits;
    zo.pull_port = 8300, zo.reply_port = 8400, zo.heartbeat_port = -1;
    if (port_opt->count()) {
      zo.pull_port = monitor_port, zo.reply_port = -1;
    } else if (ports_opt->count()) {
      auto j = nlohmann::json::parse(monitor_ports_json, nullptr, /*allow_exceptions=*/false);
      auto port_of = [&](const char* key, int* out) {
        if (!j.contains(key) || j[key].is_null() || (j[key].is_string() && j[key].get<std::string>().empty())) return true;
        if (!j[key].is_number_integer() || j[key].get<long long>() < 0 || j[key].get<long long>() > 65535) return false;
        *out = j[key].get<int>();
        return true;
      };
      int pull = -1, reply = -1, heartbeat = -1;
      if (!j.is_object() || !port_of("pull", &pull) || !port_of("reply", &reply) || !port_of("heartbeat", &heartbeat) ||
          pull < 0) {
        std::cerr << "--monitor-ports: expected a JSON object with a \"pull\" port and optional \"reply\" and "
                     "\"heartbeat\" ports (0-65535), got '" << monitor_ports_json << "'\n";
        return 2;
      }
      zo.pull_port = pull, zo.reply_port = reply, zo.heartbeat_port = heartbeat;
    }
    if (!app.count("--http")) http_at = (lm_host.find(':') != std::string::npos ? "[" + lm_host + "]" : lm_host) + ":" +
                                        std::to_string(lm_port);
  }
  const bool serve_http = app.count("--http") || lmcache_mode;

  http::Options ho;
  if (serve_http) {
    if (http_at.empty()) http_at = "127.0.0.1:9000";
    auto colon = http_at.rfind(':');
    unsigned long port = 0;
    char* end = nullptr;
    if (colon != std::string::npos) port = std::strtoul(http_at.c_str() + colon + 1, &end, 10);
    if (colon == std::string::npos || colon == 0 || end == http_at.c_str() + colon + 1 || *end != '\0' || port > 65535) {
      std::cerr << "--http: expected HOST:PORT (e.g. 127.0.0.1:9000), got '" << http_at << "'\n";
      return 2;
    }
    ho.host = http_at.substr(0, colon);
    if (ho.host.size() > 2 && ho.host.front() == '[' && ho.host.back() == ']') ho.host = ho.host.substr(1, ho.host.size() - 2);
    ho.port = static_cast<std::uint16_t>(port);
    ho.controller = o.listen.name;
    // The HTTP side waits a little longer than the workers get, so a worker's
    // deadline is reported as such rather than as the controller's.
    ho.request_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(o.command_timeout_s * 1000) + 2000);
    if (!http_token_file.empty()) {
      std::ifstream in(http_token_file);
      std::string token((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      const auto first = token.find_first_not_of(" \t\r\n");
      token = first == std::string::npos ? "" : token.substr(first, token.find_last_not_of(" \t\r\n") - first + 1);
      if (!in.good() && !in.eof()) {
        std::cerr << "--http-token-file: cannot read " << http_token_file << "\n";
        return 2;
      }
      if (token.empty() || token.size() > 4096 || token.find_first_of(" \t\r\n") != std::string::npos) {
        std::cerr << "--http-token-file: " << http_token_file
                  << " must hold one token (1-4096 characters, no whitespace inside)\n";
        return 2;
      }
      ho.bearer_token = std::move(token);
    }
    ho.metrics_need_token = http_metrics_auth;
    ho.idle_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(http_idle_timeout * 1000));
    ho.read_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(http_read_timeout * 1000));
    ho.max_connections_per_address = http_per_address;
  } else if (!http_token_file.empty() || http_metrics_auth) {
    std::cerr << "--http-token-file and --http-metrics-auth need the HTTP API (--http or LMCache's flags)\n";
    return 2;
  }

  // Each attached client holds two descriptors here (its socket and its
  // segment's memory file): lift the soft limit (often 1024) to the hard one.
  if (rlimit nofile{}; getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &nofile) != 0) log->warn("cannot raise the descriptor limit: {}", std::strerror(errno));
  }
  // The change feed and its publisher (--cluster): the controller writes,
  // the publisher's thread sends; NATS need not be up yet.
  std::unique_ptr<feed::ChangeFeed> change_feed;
  std::unique_ptr<feed::RemoteFeed> remote_feed;
  std::unique_ptr<cluster::Publisher> publisher;
  std::unique_ptr<cluster::Subscriber> subscriber;
  if (cluster_opt->count() > 0) {
    if (co.node.empty()) co.node = o.listen.name;
    co.lease_ttl = std::chrono::milliseconds(static_cast<std::int64_t>(cluster_lease_s * 1000));
    co.retention = std::chrono::milliseconds(static_cast<std::int64_t>(cluster_retention_s * 1000));
    co.linger = std::chrono::microseconds(static_cast<std::int64_t>(cluster_linger_ms * 1000));
    auto f = feed::ChangeFeed::Create(change_feed_bytes);
    if (!f.ok()) {
      std::cerr << "--change-feed-bytes: " << f.status().message() << "\n";
      return 2;
    }
    change_feed = std::move(f).value();
    co.log = [log](std::string_view line) { log->warn("{}", line); };
    auto p = cluster::Publisher::Start(co, change_feed.get());
    if (!p.ok()) {
      std::cerr << "--cluster: " << p.status().message() << "\n";
      return 2;
    }
    publisher = std::move(p).value();
    o.change_feed = change_feed.get();
    auto rf = feed::RemoteFeed::Create(change_feed_bytes);
    if (!rf.ok()) {
      std::cerr << "--change-feed-bytes: " << rf.status().message() << "\n";
      return 2;
    }
    remote_feed = std::move(rf).value();
    auto sub = cluster::Subscriber::Start(co, remote_feed.get());
    if (!sub.ok()) {
      std::cerr << "--cluster: " << sub.status().message() << "\n";
      return 2;
    }
    subscriber = std::move(sub).value();
    o.remote_feed = remote_feed.get();
    log->info("cluster '{}': node '{}' publishes to {} (stream {}, epoch {:#018x}) via {}", co.cluster, co.node,
              publisher->subject(), publisher->stream(), publisher->epoch(), co.nats_url);
  }
  auto started = controller::Controller::Start(o);
  if (!started.ok()) {
    log->error("cannot start: {}", started.status().message());
    return 1;
  }
  controller::Controller& ctl = **started;
  if (cluster::Publisher* p = publisher.get()) {
    cluster::Subscriber* sub = subscriber.get();
    ctl.AddStatsSource(
        "cluster",
        [p, sub] {  // one object: the publisher's fields and the subscriber's
          nlohmann::json merged = nlohmann::json::parse(p->StatsJson());
          merged.update(nlohmann::json::parse(sub->StatsJson()));
          return merged.dump();
        },
        [p, sub] { return p->MetricsText() + sub->MetricsText(); });
  }
  log->info("controller '{}' running (pid {}, up to {} clients, other uids {}, p2p policy {}, heartbeat {} s, "
            "full sync on start: {})", o.listen.name, getpid(), o.listen.max_clients,
            o.listen.allow_other_uids ? "accepted" : "refused", policy, o.heartbeat_interval_s,
            o.full_sync_on_start ? "yes" : "no");

  // The HTTP server and the ZeroMQ front attach as clients, so they start while the loop runs.
  BackgroundStart<http::Server> http_start;
  if (serve_http) http_start.Begin([&] { return http::Server::Start(ho); });
  BackgroundStart<zmqfront::Front> front_start;
  if (lmcache_mode) {
    zo.log = [log](std::string_view line) { log->warn("{}", line); };
    front_start.Begin([&] { return zmqfront::Front::Start(zo); });
  }

  using Clock = std::chrono::steady_clock;
  auto next_stats = Clock::now() + std::chrono::duration<double>(stats_interval);
  auto last_stats = Clock::now();
  controller::Stats prev = ctl.stats();
  int exit_code = 0;
  std::atomic<bool> stop{false};
  std::uint64_t passes = 0;
  ctl.Run(stop, spin_passes, [&](bool idle) {
    if (g_stop.load(std::memory_order_relaxed)) stop.store(true, std::memory_order_relaxed);
    if (http_start.Finished()) {
      if (http_start.value()) {
        log->info("HTTP API on http://{}:{}/ (LMCache endpoints, GET /metrics)", ho.host, http_start.value()->port());
      } else {
        log->error("cannot start: {}", http_start.error().message());
        exit_code = 1;
        stop.store(true, std::memory_order_relaxed);
      }
    }
    if (front_start.Finished()) {
      if (zmqfront::Front* f = front_start.value().get()) {
        log->info("ZeroMQ front on {}: PULL {}, reply ROUTER {}, heartbeat ROUTER {} (LMCache's worker sockets)", zo.host,
                  f->pull_port(), f->reply_port(), f->heartbeat_port());
        ctl.AddStatsSource("zmq", [f] { return f->StatsJson(); }, [f] { return f->MetricsText(); });
      } else {
        log->error("cannot start the ZeroMQ front: {}", front_start.error().message());
        exit_code = 1;
        stop.store(true, std::memory_order_relaxed);
      }
    }
    if (stats_interval <= 0 || (idle && ++passes % 1024 != 0)) return;
    auto now = Clock::now();
    if (now < next_stats) return;
    double dt = std::chrono::duration<double>(now - last_stats).count();
    const controller::Stats& s = ctl.stats();
    log->info("stats: clients={} workers={} keys={} kv_ops/s={:.0f} lookups/s={:.0f} errors={} quarantined={}",
              ctl.listener().clients().size(), ctl.registry().worker_count(), ctl.index().pairs(),
              static_cast<double>(s.kv_ops - prev.kv_ops) / dt,
              static_cast<double>(s.p2p_lookups - prev.p2p_lookups) / dt, s.errors, s.quarantined_rings);
    prev = s;
    last_stats = now;
    next_stats = now + std::chrono::duration<double>(stats_interval);
  }, std::chrono::microseconds(spin_us));
  // The HTTP side closes while the loop still answers its last requests.
  std::atomic<bool> http_closed{false};
  std::thread closer([&] {
    front_start.Join();  // a start under way needs the loop to attach
    http_start.Join();
    http_start.value().reset();
    http_closed.store(true, std::memory_order_relaxed);
  });
  ctl.Run(http_closed, 0);
  closer.join();
  front_start.value().reset();  // the controller's stats sources point at it: gone only after the loop's last pass
  const controller::Stats& s = ctl.stats();
  log->info("shutting down: {} messages, {} kv ops, {} lookups, {} errors; removing segments", s.messages, s.kv_ops,
            s.p2p_lookups, s.errors);
  started = Status(ErrorKind::kUnavailable, "stopped");  // destroys the controller: segments removed
  subscriber.reset();
  publisher.reset();  // sends what the feed still holds while NATS answers (bounded), then stops
  if (exit_code == 0) log->info("stopped cleanly");
  return exit_code;
}
