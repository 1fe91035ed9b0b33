#include "kvring/client.h"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "kvring/protocol/codec.h"
#include "kvring/transport.h"

namespace kvring::client {
namespace {

using Clock = std::chrono::steady_clock;
using namespace kvring::protocol;

constexpr std::size_t kOpBytesBound = 48;  // one encoded KVOpEvent, at most (keys and seqs as uint64)
constexpr const char* kDefaultSyncLocation = "LocalCPUBackend";

Status Unavailable(const std::string& what) { return Status(ErrorKind::kUnavailable, what); }

}  // namespace

struct Worker::Impl {
  struct Location {
    std::string name;
    std::vector<KVOpEvent> ops;  // queued, seq assigned at send
    std::int64_t next_seq = 0;
    Clock::time_point oldest{};
  };

  WorkerOptions o;
  mutable std::mutex mu;
  std::unique_ptr<transport::Connection> conn;
  bool closed = false;
  std::size_t stale_replies = 0;  // replies still to come for requests that gave up waiting
  std::vector<std::unique_ptr<Location>> locations;
  BatchedKVOperationView batch;   // reused: encoded straight into the ring
  BatchedP2PLookupView lookup;    // likewise
  Clock::duration heartbeat_every = std::chrono::seconds(10);
  Clock::time_point next_heartbeat{};
  WorkerCounters counters;
  std::mt19937_64 rng{std::random_device{}()};
  std::thread ticker;
  std::condition_variable ticker_cv;
  bool ticker_stop = false;

  // ---- transport ----------------------------------------------------------

  // Claims room for about `guess` bytes, lets `encode` write the record in
  // place, commits and publishes. Waits for room up to request_timeout.
  template <typename Encode>
  Status Write(std::size_t guess, Encode&& encode, std::uint32_t type = ring::kRecordMessage) {
    if (!conn) return Unavailable("not attached to controller '" + o.controller + "'");
    auto deadline = Clock::now() + o.request_timeout;
    ring::Producer& p = conn->requests();
    for (;;) {
      std::span<std::uint8_t> out;
      switch (p.TryClaim(guess, &out)) {
        case ring::ClaimResult::kOk: {
          EncodeResult r = encode(out);
          if (r.fits) {
            p.Commit(r.bytes, type);
            p.Publish();
            conn->RingDoorbell();
            return Status::Ok();
          }
          p.Abort();
          guess = r.bytes;
          continue;
        }
        case ring::ClaimResult::kTooLarge:
          return Status(ErrorKind::kInvalidArgument, "a message of " + std::to_string(guess) +
                                                         " bytes exceeds the ring's record limit of " +
                                                         std::to_string(p.max_record()));
        case ring::ClaimResult::kCorrupt:
          return Status(ErrorKind::kCorrupt, "request ring: " + p.corruption());
        case ring::ClaimResult::kFull:
          break;
      }
      auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        if (!conn->ControllerAlive()) return Dead();
        return Status(ErrorKind::kTimeout, "request ring stayed full for " +
                                               std::to_string(o.request_timeout.count()) + " ms");
      }
      if (!p.WaitForSpace(guess, std::min<Clock::duration>(left, std::chrono::milliseconds(50))) &&
          !conn->ControllerAlive())
        return Dead();
    }
  }

  Status WriteBytes(const std::string& bytes, std::uint32_t type = ring::kRecordMessage) {
    return Write(
        bytes.size(),
        [&](std::span<std::uint8_t> out) {
          if (out.size() < bytes.size()) return EncodeResult{bytes.size(), false};
          std::memcpy(out.data(), bytes.data(), bytes.size());
          return EncodeResult{bytes.size(), true};
        },
        type);
  }
  Status Send(const Message& m) { return WriteBytes(Encode(m)); }

  Status Dead() {
    conn.reset();  // the next Tick reattaches
    stale_replies = 0;
    return Unavailable("controller '" + o.controller + "' has gone");
  }

