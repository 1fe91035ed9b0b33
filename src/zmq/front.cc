// The ZeroMQ front (include/kvring/zmq/front.h has the design).
//
// Invariants of the front's thread:
// - Every ROUTER request the front accepts gets one entry in `pending_` and
//   one place in its identity's queue (`order_`); replies leave a queue in
//   the order the requests came, whether the controller or the front itself
//   answered, and an entry older than request_timeout_s is given up.
// - A command link's REQ socket has at most one command in flight; the rest
//   wait in the link's queue. A link past its deadline gets a new socket.
// - Nothing here waits on a peer: ZeroMQ sends are non-blocking, and the only
//   blocking call is zmq_poll() (bounded by the nearest deadline).
#include "kvring/zmq/front.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <limits>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "kvring/protocol/json.h"
#include "kvring/protocol/messages.h"
#include "kvring/shm/framing.h"
#include "kvring/shm/transport.h"
#include "shm/spin_wait.h"  // internal: the base layer's waiting rule

namespace kvring::zmqfront {
namespace {

using Clock = std::chrono::steady_clock;

double MonoSeconds() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

enum SocketKind : int { kMain = 0, kHeartbeat = 1 };
constexpr const char* kSocketNames[] = {"reply", "heartbeat"};

constexpr std::size_t kFramesPerPass = 256;     // per socket per pass: no socket starves the others
constexpr std::size_t kMaxPending = 1 << 16;    // ROUTER requests awaiting answers, all peers together
constexpr std::size_t kMaxQueuedCommands = 256; // per worker, behind the one in flight
constexpr double kHousekeepingPeriod = 0.1;
constexpr int kMonitorBacklog = 1 << 16;  // connection events a monitor holds between two housekeeping passes
constexpr double kRefreshPeriod = 50e-6;  // while busy, drained sockets are polled this often
// After forwarding a request, the controller usually answers within a few
// microseconds: polling the reply ring that long is cheaper than a sleep and
// a doorbell (docs/PERFORMANCE.md, "The ZeroMQ front").
constexpr auto kReplySpin = std::chrono::microseconds(30);

bool IsWildcard(std::string_view host) { return host.empty() || host == "0.0.0.0" || host == "*" || host == "::"; }

std::string Endpoint(const std::string& host, int port) {
  std::string h = IsWildcard(host) ? "*" : host;
  if (h.find(':') != std::string::npos && h.front() != '[') h = "[" + h + "]";
  return "tcp://" + h + ":" + (port == 0 ? std::string("*") : std::to_string(port));
}

int BoundPort(zmq::socket_t& s) {
  std::string ep = s.get(zmq::sockopt::last_endpoint);
  auto colon = ep.rfind(':');
  return colon == std::string::npos ? -1 : std::atoi(ep.c_str() + colon + 1);
}

bool Among(std::string_view tag, std::initializer_list<std::string_view> tags) {
  return std::find(tags.begin(), tags.end(), tag) != tags.end();
}

std::span<const std::uint8_t> Bytes(const zmq::message_t& m) {
  return {static_cast<const std::uint8_t*>(m.data()), m.size()};
}
std::span<const std::uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

// For `kvring inspect`: the counters into the segment's header page (below).
void PublishFrontCounters(const Stats& stats, segment::ClientCounters* to);

}  // namespace

std::string HeartbeatHostFor(std::string_view bind_host, std::string_view worker_ip) {
  if (!IsWildcard(bind_host)) return std::string(bind_host);
  in_addr worker{};
  const bool v4 = inet_pton(AF_INET, std::string(worker_ip).c_str(), &worker) == 1;
  if (v4 && (ntohl(worker.s_addr) >> 24) == 127) return "127.0.0.1";
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "127.0.0.1";
  std::string same_subnet, first;
  bool local = false;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || a->ifa_addr->sa_family != AF_INET) continue;
    const in_addr addr = reinterpret_cast<sockaddr_in*>(a->ifa_addr)->sin_addr;
    const in_addr mask = a->ifa_netmask ? reinterpret_cast<sockaddr_in*>(a->ifa_netmask)->sin_addr : in_addr{};
    char text[INET_ADDRSTRLEN] = {};
    inet_ntop(AF_INET, &addr, text, sizeof text);
    if (v4 && addr.s_addr == worker.s_addr) local = true;
    if ((ntohl(addr.s_addr) >> 24) == 127) continue;
    if (first.empty()) first = text;
    if (v4 && same_subnet.empty() && (addr.s_addr & mask.s_addr) == (worker.s_addr & mask.s_addr)) same_subnet = text;
  }
  freeifaddrs(list);
  if (local) return "127.0.0.1";  // as LMCache: a worker on this host connects over loopback
  if (!same_subnet.empty()) return same_subnet;
  return first.empty() ? "127.0.0.1" : first;
}

struct Front::Impl {
  Options o;
  Stats stats;
  zmq::context_t ctx;
  zmq::socket_t pull, router[2];
  bool has_router[2] = {false, false};
  int ports[3] = {-1, -1, -1};  // pull, reply, heartbeat
  zmq::socket_t monitors[3];
  bool has_monitor[3] = {false, false, false};
  std::unique_ptr<transport::Connection> bulk, requests;
  int stop_fd = -1;
  std::atomic<bool> stop{false};
  std::thread thread;

