// The ZeroMQ front: kvringd serves LMCache's own Python workers, unchanged,
// on the sockets `lmcache_controller` binds (lmcache-controller.md §2):
//
//   PULL   host:pull       workers PUSH WorkerMsgs (KV batches, full-sync
//                          batches and ends, DeRegisterMsg), one Msg a frame
//   ROUTER host:reply      workers' DEALERs: [identity, "", WorkerReqMsg] ->
//                          [identity, "", reply], in order per identity
//   ROUTER host:heartbeat  (optional) HeartbeatMsg only; its address goes to
//                          workers as RegisterRetMsg.extra_config["heartbeat_url"]
//   REQ -> ip:port         one per registered worker: fan-out commands
//                          (Clear, Pin, Compress, Decompress, Move, Health)
//
// How it meets the controller: the front is a ring client of role kFront, on
// a thread of its own, with two connections: "bulk" carries PULL frames as
// framing::kMessage, "requests" carries ROUTER requests as framing::kRequest
// numbered by the front (the controller serves requests ahead of bulk, so a
// lookup never waits behind a worker's KV stream) and receives the
// controller's fan-out commands as framing::kRoutedCommand. Each frame is copied
// once, from ZeroMQ's buffer into a ring claim, and decoded in place there by
// the single controller thread, into the same index that shared-memory
// workers feed. The front itself decodes only the tag of a frame (to keep
// each socket to the messages LMCache accepts on it) and, on cold paths,
// registrations, heartbeats and deregistrations (to know each worker's
// command address).
//
// Waiting: the front sleeps in zmq_poll() on its sockets and on the
// requests connection's attach socket; it announces the sleep in its segment
// (Connection::SleepOnSocket), so the controller rings that socket after it
// publishes replies. Nothing blocks on a peer: sends never wait (a peer past
// its high-water mark loses the message, as ZeroMQ's ROUTER does), a worker
// that does not answer a command in `command_timeout_s` gets a fresh REQ
// socket, and a full ring pauses only the PULL socket (ZeroMQ's high-water
// mark then pushes back on the workers).
//
// Untrusted input: every frame is bounded (ZMQ_MAXMSGSIZE, at most the ring's
// largest record), per-peer queues by ZMQ_RCVHWM; a frame that is not a
// message of its socket is counted, logged (at most one line a second) and
// dropped, with an ErrorMsg where the sender waits for a reply.
//
// Thread-safety: Start() and the destructor belong to one thread; stats()
// and the text/JSON views may be read from any thread (relaxed counters).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "kvring/protocol/codec.h"
#include "kvring/status.h"