  // The next reply (skipping those that came too late for their request).
  Result<Message> AwaitReply(Clock::time_point deadline) {
    if (!conn) return Unavailable("not attached");
    ring::Consumer& c = conn->replies();
    for (;;) {
      auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        ++stale_replies;  // its reply may still come: skip it then
        if (!conn->ControllerAlive()) return Dead();
        return Status(ErrorKind::kTimeout, "no reply from controller '" + o.controller + "' in time");
      }
      if (!c.WaitForData(std::min<Clock::duration>(left, std::chrono::milliseconds(50)), o.reply_spin)) {
        if (c.corrupt()) return Status(ErrorKind::kCorrupt, "reply ring: " + c.corruption());
        if (!conn->ControllerAlive()) return Dead();
        continue;
      }
      ring::Record r;
      if (c.Peek(&r) != ring::PollResult::kRecord) continue;
      if (stale_replies > 0) {
        --stale_replies;
        ++counters.late_replies_skipped;
        c.Release();
        c.PublishHead();
        continue;
      }
      auto m = Decode(r.payload);
      c.Release();
      c.PublishHead();
      if (!m.ok()) return Status(ErrorKind::kDecode, "undecodable reply: " + m.status().message());
      return std::move(m).value();
    }
  }

  // The reply as the message a request expects: an ErrorMsg or any other
  // type becomes a Status naming it.
  template <typename Reply>
  static Result<Reply> Expect(Message&& r) {
    if (auto* e = std::get_if<ErrorMsg>(&r)) return Status(ErrorKind::kUnavailable, "controller: " + e->error);
    if (auto* want = std::get_if<Reply>(&r)) return std::move(*want);
    return Status(ErrorKind::kDecode, std::string("expected ") + std::string(Reply::kTag) + ", got " +
                                          std::string(TagOf(r)));
  }

  template <typename Reply>
  Result<Reply> Ask(const Message& m, Clock::time_point deadline) {
    if (Status s = Send(m); !s.ok()) return s;
    auto r = AwaitReply(deadline);
    if (!r.ok()) return r.status();
    return Expect<Reply>(std::move(r).value());
  }
  Clock::time_point Deadline() const { return Clock::now() + o.request_timeout; }

  // ---- events -------------------------------------------------------------

  Location& LocationOf(std::string_view name) {
    for (auto& l : locations)
      if (l->name == name) return *l;
    locations.push_back(std::make_unique<Location>());
    locations.back()->name.assign(name);
    return *locations.back();
  }

  void Queue(std::string_view location, OpType op, std::uint64_t key) {
    Location& l = LocationOf(location);
    if (l.ops.empty()) l.oldest = Clock::now();
    l.ops.push_back(KVOpEvent{op, Int::FromU64(key), Int(0)});
    if (l.ops.size() >= o.batch_ops) (void)SendQueued(l);  // on failure the ops stay queued
  }

  Status SendQueued(Location& l) {
    while (!l.ops.empty()) {
      std::size_t n = std::min(l.ops.size(), o.batch_ops);
      batch.instance_id = o.instance_id;
      batch.worker_id = Int::FromI64(o.worker_id);
      batch.location = l.name;
      batch.operations.assign(l.ops.begin(), l.ops.begin() + static_cast<std::ptrdiff_t>(n));
      for (std::size_t i = 0; i < n; ++i) batch.operations[i].seq_num = Int::FromI64(l.next_seq + static_cast<std::int64_t>(i));
      std::size_t guess = 64 + o.instance_id.size() + l.name.size() + n * kOpBytesBound;
      if (Status s = Write(guess, [&](std::span<std::uint8_t> out) { return EncodeTo(batch, out); }); !s.ok())
        return s;
      l.next_seq += static_cast<std::int64_t>(n);
      l.ops.erase(l.ops.begin(), l.ops.begin() + static_cast<std::ptrdiff_t>(n));
      l.oldest = Clock::now();
      counters.ops_sent += n;
      ++counters.batches_sent;
    }
    return Status::Ok();
  }

  Status FlushAll() {
    for (auto& l : locations)
      if (Status s = SendQueued(*l); !s.ok()) return s;
    return Status::Ok();
  }

  // ---- registration, heartbeats, full sync --------------------------------

  Status Register() {
    RegisterMsg m{o.instance_id, Int::FromI64(o.worker_id), o.ip, Int::FromI64(o.port), o.peer_init_url};
    auto r = Ask<RegisterRetMsg>(m, Deadline());
    if (!r.ok()) return r.status();
    for (const auto& kv : r->extra_config)
      if (kv.first == "heartbeat_interval_s" && o.heartbeat_interval.count() == 0) {
        double s = std::strtod(kv.second.c_str(), nullptr);
        if (s > 0 && s < 86400) heartbeat_every = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
      }
    if (o.heartbeat_interval.count() > 0) heartbeat_every = o.heartbeat_interval;
    next_heartbeat = Clock::now() + heartbeat_every;
    return Status::Ok();
  }

  Status DoHeartbeat() {
    if (Status s = FlushAll(); !s.ok()) return s;
    HeartbeatMsg m{o.instance_id, Int::FromI64(o.worker_id), o.ip, Int::FromI64(o.port), o.peer_init_url};
    auto r = Ask<HeartbeatRetMsg>(m, Deadline());
    if (!r.ok()) return r.status();
    ++counters.heartbeats;
    next_heartbeat = Clock::now() + heartbeat_every;
    for (const HeartbeatCommand& c : r->commands)
      if (c.kind == CommandKind::kFullSync) return FullSync();
    return Status::Ok();
  }

  std::string NewSyncId() {
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(rng()));
    return o.instance_id + "_" + std::to_string(o.worker_id) + "_" + hex;
  }

  Status FullSync() {
    if (!o.keys_of)
      return Status(ErrorKind::kInvalidArgument, "the controller asked for a full sync, but no keys_of callback is set");
    if (Status s = FlushAll(); !s.ok()) return s;
    std::vector<std::string> names = o.sync_locations;
    for (const auto& l : locations)
      if (std::find(names.begin(), names.end(), l->name) == names.end()) names.push_back(l->name);
    if (names.empty()) names.push_back(kDefaultSyncLocation);
    for (const std::string& loc : names)
      if (Status s = SyncLocation(loc); !s.ok()) return s;
    ++counters.full_syncs;
    return Status::Ok();
  }

  Status SendSyncBatch(const std::string& loc, const std::string& id, const std::vector<std::uint64_t>& keys,
                       std::size_t b) {
    const std::size_t per = std::max<std::size_t>(1, o.full_sync_batch_keys);
    FullSyncBatchMsg m{o.instance_id, Int::FromI64(o.worker_id), loc, id, Int::FromU64(b), {}};
    for (std::size_t i = b * per; i < std::min(keys.size(), (b + 1) * per); ++i) m.keys.push_back(Int::FromU64(keys[i]));
    return Send(m);
  }

  Status SyncLocation(const std::string& loc) {
    std::vector<std::uint64_t> keys = o.keys_of(loc);
    const std::size_t per = std::max<std::size_t>(1, o.full_sync_batch_keys);
    const std::size_t batches = std::max<std::size_t>(1, (keys.size() + per - 1) / per);
    const std::string id = NewSyncId();
    FullSyncStartMsg start{o.instance_id, Int::FromI64(o.worker_id), loc, id, Int::FromU64(keys.size()),
                           Int::FromU64(batches)};
    Status last;
    bool accepted = false;
    for (int attempt = 0; attempt < std::max(1, o.full_sync_start_retries) && !accepted; ++attempt) {
      auto r = Ask<FullSyncStartRetMsg>(start, Deadline());
      if (!r.ok()) last = r.status();
      else if (!r->accepted) last = Status(ErrorKind::kUnavailable, r->error_msg.value_or("full sync refused"));
      else accepted = true;
      if (!accepted && !conn) return last;
    }
    if (!accepted) return last;
    FullSyncEndMsg end{o.instance_id, Int::FromI64(o.worker_id), loc, id, Int::FromU64(keys.size())};
    for (std::size_t b = 0; b < batches; ++b)
      if (Status s = SendSyncBatch(loc, id, keys, b); !s.ok()) return s;
    if (Status s = Send(end); !s.ok()) return s;
    int resends = 0;
    for (int poll = 0; poll < o.full_sync_max_polls; ++poll) {
      auto st = Ask<FullSyncStatusRetMsg>(FullSyncStatusMsg{o.instance_id, Int::FromI64(o.worker_id), id}, Deadline());
      if (!st.ok()) return st.status();
      if (st->is_complete && st->can_exit_freeze) return Status::Ok();
      if (!st->missing_batches.empty() && resends++ < 3) {
        for (const Int& b : st->missing_batches)
          if (b.FitsI64() && b.AsI64() >= 0 && static_cast<std::size_t>(b.AsI64()) < batches)
            if (Status s = SendSyncBatch(loc, id, keys, static_cast<std::size_t>(b.AsI64())); !s.ok()) return s;
        if (Status s = Send(end); !s.ok()) return s;
        continue;
      }
      // As LMCache: wait for the controller to let workers leave freeze.
      std::this_thread::sleep_for(o.full_sync_status_poll);
    }
    // Also as LMCache: leave freeze anyway, the sync itself went through.
    return Status::Ok();
  }

  Status Reattach() {
    if (!o.reattach) return Unavailable("controller '" + o.controller + "' has gone");
    auto c = transport::Connection::Open({o.controller, segment::Role::kWorker, o.attach_timeout});
    if (!c.ok()) return c.status();
    conn = std::move(c).value();
    stale_replies = 0;
    ++counters.reattaches;
    // The new controller does not know us: the heartbeat re-registers this
    // worker and brings the FullSyncCommand that rebuilds its keys there.
    return DoHeartbeat();
  }

  Status TickLocked() {
    if (closed) return Status(ErrorKind::kInvalidArgument, "worker closed");
    if (!conn || !conn->ControllerAlive()) {
      conn.reset();
      return Reattach();
    }
    conn->Heartbeat();  // the segment's liveness word, shown by `kvring inspect`
    auto now = Clock::now();
    for (auto& l : locations)
      if (!l->ops.empty() && now - l->oldest >= o.flush_interval)
        if (Status s = SendQueued(*l); !s.ok()) return s;
    if (now >= next_heartbeat) return DoHeartbeat();
    return Status::Ok();
  }
};

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Worker::~Worker() { (void)Close(); }

