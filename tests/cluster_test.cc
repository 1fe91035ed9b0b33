// The cluster layer: the change feed's records and the delta messages (their
// validation against garbage), and the publisher against a real nats-server
// (JetStream, started here on 127.0.0.1) with a real controller and a real
// worker process: what the stream holds is read back with a JetStream
// consumer and compared with what the worker did.
#include "kvring/cluster/delta_message.h"
#include "kvring/cluster/publisher.h"
#include "kvring/cluster/subscriber.h"
#include "kvring/controller/controller.h"
#include "kvring/shm/framing.h"
#include "support/small_controller.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nats/nats.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

namespace kvring::cluster {
namespace {

using namespace std::chrono_literals;
using namespace kvring::protocol;
using Clock = std::chrono::steady_clock;

std::vector<std::uint8_t> Bytes(std::span<const std::uint8_t> s) { return {s.begin(), s.end()}; }

// Every record the feed holds, copied out.
std::vector<std::vector<std::uint8_t>> DrainAll(feed::ChangeFeed& f) {
  std::vector<std::vector<std::uint8_t>> out;
  f.Drain(SIZE_MAX, SIZE_MAX, [&](std::span<const std::uint8_t> r) { out.push_back(Bytes(r)); });
  return out;
}

TEST(ChangeFeed, RecordsDecodeAsWrittenAndLongBatchesAreSplit) {
  auto f = feed::ChangeFeed::Create(1 << 22);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  feed::ChangeFeed& feed = **f;
  ASSERT_TRUE(feed.HolderUp(7, -3, "inst", "LocalCPUBackend", std::string_view("10.0.0.1:8200")));
  std::vector<KVOpEvent> ops;
  for (std::uint64_t k = 0; k < feed::kMaxKeysPerRecord + 5; ++k)
    ops.push_back({k % 3 ? OpType::kAdmit : OpType::kEvict, Int::FromU64(~k), Int(0)});
  ASSERT_TRUE(feed.Keys(7, ops));
  ASSERT_TRUE(feed.HolderDown(7));
  feed.Publish();
  auto records = DrainAll(feed);
  ASSERT_EQ(records.size(), 4u);  // up, two key records (8192 + 5), down
  EXPECT_EQ(feed.records(), 4u);
  feed::Change c;
  ASSERT_TRUE(feed::DecodeChange(records[0], &c).ok());
  EXPECT_EQ(c.kind, feed::ChangeKind::kHolderUp);
  EXPECT_EQ(c.holder, 7u);
  EXPECT_EQ(c.worker_id, -3);
  EXPECT_EQ(c.instance_id, "inst");
  EXPECT_EQ(c.location, "LocalCPUBackend");
  EXPECT_EQ(c.peer_init_url, "10.0.0.1:8200");
  std::size_t seen = 0;
  for (int r : {1, 2}) {
    ASSERT_TRUE(feed::DecodeChange(records[r], &c).ok());
    ASSERT_EQ(c.kind, feed::ChangeKind::kKeys);
    for (std::size_t i = 0; i < c.count; ++i, ++seen) {
      EXPECT_EQ(c.KeyAt(i), ~std::uint64_t{seen});
      EXPECT_EQ(c.OpAt(i), seen % 3 ? OpType::kAdmit : OpType::kEvict);
    }
  }
  EXPECT_EQ(seen, ops.size());
  ASSERT_TRUE(feed::DecodeChange(records[3], &c).ok());
  EXPECT_EQ(c.kind, feed::ChangeKind::kHolderDown);
}

TEST(ChangeFeed, AFullFeedCountsOverflowsAndTurnsLost) {
  auto f = feed::ChangeFeed::Create(1 << 12);  // 4 KiB: a few records
  ASSERT_TRUE(f.ok());
  feed::ChangeFeed& feed = **f;
  std::size_t written = 0;
  for (int i = 0; i < 1000; ++i) written += feed.Key(1, OpType::kAdmit, i);
  EXPECT_LT(written, 1000u);
  EXPECT_EQ(feed.records(), written);
  EXPECT_EQ(feed.overflows(), 1000u - written);
  EXPECT_TRUE(feed.lost());
  feed.Publish();
  EXPECT_EQ(DrainAll(feed).size(), written);  // what was written is intact
}

std::vector<std::uint8_t> ValidMessage() {
  auto f = feed::ChangeFeed::Create(1 << 16);
  (void)(*f)->HolderUp(1, 0, "A", "LocalCPUBackend", std::nullopt);
  (void)(*f)->Key(1, OpType::kAdmit, 42);
  (void)(*f)->HolderDown(1);
  (*f)->Publish();
  DeltaWriter w;
  w.Begin(0xfeed, 1);
  for (auto& r : DrainAll(**f)) w.Add(r);
  return Bytes(w.Finish());
}

TEST(DeltaMessage, AValidMessageDecodesAndGarbageIsRefusedWhole) {
  const std::vector<std::uint8_t> good = ValidMessage();
  DeltaHeader h;
  std::vector<feed::ChangeKind> kinds;
  ASSERT_TRUE(DecodeDeltaMessage(good, &h, [&](const feed::Change& c, auto) { kinds.push_back(c.kind); }).ok());
  EXPECT_EQ(h.epoch, 0xfeedu);
  EXPECT_EQ(h.first_seq, 1u);
  EXPECT_EQ(kinds, (std::vector<feed::ChangeKind>{feed::ChangeKind::kHolderUp, feed::ChangeKind::kKeys,
                                                  feed::ChangeKind::kHolderDown}));
  // Every truncation, every single-byte corruption of the header and record
  // framing, absurd counts: an error, and no record handed on (all or none).
  int calls = 0;
  auto count = [&](const feed::Change&, auto) { ++calls; };
  for (std::size_t n = 0; n < good.size(); ++n)
    EXPECT_FALSE(DecodeDeltaMessage(std::span(good).first(n), &h, count).ok()) << "truncated to " << n;
  auto with = [&](std::size_t at, std::uint8_t v) {
    auto b = good;
    b[at] = v;
    return b;
  };
  EXPECT_FALSE(DecodeDeltaMessage(with(0, 'X'), &h, count).ok());                  // magic
  EXPECT_FALSE(DecodeDeltaMessage(with(4, 200), &h, count).ok());                  // 200 records
  EXPECT_FALSE(DecodeDeltaMessage(with(7, 0xff), &h, count).ok());                 // 4 G records
  auto zero_epoch = good;
  std::fill(zero_epoch.begin() + 8, zero_epoch.begin() + 16, 0);
  EXPECT_FALSE(DecodeDeltaMessage(zero_epoch, &h, count).ok());
  EXPECT_FALSE(DecodeDeltaMessage(with(kDeltaHeaderBytes + 3, 0x7f), &h, count).ok());  // a 2 GB record length
  EXPECT_FALSE(DecodeDeltaMessage(with(kDeltaHeaderBytes + 4, 9), &h, count).ok());     // unknown kind
  auto trailing = good;
  trailing.push_back(0);
  EXPECT_FALSE(DecodeDeltaMessage(trailing, &h, count).ok());
  // The keys record's op bits (one key: one byte, bit 0): an evict is fine,
  // a bit past the last key is not.
  std::uint32_t up_bytes;
  std::memcpy(&up_bytes, good.data() + kDeltaHeaderBytes, 4);
  const std::size_t keys_at = kDeltaHeaderBytes + 4 + up_bytes + 4;
  ASSERT_EQ(good[keys_at], static_cast<std::uint8_t>(feed::ChangeKind::kKeys));
  const std::size_t op_at = keys_at + feed::kRecordHeadBytes + 4 + 8;
  ASSERT_EQ(good[op_at], 0);  // the admit
  EXPECT_EQ(calls, 0);
  std::vector<protocol::OpType> ops;
  ASSERT_TRUE(DecodeDeltaMessage(with(op_at, 1), &h, [&](const feed::Change& c, auto) {
                if (c.kind == feed::ChangeKind::kKeys) ops.push_back(c.OpAt(0));
              }).ok());
  EXPECT_EQ(ops, std::vector<protocol::OpType>{OpType::kEvict});
  EXPECT_FALSE(DecodeDeltaMessage(with(op_at, 2), &h, count).ok());
  EXPECT_FALSE(DecodeDeltaMessage(with(op_at, 0x80), &h, count).ok());
  EXPECT_EQ(calls, 0);
}

// ---- the controller applying other nodes' records (no NATS: the remote feed directly) ----

// Change records, encoded by the feed's own writer.
struct Records {
  std::unique_ptr<feed::ChangeFeed> f = std::move(feed::ChangeFeed::Create(1 << 20)).value();
  std::vector<std::uint8_t> Up(std::uint32_t h, const std::string& inst, const std::string& peer) {
    (void)f->HolderUp(h, 0, inst, "LocalCPUBackend", std::string_view(peer));
    return One();
  }
  std::vector<std::uint8_t> Admit(std::uint32_t h, std::vector<std::uint64_t> keys) {
    std::vector<Int> k;
    for (auto x : keys) k.push_back(Int::FromU64(x));
    (void)f->Admits(h, k);
    return One();
  }
  std::vector<std::uint8_t> Evict(std::uint32_t h, std::uint64_t key) {
    (void)f->Key(h, OpType::kEvict, key);
    return One();
  }
  std::vector<std::uint8_t> Down(std::uint32_t h) {
    (void)f->HolderDown(h);
    return One();
  }
  std::vector<std::uint8_t> One() {
    f->Publish();
    auto all = DrainAll(*f);
    return all.at(0);
  }
};

struct RemoteFixture {
  std::unique_ptr<feed::RemoteFeed> remote = std::move(feed::RemoteFeed::Create(1 << 20)).value();
  std::unique_ptr<controller::Controller> ctl;
  explicit RemoteFixture(const std::string& name) {
    controller::Options o;
    o.listen.name = name;
    o.full_sync_on_start = false;
    o.remote_feed = remote.get();
    ctl = std::move(controller::Controller::Start(o)).value();
  }
  void Push(const std::string& node, std::uint64_t epoch, std::uint64_t seq, const std::vector<std::uint8_t>& rec) {
    ASSERT_TRUE(remote->Push(node, epoch, seq, rec));
    remote->Publish();
    ctl->PollOnce();
  }
  // Whether the controller's index has `key` at the remote holder of (node, inst).
  bool Holds(const std::string& node, const std::string& inst, std::uint64_t key) {
    auto w = ctl->registry().FindRemote(node, inst, 0);
    if (!w) return false;
    auto h = ctl->registry().FindHolder(*w, "LocalCPUBackend");
    return h && ctl->index().Contains(key, *h);
  }
};

TEST(RemoteHolders, ANodesHoldersAndKeysAreAppliedAndRetired) {
  RemoteFixture t("rh" + std::to_string(getpid()) + "a");
  Records r;
  t.Push("n1", 5, 1, r.Up(3, "A", "a:8200"));
  t.Push("n1", 5, 2, r.Admit(3, {11, 12, 13}));
  t.Push("n1", 5, 3, r.Evict(3, 12));
  EXPECT_TRUE(t.Holds("n1", "A", 11));
  EXPECT_FALSE(t.Holds("n1", "A", 12));
  EXPECT_TRUE(t.Holds("n1", "A", 13));
  // A remote worker is not a local one: no local message can speak for it.
  EXPECT_FALSE(t.ctl->registry().Find("A", 0));
  auto w = t.ctl->registry().FindRemote("n1", "A", 0);
  ASSERT_TRUE(w);
  EXPECT_EQ(t.ctl->registry().worker(*w).peer_init_url, std::optional<std::string>("a:8200"));
  EXPECT_EQ(t.ctl->stats().remote_kv_ops, 4u);
  t.Push("n1", 5, 4, r.Down(3));
  EXPECT_FALSE(t.ctl->registry().FindRemote("n1", "A", 0));  // its last holder gone: the worker too
  for (int i = 0; i < 10 && t.ctl->index().pairs() != 0; ++i) t.ctl->PollOnce();
  EXPECT_EQ(t.ctl->index().pairs(), 0u);
  EXPECT_EQ(t.ctl->stats().remote_refused, 0u);
  EXPECT_EQ(t.ctl->stats().remote_seq_gaps, 0u);
}

TEST(RemoteHolders, ANewEpochDropsTheOldOneAndStaleOrUnknownRecordsAreRefused) {
  RemoteFixture t("rh" + std::to_string(getpid()) + "b");
  Records r;
  t.Push("n1", 5, 1, r.Up(3, "A", "a:8200"));
  t.Push("n1", 5, 2, r.Admit(3, {11}));
  // The node restarts (a newer epoch): what it said before is void.
  t.Push("n1", 9, 1, r.Up(4, "A", "a:8201"));
  EXPECT_EQ(t.ctl->stats().remote_node_restarts, 1u);
  EXPECT_FALSE(t.Holds("n1", "A", 11));
  t.Push("n1", 9, 2, r.Admit(4, {21}));
  EXPECT_TRUE(t.Holds("n1", "A", 21));
  EXPECT_EQ(t.ctl->registry().worker(*t.ctl->registry().FindRemote("n1", "A", 0)).peer_init_url,
            std::optional<std::string>("a:8201"));
  const auto refused = t.ctl->stats().remote_refused;
  t.Push("n1", 5, 3, r.Admit(3, {99}));    // the old process, still publishing: stale
  t.Push("n1", 9, 3, r.Admit(77, {98}));   // a holder the node never announced
  t.Push("n1", 9, 9, r.Admit(4, {22}));    // applied, but a gap (4..8 missing) is counted
  t.Push("n1", 9, 2, r.Evict(4, 21));      // delivered again (an old sequence number): skipped
  EXPECT_EQ(t.ctl->stats().remote_refused, refused + 2);
  EXPECT_EQ(t.ctl->stats().remote_seq_gaps, 1u);
  EXPECT_EQ(t.ctl->stats().remote_duplicates, 1u);
  EXPECT_TRUE(t.Holds("n1", "A", 21));
  EXPECT_FALSE(t.Holds("n1", "A", 99));
  EXPECT_TRUE(t.Holds("n1", "A", 22));
  // Undecodable change records are refused, not applied.
  t.Push("n1", 9, 10, std::vector<std::uint8_t>{3, 4, 0, 0, 0, 200, 0, 0, 0});
  EXPECT_EQ(t.ctl->stats().remote_refused, refused + 3);
  // The node's lease expired: all of its holders go.
  ASSERT_TRUE(t.remote->Gone("n1"));
  t.remote->Publish();
  t.ctl->PollOnce();
  EXPECT_EQ(t.ctl->stats().remote_nodes_gone, 1u);
  EXPECT_FALSE(t.ctl->registry().FindRemote("n1", "A", 0));
}

// ---- against a real nats-server ---------------------------------------------------

int FreePort() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || getsockname(s, reinterpret_cast<sockaddr*>(&a), &len)) {
    close(s);
    return -1;
  }
  close(s);
  return ntohs(a.sin_port);
}

