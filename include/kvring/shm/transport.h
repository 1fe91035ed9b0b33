// How clients join a controller (the design and its reasons: docs/DESIGN.md).
//
// The controller named N listens on the abstract Unix socket "\0kvring/N"
// (SOCK_SEQPACKET). Binding it is the single-instance lock: a second live
// controller of the same name fails to bind and refuses to start; the name
// vanishes with the process, so a crash leaves no socket file behind.
//
// A client connects and sends Hello; the controller reads the client's pid
// and uid from the kernel (SO_PEERCRED), creates the client's segment
// (segment.h: a sealed memfd) and replies Welcome with the segment's
// descriptor attached (SCM_RIGHTS). The client checks the seals, maps and
// validates it. The connection then stays open and carries no data: it
// tells each side, at once, that the other has gone (EOF), and a single byte
// on it wakes a sleeping peer (the doorbells: PublishRequests, NotifyClient);
// whatever arrives is read and discarded.
//
// Thread-safety: a Listener belongs to the controller thread; a Connection
// to one client thread at a time.
#pragma once

#include <poll.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvring/shm/ring.h"
#include "kvring/shm/segment.h"
#include "kvring/status.h"

namespace kvring::transport {

struct ListenerOptions {
  std::string name = "kvring";
  std::size_t request_capacity = std::size_t{4} << 20;
  std::size_t reply_capacity = std::size_t{1} << 20;
  unsigned segment_mode = 0600;  // 0660 lets the group attach too
  bool allow_other_uids = false; // accept clients of other users (with segment_mode 0660/0666)
  std::size_t max_clients = 1024;  // attached clients; connections still handshaking do not count
  // Connections that have not sent their Hello: at most this many (the
  // oldest is closed to make room: a real client says Hello at once), each
  // closed after handshake_timeout.
  std::size_t max_pending = 64;
  std::chrono::milliseconds handshake_timeout{1000};
};

struct Client {
  std::uint64_t id = 0;
  pid_t pid = 0;
  uid_t uid = 0;
  segment::Role role = segment::Role::kWorker;
  segment::Segment segment;
  ring::Consumer requests;  // client -> controller
  ring::Producer replies;   // controller -> client
  int socket = -1;
  bool quarantined = false;
};

class Listener {
 public:
  // Binds the name (fails if a live controller holds it). Earlier, dead
  // controllers of that name left nothing behind: their segments were
  // memory files that went with their last descriptor.
  static Result<std::unique_ptr<Listener>> Start(const ListenerOptions& options);
  ~Listener();  // marks every segment closed, closes every connection and segment

  struct Events {
    std::vector<std::uint64_t> attached;
    std::vector<std::uint64_t> detached;  // their segments are already gone
    std::vector<std::string> rejected;    // handshakes refused, with the reason
  };
  // Waits up to `timeout` for handshakes and departures and handles them.
  Events Poll(std::chrono::milliseconds timeout);
  // Records a ring as quarantined (in the segment header too, for inspect).
  void Quarantine(Client& c, int ring);
  // Writes the controller heartbeat into every segment.
  void Heartbeat();
  // Marks every segment "controller sleeping" (or awake). While the mark is
  // set, clients ring the doorbell after they publish (Connection::PublishRequests).
  void SetControllerSleeping(bool sleeping);
  // One byte on the client's attach socket: wakes a client that waits in
  // poll() for commands (a worker's background ticker) without spinning.
  void NotifyClient(const Client& c);
  // Publishes c's reply ring and, if the client announced that it sleeps on
  // its socket (Connection::SleepOnSocket), rings it.
  void PublishReplies(Client& c);
  // Called with a departing client while its segment still exists, so that
  // whatever it published before it went (its last events, a DeRegisterMsg)
  // is still consumed: nothing a client committed is lost to its exit.
  void OnDeparture(std::function<void(Client&)> fn) { on_departure_ = std::move(fn); }