Result<std::unique_ptr<Worker>> Worker::Connect(WorkerOptions options) {
  if (options.instance_id.empty()) return Status(ErrorKind::kInvalidArgument, "instance_id must not be empty");
  if (options.batch_ops == 0) return Status(ErrorKind::kInvalidArgument, "batch_ops must be > 0");
  auto impl = std::make_unique<Impl>();
  impl->o = std::move(options);
  auto c = transport::Connection::Open({impl->o.controller, segment::Role::kWorker, impl->o.attach_timeout});
  if (!c.ok()) return c.status();
  impl->conn = std::move(c).value();
  if (Status s = impl->Register(); !s.ok()) return s;
  return std::unique_ptr<Worker>(new Worker(std::move(impl)));
}

void Worker::Admit(std::string_view location, std::uint64_t key) {
  std::lock_guard lock(impl_->mu);
  impl_->Queue(location, OpType::kAdmit, key);
}

void Worker::Evict(std::string_view location, std::uint64_t key) {
  std::lock_guard lock(impl_->mu);
  impl_->Queue(location, OpType::kEvict, key);
}

Status Worker::Flush() {
  std::lock_guard lock(impl_->mu);
  return impl_->FlushAll();
}

Result<P2PHit> Worker::Lookup(std::span<const std::uint64_t> hashes, std::chrono::milliseconds timeout) {
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  if (m.closed) return Status(ErrorKind::kInvalidArgument, "worker closed");
  m.lookup.hashes.resize(hashes.size());
  for (std::size_t i = 0; i < hashes.size(); ++i) m.lookup.hashes[i] = Int::FromU64(hashes[i]);
  m.lookup.instance_id = m.o.instance_id;
  m.lookup.worker_id = Int::FromI64(m.o.worker_id);
  auto deadline = Clock::now() + timeout;
  std::size_t guess = 48 + m.o.instance_id.size() + 9 * hashes.size();
  if (Status s = m.Write(guess, [&](std::span<std::uint8_t> out) { return EncodeTo(m.lookup, out); }); !s.ok())
    return s;
  auto r = m.AwaitReply(deadline);
  if (!r.ok()) return r.status();
  ++m.counters.lookups;
  auto ret = Impl::Expect<BatchedP2PLookupRetMsg>(std::move(r).value());
  if (!ret.ok()) return ret.status();
  P2PHit hit;
  if (!ret->layout_info.empty()) {
    const P2PLayout& l = ret->layout_info[0];
    hit.instance_id = l.instance_id;
    hit.location = l.location;
    hit.num_hit_chunks = l.num_hit_chunks.FitsI64() && l.num_hit_chunks.AsI64() > 0 ? static_cast<std::uint64_t>(l.num_hit_chunks.AsI64()) : 0;
    hit.peer_init_url = l.peer_init_url;
  }
  return hit;
}