// A nats-server with JetStream on 127.0.0.1:port, its store in a fresh folder.
class NatsServer {
 public:
  explicit NatsServer(int port) : port_(port) {
    dir_ = std::filesystem::temp_directory_path() / ("kvring-nats-" + std::to_string(getpid()) + "-" + std::to_string(port));
    std::filesystem::create_directories(dir_);
  }
  ~NatsServer() {
    Stop();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  // Starts it and waits (bounded) until it accepts connections.
  bool Start() {
    // Everything the child needs is made before fork(): a child of a
    // threaded process may only make async-signal-safe calls until exec
    // (an allocation could wait forever on a lock another thread held).
    const std::string port = std::to_string(port_), store = dir_.string();
    const int null = open("/dev/null", O_WRONLY | O_CLOEXEC);  // its log stays out of the test's
    pid_ = fork();
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      dup2(null, 1);
      dup2(null, 2);
      execlp(KVRING_NATS_SERVER, KVRING_NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", port.c_str(), "-sd", store.c_str(),
             static_cast<char*>(nullptr));
      _exit(127);
    }
    close(null);
    for (auto deadline = Clock::now() + 10s; Clock::now() < deadline;) {
      natsConnection* nc = nullptr;
      if (natsConnection_ConnectTo(&nc, url().c_str()) == NATS_OK) {
        natsConnection_Destroy(nc);
        return true;
      }
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) return false;  // it died
    }
    return false;
  }
  void Stop() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
  }
  std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

 private:
  int port_;
  pid_t pid_ = -1;
  std::filesystem::path dir_;
};

