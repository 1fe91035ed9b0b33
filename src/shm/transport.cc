#include "kvring/shm/transport.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace kvring::transport {
namespace {

constexpr std::uint64_t kHandshakeMagic = 0x4b56524e47484b31ULL;  // "KVRNGHK1"
constexpr std::uint32_t kHandshakeVersion = 1;

// Handshake messages: fixed-size, trivially copyable, one datagram each.
struct Hello {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t role;
};
struct Welcome {
  std::uint64_t magic;
  std::uint32_t version;
  std::uint32_t ok;
  std::uint64_t client_id;
  char segment_name[128];  // the segment itself comes as a descriptor (SCM_RIGHTS)
  char error[256];
};

sockaddr_un Address(const std::string& name, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::string s = SocketName(name);  // leading NUL: abstract namespace
  std::memcpy(a.sun_path, s.data(), s.size());
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + s.size());
  return a;
}

Status Errno(const std::string& what) { return Status(ErrorKind::kIo, what + ": " + std::strerror(errno)); }

void CopyString(char* dst, std::size_t cap, const std::string& s) {
  std::size_t n = std::min(cap - 1, s.size());
  std::memcpy(dst, s.data(), n);
  dst[n] = '\0';
}

std::uint64_t RealtimeNs() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// Sends one datagram carrying `pass_fd` (SCM_RIGHTS) with it when >= 0.
ssize_t SendWithFd(int socket_fd, const void* data, std::size_t size, int pass_fd) {
  iovec iov{const_cast<void*>(data), size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (pass_fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  return sendmsg(socket_fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

// Receives one datagram and at most one descriptor with it (*received, -1
// if none). Any descriptor beyond the first, or a truncated set, is closed
// and reported as an error: a peer cannot leave descriptors in this process.
ssize_t RecvWithFd(int socket_fd, void* data, std::size_t size, int* received) {
  *received = -1;
  iovec iov{data, size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(4 * sizeof(int))];
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;
  ssize_t r = recvmsg(socket_fd, &msg, MSG_CMSG_CLOEXEC);
  bool extra = (msg.msg_flags & MSG_CTRUNC) != 0;
  if (r >= 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const std::size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (std::size_t i = 0; i < n; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        if (*received < 0) *received = fd;
        else { close(fd); extra = true; }
      }
    }
  }
  if (extra) {
    if (*received >= 0) close(*received);
    *received = -1;
    errno = EBADMSG;
    return -1;
  }
  return r;
}

// For a socket that poll() reported readable: whether the peer has gone. The
// connection carries nothing after the handshake, so whatever arrives is
// read and discarded; EOF or an error means the other process is gone.
bool PeerClosed(int fd, short revents) {
  if (revents & (POLLHUP | POLLERR)) return true;
  char buf[64];
  ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
  return r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR);
}

}  // namespace

std::string SocketName(const std::string& name) { return std::string(1, '\0') + "kvring/" + name; }

// ---- Listener -------------------------------------------------------------------

Result<std::unique_ptr<Listener>> Listener::Start(const ListenerOptions& options) {
  if (Status s = segment::ValidateControllerName(options.name); !s.ok()) return s;
  std::unique_ptr<Listener> l(new Listener());
  l->options_ = options;
  l->listen_fd_ = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (l->listen_fd_ < 0) return Errno("socket");
  socklen_t len;
  sockaddr_un addr = Address(options.name, &len);
  if (bind(l->listen_fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    if (errno == EADDRINUSE)
      return Status(ErrorKind::kUnavailable,
                    "another kvring controller named '" + options.name +
                        "' is already running on this machine; stop it or choose another --name");
    return Errno("bind");
  }
  if (listen(l->listen_fd_, 128) != 0) return Errno("listen");
  l->generation_ = RealtimeNs();
  return l;
}

Listener::~Listener() {
  for (const PendingConnection& p : pending_) close(p.fd);
  for (auto& c : clients_) {
    // release: pairs with the acquire load of `state` in segment::Validate
    // (kvring inspect): whoever reads kClosed also reads the rings' last
    // positions, stored before it.
    c->segment.header()->state.store(segment::kClosed, std::memory_order_release);
    close(c->socket);
  }
  if (listen_fd_ >= 0) close(listen_fd_);
}

Client* Listener::Find(std::uint64_t id) const {
  for (const auto& c : clients_)
    if (c->id == id) return c.get();
  return nullptr;
}

Listener::Events Listener::Poll(std::chrono::milliseconds timeout) {
  Events ev;
  ExpireHandshakes(&ev);  // first, so that pending_ and the polled descriptors match below
  std::vector<pollfd>& fds = pollfds_;  // reused: no allocation per pass once sized
  fds.clear();
  fds.push_back({listen_fd_, POLLIN, 0});
  for (const PendingConnection& p : pending_) fds.push_back({p.fd, POLLIN, 0});
  for (const auto& c : clients_) fds.push_back({c->socket, POLLIN, 0});
  if (wake_fd_ >= 0) fds.push_back({wake_fd_, POLLIN, 0});  // last: the indices below stay
  int n = poll(fds.data(), fds.size(), static_cast<int>(timeout.count()));
  if (n <= 0) return ev;
  if (wake_fd_ >= 0 && fds.back().revents) {
    std::uint64_t rings;
    [[maybe_unused]] ssize_t r = read(wake_fd_, &rings, sizeof rings);  // resets the counter
  }
  // fds covers the pending and client sockets as they were before poll();
  // Handshake() appends to clients_, so work from the counts polled.
  const std::size_t polled_pending = pending_.size();
  const std::size_t polled_clients = clients_.size();
  std::vector<PendingConnection> still_pending;
  if (polled_pending) still_pending.reserve(polled_pending);
  for (std::size_t i = 0; i < polled_pending; ++i) {
    if (fds[1 + i].revents) Handshake(pending_[i], &ev);  // its Hello arrived (or it hung up)
    else still_pending.push_back(pending_[i]);
  }
  // Departures: a client socket becomes readable only at EOF (clients send
  // nothing after Hello).
  const std::size_t base = 1 + polled_pending;
  std::vector<std::uint64_t> gone;
  for (std::size_t i = 0; i < polled_clients; ++i) {
    if (fds[base + i].revents && PeerClosed(clients_[i]->socket, fds[base + i].revents))
      gone.push_back(clients_[i]->id);
  }
  pending_ = std::move(still_pending);
  if (fds[0].revents) Accept(&ev);  // new connections wait for their Hello in pending_
  for (std::uint64_t id : gone)
    for (std::size_t i = 0; i < clients_.size(); ++i)
      if (clients_[i]->id == id) { Drop(i, &ev); break; }
  return ev;
}

void Listener::Accept(Events* ev) {
  for (;;) {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) return;
    // Another user is refused before anything is kept for it.
    ucred cred{};
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0) {
      Refuse(fd, "connection refused: cannot read peer credentials", ev);
      continue;
    }
    if (!options_.allow_other_uids && cred.uid != getuid()) {
      Refuse(fd, "uid " + std::to_string(cred.uid) + " may not attach (controller runs as uid " +
                     std::to_string(getuid()) + ")", ev);
      continue;
    }
    if (clients_.size() >= options_.max_clients || options_.max_pending == 0) {
      Refuse(fd, "connection refused: " + std::to_string(options_.max_clients) + " clients attached", ev);
      continue;
    }
    if (pending_.size() >= options_.max_pending) {
      // Full of connections that said nothing yet: the oldest goes (a real
      // client says Hello right after connecting).
      ev->rejected.push_back("handshake: " + std::to_string(options_.max_pending) +
                             " connections waiting to say Hello; the oldest was closed");
      close(pending_.front().fd);
      pending_.erase(pending_.begin());
    }
    pending_.push_back({fd, std::chrono::steady_clock::now() + options_.handshake_timeout, cred.pid, cred.uid});
  }
}