  // ROUTER requests in flight.
  struct Pending {
    int socket = kMain;
    std::string identity;
    double deadline = 0;
    bool is_register = false;
    std::string worker_ip;       // RegisterMsg.ip, for heartbeat_url
    bool ready = false;          // answered (or given up: reply empty and dropped)
    bool dropped = false;
    std::string reply;
  };
  std::unordered_map<std::uint64_t, Pending> pending;
  std::unordered_map<std::string, std::deque<std::uint64_t>> order[2];
  std::uint64_t next_request_id = 1;

  // Command links: one REQ socket per registered worker.
  struct Link {
    std::string endpoint;
    std::unique_ptr<zmq::socket_t> req;
    bool busy = false;
    std::uint64_t in_flight = 0;
    double deadline = 0;
    std::deque<std::pair<std::uint64_t, std::string>> queue;  // (command id, message)
  };
  std::map<std::pair<std::string, std::int64_t>, Link> links;

  std::deque<zmq::message_t> pull_backlog;  // frames received, waiting for ring space
  // Whether a socket is worth a recv: an empty non-blocking recv costs a
  // system call in libzmq (its mailbox is polled), so a drained socket is
  // looked at again only when zmq_poll() says it is readable.
  enum { kPullSocket = 0, kRouterSocket = 1, kSockets = 3 };
  bool readable[kSockets] = {true, true, true};
  double next_refresh = 0;  // while busy: when to ask zmq_poll() about the drained sockets
  bool controller_gone = false;
  double next_housekeeping = 0;
  double last_log = -1e9;
  std::size_t suppressed_logs = 0;
  std::string advertise_heartbeat_host;  // fixed host, or empty: per worker
  std::string scratch;                   // JSON conversions
  std::optional<detail::SpinWait> reply_wait;  // a reply spin that ended before its reply came

  void Log(const std::string& line) {
    if (!o.log) return;
    const double now = MonoSeconds();
    if (now - last_log < 1.0) {
      ++suppressed_logs;
      return;
    }
    last_log = now;
    std::string l = "zmq: " + line;
    if (suppressed_logs) l += " (" + std::to_string(suppressed_logs) + " more problems not logged)";
    suppressed_logs = 0;
    o.log(l);
  }

  static void Bump(std::atomic<std::uint64_t>& c, std::uint64_t n = 1) {
    c.store(c.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);  // one writer: the front's thread
  }

  // ---- rings ----------------------------------------------------------------
  enum class Put { kOk, kFull, kRejected };
  Put Write(transport::Connection& c, std::uint32_t type, std::uint64_t id, std::span<const std::uint8_t> bytes) {
    const std::size_t head = type == framing::kMessage ? 0 : framing::kCorrelationIdBytes;
    std::span<std::uint8_t> out;
    switch (c.requests().TryClaim(head + bytes.size(), &out)) {
      case ring::ClaimResult::kOk: break;
      case ring::ClaimResult::kFull: return Put::kFull;
      default: return Put::kRejected;
    }
    if (head) framing::StoreCorrelationId(out, id);
    if (!bytes.empty()) std::memcpy(out.data() + head, bytes.data(), bytes.size());
    c.requests().Commit(head + bytes.size(), type);
    return Put::kOk;
  }

  // A frame as msgpack: JSON frames ('{') are converted (cold: external
  // systems only). Returns the bytes, or a reason.
  Result<std::span<const std::uint8_t>> AsMsgpack(std::span<const std::uint8_t> frame) {
    if (frame.empty() || frame[0] != '{') return frame;
    Bump(stats.json_frames);
    auto j = protocol::ParseJson(std::string_view(reinterpret_cast<const char*>(frame.data()), frame.size()));
    if (!j.ok()) return j.status();
    auto m = protocol::MessageFromJson(*j);
    if (!m.ok()) return m.status();
    scratch = protocol::Encode(*m);
    return Bytes(scratch);
  }

  // ---- PULL -----------------------------------------------------------------
  // Returns false when the ring is full (the frame stays for later).
  bool ForwardPullFrame(const zmq::message_t& frame) {
    auto bytes = AsMsgpack(Bytes(frame));
    if (!bytes.ok()) {
      Bump(stats.pull_bad_frames);
      Log("PULL: frame of " + std::to_string(frame.size()) + " bytes dropped: " + bytes.status().message());
      return true;
    }
    auto tag = protocol::PeekTag(*bytes, o.limits);
    if (!tag.ok()) {
      Bump(stats.pull_bad_frames);
      Log("PULL: frame of " + std::to_string(frame.size()) + " bytes dropped: " + tag.status().message());
      return true;
    }
    if (!Among(*tag, {"BatchedKVOperationMsg", "FullSyncBatchMsg", "FullSyncEndMsg", "DeRegisterMsg", "KVAdmitMsg",
                      "KVEvictMsg"})) {
      Bump(stats.pull_bad_frames);
      Log("PULL: " + std::string(*tag) + " is not a worker event (LMCache takes it on PULL from no one): dropped");
      return true;
    }
    if (*tag == "DeRegisterMsg") {
      auto m = protocol::Decode(*bytes, o.limits);
      if (m.ok())
        if (auto* de = std::get_if<protocol::DeRegisterMsg>(&*m)) DropLink(de->instance_id, de->worker_id.SaturatedI64());
    }
    switch (Write(*bulk, framing::kMessage, 0, *bytes)) {
      case Put::kOk: return true;
      case Put::kFull: Bump(stats.pull_ring_waits); return false;
      case Put::kRejected:
        Bump(stats.pull_bad_frames);
        Log("PULL: frame of " + std::to_string(bytes->size()) + " bytes is larger than the ring takes: dropped");
        return true;
    }
    return true;
  }