// The test's own connection to a nats-server, with its JetStream context.
struct JetStreamClient {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  explicit JetStreamClient(const std::string& url) {
    EXPECT_EQ(natsConnection_ConnectTo(&nc, url.c_str()), NATS_OK);
    EXPECT_EQ(natsConnection_JetStream(&js, nc, nullptr), NATS_OK);
  }
  ~JetStreamClient() {
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  JetStreamClient(const JetStreamClient&) = delete;
  JetStreamClient& operator=(const JetStreamClient&) = delete;
};

// Reads a cluster stream from its start with an ordered JetStream consumer.
class StreamReader {
 public:
  StreamReader(const std::string& url, const std::string& cluster) : client_(url) {
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Ordered = true;
    so.Stream = nullptr;
    jsErrCode jerr;
    const std::string subject = "kvring." + cluster + ".>";
    EXPECT_EQ(js_SubscribeSync(&sub_, client_.js, subject.c_str(), nullptr, &so, &jerr), NATS_OK) << jerr;
  }
  ~StreamReader() { natsSubscription_Destroy(sub_); }
  // Reads messages until done() or the deadline; each message is decoded
  // (it must be valid) and its records handed to on_record.
  bool ReadUntil(const std::function<bool()>& done,
                 const std::function<void(const DeltaHeader&, const feed::Change&)>& on_record) {
    for (auto deadline = Clock::now() + 20s; !done();) {
      if (Clock::now() > deadline) return false;
      natsMsg* m = nullptr;
      if (natsSubscription_NextMsg(&m, sub_, 200) != NATS_OK) continue;  // bounded wait for the next one
      std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(natsMsg_GetData(m)),
                                          static_cast<std::size_t>(natsMsg_GetDataLength(m)));
      DeltaHeader h;
      Status s = DecodeDeltaMessage(bytes, &h, [&](const feed::Change& c, auto) { on_record(h, c); });
      EXPECT_TRUE(s.ok()) << s.ToString();
      natsMsg_Destroy(m);
    }
    return true;
  }

 private:
  JetStreamClient client_;
  natsSubscription* sub_ = nullptr;
};

// What a node's stream says about its holders, rebuilt record by record.
struct Replica {
  std::uint64_t epoch = 0, next_seq = 1, records = 0;
  bool in_order = true;
  struct Holder {
    std::string instance, location, peer;
    std::set<std::uint64_t> keys;
  };
  std::map<std::uint32_t, Holder> holders;
  int ups = 0, downs = 0, resyncs = 0, resync_ends = 0;
  std::uint64_t message_first = 0, index_in_message = 0;
  void Apply(const DeltaHeader& h, const feed::Change& c) {
    if (epoch == 0) epoch = h.epoch;
    if (h.epoch != epoch) in_order = false;
    if (h.first_seq != message_first) {  // the first record of a message
      message_first = h.first_seq;
      index_in_message = 0;
    }
    // Records numbered 1, 2, ... across messages, none missing, none twice.
    if (h.first_seq + index_in_message++ != next_seq++) in_order = false;
    ++records;
    switch (c.kind) {
      case feed::ChangeKind::kHolderUp:
        ++ups;
        if (auto it = holders.find(c.holder); it != holders.end() && it->second.instance == c.instance_id &&
                                              it->second.location == c.location && it->second.peer == c.peer_init_url)
          break;  // a dump repeating a holder: its keys stay
        holders[c.holder] = {std::string(c.instance_id), std::string(c.location), std::string(c.peer_init_url), {}};
        break;
      case feed::ChangeKind::kHolderDown:
        ++downs;
        holders.erase(c.holder);
        break;
      case feed::ChangeKind::kKeys:
        for (std::size_t i = 0; i < c.count; ++i)
          c.OpAt(i) == OpType::kAdmit ? (void)holders[c.holder].keys.insert(c.KeyAt(i))
                                      : (void)holders[c.holder].keys.erase(c.KeyAt(i));
        break;
      case feed::ChangeKind::kResync:  // a forced dump replaces what came before
        ++resyncs;
        if (c.forced) holders.clear();
        break;
      case feed::ChangeKind::kResyncEnd:
        ++resync_ends;
        break;
    }
  }
};

const std::string kPid = std::to_string(getpid());

controller::Options Small(const std::string& name, feed::ChangeFeed* f) {
  controller::Options o = testing::SmallController(name);
  o.change_feed = f;
  return o;
}

// A worker process: registers A/0 with a peer URL, admits 1..n, evicts the
// even ones, exits (the controller then retires its holder). Forked before
// the test starts any thread (a child forked from a threaded process may
// inherit a lock another thread held, e.g. ASan's allocator's: seen as a
// hang), it waits for Go() before it does anything.
struct WorkerChild {
  pid_t pid = -1;
  int go = -1;  // write end: one byte starts the worker
  void Go() {
    ASSERT_EQ(write(go, "g", 1), 1);
    close(go);
  }
  // Its exit status, or -1 if it did not exit within the bound (then killed).
  int Wait() {
    for (auto deadline = Clock::now() + 30s; Clock::now() < deadline;) {
      int status;
      if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      std::this_thread::sleep_for(10ms);  // polling a process's exit, bounded
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    return -1;
  }
};

WorkerChild SpawnWorker(const std::string& name, int n) {
  int go[2];
  if (pipe2(go, O_CLOEXEC) != 0) return {};
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(go[1]);
    char byte;
    if (read(go[0], &byte, 1) != 1) _exit(99);  // the test ended before it said go
    auto c = transport::Connection::Open({name, segment::Role::kWorker, 5000ms});
    if (!c.ok()) _exit(100);
    auto send = [&](const Message& m) {
      std::string b = Encode(m);
      ring::ClaimResult r;
      while ((r = (*c)->requests().TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()},
                                            framing::kMessage)) == ring::ClaimResult::kFull)
        (void)(*c)->requests().WaitForSpace(b.size(), 1s);
      if (r != ring::ClaimResult::kOk) _exit(101);
      (*c)->PublishRequests();
    };
    send(RegisterMsg{"A", Int(0), "127.0.0.1", Int(8000), std::string("nodeA:8200")});
    // Batches of 200 ops (a record must fit in a quarter of the 64 KiB request ring).
    std::int64_t seq = 0;
    auto batches = [&](OpType op, int first, int step) {
      BatchedKVOperationMsg m{"A", Int(0), "LocalCPUBackend", {}};
      for (int k = first; k <= n; k += step) {
        m.operations.push_back({op, Int(k), Int::FromI64(seq++)});
        if (m.operations.size() == 200 || k + step > n) {
          send(m);
          m.operations.clear();
        }
      }
    };
    batches(OpType::kAdmit, 1, 1);
    batches(OpType::kEvict, 2, 2);
    send(DeRegisterMsg{"A", Int(0), "127.0.0.1", Int(8000)});
    _exit(0);  // the controller drains a departed client's ring (test EventsPublishedJustBeforeAWorkerExits...)
  }
  close(go[0]);
  return {pid, go[1]};
}