Status Worker::Tick() {
  std::lock_guard lock(impl_->mu);
  return impl_->TickLocked();
}

Status Worker::Heartbeat() {
  std::lock_guard lock(impl_->mu);
  if (impl_->closed) return Status(ErrorKind::kInvalidArgument, "worker closed");
  return impl_->DoHeartbeat();
}

Status Worker::Close() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->ticker_stop = true;
  }
  impl_->ticker_cv.notify_all();
  if (impl_->ticker.joinable()) impl_->ticker.join();
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  if (m.closed) return Status::Ok();
  m.closed = true;
  if (!m.conn) return Status::Ok();
  Status s = m.FlushAll();
  if (s.ok())
    s = m.Send(DeRegisterMsg{m.o.instance_id, Int::FromI64(m.o.worker_id), m.o.ip, Int::FromI64(m.o.port)});
  m.conn.reset();
  return s;
}

void Worker::StartBackgroundTicks() {
  std::lock_guard lock(impl_->mu);
  if (impl_->ticker.joinable() || impl_->closed) return;
  impl_->ticker = std::thread([this] {
    std::unique_lock lock(impl_->mu);
    while (!impl_->ticker_stop) {
      impl_->ticker_cv.wait_for(lock, impl_->o.flush_interval);
      if (impl_->ticker_stop) break;
      (void)impl_->TickLocked();  // failures show in the next call's Status
    }
  });
}