  const std::vector<std::unique_ptr<Client>>& clients() const { return clients_; }
  Client* Find(std::uint64_t id) const;
  const ListenerOptions& options() const { return options_; }
  std::uint64_t generation() const { return generation_; }
  // The listening socket (readable when a client connects), for a caller's epoll.
  int listen_fd() const { return listen_fd_; }
  // An eventfd another thread of this process rings to end a Poll() early
  // (the cluster's remote feed: remote_feed.h); Poll() resets it. -1: none.
  void WatchWakeFd(int eventfd) { wake_fd_ = eventfd; }

 private:
  struct PendingConnection {
    int fd = -1;
    std::chrono::steady_clock::time_point deadline;  // closed unanswered after this
    pid_t pid = 0;  // the peer's, from SO_PEERCRED at accept (read once)
    uid_t uid = 0;
  };
  Listener() = default;
  void Accept(Events* ev);
  void ExpireHandshakes(Events* ev);  // closes and forgets pending connections past their deadline
  void Handshake(const PendingConnection& p, Events* ev);
  static void Refuse(int fd, const std::string& why, Events* ev);
  void Drop(std::size_t index, Events* ev);

  ListenerOptions options_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::uint64_t generation_ = 0;
  std::uint64_t next_client_id_ = 1;
  std::vector<PendingConnection> pending_;  // connected, Hello not yet read, oldest first
  std::vector<struct pollfd> pollfds_;
  std::vector<std::unique_ptr<Client>> clients_;
  std::function<void(Client&)> on_departure_;
};

struct ConnectOptions {
  std::string name = "kvring";
  segment::Role role = segment::Role::kWorker;
  std::chrono::milliseconds timeout{2000};
  // The uid the controller must run as (SO_PEERCRED of its socket) and own
  // its segments with. Unset: $KVRING_CONTROLLER_UID if set, else this
  // process's effective uid. After a controller dies, any local user can
  // listen under its name; a client that trusted it would hand it its keys
  // and peer URLs.
  std::optional<unsigned> controller_uid = std::nullopt;
};

// The uid a client expects its controller to run as (ConnectOptions).
Result<unsigned> ExpectedControllerUid(const ConnectOptions& o);

class Connection {
 public:
  // Connects, handshakes and maps the segment, retrying until the deadline
  // (a controller that is starting up is not yet an error).
  static Result<std::unique_ptr<Connection>> Open(const ConnectOptions& options);
  ~Connection();

  ring::Producer& requests() { return requests_; }
  ring::Consumer& replies() { return replies_; }
  segment::Segment& segment() { return segment_; }
  std::uint64_t client_id() const { return client_id_; }
  // False once the controller process has gone (its end of the socket closed).
  bool ControllerAlive();
  void Heartbeat();
  // Makes every committed request visible and, if there were any and the
  // controller sleeps in poll(), wakes it with one byte on the attach socket
  // (the doorbell; a load of the segment header when it is awake). The one
  // way clients publish.
  void PublishRequests();
  // For a client that waits in poll() on socket_fd() together with other
  // descriptors (the ZeroMQ front) instead of on the reply ring's futex:
  // announces the sleep so that the controller rings the socket after it
  // publishes replies. Returns false when replies are already waiting (no
  // sleep). After poll() returns, AwakeFromSocket() withdraws the
  // announcement and, if poll() saw the socket readable (`rang`), drains the
  // doorbell bytes.
  bool SleepOnSocket();
  void AwakeFromSocket(bool rang);
  int socket_fd() const { return fd_; }

 private:
  Connection(int fd, std::uint64_t id, segment::Segment seg);
  int fd_;
  std::uint64_t client_id_;
  segment::Segment segment_;
  ring::Producer requests_;
  ring::Consumer replies_;
};

// The abstract socket address of controller `name` (for tools and tests).
std::string SocketName(const std::string& name);

}  // namespace kvring::transport