void RunUntil(controller::Controller& ctl, const std::function<bool()>& done) {
  for (auto deadline = Clock::now() + 20s; !done() && Clock::now() < deadline;) ctl.PollOnce(1ms);
}

// One node's publishing side, on a nats-server of the test's own: its
// options, its change feed and its publisher.
struct PublishingNode {
  NatsServer nats{FreePort()};
  PublisherOptions po;
  std::unique_ptr<feed::ChangeFeed> feed;
  std::unique_ptr<Publisher> pub;
  // Starts the publisher of `node` in `cluster` (and first nats-server,
  // unless `nats_up` is false: NATS comes later or never).
  std::size_t feed_bytes = 1 << 20;
  ::testing::AssertionResult Start(const std::string& cluster, const std::string& node, bool nats_up = true) {
    if (nats_up && !nats.Start()) return ::testing::AssertionFailure() << "nats-server did not start";
    auto f = feed::ChangeFeed::Create(feed_bytes);
    if (!f.ok()) return ::testing::AssertionFailure() << f.status().ToString();
    feed = std::move(f).value();
    po.nats_url = nats.url();
    po.cluster = cluster;
    po.node = node;
    auto p = Publisher::Start(po, feed.get());
    if (!p.ok()) return ::testing::AssertionFailure() << p.status().ToString();
    pub = std::move(p).value();
    return ::testing::AssertionSuccess();
  }
};

// The remote feed's doorbell: a push rings the eventfd only when the
// controller announced that it sleeps, and a controller about to sleep with
// a record waiting is told not to.
TEST(RemoteFeed, APushWakesAControllerAsleepInItsPoll) {
  auto rf = std::move(feed::RemoteFeed::Create(1 << 16)).value();
  Records r;
  pollfd p{rf->wake_fd(), POLLIN, 0};
  ASSERT_TRUE(rf->Push("n1", 1, 1, r.Down(1)));
  rf->Publish();
  EXPECT_EQ(poll(&p, 1, 0), 0) << "nobody sleeps: no system call, no ring";
  EXPECT_FALSE(rf->PrepareToSleep()) << "a record is waiting: the controller must not sleep";
  rf->Awake();
  EXPECT_EQ(rf->Drain(SIZE_MAX, SIZE_MAX, [](auto) {}), 1u);
  ASSERT_TRUE(rf->PrepareToSleep());
  std::thread subscriber([&] {
    ASSERT_TRUE(rf->Push("n1", 1, 2, r.Down(1)));
    rf->Publish();
  });
  // Woken by the push, not by the poll's own (10 s) timeout.
  EXPECT_EQ(poll(&p, 1, 10000), 1);
  subscriber.join();
  rf->Awake();
  EXPECT_TRUE(rf->HasRecord());
}

// A node's dumps, as another controller applies them: a forced one replaces
// what it had of the node; a snapshot changes nothing for a controller that
// missed no record (its holder-ups repeat known holders, its keys known
// keys) and replaces everything for one that missed some.
TEST(RemoteHolders, DumpsReplaceWhatWasMissedAndRepeatWhatWasNot) {
  RemoteFixture t("rh" + std::to_string(getpid()) + "c");
  Records r;
  auto resync = [&](bool forced) {
    (void)r.f->Resync(forced);
    return r.One();
  };
  t.Push("n1", 5, 1, r.Up(3, "A", "a:8200"));
  t.Push("n1", 5, 2, r.Admit(3, {11, 12}));
  // A snapshot, in sync: nothing is dropped while it repeats the state.
  t.Push("n1", 5, 3, resync(false));
  EXPECT_TRUE(t.Holds("n1", "A", 11));
  t.Push("n1", 5, 4, r.Up(3, "A", "a:8200"));
  EXPECT_TRUE(t.Holds("n1", "A", 12)) << "a repeated holder-up keeps the holder's keys";
  t.Push("n1", 5, 5, r.Admit(3, {11, 12}));
  EXPECT_EQ(t.ctl->stats().remote_resyncs, 0u);
  // Records 6..7 go missing (key 12 evicted there, say); the next snapshot
  // replaces what this controller has of the node.
  t.Push("n1", 5, 8, resync(false));
  EXPECT_EQ(t.ctl->stats().remote_resyncs, 1u);
  EXPECT_FALSE(t.Holds("n1", "A", 11));
  t.Push("n1", 5, 9, r.Up(3, "A", "a:8200"));
  t.Push("n1", 5, 10, r.Admit(3, {11}));
  EXPECT_TRUE(t.Holds("n1", "A", 11));
  EXPECT_FALSE(t.Holds("n1", "A", 12));
  // In sync again: the next snapshot is a repeat.
  t.Push("n1", 5, 11, resync(false));
  EXPECT_TRUE(t.Holds("n1", "A", 11));
  EXPECT_EQ(t.ctl->stats().remote_resyncs, 1u);
  // A forced dump (the node lost its feed) replaces everything, in sync or not.
  t.Push("n1", 5, 12, resync(true));
  EXPECT_EQ(t.ctl->stats().remote_resyncs, 2u);
  EXPECT_FALSE(t.ctl->registry().FindRemote("n1", "A", 0));
  // A joiner that first hears of a node in the middle of an epoch (the
  // stream was cut at a dump) waits for the dump: the records before it are
  // applied, and the dump resets them.
  t.Push("n2", 7, 40, r.Up(1, "B", "b:8200"));
  t.Push("n2", 7, 41, r.Admit(1, {5}));
  t.Push("n2", 7, 42, resync(false));
  EXPECT_FALSE(t.Holds("n2", "B", 5));
  EXPECT_EQ(t.ctl->stats().remote_resyncs, 3u);
  // A joiner whose first record of a node names a holder whose holder-up it
  // never saw (aged out of the stream, or cut): skipped and counted as such,
  // not refused, until the dump; after the dump such a record is refused.
  const auto refused = t.ctl->stats().remote_refused;
  t.Push("n3", 9, 70, r.Admit(2, {6}));
  t.Push("n3", 9, 71, r.Evict(2, 6));
  EXPECT_EQ(t.ctl->stats().remote_before_dump, 2u);
  EXPECT_EQ(t.ctl->stats().remote_refused, refused);
  t.Push("n3", 9, 72, resync(false));
  t.Push("n3", 9, 73, r.Up(2, "C", "c:8200"));
  t.Push("n3", 9, 74, r.Admit(2, {6}));
  EXPECT_TRUE(t.Holds("n3", "C", 6));
  t.Push("n3", 9, 75, r.Admit(4, {7}));
  EXPECT_EQ(t.ctl->stats().remote_refused, refused + 1) << "in sync, an unknown holder is an error";
  EXPECT_EQ(t.ctl->stats().remote_before_dump, 2u);
}