  // Forwards backlog frames; false while the ring is still full.
  bool DrainBacklog() {
    while (!pull_backlog.empty()) {
      if (!ForwardPullFrame(pull_backlog.front())) return false;
      pull_backlog.pop_front();
    }
    return true;
  }

  std::size_t PumpPull() {
    std::size_t n = 0;
    if (!DrainBacklog()) return 0;
    if (!readable[kPullSocket]) return 0;
    while (n < kFramesPerPass) {
      zmq::message_t frame;
      auto got = pull.recv(frame, zmq::recv_flags::dontwait);
      if (!got) break;
      ++n;
      Bump(stats.pull_frames);
      if (!pull_backlog.empty() || !ForwardPullFrame(frame)) pull_backlog.push_back(std::move(frame));
    }
    readable[kPullSocket] = n == kFramesPerPass;  // else drained: zmq_poll says when to look again
    stats.pull_has_pending.store(n == kFramesPerPass || !pull_backlog.empty(), std::memory_order_relaxed);
    stats.pull_backlog_frames.store(pull_backlog.size(), std::memory_order_relaxed);
    return n;
  }

  // ---- ROUTERs --------------------------------------------------------------
  void Answer(std::uint64_t id, std::string reply) {
    auto it = pending.find(id);
    if (it == pending.end()) return;
    it->second.ready = true;
    it->second.reply = std::move(reply);
    Flush(it->second.socket, it->second.identity);
  }

  // Sends the answered requests at the head of an identity's queue, in order.
  // `identity` by value: the entries it would otherwise refer into are erased here.
  void Flush(int socket, std::string identity) {
    auto q = order[socket].find(identity);
    if (q == order[socket].end()) return;
    while (!q->second.empty()) {
      auto p = pending.find(q->second.front());
      if (p != pending.end()) {
        if (!p->second.ready) break;
        if (!p->second.dropped) SendReply(socket, identity, p->second.reply);
        pending.erase(p);
      }
      q->second.pop_front();
    }
    if (q->second.empty()) order[socket].erase(q);
    stats.requests_in_flight.store(pending.size(), std::memory_order_relaxed);
  }

  void SendReply(int socket, const std::string& identity, const std::string& reply) {
    // Non-blocking: a peer that is gone or past its high-water mark loses
    // the reply (ROUTER drops it), as it would with LMCache.
    zmq::socket_t& s = router[socket];
    if (!s.send(zmq::buffer(identity), zmq::send_flags::sndmore | zmq::send_flags::dontwait)) return;
    (void)s.send(zmq::message_t(), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    (void)s.send(zmq::buffer(reply), zmq::send_flags::dontwait);
    Bump(stats.replies_sent);
  }

  std::uint64_t Enqueue(int socket, const std::string& identity) {
    const std::uint64_t id = next_request_id++;
    Pending p;
    p.socket = socket;
    p.identity = identity;
    p.deadline = MonoSeconds() + o.request_timeout_s;
    pending.emplace(id, std::move(p));
    order[socket][identity].push_back(id);
    stats.requests_in_flight.store(pending.size(), std::memory_order_relaxed);
    return id;
  }

  void Refuse(std::uint64_t id, const std::string& why) {
    Bump(stats.bad_requests);
    Answer(id, protocol::Encode(protocol::ErrorMsg{why}));
  }

  void HandleRequest(int socket, std::vector<zmq::message_t>& frames) {
    Bump(socket == kMain ? stats.reply_requests : stats.heartbeat_requests);
    if (frames.empty()) return;
    const std::string identity = frames[0].to_string();
    if (pending.size() >= kMaxPending) {
      Bump(stats.bad_requests);
      return Log(std::string(kSocketNames[socket]) + " ROUTER: " + std::to_string(pending.size()) +
                 " requests in flight: one dropped (the sender times out)");
    }
    const std::uint64_t id = Enqueue(socket, identity);
    if (frames.size() < 3) {
      Log(std::string(kSocketNames[socket]) + " ROUTER: " + std::to_string(frames.size()) +
          " frames where [identity, empty delimiter, message] was due");
      return Refuse(id, "kvring: expected a message after an empty delimiter frame (" +
                            std::to_string(frames.size() - 1) + " frames after the identity)");
    }
    // As LMCache: frame 2 is the message; further frames are ignored.
    auto bytes = AsMsgpack(Bytes(frames[2]));
    if (!bytes.ok()) return Refuse(id, bytes.status().message());
    auto tag = protocol::PeekTag(*bytes, o.limits);
    if (!tag.ok()) {
      Log(std::string(kSocketNames[socket]) + " ROUTER: undecodable request: " + tag.status().message());
      return Refuse(id, tag.status().message());
    }
    if (socket == kHeartbeat && *tag != "HeartbeatMsg")
      return Refuse(id, "Expected HeartbeatMsg, got " + std::string(*tag));
    if (socket == kMain && !Among(*tag, {"RegisterMsg", "HeartbeatMsg", "BatchedP2PLookupMsg", "FullSyncStartMsg",
                                         "FullSyncStatusMsg"}))
      return Refuse(id, "Unknown message type: " + std::string(*tag));
    if (*tag == "RegisterMsg" || *tag == "HeartbeatMsg") {
      // Cold: learn where the worker takes commands.
      auto m = protocol::Decode(*bytes, o.limits);
      if (m.ok()) {
        if (auto* r = std::get_if<protocol::RegisterMsg>(&*m)) {
          EnsureLink(r->instance_id, r->worker_id.SaturatedI64(), r->ip, r->port.SaturatedI64());
          Pending& p = pending.at(id);
          p.is_register = true;
          p.worker_ip = r->ip;
        } else if (auto* h = std::get_if<protocol::HeartbeatMsg>(&*m)) {
          EnsureLink(h->instance_id, h->worker_id.SaturatedI64(), h->ip, h->port.SaturatedI64());
        }
      }
    }
    switch (Write(*requests, framing::kRequest, id, *bytes)) {
      case Put::kOk: return;
      case Put::kFull: return Refuse(id, "kvring: the controller's request ring is full; try again");
      case Put::kRejected: return Refuse(id, "kvring: request too large for the controller's ring");
    }
  }

  std::size_t PumpRouter(int socket) {
    if (!has_router[socket] || !readable[kRouterSocket + socket]) return 0;
    std::size_t n = 0;
    std::vector<zmq::message_t> frames;
    while (n < kFramesPerPass) {
      frames.clear();
      auto got = zmq::recv_multipart(router[socket], std::back_inserter(frames), zmq::recv_flags::dontwait);
      if (!got) break;
      ++n;
      HandleRequest(socket, frames);
    }
    readable[kRouterSocket + socket] = n == kFramesPerPass;
    if (socket == kMain) stats.reply_has_pending.store(n == kFramesPerPass, std::memory_order_relaxed);
    return n;
  }

  // The controller's answer to request `id`, with heartbeat_url added to a
  // RegisterRetMsg when there is a heartbeat socket.
  void AnswerFromController(std::uint64_t id, std::span<const std::uint8_t> msg) {
    auto it = pending.find(id);
    if (it == pending.end()) return;  // given up already
    if (it->second.is_register && has_router[kHeartbeat]) {
      auto m = protocol::Decode(msg, o.limits);
      if (m.ok())
        if (auto* ret = std::get_if<protocol::RegisterRetMsg>(&*m)) {
          const std::string host = advertise_heartbeat_host.empty()
                                       ? HeartbeatHostFor(o.host, it->second.worker_ip)
                                       : advertise_heartbeat_host;
          ret->extra_config.emplace_back("heartbeat_url", host + ":" + std::to_string(ports[2]));
          return Answer(id, protocol::Encode(*m));
        }
    }
    Answer(id, std::string(reinterpret_cast<const char*>(msg.data()), msg.size()));
  }

  // ---- commands to workers ---------------------------------------------------
  bool NewSocket(Link& l) {
    try {
      auto s = std::make_unique<zmq::socket_t>(ctx, zmq::socket_type::req);
      s->set(zmq::sockopt::linger, 0);
      s->set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(o.max_message_bytes));
      s->set(zmq::sockopt::rcvhwm, 16);
      s->connect(l.endpoint);
      l.req = std::move(s);
      return true;
    } catch (const zmq::error_t& e) {
      l.req.reset();
      Log("command socket to " + l.endpoint + ": " + e.what());
      return false;
    }
  }