void Listener::ExpireHandshakes(Events* ev) {
  if (pending_.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  std::erase_if(pending_, [&](const PendingConnection& p) {
    if (now < p.deadline) return false;
    ev->rejected.push_back("handshake timed out: no Hello within " + std::to_string(options_.handshake_timeout.count()) +
                           " ms");
    close(p.fd);
    return true;
  });
}

// Tells a connecting client why it is turned away (a Welcome with the
// reason: the client reads it in place of its welcome) and closes.
void Listener::Refuse(int fd, const std::string& why, Events* ev) {
  Welcome w{};
  w.magic = kHandshakeMagic;
  w.version = kHandshakeVersion;
  CopyString(w.error, sizeof w.error, why);
  (void)send(fd, &w, sizeof w, MSG_NOSIGNAL | MSG_DONTWAIT);
  close(fd);
  ev->rejected.push_back(why);
}

void Listener::Handshake(const PendingConnection& p, Events* ev) {
  const int fd = p.fd;
  Welcome w{};
  w.magic = kHandshakeMagic;
  w.version = kHandshakeVersion;
  auto refuse = [&](const std::string& why) { Refuse(fd, why, ev); };
  Hello h{};
  ssize_t r = recv(fd, &h, sizeof h, MSG_DONTWAIT);
  if (r != static_cast<ssize_t>(sizeof h) || h.magic != kHandshakeMagic)
    return refuse("handshake: not a kvring client");
  if (h.version != kHandshakeVersion)
    return refuse("handshake version " + std::to_string(h.version) + ", controller speaks version " +
                  std::to_string(kHandshakeVersion));
  if (h.role != static_cast<std::uint32_t>(segment::Role::kWorker) &&
      h.role != static_cast<std::uint32_t>(segment::Role::kOrchestrator) &&
      h.role != static_cast<std::uint32_t>(segment::Role::kFront))
    return refuse("handshake: unknown role " + std::to_string(h.role));

  segment::CreateOptions co;
  std::uint64_t id = next_client_id_++;
  co.name = segment::SegmentPrefix(options_.name) + std::to_string(generation_) + "." + std::to_string(id);
  co.request_capacity = options_.request_capacity;
  co.reply_capacity = options_.reply_capacity;
  co.mode = options_.segment_mode;
  co.role = static_cast<segment::Role>(h.role);
  co.client_pid = p.pid;
  co.client_start_ticks = segment::ProcessStartTicks(p.pid);
  co.client_id = id;
  co.generation = generation_;
  co.controller_name = options_.name;
  auto seg = segment::Segment::Create(co);
  if (!seg.ok()) return refuse(seg.status().message());

  w.ok = 1;
  w.client_id = id;
  CopyString(w.segment_name, sizeof w.segment_name, co.name);
  // The segment travels with the Welcome: a descriptor, never a name.
  if (SendWithFd(fd, &w, sizeof w, seg->fd()) != static_cast<ssize_t>(sizeof w)) {
    close(fd);
    ev->rejected.push_back("client pid " + std::to_string(p.pid) + " left during the handshake");
    return;
  }
  segment::Segment s = std::move(seg).value();
  void* req = s.ring_region(segment::kRequestRing);
  void* rep = s.ring_region(segment::kReplyRing);
  std::size_t req_cap = s.capacity(segment::kRequestRing), rep_cap = s.capacity(segment::kReplyRing);
  std::size_t req_rec = s.max_record(segment::kRequestRing), rep_rec = s.max_record(segment::kReplyRing);
  clients_.push_back(std::unique_ptr<Client>(new Client{
      id, p.pid, p.uid, co.role, std::move(s), ring::Consumer(req, req_cap, req_rec),
      ring::Producer(rep, rep_cap, rep_rec), fd, false}));
  ev->attached.push_back(id);
}

void Listener::Drop(std::size_t index, Events* ev) {
  auto& c = clients_[index];
  if (on_departure_) on_departure_(*c);
  // release: pairs with the acquire load in segment::Validate (as in ~Listener).
  c->segment.header()->state.store(segment::kClosed, std::memory_order_release);
  close(c->socket);
  ev->detached.push_back(c->id);
  clients_.erase(clients_.begin() + static_cast<std::ptrdiff_t>(index));
}

void Listener::Quarantine(Client& c, int ring) {
  c.quarantined = true;
  c.segment.header()->quarantined.fetch_or(1u << ring, std::memory_order_relaxed);
}

void Listener::SetControllerSleeping(bool sleeping) {
  for (auto& c : clients_)
    c->segment.header()->controller_sleeping.store(sleeping ? 1 : 0,
                                                   sleeping ? std::memory_order_seq_cst   // Dekker pair with PublishRequests
                                                            : std::memory_order_relaxed);
}

void Listener::NotifyClient(const Client& c) {
  char b = 'c';
  (void)send(c.socket, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);  // full buffer: a wake-up is pending anyway
}

void Listener::PublishReplies(Client& c) {
  // Publish() ends in a seq_cst store of the tail; this seq_cst load pairs
  // with the client's seq_cst store of client_sleeping and its load of the
  // tail (Connection::SleepOnSocket): either it sees the replies, or this
  // sees it asleep. The word is the client's to write: any value costs at
  // most one byte on its own socket.
  if (c.replies.Publish() && c.segment.header()->client_sleeping.load(std::memory_order_seq_cst) != 0)
    NotifyClient(c);
}

void Listener::Heartbeat() {
  std::uint64_t now = segment::MonotonicNs();
  for (auto& c : clients_) c->segment.header()->controller_heartbeat_ns.store(now, std::memory_order_relaxed);
}

// ---- Connection -----------------------------------------------------------------

Connection::Connection(int fd, std::uint64_t id, segment::Segment seg)
    : fd_(fd),
      client_id_(id),
      segment_(std::move(seg)),
      requests_(segment_.ring_region(segment::kRequestRing), segment_.capacity(segment::kRequestRing),
                segment_.max_record(segment::kRequestRing)),
      replies_(segment_.ring_region(segment::kReplyRing), segment_.capacity(segment::kReplyRing),
               segment_.max_record(segment::kReplyRing)) {}

Connection::~Connection() { close(fd_); }

Result<unsigned> ExpectedControllerUid(const ConnectOptions& o) {
  if (o.controller_uid) return *o.controller_uid;
  if (const char* env = std::getenv("KVRING_CONTROLLER_UID"); env && *env) {
    char* end = nullptr;
    errno = 0;
    const unsigned long uid = std::strtoul(env, &end, 10);
    if (errno != 0 || *end != '\0' || uid > 0xfffffffeul)
      return Status(ErrorKind::kInvalidArgument, std::string("KVRING_CONTROLLER_UID='") + env + "' is not a uid");
    return static_cast<unsigned>(uid);
  }
  return static_cast<unsigned>(geteuid());
}

Result<std::unique_ptr<Connection>> Connection::Open(const ConnectOptions& o) {
  if (Status s = segment::ValidateControllerName(o.name); !s.ok()) return s;
  const Result<unsigned> expected_uid = ExpectedControllerUid(o);
  if (!expected_uid.ok()) return expected_uid.status();
  const auto deadline = std::chrono::steady_clock::now() + o.timeout;
  auto left_ms = [&] {
    auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return std::max<long>(0, static_cast<long>(d.count()));
  };
  Status last;
  do {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return Errno("socket");
    socklen_t len;
    sockaddr_un addr = Address(o.name, &len);
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
      last = Status(ErrorKind::kUnavailable, "no kvring controller named '" + o.name + "' is running");
      close(fd);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min<long>(10, left_ms())));
      continue;
    }
    // Who listens under this name? Checked before anything is said to it.
    ucred peer{};
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0) {
      close(fd);
      return Errno("SO_PEERCRED");
    }
    if (peer.uid != *expected_uid) {
      close(fd);
      return Status(ErrorKind::kPermission,
                    "the controller '" + o.name + "' runs as uid " + std::to_string(peer.uid) + " (pid " +
                        std::to_string(peer.pid) + "), not the expected uid " + std::to_string(*expected_uid) +
                        ": not trusted (set ConnectOptions::controller_uid or KVRING_CONTROLLER_UID if it is right)");
    }
    Hello h{kHandshakeMagic, kHandshakeVersion, static_cast<std::uint32_t>(o.role)};
    Welcome w{};
    pollfd p{fd, POLLIN, 0};
    int segment_fd = -1;
    if (send(fd, &h, sizeof h, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof h) ||
        poll(&p, 1, static_cast<int>(left_ms())) != 1 ||
        RecvWithFd(fd, &w, sizeof w, &segment_fd) != static_cast<ssize_t>(sizeof w) || w.magic != kHandshakeMagic) {
      if (segment_fd >= 0) close(segment_fd);
      close(fd);
      last = Status(ErrorKind::kUnavailable, "controller '" + o.name + "' did not complete the handshake");
      continue;
    }
    if (!w.ok) {
      if (segment_fd >= 0) close(segment_fd);
      close(fd);
      w.error[sizeof w.error - 1] = '\0';
      return Status(ErrorKind::kUnavailable, "controller '" + o.name + "' refused: " + w.error);
    }
    w.segment_name[sizeof w.segment_name - 1] = '\0';
    if (segment_fd < 0) {
      close(fd);
      return Status(ErrorKind::kCorrupt, "controller '" + o.name + "' welcomed without a segment");
    }
    // Adopt checks the seals: a segment anyone could truncate is not mapped.
    auto seg = segment::Segment::Adopt(segment_fd);
    if (!seg.ok()) {
      close(fd);
      return seg.status();
    }
    // The segment must be the one made for this process, by that controller,
    // and writable by no one else.
    if (seg->header()->client_pid != static_cast<std::uint32_t>(getpid()) ||
        seg->header()->client_id != w.client_id) {
      close(fd);
      return Status(ErrorKind::kCorrupt, std::string("segment ") + w.segment_name + " was not made for this client");
    }
    if (seg->owner_uid() != *expected_uid || seg->header()->controller_pid != static_cast<std::uint32_t>(peer.pid) ||
        (seg->mode() & 0002) != 0) {
      close(fd);
      return Status(ErrorKind::kPermission,
                    std::string("segment ") + w.segment_name + " is owned by uid " + std::to_string(seg->owner_uid()) +
                        " with mode " + std::to_string(seg->mode()) + " and names controller pid " +
                        std::to_string(seg->header()->controller_pid) + "; expected uid " +
                        std::to_string(*expected_uid) + ", pid " + std::to_string(peer.pid) +
                        " and no write access for others: not trusted");
    }
    std::unique_ptr<Connection> c(new Connection(fd, w.client_id, std::move(seg).value()));
    c->Heartbeat();
    return c;
  } while (left_ms() > 0);
  return last;
}