// A worker in the test's own process, driving the controller one pass per
// batch: registers A/0 and admits and evicts (the keys it holds in `held`).
struct LocalWorker {
  controller::Controller& ctl;
  std::unique_ptr<transport::Connection> conn;
  std::function<void()> after_pass;
  std::set<std::uint64_t> held;
  std::uint64_t next_key = 1;
  std::int64_t seq = 0;
  std::mt19937_64 rng{11};
  LocalWorker(controller::Controller& c, const std::string& name) : ctl(c) {
    std::thread opener([&] {
      if (auto r = transport::Connection::Open({name, segment::Role::kWorker, 5000ms}); r.ok()) conn = std::move(r).value();
    });
    for (auto deadline = Clock::now() + 20s; ctl.listener().clients().size() < 1 && Clock::now() < deadline;)
      ctl.PollOnce(1ms);
    opener.join();
  }
  void Send(const Message& m) {
    const std::string b = Encode(m);
    ASSERT_EQ(conn->requests().TryWrite({reinterpret_cast<const std::uint8_t*>(b.data()), b.size()}, framing::kMessage),
              ring::ClaimResult::kOk);
    conn->PublishRequests();
    ctl.PollOnce();
    if (after_pass) after_pass();
  }
  void Register() { Send(RegisterMsg{"A", Int(0), "127.0.0.1", Int(8000), std::string("a:8200")}); }
  // One batch: `evicts` held keys (spread over the list), then `admits` new ones.
  void Churn(int admits, int evicts) {
    BatchedKVOperationMsg m{"A", Int(0), "LocalCPUBackend", {}};
    for (int i = 0; i < evicts && !held.empty(); ++i) {
      auto it = held.lower_bound(1 + rng() % next_key);
      if (it == held.end()) it = held.begin();
      m.operations.push_back({OpType::kEvict, Int::FromU64(*it), Int::FromI64(seq++)});
      held.erase(it);
    }
    for (int i = 0; i < admits; ++i) {
      m.operations.push_back({OpType::kAdmit, Int::FromU64(next_key), Int::FromI64(seq++)});
      held.insert(next_key++);
    }
    Send(m);
  }
  // The controller's own view of A/0's keys.
  std::set<std::uint64_t> Indexed() const {
    std::set<std::uint64_t> keys;
    auto w = ctl.registry().Find("A", 0);
    auto h = w ? ctl.registry().FindHolder(*w, "LocalCPUBackend") : std::nullopt;
    if (h) ctl.index().ForEachKeyOf(*h, [&](std::uint64_t k) { keys.insert(k); });
    return keys;
  }
};

// The holders a change-feed reader rebuilds: every record applied in order
// (an in-sync reader), or only from the first kResync on (a joiner, as after
// the stream was cut at a dump).
struct FeedState {
  bool joiner = false;
  bool started = false;
  std::map<std::uint32_t, std::set<std::uint64_t>> keys;
  int resync_ends = 0;
  void Apply(std::span<const std::uint8_t> bytes) {
    feed::Change c;
    ASSERT_TRUE(feed::DecodeChange(bytes, &c).ok());
    if (c.kind == feed::ChangeKind::kResync) {
      started = true;
      if (c.forced || joiner) keys.clear();
      return;
    }
    if (joiner && !started) return;
    switch (c.kind) {
      case feed::ChangeKind::kHolderUp:
        keys.try_emplace(c.holder);  // a repeat (the dump's) keeps the keys
        break;
      case feed::ChangeKind::kHolderDown:
        keys.erase(c.holder);
        break;
      case feed::ChangeKind::kKeys:
        ASSERT_TRUE(keys.count(c.holder)) << "keys for a holder not up: " << c.holder;
        for (std::size_t i = 0; i < c.count; ++i)
          c.OpAt(i) == OpType::kAdmit ? (void)keys[c.holder].insert(c.KeyAt(i))
                                      : (void)keys[c.holder].erase(c.KeyAt(i));
        break;
      case feed::ChangeKind::kResyncEnd:
        ++resync_ends;
        break;
      case feed::ChangeKind::kResync:
        break;
    }
  }
};

// A dump asked for while a worker keeps admitting and evicting: written a
// hundred keys a pass, interleaved with the changes. A joiner that starts at
// the dump and an in-sync reader that saw everything both end with exactly
// the controller's index.
TEST(ChangeFeedResync, ADumpInterleavedWithChangesRebuildsTheIndexExactly) {
  auto f = feed::ChangeFeed::Create(1 << 22);
  ASSERT_TRUE(f.ok());
  const std::string name = "cl" + kPid + "-dump";
  controller::Options o = Small(name, f->get());
  o.resync_keys_per_pass = 100;
  auto ctl = controller::Controller::Start(o);
  ASSERT_TRUE(ctl.ok());
  LocalWorker worker(**ctl, name);
  ASSERT_TRUE(worker.conn);
  FeedState in_sync, joiner;
  joiner.joiner = true;
  worker.after_pass = [&] {
    f->get()->Drain(SIZE_MAX, SIZE_MAX, [&](std::span<const std::uint8_t> r) {
      in_sync.Apply(r);
      joiner.Apply(r);
    });
  };
  worker.Register();
  for (int i = 0; i < 20; ++i) worker.Churn(200, 0);  // 4,000 keys
  f->get()->RequestResync(feed::ResyncRequest::kSnapshot);
  int passes = 0;
  while (joiner.resync_ends == 0 && passes < 1000) {
    worker.Churn(30, 40);
    ++passes;
  }
  ASSERT_EQ(joiner.resync_ends, 1);
  EXPECT_GT(passes, 20) << "the dump spans many passes";
  for (int i = 0; i < 5; ++i) worker.Churn(10, 10);
  EXPECT_EQ((*ctl)->stats().change_feed_resyncs, 1u);
  EXPECT_EQ((*ctl)->stats().change_feed_overflows, 0u);
  const std::set<std::uint64_t>& held = worker.held;
  ASSERT_EQ(worker.Indexed(), held);
  ASSERT_EQ(joiner.keys.size(), 1u);
  EXPECT_EQ(joiner.keys.begin()->second, held) << "the joiner, from the dump on";
  ASSERT_EQ(in_sync.keys.size(), 1u);
  EXPECT_EQ(in_sync.keys.begin()->second, held) << "the reader that saw everything";
}

// The worker's whole life reaches the stream: its holder with its peer URL,
// its keys (the odd ones left before it deregistered), then the holder's
// retirement; records numbered 1, 2, ... in one epoch, the publisher's.
TEST(ClusterPublisher, ALocalWorkersChangesReachTheStreamInOrder) {
  constexpr int kKeys = 20000;  // several messages, several records per batch
  const std::string name = "cl" + kPid + "-order";
  WorkerChild w = SpawnWorker(name, kKeys);  // before any thread
  ASSERT_GT(w.pid, 0);
  PublishingNode a;
  ASSERT_TRUE(a.Start("t" + kPid, "nodeA"));
  NatsServer& nats = a.nats;
  const PublisherOptions& po = a.po;
  feed::ChangeFeed* f = a.feed.get();
  Publisher* pub = a.pub.get();
  auto ctl = controller::Controller::Start(Small(name, f));
  ASSERT_TRUE(ctl.ok()) << ctl.status().ToString();
  w.Go();
  RunUntil(**ctl, [&] {
    return (*ctl)->stats().kv_ops == kKeys + kKeys / 2 && (*ctl)->registry().worker_count() == 0 &&
           pub->stats().records == f->records();
  });
  EXPECT_EQ(w.Wait(), 0);
  EXPECT_EQ((*ctl)->stats().kv_ops, kKeys + kKeys / 2u) << "errors " << (*ctl)->stats().errors;
  EXPECT_EQ(pub->stats().records, f->records()) << pub->StatsJson();
  EXPECT_EQ(f->overflows(), 0u);

  Replica seen;
  Replica::Holder last;  // the holder as the stream had it when it went down
  StreamReader reader(nats.url(), po.cluster);
  ASSERT_TRUE(reader.ReadUntil([&] { return seen.downs == 1; },
                               [&](const DeltaHeader& h, const feed::Change& c) {
                                 if (c.kind == feed::ChangeKind::kHolderDown) last = seen.holders[c.holder];
                                 seen.Apply(h, c);
                               }));
  EXPECT_EQ(last.instance, "A");
  EXPECT_EQ(last.location, "LocalCPUBackend");
  EXPECT_EQ(last.peer, "nodeA:8200");
  std::set<std::uint64_t> odd;
  for (std::uint64_t k = 1; k <= kKeys; k += 2) odd.insert(k);
  EXPECT_EQ(last.keys, odd) << "the odd keys, after the evictions";
  EXPECT_EQ(seen.epoch, pub->epoch());
  EXPECT_TRUE(seen.in_order);
  EXPECT_EQ(seen.ups, 1);
  EXPECT_TRUE(seen.holders.empty());
  EXPECT_EQ(seen.records, pub->stats().records);
  EXPECT_GT(pub->stats().messages, 1u);
}