WorkerCounters Worker::counters() const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters;
}

bool Worker::attached() const {
  std::lock_guard lock(impl_->mu);
  return impl_->conn != nullptr;
}

namespace {

// One request record to a fresh orchestrator connection, one reply record back.
Result<std::string> RoundTrip(const std::string& name, std::span<const std::uint8_t> request, std::uint32_t type,
                              std::chrono::milliseconds timeout) {
  auto c = transport::Connection::Open({name, segment::Role::kOrchestrator, timeout});
  if (!c.ok()) return c.status();
  transport::Connection& conn = **c;
  if (conn.requests().TryWrite(request, type) != ring::ClaimResult::kOk)
    return Status(ErrorKind::kInvalidArgument, "the request does not fit the request ring");
  conn.requests().Publish();
  conn.RingDoorbell();
  if (!conn.replies().WaitForData(timeout)) return Status(ErrorKind::kTimeout, "controller '" + name + "' did not answer");
  ring::Record r;
  if (conn.replies().Peek(&r) != ring::PollResult::kRecord) return Status(ErrorKind::kCorrupt, "reply ring");
  if (r.type != type) return Status(ErrorKind::kDecode, "the reply is not of the request's record type");
  std::string out(r.payload.begin(), r.payload.end());
  conn.replies().Release();
  conn.replies().PublishHead();
  return out;
}

}  // namespace

Result<protocol::Message> OrchestratorRequest(const std::string& name, const protocol::Message& request,
                                              std::chrono::milliseconds timeout) {
  std::string bytes = Encode(request);
  auto r = RoundTrip(name, std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()),
                     ring::kRecordMessage, timeout);
  if (!r.ok()) return r.status();
  return Decode(std::span(reinterpret_cast<const std::uint8_t*>(r->data()), r->size()));
}

Result<std::string> ControlRequest(const std::string& name, const std::string& request_json,
                                   std::chrono::milliseconds timeout) {
  return RoundTrip(name, std::span(reinterpret_cast<const std::uint8_t*>(request_json.data()), request_json.size()),
                   ring::kRecordControl, timeout);
}

}  // namespace kvring::client