bool Connection::ControllerAlive() {
  pollfd p{fd_, POLLIN, 0};
  if (poll(&p, 1, 0) == 0) return true;
  return !PeerClosed(fd_, p.revents);
}

void Connection::PublishRequests() {
  // Nothing new: nothing to ring for (the publish that made the earlier
  // records visible paired with the controller's sleep already; ringing on
  // every call cost a system call per pass of a polling caller).
  if (!requests_.Publish()) return;
  // seq_cst: pairs with Listener::SetControllerSleeping; the publish above
  // is a seq_cst store, so either this load sees the controller asleep or
  // the controller's check of the ring (after its store) sees the record.
  if (segment_.header()->controller_sleeping.load(std::memory_order_seq_cst) != 0) {
    char b = 'd';
    (void)send(fd_, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL);  // full buffer: a wake-up is pending anyway
  }
}

bool Connection::SleepOnSocket() {
  // seq_cst: pairs with Listener::PublishReplies (Dekker).
  segment_.header()->client_sleeping.store(1, std::memory_order_seq_cst);
  if (replies_.HasData()) {
    segment_.header()->client_sleeping.store(0, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void Connection::AwakeFromSocket(bool rang) {
  segment_.header()->client_sleeping.store(0, std::memory_order_relaxed);  // a hint: a late ring costs one byte
  if (!rang) return;
  char drain[64];
  while (recv(fd_, drain, sizeof drain, MSG_DONTWAIT) > 0) {
  }
}

void Connection::Heartbeat() {
  segment_.header()->client_heartbeat_ns.store(segment::MonotonicNs(), std::memory_order_relaxed);
}

}  // namespace kvring::transport