  void EnsureLink(const std::string& instance, std::int64_t worker, const std::string& ip, std::int64_t port) {
    if (port <= 0 || port > 65535 || ip.empty() || ip.size() > 255) {
      Log("worker " + instance + "/" + std::to_string(worker) + " reports no usable command address (" + ip + ":" +
          std::to_string(port) + ")");
      return;
    }
    const std::string endpoint = "tcp://" + (ip.find(':') != std::string::npos ? "[" + ip + "]" : ip) + ":" +
                                 std::to_string(port);
    auto key = std::make_pair(instance, worker);
    auto it = links.find(key);
    if (it == links.end()) {
      if (links.size() >= o.max_workers) {
        return Log("command links at their limit (" + std::to_string(o.max_workers) + "): " + instance + "/" +
                   std::to_string(worker) + " gets none");
      }
      it = links.emplace(key, Link{}).first;
    } else if (it->second.endpoint == endpoint && it->second.req) {
      return;  // the same address: keep the socket (and any command in flight)
    }
    // New, or a new address (better than LMCache, which keeps the stale one).
    Link& l = it->second;
    l.endpoint = endpoint;
    l.busy = false;
    NewSocket(l);
    stats.command_links.store(links.size(), std::memory_order_relaxed);
    SendNextCommand(l);
  }

  void DropLink(const std::string& instance, std::int64_t worker) {
    links.erase(std::make_pair(instance, worker));
    stats.command_links.store(links.size(), std::memory_order_relaxed);
  }

  void CommandFailed(std::uint64_t id, const std::string& why) {
    const std::string reply = protocol::Encode(protocol::ErrorMsg{why});
    (void)Write(*requests, framing::kCommand, id, Bytes(reply));  // full: the controller's deadline reports it
  }

  void HandleRoutedCommand(const framing::RoutedCommand& c) {
    auto it = links.find(std::make_pair(std::string(c.instance_id), c.worker_id));
    if (it == links.end() || !it->second.req) {
      Bump(stats.commands_unroutable);
      return CommandFailed(c.id, "kvring: worker " + std::string(c.instance_id) + "/" + std::to_string(c.worker_id) +
                                     " has no command socket (no usable ip:port in its registration)");
    }
    Link& l = it->second;
    if (l.queue.size() >= kMaxQueuedCommands) {
      Bump(stats.commands_unroutable);
      return CommandFailed(c.id, "kvring: " + std::to_string(l.queue.size()) + " commands already queued for worker " +
                                     std::string(c.instance_id) + "/" + std::to_string(c.worker_id));
    }
    l.queue.emplace_back(c.id, std::string(reinterpret_cast<const char*>(c.message.data()), c.message.size()));
    SendNextCommand(l);
  }