namespace kvring::zmqfront {

struct Options {
  std::string controller = "kvring";  // kvringd --name: the front attaches to it
  std::string host = "0.0.0.0";       // bind host (LMCache's --host)
  int pull_port = 8300;               // 0: any free port (see Front::pull_port())
  int reply_port = 8400;              // -1: no ROUTER (LMCache's --monitor-port mode)
  int heartbeat_port = -1;            // -1: no heartbeat ROUTER, so no heartbeat_url
  // The host put into heartbeat_url. Empty: the bind host, or for a wildcard
  // bind the address a worker can reach (127.0.0.1 for a worker on this
  // host, else this host's address on the worker's subnet).
  std::string advertise_host;
  std::size_t max_message_bytes = 0;  // per frame; 0: the request ring's largest record
  int receive_hwm = 1000;             // per peer, in frames (ZeroMQ's default, as LMCache)
  double command_timeout_s = 5;       // a worker's REP gets this long before its REQ is replaced
  double request_timeout_s = 60;      // a request the controller never answered is forgotten
  std::size_t max_workers = 4096;     // command links at most (one REQ socket each)
  protocol::DecodeLimits limits;
  std::function<void(std::string_view)> log;  // rate-limited problems and notices
};

// Counters, updated by the front's thread with relaxed stores.
struct Stats {
  std::atomic<std::uint64_t> pull_frames{0};        // frames received on PULL
  std::atomic<std::uint64_t> pull_bad_frames{0};    // ... undecodable, or not a WorkerMsg: dropped
  std::atomic<std::uint64_t> pull_ring_waits{0};    // times the bulk ring was full (PULL paused)
  std::atomic<std::uint64_t> reply_requests{0};     // requests received on the main ROUTER
  std::atomic<std::uint64_t> heartbeat_requests{0}; // requests received on the heartbeat ROUTER
  std::atomic<std::uint64_t> bad_requests{0};       // answered ErrorMsg by the front (either ROUTER)
  std::atomic<std::uint64_t> replies_sent{0};
  std::atomic<std::uint64_t> requests_expired{0};   // never answered within request_timeout_s
  std::atomic<std::uint64_t> json_frames{0};        // frames that came as JSON
  std::atomic<std::uint64_t> commands_sent{0};      // ControlMsgs sent to workers' REPs
  std::atomic<std::uint64_t> commands_answered{0};
  std::atomic<std::uint64_t> commands_timed_out{0}; // REQ socket replaced
  std::atomic<std::uint64_t> commands_unroutable{0};// no command link for that worker
  std::atomic<std::uint64_t> peers_connected{0};    // TCP peers on PULL and the ROUTERs now
  std::atomic<std::uint64_t> peers_disconnected{0}; // total
  std::atomic<std::uint64_t> command_links{0};      // workers with a REQ socket now
  std::atomic<std::uint64_t> requests_in_flight{0}; // ROUTER requests awaiting the controller
  std::atomic<std::uint64_t> pull_has_pending{0};   // 1: PULL had more than one pass could take
  std::atomic<std::uint64_t> pull_backlog_frames{0};// received, waiting for ring space
  std::atomic<std::uint64_t> reply_has_pending{0};
};

// The front's counters as it publishes them in its segment's header page
// (segment_descriptor.h, ClientCounters), where `kvring inspect` reads them:
// slot i holds kFrontCounterNames[i].
enum FrontCounter : std::size_t {
  kFrontPeers, kFrontPeerDisconnects, kFrontPullFrames, kFrontPullBadFrames, kFrontPullRingWaits,
  kFrontReplyRequests, kFrontHeartbeatRequests, kFrontBadRequests, kFrontRepliesSent, kFrontRequestsInFlight,
  kFrontRequestsExpired, kFrontCommandLinks, kFrontCommandsSent, kFrontCommandsTimedOut, kFrontCounterCount
};
inline constexpr const char* kFrontCounterNames[kFrontCounterCount] = {
    "peers", "peer_disconnects", "pull_frames", "pull_bad_frames", "pull_ring_waits",
    "reply_requests", "heartbeat_requests", "bad_requests", "replies_sent", "requests_in_flight",
    "requests_expired", "command_links", "commands_sent", "commands_timed_out"};
static_assert(kFrontCounterCount <= 32, "ClientCounters has 32 slots");

class Front {
 public:
  // Binds the sockets (an address in use is an error here), attaches to the
  // running controller `options.controller` and starts the front's thread.
  static Result<std::unique_ptr<Front>> Start(const Options& options);
  ~Front();  // stops the thread, closes every socket (linger 0)

  const Stats& stats() const;
  // The ports actually bound (differ from the options where those said 0).
  int pull_port() const;
  int reply_port() const;      // -1: none
  int heartbeat_port() const;  // -1: none
  // Prometheus lines: LMCache's socket gauges (lmcache:cache_controller_*)
  // and kvring_zmq_* for the rest.
  std::string MetricsText() const;
  // The counters and ports as one JSON object (`kvring stats --json`'s "zmq").
  std::string StatsJson() const;

 private:
  struct Impl;
  explicit Front(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The heartbeat_url host for a worker reporting `worker_ip`, for a front
// bound on `bind_host` (exposed for tests): the bind host unless it is a
// wildcard; then 127.0.0.1 when worker_ip is one of this host's addresses,
// else this host's IPv4 address on worker_ip's subnet, else its first
// non-loopback IPv4 address, else 127.0.0.1.
std::string HeartbeatHostFor(std::string_view bind_host, std::string_view worker_ip);

}  // namespace kvring::zmqfront
