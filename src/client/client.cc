#include "kvring/client/client.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_map>

#include "kvring/protocol/codec.h"
#include "kvring/protocol/errors.h"
#include "kvring/protocol/json.h"
#include "kvring/shm/transport.h"
#include "kvring/shm/framing.h"

namespace kvring::client {
namespace {

using Clock = std::chrono::steady_clock;
using namespace kvring::protocol;

constexpr const char* kDefaultSyncLocation = "LocalCPUBackend";

Status Unavailable(const std::string& what) { return Status(ErrorKind::kUnavailable, what); }

template <typename Handler, typename Msg>
Message Run(const Handler& h, const Msg& m) {
  if (!h) return ErrorMsg{"Unknown message: " + std::string(Msg::kTag) + " (this worker registered no handler for it)"};
  return h(m);
}

// Claims room for about `guess` bytes in the request ring, lets `encode`
// write the record in place (a bigger claim when it does not fit), commits it
// as `type` and publishes. While the ring is full it waits, in slices, until
// `deadline` (kTimeout) or until `gone()` says the controller has gone
// (kUnavailable). What the worker and the orchestrator clients both send by.
template <typename Encode, typename Gone>
Status WriteRecord(transport::Connection& conn, std::size_t guess, Encode&& encode, std::uint32_t type,
                   Clock::time_point deadline, Gone&& gone) {
  ring::Producer& p = conn.requests();
  for (;;) {
    std::span<std::uint8_t> out;
    switch (p.TryClaim(guess, &out)) {
      case ring::ClaimResult::kOk: {
        EncodeResult r = encode(out);
        if (r.fits) {
          p.Commit(r.bytes, type);
          conn.PublishRequests();
          // The controller is about to read it: from the shared cache, not
          // line by line from this core (256-hash lookups ~5 % faster).
          p.DemoteLastRecord();
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
      if (gone()) return Unavailable("the controller has gone");
      return Status(ErrorKind::kTimeout, "the request ring stayed full");
    }
    if (!p.WaitForSpace(guess, std::min<Clock::duration>(left, std::chrono::milliseconds(50))) && gone())
      return Unavailable("the controller has gone");
  }
}

// id, then the encoded message: a correlated record's payload.
std::string CorrelatedBytes(std::uint64_t id, const Message& m) {
  std::string bytes(framing::kCorrelationIdBytes, '\0');
  framing::StoreCorrelationId(std::span(reinterpret_cast<std::uint8_t*>(bytes.data()), bytes.size()), id);
  bytes += Encode(m);
  return bytes;
}

}  // namespace

Message AnswerCommand(const CommandHandlers& h, const Message& command) {
  try {
    if (auto* m = std::get_if<ClearWorkerMsg>(&command)) return Run(h.clear, *m);
    if (auto* m = std::get_if<PinWorkerMsg>(&command)) return Run(h.pin, *m);
    if (auto* m = std::get_if<CompressWorkerMsg>(&command)) return Run(h.compress, *m);
    if (auto* m = std::get_if<DecompressWorkerMsg>(&command)) return Run(h.decompress, *m);
    if (auto* m = std::get_if<MoveWorkerMsg>(&command)) return Run(h.move, *m);
    if (auto* m = std::get_if<HealthWorkerMsg>(&command)) return Run(h.health, *m);
    if (auto* m = std::get_if<CheckFinishWorkerMsg>(&command)) return Run(h.check_finish, *m);
  } catch (const std::exception& e) {
    return ErrorMsg{std::string("Worker error: ") + e.what()};
  } catch (...) {
    return ErrorMsg{"Worker error: unknown exception"};
  }
  return ErrorMsg{"Unknown message: " + std::string(TagOf(command))};
}

// A mutex whose lock can give up at a deadline (TimedLockable), made of a
// std::mutex, a flag and a condition variable. Not std::timed_mutex: its
// try_lock_until(steady_clock) is pthread_mutex_clocklock, which GCC 12's
// ThreadSanitizer does not intercept (it then reports every unlock).
class DeadlineMutex {
 public:
  void lock() {
    std::unique_lock l(m_);
    free_.wait(l, [&] { return !held_; });
    held_ = true;
  }
  bool try_lock() {
    std::lock_guard l(m_);
    if (held_) return false;
    held_ = true;
    return true;
  }
  template <typename C, typename D>
  bool try_lock_until(const std::chrono::time_point<C, D>& deadline) {
    std::unique_lock l(m_);
    if (!free_.wait_until(l, deadline, [&] { return !held_; })) return false;
    held_ = true;
    return true;
  }
  void unlock() {
    {
      std::lock_guard l(m_);
      held_ = false;
    }
    free_.notify_one();
  }

 private:
  std::mutex m_;
  std::condition_variable free_;
  bool held_ = false;
};

// A full sync in progress. It advances one step per Tick (Start, batches
// and End of a location; then one status poll per step, at most every
// full_sync_status_poll) and the mutex is free between steps, so an
// engine's Admit and Lookup go on while the controller keeps workers in
// freeze; keys_of runs without the mutex too. (Outside Impl: clang cannot
// default-construct a nested class with member initialisers inside its
// enclosing class's definition, as std::optional::emplace() asks. Not in an
// anonymous namespace: Impl, which has external linkage, holds one.)
namespace internal {
struct SyncJob {
  std::vector<std::string> locations;  // still to sync; the first is current
  bool started = false;                // the current location's Start..End went out
  bool keys_pending = false;           // a thread is in keys_of for it (mutex released)
  std::string id;
  std::vector<std::uint64_t> keys;
  std::size_t batches = 0;
  int polls = 0;
  int resends = 0;
  Clock::time_point next_poll{};
};
}  // namespace internal
using internal::SyncJob;

struct Worker::Impl {
  struct Location {
    std::string name;
    std::vector<KVOpEvent> ops;  // queued, seq assigned at send
    std::int64_t next_seq = 0;
    Clock::time_point oldest{};
  };

  WorkerOptions o;
  // Timed: a Lookup waits for it no longer than its own deadline.
  mutable DeadlineMutex mu;
  std::condition_variable_any sync_progress;  // a sync step ended (FinishSync waits on it)
  std::unique_ptr<transport::Connection> conn;
  std::optional<SyncJob> sync;
  std::uint64_t sync_generation = 0;  // bumped whenever `sync` is begun or dropped
  bool closed = false;
  std::size_t stale_replies = 0;  // replies still to come for requests that gave up waiting
  std::vector<std::unique_ptr<Location>> locations;
  BatchedKVOperationView batch;   // reused: encoded straight into the ring
  BatchedP2PLookupRetMsg lookup_ret;  // its reply, decoded in place
  Clock::duration heartbeat_every = std::chrono::seconds(10);
  Clock::time_point next_heartbeat{};
  WorkerCounters counters;
  std::mt19937_64 rng{std::random_device{}()};
  std::thread ticker;
  int ticker_wake_fd = -1;  // eventfd: Close() wakes the ticker out of poll()
  bool ticker_stop = false;
  std::deque<std::pair<std::uint64_t, std::string>> commands;  // (id, encoded ControlMsg) not yet answered

  // ---- transport ----------------------------------------------------------

  // Claims room for about `guess` bytes, lets `encode` write the record in
  // place, commits and publishes. Waits for room up to request_timeout.
  template <typename Encode>
  Status Write(std::size_t guess, Encode&& encode, std::uint32_t type = framing::kMessage) {
    if (!conn) return Unavailable("not attached to controller '" + o.controller + "'");
    Status s = WriteRecord(*conn, guess, encode, type, Clock::now() + o.request_timeout,
                           [&] { return !conn->ControllerAlive(); });
    if (s.kind() == ErrorKind::kUnavailable) return Dead();
    if (s.kind() == ErrorKind::kTimeout)
      return Status(ErrorKind::kTimeout,
                    "request ring stayed full for " + std::to_string(o.request_timeout.count()) + " ms");
    return s;
  }

  Status WriteBytes(const std::string& bytes, std::uint32_t type = framing::kMessage) {
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
    DropSync();  // the next controller asks for its own
    return Unavailable("controller '" + o.controller + "' has gone");
  }

  // The next reply (skipping those that came too late for their request).
  Result<Message> AwaitReply(Clock::time_point deadline) {
    Message m;
    Status s = AwaitReplyWith(deadline, [&](std::span<const std::uint8_t> payload) {
      auto d = Decode(payload);
      if (!d.ok()) return protocol::ProtocolStatus(protocol::ProtocolError::kDecode, "undecodable reply: " + d.status().message());
      m = std::move(d).value();
      return Status();
    });
    if (!s.ok()) return s;
    return m;
  }

  // Waits for the reply to the request just sent and hands its bytes, still
  // in the ring, to `take` (which decodes them; its status is returned).
  template <typename Take>
  Status AwaitReplyWith(Clock::time_point deadline, Take&& take) {
    if (!conn) return Unavailable("not attached");
    ring::Consumer& c = conn->replies();
    for (;;) {
      auto left = deadline - Clock::now();
      if (left <= Clock::duration::zero()) {
        ++stale_replies;  // its reply may still come: skip it then
        if (!conn->ControllerAlive()) return Dead();
        return Status(ErrorKind::kTimeout, "no reply from controller '" + o.controller + "' in time");
      }
      if (!c.WaitForData(std::min<Clock::duration>(left, std::chrono::milliseconds(50)), o.reply_spin, /*for_reply=*/true,
                         &conn->segment().header()->controller_progress)) {
        if (c.corrupt()) return Status(ErrorKind::kCorrupt, "reply ring: " + c.corruption());
        if (!conn->ControllerAlive()) return Dead();
        continue;
      }
      ring::Record r;
      if (c.Peek(&r) != ring::PollResult::kRecord) continue;
      if (TakeCommand(r)) continue;
      if (stale_replies > 0) {
        --stale_replies;
        ++counters.late_replies_skipped;
        c.Release();
        c.PublishHead();
        continue;
      }
      Status taken = take(r.payload);
      c.Release();
      c.PublishHead();
      return taken;
    }
  }

  // A command record is kept for the handlers (answered by RunCommands) and
  // released; anything else is left for the caller.
  bool TakeCommand(const ring::Record& r) {
    auto cr = framing::SplitCorrelated(r);
    if (!cr || r.type != framing::kCommand) return false;
    commands.emplace_back(cr->id, std::string(cr->message.begin(), cr->message.end()));
    conn->replies().Release();
    conn->replies().PublishHead();
    return true;
  }

  // Collects commands that arrived while no request was waiting. Stops at a
  // reply (one a timed-out request still owes is skipped, as in AwaitReply).
  void CollectCommands() {
    if (!conn) return;
    ring::Consumer& c = conn->replies();
    ring::Record r;
    while (c.Peek(&r) == ring::PollResult::kRecord) {
      if (TakeCommand(r)) continue;
      if (stale_replies == 0) break;
      --stale_replies;
      ++counters.late_replies_skipped;
      c.Release();
      c.PublishHead();
    }
  }

  // Answers every collected command; handlers run with `lock` released.
  void RunCommands(std::unique_lock<DeadlineMutex>& lock) {
    CollectCommands();
    while (!commands.empty()) {
      auto [id, bytes] = std::move(commands.front());
      commands.pop_front();
      const CommandHandlers handlers = o.handlers;
      lock.unlock();
      auto m = Decode(std::span(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
      Message answer = m.ok() ? AnswerCommand(handlers, *m)
                              : Message(ErrorMsg{"Worker error: undecodable command: " + m.status().message()});
      lock.lock();
      ++counters.commands_handled;
      (void)WriteBytes(CorrelatedBytes(id, answer), framing::kCommand);  // unanswered: the controller's deadline reports it
    }
  }

  // The reply as the message a request expects: an ErrorMsg or any other
  // type becomes a Status naming it.
  template <typename Reply>
  static Result<Reply> Expect(Message&& r) {
    if (auto* e = std::get_if<ErrorMsg>(&r)) return Status(ErrorKind::kUnavailable, "controller: " + e->error);
    if (auto* want = std::get_if<Reply>(&r)) return std::move(*want);
    return protocol::ProtocolStatus(protocol::ProtocolError::kDecode, std::string("expected ") + std::string(Reply::kTag) + ", got " +
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
      std::size_t guess = KvBatchBytesBound(o.instance_id.size(), l.name.size(), n);  // room for the bulk encoder
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
      if (c.kind == CommandKind::kFullSync) return BeginFullSync();
    return Status::Ok();
  }

  std::string NewSyncId() {
    char hex[9];
    std::snprintf(hex, sizeof hex, "%08x", static_cast<unsigned>(rng()));
    return o.instance_id + "_" + std::to_string(o.worker_id) + "_" + hex;
  }

  // Schedules a full sync of every location this worker has used (and
  // sync_locations); Tick and Heartbeat advance it (AdvanceSync).
  Status BeginFullSync() {
    if (!o.keys_of)
      return Status(ErrorKind::kInvalidArgument, "the controller asked for a full sync, but no keys_of callback is set");
    if (sync) return Status::Ok();  // one is under way
    if (Status s = FlushAll(); !s.ok()) return s;
    std::vector<std::string> names = o.sync_locations;
    for (const auto& l : locations)
      if (std::find(names.begin(), names.end(), l->name) == names.end()) names.push_back(l->name);
    if (names.empty()) names.push_back(kDefaultSyncLocation);
    sync.emplace();
    sync->locations = std::move(names);
    ++sync_generation;
    return Status::Ok();
  }

  void DropSync() {
    if (!sync) return;
    sync.reset();
    ++sync_generation;
    sync_progress.notify_all();
  }

  // The current location is done (or given up on, as LMCache does after
  // its last poll: the sync itself went through): on to the next.
  void NextSyncLocation() {
    sync->locations.erase(sync->locations.begin());
    sync->started = false;
    sync->keys.clear();
    if (sync->locations.empty()) {
      ++counters.full_syncs;
      DropSync();
    }
  }

  // One step of the sync under way, if one is due. `lock` holds mu; it is
  // released while keys_of runs.
  Status AdvanceSync(std::unique_lock<DeadlineMutex>& lock) {
    if (!sync || !conn || sync->keys_pending) return Status::Ok();
    if (!sync->started) {
      const std::uint64_t generation = sync_generation;
      const std::string loc = sync->locations.front();
      const auto keys_of = o.keys_of;
      sync->keys_pending = true;
      lock.unlock();
      std::vector<std::uint64_t> keys = keys_of(loc);  // the engine's code, without the mutex
      lock.lock();
      if (generation != sync_generation || !sync || !conn || closed) return Status::Ok();  // dropped meanwhile
      sync->keys_pending = false;
      sync->keys = std::move(keys);
      Status s = StartSyncLocation(loc);
      if (!s.ok()) DropSync();  // the controller asks again in a later heartbeat
      sync_progress.notify_all();
      return s;
    }
    if (Clock::now() < sync->next_poll) return Status::Ok();
    ++counters.full_sync_status_polls;
    auto st = Ask<FullSyncStatusRetMsg>(FullSyncStatusMsg{o.instance_id, Int::FromI64(o.worker_id), sync->id}, Deadline());
    if (!sync) return st.ok() ? Status::Ok() : st.status();  // the controller went while we waited
    if (!st.ok()) {
      DropSync();
      return st.status();
    }
    const std::string loc = sync->locations.front();
    SyncJob& j = *sync;
    if (st->is_complete && st->can_exit_freeze) {
      NextSyncLocation();
    } else if (!st->missing_batches.empty() && j.resends++ < 3) {
      for (const Int& b : st->missing_batches)
        if (b.FitsI64() && b.AsI64() >= 0 && static_cast<std::size_t>(b.AsI64()) < j.batches)
          if (Status s = SendSyncBatch(loc, j.id, j.keys, static_cast<std::size_t>(b.AsI64())); !s.ok()) return s;
      FullSyncEndMsg end{o.instance_id, Int::FromI64(o.worker_id), loc, j.id, Int::FromU64(j.keys.size())};
      if (Status s = Send(end); !s.ok()) return s;
      j.next_poll = Clock::now();  // ask again at once
    } else if (++j.polls >= o.full_sync_max_polls) {
      NextSyncLocation();  // as LMCache: leave freeze anyway
    } else {
      // As LMCache: wait for the controller to let workers leave freeze.
      j.next_poll = Clock::now() + o.full_sync_status_poll;
    }
    sync_progress.notify_all();
    return Status::Ok();
  }

  // Runs the sync under way to its end (Heartbeat()), the mutex released
  // while it waits between status polls.
  Status FinishSync(std::unique_lock<DeadlineMutex>& lock) {
    while (sync && conn && !closed) {
      if (sync->keys_pending || (sync->started && Clock::now() < sync->next_poll)) {
        const auto until = sync->keys_pending ? Clock::now() + std::chrono::milliseconds(50) : sync->next_poll;
        sync_progress.wait_until(lock, until);
        continue;
      }
      if (Status s = AdvanceSync(lock); !s.ok()) return s;
    }
    return Status::Ok();
  }

  Status SendSyncBatch(const std::string& loc, const std::string& id, const std::vector<std::uint64_t>& keys,
                       std::size_t b) {
    const std::size_t per = std::max<std::size_t>(1, o.full_sync_batch_keys);
    FullSyncBatchMsg m{o.instance_id, Int::FromI64(o.worker_id), loc, id, Int::FromU64(b), {}};
    for (std::size_t i = b * per; i < std::min(keys.size(), (b + 1) * per); ++i) m.keys.push_back(Int::FromU64(keys[i]));
    return Send(m);
  }

  // Start (retried), every batch and End for the current location.
  Status StartSyncLocation(const std::string& loc) {
    SyncJob& j = *sync;
    const std::size_t per = std::max<std::size_t>(1, o.full_sync_batch_keys);
    j.batches = std::max<std::size_t>(1, (j.keys.size() + per - 1) / per);
    j.id = NewSyncId();
    FullSyncStartMsg start{o.instance_id, Int::FromI64(o.worker_id), loc, j.id, Int::FromU64(j.keys.size()),
                           Int::FromU64(j.batches)};
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
    for (std::size_t b = 0; b < j.batches; ++b)
      if (Status s = SendSyncBatch(loc, j.id, j.keys, b); !s.ok()) return s;
    FullSyncEndMsg end{o.instance_id, Int::FromI64(o.worker_id), loc, j.id, Int::FromU64(j.keys.size())};
    if (Status s = Send(end); !s.ok()) return s;
    j.started = true;
    j.polls = 0;
    j.resends = 0;
    j.next_poll = Clock::now();
    return Status::Ok();
  }

  Status Reattach() {
    if (!o.reattach) return Unavailable("controller '" + o.controller + "' has gone");
    auto c = transport::Connection::Open({o.controller, segment::Role::kWorker, o.attach_timeout, o.controller_uid});
    if (!c.ok()) return c.status();
    conn = std::move(c).value();
    stale_replies = 0;
    ++counters.reattaches;
    // The new controller does not know us: the heartbeat re-registers this
    // worker and brings the FullSyncCommand that rebuilds its keys there.
    return DoHeartbeat();
  }

  Status TickLocked(std::unique_lock<DeadlineMutex>& lock) {
    if (closed) return Status(ErrorKind::kInvalidArgument, "worker closed");
    if (!conn || !conn->ControllerAlive()) {
      conn.reset();
      DropSync();
      if (Status s = Reattach(); !s.ok()) return s;
      return AdvanceSync(lock);
    }
    conn->Heartbeat();  // the segment's liveness word, shown by `kvring inspect`
    auto now = Clock::now();
    for (auto& l : locations)
      if (!l->ops.empty() && now - l->oldest >= o.flush_interval)
        if (Status s = SendQueued(*l); !s.ok()) return s;
    if (now >= next_heartbeat)
      if (Status s = DoHeartbeat(); !s.ok()) return s;
    return AdvanceSync(lock);
  }
};

Worker::Worker(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Worker::~Worker() { (void)Close(); }

Result<std::unique_ptr<Worker>> Worker::Connect(WorkerOptions options) {
  if (options.instance_id.empty()) return Status(ErrorKind::kInvalidArgument, "instance_id must not be empty");
  if (options.batch_ops == 0) return Status(ErrorKind::kInvalidArgument, "batch_ops must be > 0");
  auto impl = std::make_unique<Impl>();
  impl->o = std::move(options);
  auto c = transport::Connection::Open(
      {impl->o.controller, segment::Role::kWorker, impl->o.attach_timeout, impl->o.controller_uid});
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

void Worker::Admit(std::string_view location, std::span<const std::uint64_t> keys) {
  std::lock_guard lock(impl_->mu);
  for (std::uint64_t key : keys) impl_->Queue(location, OpType::kAdmit, key);
}

void Worker::Evict(std::string_view location, std::span<const std::uint64_t> keys) {
  std::lock_guard lock(impl_->mu);
  for (std::uint64_t key : keys) impl_->Queue(location, OpType::kEvict, key);
}

Status Worker::Flush() {
  std::lock_guard lock(impl_->mu);
  return impl_->FlushAll();
}

Result<P2PHit> Worker::Lookup(std::span<const std::uint64_t> hashes, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  // Another thread's request or a sync step holds the mutex for one round
  // trip at most; still, this call never waits past its own deadline.
  std::unique_lock lock(impl_->mu, deadline);
  if (!lock.owns_lock())
    return Status(ErrorKind::kTimeout, "the worker was busy with another request for the whole timeout");
  Impl& m = *impl_;
  if (m.closed) return Status(ErrorKind::kInvalidArgument, "worker closed");
  const protocol::BatchedP2PLookupRequest request{hashes, m.o.instance_id, Int::FromI64(m.o.worker_id)};
  std::size_t guess = 48 + m.o.instance_id.size() + 9 * hashes.size();
  if (Status s = m.Write(guess, [&](std::span<std::uint8_t> out) { return EncodeTo(request, out); }); !s.ok())
    return s;
  // The reply decodes into a kept message (no allocation once warmed up);
  // anything else, an ErrorMsg above all, through the general decoder.
  Status s = m.AwaitReplyWith(deadline, [&](std::span<const std::uint8_t> payload) {
    if (protocol::Decode(payload, &m.lookup_ret).ok()) return Status();
    auto d = Decode(payload);
    if (!d.ok()) return protocol::ProtocolStatus(protocol::ProtocolError::kDecode, "undecodable reply: " + d.status().message());
    return Impl::Expect<BatchedP2PLookupRetMsg>(std::move(d).value()).status();
  });
  if (!s.ok()) return s;
  ++m.counters.lookups;
  P2PHit hit;
  if (!m.lookup_ret.layout_info.empty()) {
    const P2PLayout& l = m.lookup_ret.layout_info[0];
    hit.instance_id = l.instance_id;
    hit.location = l.location;
    hit.num_hit_chunks = l.num_hit_chunks.FitsI64() && l.num_hit_chunks.AsI64() > 0 ? static_cast<std::uint64_t>(l.num_hit_chunks.AsI64()) : 0;
    hit.peer_init_url = l.peer_init_url;
  }
  return hit;
}

Status Worker::Tick() {
  std::unique_lock lock(impl_->mu);
  Status s = impl_->TickLocked(lock);
  impl_->RunCommands(lock);
  return s;
}

Status Worker::Heartbeat() {
  std::unique_lock lock(impl_->mu);
  if (impl_->closed) return Status(ErrorKind::kInvalidArgument, "worker closed");
  if (Status s = impl_->DoHeartbeat(); !s.ok()) return s;
  return impl_->FinishSync(lock);
}

Status Worker::Close() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->ticker_stop = true;
    if (impl_->ticker_wake_fd >= 0) {
      std::uint64_t one = 1;
      (void)!write(impl_->ticker_wake_fd, &one, sizeof one);
    }
  }
  if (impl_->ticker.joinable()) impl_->ticker.join();
  if (impl_->ticker_wake_fd >= 0) close(impl_->ticker_wake_fd), impl_->ticker_wake_fd = -1;
  std::lock_guard lock(impl_->mu);
  Impl& m = *impl_;
  if (m.closed) return Status::Ok();
  m.closed = true;
  m.DropSync();
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
  impl_->ticker_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  impl_->ticker = std::thread([this] {
    Impl& m = *impl_;
    const int period_ms = static_cast<int>(std::max<std::int64_t>(
        1, std::chrono::ceil<std::chrono::milliseconds>(m.o.flush_interval).count()));
    std::unique_lock lock(m.mu);
    while (!m.ticker_stop) {
      // Sleeps until the period ends, Close() writes the eventfd, or the
      // controller sends a byte on the attach socket (a command is waiting).
      pollfd fds[2] = {{m.ticker_wake_fd, POLLIN, 0}, {m.conn ? m.conn->socket_fd() : -1, POLLIN, 0}};
      lock.unlock();
      (void)poll(fds, 2, period_ms);
      lock.lock();
      if (m.ticker_stop) break;
      (void)m.TickLocked(lock);  // failures show in the next call's Status; it also reads the socket's byte
      m.RunCommands(lock);
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

// ---- Orchestrator ---------------------------------------------------------------

constexpr std::chrono::microseconds kAwaitSpin{50};

struct Orchestrator::Impl {
  struct Pending {
    // Written under `mu`; read without it only by a waiter's spin (below).
    std::atomic<bool> done{false};
    Status status;
    std::string bytes;       // the reply's message (or JSON, for control requests)
  };

  std::string name;
  std::unique_ptr<transport::Connection> conn;
  std::mutex write_mu;  // the request ring has one producer at a time
  mutable std::mutex mu;
  std::condition_variable cv;
  std::unordered_map<std::uint64_t, std::shared_ptr<Pending>> by_id;
  std::deque<std::shared_ptr<Pending>> controls;  // answered in order (control records carry no id)
  std::uint64_t next_id = 1;
  bool dead = false;
  bool stop = false;
  std::thread reader;

  void FailAll(const std::string& why) {
    std::lock_guard lock(mu);
    dead = true;
    // release: pairs with the waiter's acquire load of `done` (its spin in
    // Await): it reads `status` after it sees `done`.
    for (auto& [id, p] : by_id) p->status = Unavailable(why), p->done.store(true, std::memory_order_release);
    for (auto& p : controls) p->status = Unavailable(why), p->done.store(true, std::memory_order_release);
    by_id.clear();
    controls.clear();
    cv.notify_all();
  }

  // The only consumer of the reply ring.
  void Read() {
    ring::Consumer& c = conn->replies();
    for (;;) {
      {
        std::lock_guard lock(mu);
        if (stop) return;
      }
      if (!c.WaitForData(std::chrono::milliseconds(50))) {
        if (c.corrupt()) return FailAll("reply ring: " + c.corruption());
        if (!conn->ControllerAlive()) return FailAll("controller '" + name + "' has gone");
        continue;
      }
      ring::Record r;
      while (c.Peek(&r) == ring::PollResult::kRecord) {
        std::shared_ptr<Pending> p;
        std::span<const std::uint8_t> body = r.payload;
        {
          std::lock_guard lock(mu);
          if (auto cr = framing::SplitCorrelated(r); cr && r.type == framing::kRequest) {
            if (auto it = by_id.find(cr->id); it != by_id.end()) p = it->second, by_id.erase(it);
            body = cr->message;
          } else if (r.type == framing::kControl && !controls.empty()) {
            p = controls.front();
            controls.pop_front();
          }
          if (p) {
            p->bytes.assign(body.begin(), body.end());
            p->done.store(true, std::memory_order_release);  // pairs with the waiter's spin (acquire)
          }
        }
        c.Release();
        if (p) cv.notify_all();
      }
      c.PublishHead();
    }
  }

  // Writes one record (waiting for room until `deadline`) and registers its waiter.
  Result<std::shared_ptr<Pending>> Send(std::uint32_t type, const std::string& body, Clock::time_point deadline) {
    auto p = std::make_shared<Pending>();
    std::lock_guard wl(write_mu);
    std::uint64_t id;
    {
      std::lock_guard lock(mu);
      if (dead) return Unavailable("controller '" + name + "' has gone");
      id = next_id++;
      if (type == framing::kControl) controls.push_back(p);
      else by_id.emplace(id, p);
    }
    const std::size_t id_bytes = type == framing::kRequest ? framing::kCorrelationIdBytes : 0;
    const std::size_t size = id_bytes + body.size();
    Status s = WriteRecord(
        *conn, size,
        [&](std::span<std::uint8_t> room) {
          if (room.size() < size) return EncodeResult{size, false};
          if (id_bytes) framing::StoreCorrelationId(room, id);
          std::memcpy(room.data() + id_bytes, body.data(), body.size());
          return EncodeResult{size, true};
        },
        type, deadline, [] { return false; });  // a dead controller: the reader thread fails every waiter
    if (s.ok()) return p;
    std::lock_guard lock(mu);
    if (type == framing::kControl) std::erase(controls, p);
    else by_id.erase(id);
    return s;
  }

  Result<std::string> Await(const std::shared_ptr<Pending>& p, Clock::time_point deadline) {
    // Most answers come within microseconds; a condition-variable wake-up
    // costs tens of them here. Spin a little first (sched_yield keeps other
    // threads of a busy process moving on a small machine).
    const auto spin_until = std::min(deadline, Clock::now() + kAwaitSpin);
    while (!p->done.load(std::memory_order_acquire) && Clock::now() < spin_until) sched_yield();
    std::unique_lock lock(mu);
    if (!cv.wait_until(lock, deadline, [&] { return p->done.load(std::memory_order_relaxed); })) {
      // A control waiter stays queued (its answer is dropped when it comes),
      // so later control answers still meet their own requests.
      for (auto it = by_id.begin(); it != by_id.end(); ++it)
        if (it->second == p) {
          by_id.erase(it);
          break;
        }
      return Status(ErrorKind::kTimeout, "no reply from controller '" + name + "' in time");
    }
    if (!p->status.ok()) return p->status;
    return std::move(p->bytes);
  }
};

Orchestrator::Orchestrator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Orchestrator::~Orchestrator() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stop = true;
  }
  if (impl_->reader.joinable()) impl_->reader.join();
}

Result<std::unique_ptr<Orchestrator>> Orchestrator::Connect(const std::string& name,
                                                             std::chrono::milliseconds attach_timeout) {
  auto c = transport::Connection::Open({name, segment::Role::kOrchestrator, attach_timeout});
  if (!c.ok()) return c.status();
  auto impl = std::make_unique<Impl>();
  impl->name = name;
  impl->conn = std::move(c).value();
  Impl* raw = impl.get();
  impl->reader = std::thread([raw] { raw->Read(); });
  return std::unique_ptr<Orchestrator>(new Orchestrator(std::move(impl)));
}

Result<protocol::Message> Orchestrator::Request(const protocol::Message& request, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  auto p = impl_->Send(framing::kRequest, Encode(request), deadline);
  if (!p.ok()) return p.status();
  auto bytes = impl_->Await(*p, deadline);
  if (!bytes.ok()) return bytes.status();
  return Decode(std::span(reinterpret_cast<const std::uint8_t*>(bytes->data()), bytes->size()));
}

Result<std::string> Orchestrator::Control(const std::string& request_json, std::chrono::milliseconds timeout) {
  auto deadline = Clock::now() + timeout;
  auto p = impl_->Send(framing::kControl, request_json, deadline);
  if (!p.ok()) return p.status();
  return impl_->Await(*p, deadline);
}

bool Orchestrator::alive() const {
  std::lock_guard lock(impl_->mu);
  return !impl_->dead;
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
  conn.PublishRequests();
  if (!conn.replies().WaitForData(timeout)) return Status(ErrorKind::kTimeout, "controller '" + name + "' did not answer");
  ring::Record r;
  if (conn.replies().Peek(&r) != ring::PollResult::kRecord) return Status(ErrorKind::kCorrupt, "reply ring");
  if (r.type != type) return protocol::ProtocolStatus(protocol::ProtocolError::kDecode, "the reply is not of the request's record type");
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
                     framing::kMessage, timeout);
  if (!r.ok()) return r.status();
  return Decode(std::span(reinterpret_cast<const std::uint8_t*>(r->data()), r->size()));
}

Result<std::string> ControlRequest(const std::string& name, const std::string& request_json,
                                   std::chrono::milliseconds timeout) {
  return RoundTrip(name, std::span(reinterpret_cast<const std::uint8_t*>(request_json.data()), request_json.size()),
                   framing::kControl, timeout);
}

Result<std::uint64_t> StatsCounter(const std::string& name, const std::string& counter,
                                   std::chrono::milliseconds timeout) {
  auto reply = ControlRequest(name, R"({"op":"stats"})", timeout);
  if (!reply.ok()) return reply.status();
  auto j = protocol::ParseJson(*reply);
  if (!j.ok()) return j.status();
  if (!j->is_object() || !j->contains(counter) || !(*j)[counter].is_number_unsigned())
    return protocol::ProtocolStatus(protocol::ProtocolError::kValidation, "stats reply has no counter '" + counter + "'");
  return (*j)[counter].get<std::uint64_t>();
}

}  // namespace kvring::client