  void SendNextCommand(Link& l) {
    while (!l.busy && l.req && !l.queue.empty()) {
      auto [id, msg] = std::move(l.queue.front());
      l.queue.pop_front();
      bool sent = false;
      try {
        sent = l.req->send(zmq::buffer(msg), zmq::send_flags::dontwait).has_value();
      } catch (const zmq::error_t&) {
      }
      if (!sent) {
        CommandFailed(id, "kvring: the command could not be sent to " + l.endpoint);
        continue;
      }
      Bump(stats.commands_sent);
      l.busy = true;
      l.in_flight = id;
      l.deadline = MonoSeconds() + o.command_timeout_s;
    }
  }

  void ReceiveCommandReply(Link& l) {
    std::vector<zmq::message_t> frames;
    std::optional<std::size_t> got;
    try {
      got = zmq::recv_multipart(*l.req, std::back_inserter(frames), zmq::recv_flags::dontwait);
    } catch (const zmq::error_t&) {
    }
    if (!got || frames.empty()) return;
    Bump(stats.commands_answered);
    l.busy = false;
    // As LMCache's worker: the reply is the last frame.
    if (Write(*requests, framing::kCommand, l.in_flight, Bytes(frames.back())) != Put::kOk)
      CommandFailed(l.in_flight, "kvring: the worker's answer does not fit the controller's ring");
    SendNextCommand(l);
  }

  // ---- the controller's side ---------------------------------------------------
  std::size_t DrainControllerReplies() {
    std::size_t n = requests->replies().Drain(SIZE_MAX, SIZE_MAX, [&](const ring::Record& r) {
      if (auto c = framing::SplitCorrelated(r); c && r.type == framing::kRequest) return AnswerFromController(c->id, c->message);
      if (auto rc = framing::SplitRoutedCommand(r)) return HandleRoutedCommand(*rc);
      Log("unexpected record of type " + std::to_string(r.type) + " from the controller");
    });
    // The bulk connection expects no answers; whatever comes is read and dropped.
    n += bulk->replies().Drain(SIZE_MAX, SIZE_MAX, [](const ring::Record&) {});
    return n;
  }

  // ---- monitors ---------------------------------------------------------------
  void PumpMonitor(int i) {
    while (true) {
      zmq::message_t event, address;
      auto got = monitors[i].recv(event, zmq::recv_flags::dontwait);
      if (!got) return;
      if (event.more()) (void)monitors[i].recv(address, zmq::recv_flags::dontwait);
      if (event.size() < 2) continue;
      std::uint16_t kind = 0;
      std::memcpy(&kind, event.data(), 2);
      if (kind == ZMQ_EVENT_ACCEPTED) {
        Bump(stats.peers_connected);
      } else if (kind == ZMQ_EVENT_DISCONNECTED) {
        if (stats.peers_connected.load(std::memory_order_relaxed) > 0)
          stats.peers_connected.store(stats.peers_connected.load(std::memory_order_relaxed) - 1,
                                      std::memory_order_relaxed);
        Bump(stats.peers_disconnected);
      }
    }
  }

  // ---- housekeeping -----------------------------------------------------------
  void Housekeeping(double now) {
    if (now < next_housekeeping) return;
    next_housekeeping = now + kHousekeepingPeriod;
    requests->Heartbeat();
    bulk->Heartbeat();
    PumpMonitors();  // before the counters go out: peers are counted from the monitors' events
    PublishCounters();
    controller_gone = !requests->ControllerAlive();
    // Requests the controller never answered (its reply ring was full, or it
    // stopped): given up, so the requests behind them flow again.
    std::vector<std::pair<int, std::string>> touched;
    for (auto& [id, p] : pending)
      if (!p.ready && now > p.deadline) {
        p.ready = p.dropped = true;
        Bump(stats.requests_expired);
        touched.emplace_back(p.socket, p.identity);
      }
    for (auto& [socket, identity] : touched) Flush(socket, identity);
    for (auto& [key, l] : links)
      if (l.busy && now > l.deadline) {
        // The controller has reported this worker's part by its own deadline;
        // a REQ socket waiting for an answer would wedge every later command.
        Bump(stats.commands_timed_out);
        Log("worker " + key.first + "/" + std::to_string(key.second) + " at " + l.endpoint + " did not answer in " +
            std::to_string(o.command_timeout_s) + " s: its command socket is replaced");
        l.busy = false;
        NewSocket(l);
        SendNextCommand(l);
      }
  }

  // For `kvring inspect`, in the requests connection's header page.
  void PublishCounters() { PublishFrontCounters(stats, segment::CountersOf(requests->segment().header())); }

  double NextDeadline(double now) const {
    double d = now + kHousekeepingPeriod;
    for (const auto& [key, l] : links)
      if (l.busy) d = std::min(d, l.deadline);
    return d;
  }