// Batching under load: when a sixteenth of min_message_bytes waits, the
// publisher waits up to `linger` for the rest (two batches written apart go
// in one message, sent once the linger is over); a lone change and a full
// message go at once.
TEST(ClusterPublisher, UnderLoadChangesWaitForCompanyAndATrickleGoesAtOnce) {
  PublishingNode a;
  a.po.linger = 1s;
  a.po.min_message_bytes = 64 << 10;
  ASSERT_TRUE(a.Start("b" + kPid, "nodeA"));
  Publisher& pub = *a.pub;
  feed::ChangeFeed& f = *a.feed;
  auto published = [&](std::uint64_t messages) {  // polls the publisher's counter, bounded
    for (auto deadline = Clock::now() + 20s; pub.stats().messages < messages && Clock::now() < deadline;)
      std::this_thread::sleep_for(1ms);
    return pub.stats().messages;
  };
  ASSERT_EQ(published(1), 1u);  // the epoch's first message
  auto keys = [&](std::size_t n, std::uint64_t first) {
    std::vector<KVOpEvent> ops;
    for (std::uint64_t k = first; k < first + n; ++k) ops.push_back({OpType::kAdmit, Int::FromU64(k), Int(0)});
    ASSERT_TRUE(f.Keys(1, ops));
    f.Publish();
  };
  // A trickle: one key, well under a sixteenth.
  auto t0 = Clock::now();
  ASSERT_TRUE(f.Key(1, OpType::kAdmit, 1));
  f.Publish();
  ASSERT_EQ(published(2), 2u);
  EXPECT_LT(Clock::now() - t0, 500ms) << "a lone change does not wait for company";
  // Load: 8 KiB (over a sixteenth of 64 KiB), then 8 KiB more: one message, after the linger.
  t0 = Clock::now();
  keys(1000, 100);
  keys(1000, 1100);
  ASSERT_EQ(published(3), 3u);
  EXPECT_GE(Clock::now() - t0, 900ms) << "it waited for a full message";
  EXPECT_EQ(pub.stats().records, f.records()) << "both batches in the one message";
  // A full message's worth at once goes without waiting.
  t0 = Clock::now();
  keys(9000, 10000);
  ASSERT_EQ(published(4), 4u);
  EXPECT_LT(Clock::now() - t0, 500ms);
  EXPECT_EQ(pub.stats().records, f.records());
}

// NATS is not there when the node starts, nor while its worker works: local
// service goes on (every op applied, no overflow), the publisher retries, and
// once a nats-server comes up on the address everything reaches the stream.
TEST(ClusterPublisher, ChangesMadeWhileNatsIsDownArriveWhenItComesUp) {
  const std::string name = "cl" + kPid + "-down";
  WorkerChild w = SpawnWorker(name, 1000);  // before any thread
  ASSERT_GT(w.pid, 0);
  PublishingNode b;
  b.po.retry_wait = 50ms;
  ASSERT_TRUE(b.Start("d" + kPid, "nodeB", /*nats_up=*/false));
  NatsServer& nats = b.nats;
  const PublisherOptions& po = b.po;
  feed::ChangeFeed* f = b.feed.get();
  Publisher* pub = b.pub.get();
  auto ctl = controller::Controller::Start(Small(name, f));
  ASSERT_TRUE(ctl.ok());
  w.Go();
  RunUntil(**ctl, [&] { return (*ctl)->stats().kv_ops == 1500 && (*ctl)->registry().worker_count() == 0; });
  EXPECT_EQ(w.Wait(), 0);
  EXPECT_EQ((*ctl)->stats().kv_ops, 1500u);  // served locally with NATS away
  EXPECT_FALSE(pub->stats().connected);
  EXPECT_EQ(pub->stats().records, 0u);
  EXPECT_GT(f->buffered_bytes(), feed::KeysBytes(1500)) << "the feed is the buffer while NATS is away";
  ASSERT_TRUE(nats.Start());
  // The reader needs the stream, which the publisher creates once connected.
  for (auto deadline = Clock::now() + 20s; pub->stats().records == 0 && Clock::now() < deadline;)
    std::this_thread::sleep_for(10ms);  // polling a condition, bounded
  ASSERT_GT(pub->stats().records, 0u);
  Replica seen;
  StreamReader reader(nats.url(), po.cluster);
  ASSERT_TRUE(reader.ReadUntil([&] { return seen.downs == 1; },
                               [&](const DeltaHeader& h, const feed::Change& c) { seen.Apply(h, c); }));
  EXPECT_TRUE(seen.in_order);
  EXPECT_EQ(seen.records, f->records());
  EXPECT_TRUE(pub->stats().connected);
  EXPECT_EQ(f->buffered_bytes(), 0u);
}

}  // namespace
}  // namespace kvring::cluster