  // ---- the loop ---------------------------------------------------------------
  void Run() {
    std::vector<zmq::pollitem_t> items;
    std::vector<Link*> polled_links;
    bool busy = false;  // the last pass had work
    while (!stop.load(std::memory_order_relaxed)) {  // relaxed: a flag, no data rides on it
      std::size_t work = DrainControllerReplies();
      if (reply_wait && (work || stats.requests_in_flight.load(std::memory_order_relaxed) == 0)) {
        // A spin that missed: would a full one have caught this reply?
        reply_wait->Done(work != 0, kReplySpin);
        reply_wait.reset();
      }
      work += PumpPull();
      work += PumpRouter(kMain);
      work += PumpRouter(kHeartbeat);
      bulk->PublishRequests();
      requests->PublishRequests();
      const double now = MonoSeconds();
      Housekeeping(now);
      if (controller_gone) {
        Log("the controller has gone: the front stops");
        return;
      }
      if (work) {
        // Busy: a flood on one socket must not hide the others for long.
        // The period starts with the busy spell: a lone request, answered
        // within it, costs no extra zmq_poll() on its way.
        if (!busy) {
          busy = true;
          next_refresh = now + kRefreshPeriod;
        } else if (now >= next_refresh) {
          RefreshReadable();
          next_refresh = now + kRefreshPeriod;
        }
        continue;
      }
      busy = false;
      // Requests in flight: the answer is usually microseconds away.
      if (stats.requests_in_flight.load(std::memory_order_relaxed) > 0) {
        // The spin gives way (spin_wait.h): shorter while it has not been
        // paying, over once the thread was descheduled.
        detail::SpinWait sw(std::numeric_limits<std::uint64_t>::max());
        const auto until = Clock::now() + kReplySpin / (1u << detail::SpinShrink());
        bool replied = false;
        while (sw.Again() && Clock::now() < until && !(replied = requests->replies().HasRecord())) {
        }
        sw.Stop();
        if (replied) {
          sw.Done(true, kReplySpin);
          continue;
        }
        reply_wait = sw;  // judged when the reply comes (above)
      }

      items.clear();
      polled_links.clear();
      const bool pull_paused = !pull_backlog.empty();
      // Items 0..2: PULL and the ROUTERs (a paused or absent one polls nothing).
      items.push_back({pull_paused ? nullptr : pull.handle(), -1, ZMQ_POLLIN, 0});
      for (int s = 0; s < 2; ++s) items.push_back({has_router[s] ? router[s].handle() : nullptr, -1, ZMQ_POLLIN, 0});
      for (auto& [key, l] : links)
        if (l.busy && l.req) {
          items.push_back({l.req->handle(), 0, ZMQ_POLLIN, 0});
          polled_links.push_back(&l);
        }
      const std::size_t first_link = items.size() - polled_links.size();
      items.push_back({nullptr, requests->socket_fd(), ZMQ_POLLIN, 0});
      items.push_back({nullptr, bulk->socket_fd(), ZMQ_POLLIN, 0});
      items.push_back({nullptr, stop_fd, ZMQ_POLLIN, 0});
      // A full ring pauses PULL: look again soon (the controller frees space
      // within microseconds when it runs).
      double wait_s = pull_paused ? 0.0002 : std::max(0.0, NextDeadline(now) - now);
      auto timeout = std::chrono::milliseconds(static_cast<long>(wait_s * 1000) + (pull_paused ? 0 : 1));
      if (pull_paused) {
        // Wait for ring space on its futex, bounded, then look at the sockets.
        (void)bulk->requests().WaitForSpace(pull_backlog.front().size() + 64, std::chrono::microseconds(500), 200);
        timeout = std::chrono::milliseconds(0);
      }
      int ready = 0;
      if (requests->SleepOnSocket()) {
        try {
          ready = zmq::poll(items.data(), items.size(), timeout);
        } catch (const zmq::error_t& e) {
          if (e.num() != EINTR) Log(std::string("poll: ") + e.what());
        }
        // The doorbell's bytes are read only when it rang (one system call
        // less a wake-up; a byte that comes later wakes the next poll).
        requests->AwakeFromSocket(ready > 0 && (items[items.size() - 3].revents & (ZMQ_POLLIN | ZMQ_POLLERR)));
      }
      if (ready > 0) {
        for (int i = 0; i < kSockets; ++i)
          if (items[i].revents & ZMQ_POLLIN) readable[i] = true;
        for (std::size_t i = 0; i < polled_links.size(); ++i)
          if (items[first_link + i].revents & ZMQ_POLLIN) ReceiveCommandReply(*polled_links[i]);
        if (items[items.size() - 2].revents & (ZMQ_POLLIN | ZMQ_POLLERR)) {
          char drain[64];
          while (read(bulk->socket_fd(), drain, sizeof drain) > 0) {
          }
        }
      }
    }
  }

  // Which drained sockets have frames now (zmq_poll without waiting).
  void RefreshReadable() {
    zmq::pollitem_t items[kSockets] = {
        {readable[kPullSocket] || !pull_backlog.empty() ? nullptr : pull.handle(), -1, ZMQ_POLLIN, 0},
        {readable[kRouterSocket] || !has_router[kMain] ? nullptr : router[kMain].handle(), -1, ZMQ_POLLIN, 0},
        {readable[kRouterSocket + 1] || !has_router[kHeartbeat] ? nullptr : router[kHeartbeat].handle(), -1,
         ZMQ_POLLIN, 0}};
    try {
      if (zmq::poll(items, kSockets, std::chrono::milliseconds(0)) <= 0) return;
    } catch (const zmq::error_t&) {
      return;
    }
    for (int i = 0; i < kSockets; ++i)
      if (items[i].revents & ZMQ_POLLIN) readable[i] = true;
  }

  void PumpMonitors() {
    for (int i = 0; i < 3; ++i)
      if (has_monitor[i]) PumpMonitor(i);
  }

  void Bind(zmq::socket_t& s, int port, int index, const char* what) {
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::maxmsgsize, static_cast<int64_t>(o.max_message_bytes));
    s.set(zmq::sockopt::rcvhwm, o.receive_hwm);
    const std::string ep = Endpoint(o.host, port);
    try {
      s.bind(ep);
    } catch (const zmq::error_t& e) {
      throw std::runtime_error(std::string("cannot bind the ") + what + " socket on " + ep + ": " + e.what());
    }
    ports[index] = BoundPort(s);
    const std::string mon = "inproc://kvring-zmq-monitor-" + std::to_string(index);
    if (zmq_socket_monitor(s.handle(), mon.c_str(), ZMQ_EVENT_ACCEPTED | ZMQ_EVENT_DISCONNECTED) == 0) {
      monitors[index] = zmq::socket_t(ctx, zmq::socket_type::pair);
      // Read by housekeeping, not on every wait (each socket in a zmq_poll()
      // costs system calls per wake-up): room for kMonitorBacklog events
      // between two looks, where libzmq's default of 1,000 would block the
      // I/O thread that emits them under a burst of connections.
      monitors[index].set(zmq::sockopt::rcvhwm, kMonitorBacklog);
      monitors[index].connect(mon);
      has_monitor[index] = true;
    }
  }
};