namespace kvring::cluster {
namespace {

// A hostile or broken publisher on the cluster's subjects: truncated
// messages, a wrong magic, absurd counts, a subject that names no node. Each
// is counted and dropped whole by the subscriber; the valid message beside
// them is applied by the controller as a remote holder.
TEST(ClusterSubscriber, GarbageOnTheClusterSubjectsIsCountedAndIgnored) {
  PublishingNode me;  // the stream, as any node's publisher makes it
  ASSERT_TRUE(me.Start("g" + kPid, "me"));
  NatsServer& nats = me.nats;
  const PublisherOptions& po = me.po;
  auto remote = feed::RemoteFeed::Create(1 << 20);
  ASSERT_TRUE(remote.ok());
  auto sub = Subscriber::Start(po, remote->get());
  ASSERT_TRUE(sub.ok()) << sub.status().ToString();
  controller::Options o;
  o.listen.name = "cl" + kPid + "-garbage";
  o.full_sync_on_start = false;
  o.remote_feed = remote->get();
  auto ctl = controller::Controller::Start(o);
  ASSERT_TRUE(ctl.ok());

  JetStreamClient client(nats.url());
  jsCtx* js = client.js;
  for (auto deadline = Clock::now() + 20s; !(*sub)->stats().subscribed && Clock::now() < deadline;)
    (*ctl)->PollOnce(1ms);  // the stream exists once the publisher connected
  auto publish = [&](const std::string& node, const std::vector<std::uint8_t>& bytes) {
    const std::string subject = "kvring." + po.cluster + "." + node;
    jsErrCode jerr;
    ASSERT_EQ(js_Publish(nullptr, js, subject.c_str(), bytes.data(), static_cast<int>(bytes.size()), nullptr, &jerr),
              NATS_OK);
  };
  const std::vector<std::uint8_t> good = ValidMessage();  // holder up A/0, admit 42, holder down
  auto bad_magic = good;
  bad_magic[0] = 'X';
  auto absurd = good;
  absurd[7] = 0x7f;  // 2 G records
  auto zero_epoch = good;
  std::fill(zero_epoch.begin() + 8, zero_epoch.begin() + 16, 0);
  publish("evil", std::vector<std::uint8_t>(good.begin(), good.begin() + 30));  // truncated
  publish("evil", bad_magic);
  publish("evil", absurd);
  publish("evil", zero_epoch);
  publish("evil", {});
  // The valid one, without its last record (the holder-down): node "good" keeps A/0 with key 42.
  Records r;
  DeltaWriter w;
  w.Begin(7, 1);
  w.Add(r.Up(1, "A", "good:8200"));
  w.Add(r.Admit(1, {42}));
  const auto valid = Bytes(w.Finish());
  publish("good", valid);
  for (auto deadline = Clock::now() + 20s;
       ((*sub)->stats().garbage < 5 || !(*ctl)->registry().FindRemote("good", "A", 0)) && Clock::now() < deadline;)
    (*ctl)->PollOnce(1ms);
  EXPECT_EQ((*sub)->stats().garbage, 5u);
  EXPECT_EQ((*sub)->stats().messages, 1u);
  auto worker = (*ctl)->registry().FindRemote("good", "A", 0);
  ASSERT_TRUE(worker);
  auto holder = (*ctl)->registry().FindHolder(*worker, "LocalCPUBackend");
  ASSERT_TRUE(holder);
  EXPECT_TRUE((*ctl)->index().Contains(42, *holder));
  EXPECT_FALSE((*ctl)->registry().FindRemote("evil", "A", 0));
  EXPECT_EQ((*ctl)->stats().remote_refused, 0u);  // nothing of the garbage reached the controller
}

// A node that joins the cluster late: its own controller and subscriber,
// reading the stream from its start.
struct Joiner {
  std::unique_ptr<feed::RemoteFeed> remote = std::move(feed::RemoteFeed::Create(1 << 22)).value();
  std::unique_ptr<controller::Controller> ctl;
  std::unique_ptr<Subscriber> sub;
  Joiner(const PublisherOptions& of, const std::string& name) {
    controller::Options o = testing::SmallController(name);
    o.remote_feed = remote.get();
    ctl = std::move(controller::Controller::Start(o)).value();
    PublisherOptions po = of;
    po.node = "late";
    sub = std::move(Subscriber::Start(po, remote.get())).value();
  }
  std::set<std::uint64_t> KeysOf(const std::string& node) const {
    std::set<std::uint64_t> keys;
    auto w = ctl->registry().FindRemote(node, "A", 0);
    auto h = w ? ctl->registry().FindHolder(*w, "LocalCPUBackend") : std::nullopt;
    if (h) ctl->index().ForEachKeyOf(*h, [&](std::uint64_t k) { keys.insert(k); });
    return keys;
  }
  // Polls until the node's keys seen here are `want` (bounded).
  bool Converges(const std::string& node, const std::set<std::uint64_t>& want) {
    for (auto deadline = Clock::now() + 30s; Clock::now() < deadline;) {
      ctl->PollOnce(1ms);
      if (!remote->HasRecord() && KeysOf(node) == want) return true;
    }
    return false;
  }
};

// A publishing node with its controller and one registered local worker.
struct WorkingNode : PublishingNode {
  std::unique_ptr<controller::Controller> ctl;  // destroyed before the feed it writes
  std::unique_ptr<LocalWorker> worker;          // ... and after the worker using it
  // `name`: the controller's; `configure`: options beyond Small()'s.
  ::testing::AssertionResult Start(const std::string& cluster, const std::string& node, const std::string& name,
                                   bool nats_up = true,
                                   const std::function<void(controller::Options&)>& configure = {}) {
    if (auto r = PublishingNode::Start(cluster, node, nats_up); !r) return r;
    controller::Options o = Small(name, feed.get());
    if (configure) configure(o);
    auto c = controller::Controller::Start(o);
    if (!c.ok()) return ::testing::AssertionFailure() << c.status().ToString();
    ctl = std::move(c).value();
    worker = std::make_unique<LocalWorker>(*ctl, name);
    if (!worker->conn) return ::testing::AssertionFailure() << "the worker did not attach";
    worker->Register();
    return ::testing::AssertionSuccess();
  }
  // Everything the controller wrote to the feed is acknowledged by the stream.
  bool Published() const { return pub->stats().records == feed->records(); }
  // `rounds` batches of 60 admits (45 evicts too from the 41st on), each
  // published before the next: the publisher keeps up, so dumps come as the
  // log grows, not all at the end.
  void ChurnPublished(int rounds) {
    for (int i = 0; i < rounds; ++i) {
      worker->Churn(60, i < 40 ? 0 : 45);
      RunUntil(*ctl, [&] { return Published(); });
    }
  }
};

// What the node's lease says the stream rebuilds it from (0: no lease, or unreadable).
std::uint64_t LeaseRebuildFrom(const JetStreamClient& client, const PublisherOptions& po) {
  kvStore* leases = nullptr;
  if (js_KeyValue(&leases, client.js, ("KVRING_" + po.cluster + "_LEASES").c_str()) != NATS_OK) return 0;
  kvEntry* e = nullptr;
  LeaseValue v;
  const bool ok = kvStore_Get(&e, leases, po.node.c_str()) == NATS_OK &&
                  DecodeLease(std::string_view(static_cast<const char*>(kvEntry_Value(e)),
                                               static_cast<std::size_t>(kvEntry_ValueLen(e))),
                              &v);
  kvEntry_Destroy(e);
  kvStore_Destroy(leases);
  return ok ? v.rebuild_from_seq : 0;
}

// As a node's log grows past its last dump, the publisher asks for a new one
// (and, with `cut`, purges the node's subject below it). A node that joins
// afterwards starts reading at the latest dump (the lease says where), and
// ends with exactly the keys the node holds.
void DumpsBoundWhatAJoinerReads(bool cut) {
  WorkingNode a;
  a.po.snapshot_min_keys = 3000;
  a.po.cut_at_dumps = cut;
  ASSERT_TRUE(a.Start((cut ? "s" : "u") + kPid, "nodeA", "cl" + kPid + "-snap", true,
                      [](controller::Options& o) { o.resync_keys_per_pass = 500; }));
  controller::Controller& ctl = *a.ctl;
  LocalWorker& worker = *a.worker;
  a.ChurnPublished(400);  // ~8,400 keys held in the end, ~16,000 evicted
  RunUntil(ctl, [&] { return a.Published() && ctl.stats().change_feed_resyncs == a.pub->stats().snapshots; });
  EXPECT_GE(a.pub->stats().snapshots, 3u) << a.pub->StatsJson();
  if (cut) EXPECT_GE(a.pub->stats().purges, 3u);
  else EXPECT_EQ(a.pub->stats().purges, 0u);
  EXPECT_EQ(a.pub->stats().repairs, 0u);
  ASSERT_EQ(worker.Indexed(), worker.held);
  // The lease names the latest dump's message.
  JetStreamClient client(a.nats.url());
  RunUntil(ctl, [&] { return LeaseRebuildFrom(client, a.po) == a.pub->stats().rebuild_from_seq; });
  const std::uint64_t from = a.pub->stats().rebuild_from_seq;
  ASSERT_GT(from, 1u);
  ASSERT_EQ(LeaseRebuildFrom(client, a.po), from);

  Joiner late(a.po, "cl" + kPid + "-late");
  EXPECT_TRUE(late.Converges("nodeA", worker.held)) << late.KeysOf("nodeA").size() << " keys vs " << worker.held.size();
  EXPECT_EQ(late.sub->stats().start_seq, from) << late.sub->StatsJson();
  // It read the last dump and what followed, not the node's whole history.
  EXPECT_LT(late.sub->stats().records, a.pub->stats().records / 2) << late.sub->StatsJson();
  EXPECT_EQ(late.sub->stats().garbage, 0u);
}

TEST(ClusterSnapshots, AJoinerStartsAtTheLatestDumpWithoutACut) { DumpsBoundWhatAJoinerReads(false); }
TEST(ClusterSnapshots, TheStreamIsCutAtEachDumpAndALateJoinerRebuildsTheNode) { DumpsBoundWhatAJoinerReads(true); }

// A node's lease: the value round-trips, and anything not exactly in its
// format (it comes from the network) is refused.
TEST(LeaseValue, RoundTripsAndAnythingElseIsRefused) {
  LeaseValue v;
  ASSERT_TRUE(DecodeLease(EncodeLease({0x0123456789abcdefull, 42}), &v));
  EXPECT_EQ(v.epoch, 0x0123456789abcdefull);
  EXPECT_EQ(v.rebuild_from_seq, 42u);
  ASSERT_TRUE(DecodeLease(EncodeLease({~0ull, ~0ull}), &v));
  EXPECT_EQ(v.rebuild_from_seq, ~0ull);
  ASSERT_TRUE(DecodeLease("0x0123456789abcdef 0", &v));  // "not known yet"
  EXPECT_EQ(v.rebuild_from_seq, 0u);
  for (const char* bad : {"", "0x0123456789abcdef", "0x0123456789abcdef ", "0x0123456789abcde 42", "0x0123456789abcdeg 42",
                          "0123456789abcdef 42", "0x0123456789abcdef -1", "0x0123456789abcdef +1", "0x0123456789abcdef 4 2",
                          "0x0123456789abcdef 42x", "0x0123456789abcdef 99999999999999999999", "0x0123456789abcdef  42",
                          "0x0123456789ABCDEF 42", "0x0123456789abcdef 042", "0x0123456789abcdef 00"}) {
    v = LeaseValue{7, 7};
    EXPECT_FALSE(DecodeLease(bad, &v)) << bad;
    EXPECT_EQ(v.rebuild_from_seq, 7u) << "untouched on refusal: " << bad;
  }
}

// Retention by age, no purge: the stream's max age drops old messages while
// the node dumps its holders every third of it, busy or idle. Once the
// node's whole churn has aged out of the stream (its first message is past
// every message of the churn), a node that joins reads only dumps and what
// followed, and ends with exactly the keys the node holds.
TEST(ClusterRetention, HistoryOlderThanTheRetentionAgesOutAndALateJoinerRebuildsTheNodeFromDumps) {
  WorkingNode a;
  a.po.retention = 3s;
  ASSERT_TRUE(a.Start("r" + kPid, "nodeA", "cl" + kPid + "-ret"));
  controller::Controller& ctl = *a.ctl;
  LocalWorker& worker = *a.worker;
  a.ChurnPublished(200);
  ASSERT_EQ(worker.Indexed(), worker.held);
  JetStreamClient client(a.nats.url());
  auto stream_state = [&](std::uint64_t* first, std::uint64_t* last) {
    jsStreamInfo* si = nullptr;
    jsErrCode jerr = static_cast<jsErrCode>(0);
    const bool ok = js_GetStreamInfo(&si, client.js, ("KVRING_" + a.po.cluster).c_str(), nullptr, &jerr) == NATS_OK;
    if (ok) {
      *first = si->State.FirstSeq;
      *last = si->State.LastSeq;
      EXPECT_EQ(si->Config->MaxAge, std::chrono::duration_cast<std::chrono::nanoseconds>(3s).count());
    }
    jsStreamInfo_Destroy(si);
    return ok;
  };
  std::uint64_t first = 0, churn_last = 0;
  ASSERT_TRUE(stream_state(&first, &churn_last));
  // The controller runs on, idle: its dumps keep the node in the stream.
  const auto snapshots = a.pub->stats().snapshots;
  for (auto deadline = Clock::now() + 20s; Clock::now() < deadline && first <= churn_last;) {
    RunUntil(ctl, [&, t = Clock::now()] { return Clock::now() - t > 100ms; });  // passes, ~100 ms of them
    std::uint64_t last = 0;
    ASSERT_TRUE(stream_state(&first, &last));
  }
  ASSERT_GT(first, churn_last) << "the churn aged out of the stream";
  EXPECT_GE(a.pub->stats().snapshots, snapshots + 1) << a.pub->StatsJson();
  EXPECT_EQ(a.pub->stats().purges, 0u);
  EXPECT_EQ(a.pub->stats().repairs, 0u);
  RunUntil(ctl, [&] { return a.Published(); });
  Joiner late(a.po, "cl" + kPid + "-late4");
  EXPECT_TRUE(late.Converges("nodeA", worker.held)) << late.KeysOf("nodeA").size() << " keys vs " << worker.held.size();
  EXPECT_LT(late.sub->stats().records, a.pub->stats().records) << late.sub->StatsJson();
  EXPECT_EQ(late.sub->stats().garbage, 0u);
  EXPECT_EQ(late.ctl->stats().remote_refused, 0u);
}

// NATS is away while a worker keeps working: the change feed (64 KiB here)
// fills and overflows, so the stream can no longer tell the node's story.
// Once NATS is back the publisher sends what was buffered and asks for a
// forced dump: a node joining then sees exactly what the worker holds.
TEST(ClusterSnapshots, ALostFeedIsRepairedByAForcedDumpWhenNatsReturns) {
  WorkingNode b;
  b.feed_bytes = 1 << 16;
  b.po.retry_wait = 50ms;
  ASSERT_TRUE(b.Start("o" + kPid, "nodeB", "cl" + kPid + "-lost", /*nats_up=*/false));
  controller::Controller& ctl = *b.ctl;
  LocalWorker& worker = *b.worker;
  for (int i = 0; i < 200; ++i) worker.Churn(100, i < 20 ? 0 : 80);
  ASSERT_TRUE(b.feed->lost()) << "the feed overflowed while NATS was away";
  ASSERT_EQ(worker.Indexed(), worker.held) << "local service went on";
  ASSERT_TRUE(b.nats.Start());
  RunUntil(ctl, [&] { return ctl.stats().change_feed_resyncs >= 1 && b.Published() && b.pub->stats().repairs >= 1; });
  EXPECT_GE(b.pub->stats().repairs, 1u) << b.pub->StatsJson();
  Joiner late(b.po, "cl" + kPid + "-late2");
  EXPECT_TRUE(late.Converges("nodeB", worker.held)) << late.KeysOf("nodeB").size() << " keys vs " << worker.held.size();
}

// The node's lease goes while the node lives (here deleted by hand, as an
// expiry during a long NATS stall would): the others drop the node. At its
// next refresh the publisher finds its revision gone, takes the lease again
// and asks for a forced dump, so every node gets the holders back.
TEST(ClusterSnapshots, ALeaseLostWhileAliveIsTakenAgainWithAForcedDump) {
  WorkingNode c;
  c.po.lease_ttl = 600ms;
  ASSERT_TRUE(c.Start("l" + kPid, "nodeC", "cl" + kPid + "-lease"));
  controller::Controller& ctl = *c.ctl;
  LocalWorker& worker = *c.worker;
  for (int i = 0; i < 20; ++i) worker.Churn(50, 10);
  JetStreamClient client(c.nats.url());
  kvStore* leases = nullptr;
  const std::string bucket = "KVRING_" + c.po.cluster + "_LEASES";
  RunUntil(ctl, [&] { return js_KeyValue(&leases, client.js, bucket.c_str()) == NATS_OK; });
  ASSERT_NE(leases, nullptr);
  RunUntil(ctl, [&] {
    kvEntry* e = nullptr;
    const bool there = kvStore_Get(&e, leases, "nodeC") == NATS_OK;
    kvEntry_Destroy(e);
    return there;
  });
  const auto resyncs = ctl.stats().change_feed_resyncs;
  ASSERT_EQ(kvStore_Delete(leases, "nodeC"), NATS_OK);
  RunUntil(ctl, [&] {
    return c.pub->stats().lease_lapses == 1 && ctl.stats().change_feed_resyncs > resyncs && c.Published();
  });
  EXPECT_EQ(c.pub->stats().lease_lapses, 1u) << c.pub->StatsJson();
  EXPECT_GE(c.pub->stats().repairs, 1u);
  Joiner late(c.po, "cl" + kPid + "-late3");
  EXPECT_TRUE(late.Converges("nodeC", worker.held));
  kvStore_Destroy(leases);
}

}  // namespace
}  // namespace kvring::cluster