Front::Front(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Front::~Front() {
  if (!impl_) return;
  impl_->stop.store(true, std::memory_order_relaxed);
  std::uint64_t one = 1;
  (void)!write(impl_->stop_fd, &one, sizeof one);
  if (impl_->thread.joinable()) impl_->thread.join();
  close(impl_->stop_fd);
}

Result<std::unique_ptr<Front>> Front::Start(const Options& options) {
  auto impl = std::make_unique<Impl>();
  Impl& f = *impl;
  f.o = options;
  if (f.o.pull_port < 0 || f.o.pull_port > 65535 || f.o.reply_port > 65535 || f.o.heartbeat_port > 65535)
    return Status(ErrorKind::kInvalidArgument, "ports must be within 0..65535 (-1: none, for reply and heartbeat)");
  if (f.o.heartbeat_port >= 0 && f.o.reply_port < 0)
    return Status(ErrorKind::kInvalidArgument, "a heartbeat socket needs the reply socket (heartbeat_url comes with RegisterRetMsg)");
  if (!(f.o.command_timeout_s > 0) || !(f.o.request_timeout_s > 0))
    return Status(ErrorKind::kInvalidArgument, "command and request timeouts must be > 0");
  for (auto* c : {&f.bulk, &f.requests}) {
    auto conn = transport::Connection::Open({f.o.controller, segment::Role::kFront, std::chrono::milliseconds(5000)});
    if (!conn.ok()) return Status(conn.status().kind(), "attaching to controller '" + f.o.controller + "': " + conn.status().message());
    *c = std::move(conn).value();
  }
  const std::size_t ring_max = std::min(f.bulk->requests().max_record(), f.requests->requests().max_record()) -
                               framing::kCorrelationIdBytes;
  if (f.o.max_message_bytes == 0 || f.o.max_message_bytes > ring_max) f.o.max_message_bytes = ring_max;
  f.advertise_heartbeat_host = f.o.advertise_host;
  try {
    f.ctx.set(zmq::ctxopt::max_sockets, static_cast<int>(f.o.max_workers + 64));
    f.pull = zmq::socket_t(f.ctx, zmq::socket_type::pull);
    f.Bind(f.pull, f.o.pull_port, 0, "PULL");
    for (int s = 0; s < 2; ++s) {
      const int port = s == kMain ? f.o.reply_port : f.o.heartbeat_port;
      if (port < 0) continue;
      f.router[s] = zmq::socket_t(f.ctx, zmq::socket_type::router);
      f.Bind(f.router[s], port, 1 + s, s == kMain ? "reply ROUTER" : "heartbeat ROUTER");
      f.has_router[s] = true;
    }
  } catch (const std::exception& e) {
    return Status(ErrorKind::kIo, e.what());
  }
  f.stop_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (f.stop_fd < 0) return Status(ErrorKind::kIo, "eventfd failed");
  Impl* raw = impl.get();
  raw->thread = std::thread([raw] {
    try {
      raw->Run();
    } catch (const std::exception& e) {  // ZeroMQ's own failures (e.g. ETERM): logged, never fatal to the daemon
      if (raw->o.log) raw->o.log(std::string("zmq: the front stopped: ") + e.what());
    }
  });
  return std::unique_ptr<Front>(new Front(std::move(impl)));
}

const Stats& Front::stats() const { return impl_->stats; }
int Front::pull_port() const { return impl_->ports[0]; }
int Front::reply_port() const { return impl_->ports[1]; }
int Front::heartbeat_port() const { return impl_->ports[2]; }

namespace {

// Every front counter once: its key in the stats JSON (`kvring stats
// --json`, "zmq"), its Prometheus series, and its slot in the segment's
// header page for `kvring inspect` (kFrontCounterNames names the slots).
struct CounterField {
  std::atomic<std::uint64_t> Stats::*member;
  const char* json_key;  // nullptr: not in the JSON
  const char* metric;    // nullptr: not in /metrics
  const char* labels;
  const char* type;
  const char* help;
  int slot;  // FrontCounter, or -1
};
constexpr const char* kRole = "{role=\"controller\"}";
constexpr CounterField kCounters[] = {
    // LMCache's socket gauges (observability.py), same names and label.
    {&Stats::pull_frames, "pull_frames_total", "lmcache:cache_controller_pull_socket_message_count", kRole, "gauge",
     "Frames received on the PULL socket", kFrontPullFrames},
    {&Stats::reply_requests, "reply_requests_total", "lmcache:cache_controller_reply_socket_message_count", kRole,
     "gauge", "Requests received on the reply ROUTER", kFrontReplyRequests},
    {&Stats::pull_has_pending, nullptr, "lmcache:cache_controller_pull_socket_has_pending", kRole, "gauge",
     "1 if PULL had more frames than one pass takes", -1},
    {&Stats::reply_has_pending, nullptr, "lmcache:cache_controller_reply_socket_has_pending", kRole, "gauge",
     "1 if the reply ROUTER had more requests than one pass takes", -1},
    {&Stats::pull_backlog_frames, nullptr, "lmcache:cache_controller_pull_socket_active_requests", kRole, "gauge",
     "PULL frames waiting for ring space", -1},
    {&Stats::requests_in_flight, "requests_in_flight", "lmcache:cache_controller_reply_socket_active_requests", kRole,
     "gauge", "ROUTER requests awaiting an answer", kFrontRequestsInFlight},
    // kvring's own.
    {&Stats::peers_connected, "peers_connected", "kvring_zmq_peers", "", "gauge",
     "TCP peers connected to the PULL and ROUTER sockets", kFrontPeers},
    {&Stats::peers_disconnected, "peers_disconnected_total", "kvring_zmq_peer_disconnects_total", "", "counter",
     "TCP peers that disconnected", kFrontPeerDisconnects},
    {&Stats::heartbeat_requests, "heartbeat_requests_total", "kvring_zmq_heartbeat_requests_total", "", "counter",
     "Requests on the heartbeat ROUTER", kFrontHeartbeatRequests},
    {&Stats::pull_bad_frames, "pull_bad_frames_total", "kvring_zmq_dropped_frames_total", "", "counter",
     "PULL frames dropped: undecodable, or not a worker event", kFrontPullBadFrames},
    {&Stats::bad_requests, "bad_requests_total", "kvring_zmq_bad_requests_total", "", "counter",
     "ROUTER requests answered ErrorMsg by the front (or dropped)", kFrontBadRequests},
    {&Stats::pull_ring_waits, "pull_ring_waits_total", "kvring_zmq_pull_ring_waits_total", "", "counter",
     "Times PULL paused for ring space", kFrontPullRingWaits},
    {&Stats::requests_expired, "requests_expired_total", "kvring_zmq_requests_expired_total", "", "counter",
     "Requests never answered within the request timeout", kFrontRequestsExpired},
    {&Stats::command_links, "command_links", "kvring_zmq_command_links", "", "gauge",
     "Workers with a command REQ socket", kFrontCommandLinks},
    {&Stats::commands_sent, "commands_sent_total", "kvring_zmq_commands_sent_total", "", "counter",
     "ControlMsgs sent to workers over REQ", kFrontCommandsSent},
    {&Stats::commands_timed_out, "commands_timed_out_total", "kvring_zmq_commands_timed_out_total", "", "counter",
     "Commands unanswered in time (REQ socket replaced)", kFrontCommandsTimedOut},
    {&Stats::replies_sent, "replies_sent_total", nullptr, "", "", "", kFrontRepliesSent},
    {&Stats::json_frames, "json_frames_total", nullptr, "", "", "", -1},
    {&Stats::commands_answered, "commands_answered_total", nullptr, "", "", "", -1},
    {&Stats::commands_unroutable, "commands_unroutable_total", nullptr, "", "", "", -1},
};
// Every inspect slot is filled by exactly one counter.
constexpr bool EverySlotOnce() {
  for (int slot = 0; slot < static_cast<int>(kFrontCounterCount); ++slot) {
    int n = 0;
    for (const CounterField& c : kCounters) n += c.slot == slot ? 1 : 0;
    if (n != 1) return false;
  }
  return true;
}
static_assert(EverySlotOnce(), "each of kFrontCounterNames needs exactly one counter");
static_assert(std::size(kCounters) == sizeof(Stats) / sizeof(std::atomic<std::uint64_t>),
              "every Stats member has a row in kCounters");

std::uint64_t ValueOf(const Stats& s, const CounterField& c) { return (s.*c.member).load(std::memory_order_relaxed); }

void PublishFrontCounters(const Stats& stats, segment::ClientCounters* to) {
  for (const CounterField& c : kCounters)
    if (c.slot >= 0) to->slot[c.slot].store(ValueOf(stats, c), std::memory_order_relaxed);
}

}  // namespace

std::string Front::StatsJson() const {
  nlohmann::json j = {{"pull_port", pull_port()}, {"reply_port", reply_port()}, {"heartbeat_port", heartbeat_port()}};
  for (const CounterField& c : kCounters)
    if (c.json_key) j[c.json_key] = ValueOf(impl_->stats, c);
  return j.dump();
}

std::string Front::MetricsText() const {
  std::string out;
  for (const CounterField& c : kCounters)
    if (c.metric)
      out += std::string("# HELP ") + c.metric + " " + c.help + "\n# TYPE " + c.metric + " " + c.type + "\n" +
             c.metric + c.labels + " " + std::to_string(ValueOf(impl_->stats, c)) + "\n";
  return out;
}

}  // namespace kvring::zmqfront
