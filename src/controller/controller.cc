#include "kvring/controller/controller.h"
#include "kvring/protocol/errors.h"
#include "kvring/shm/framing.h"
#include "controller/fan_outs.h"
#include "controller/full_sync.h"
#include "shm/spin_wait.h"

#include <xxhash.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <tuple>
#include <cstdio>
#include <cerrno>
#include <sched.h>
#include <sys/resource.h>
#include <unistd.h>
#include <cstring>
#include <ctime>

#include <nlohmann/json.hpp>

namespace kvring::controller {
namespace {

constexpr std::int64_t kNoSeq = INT64_MIN;
constexpr std::uint64_t kNoClient = ~0ULL;
constexpr std::uint64_t kRemoteClient = ~0ULL - 1;  // the owner of remote workers: no connection speaks for them
constexpr double kHousekeepingPeriod = 0.1;     // seconds
constexpr double kListenerPollPeriod = 50e-6;   // seconds

double WallSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

double MonoSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

bool ExpectsReply(std::string_view tag) {
  // WorkerReqMsg and OrchMsg types: the sender waits for an answer.
  for (std::string_view t : {"RegisterMsg", "HeartbeatMsg", "BatchedP2PLookupMsg", "FullSyncStartMsg",
                             "FullSyncStatusMsg", "LookupMsg", "QueryInstMsg", "ClearMsg", "PinMsg",
                             "CompressMsg", "DecompressMsg", "MoveMsg", "HealthMsg", "CheckFinishMsg",
                             "QueryWorkerInfoMsg"})
    if (tag == t) return true;
  return false;
}

// The registry's record of a worker from its RegisterMsg or HeartbeatMsg.
template <typename Msg>
registry::WorkerRecord WorkerRecordOf(const Msg& msg) {
  registry::WorkerRecord w;
  w.instance_id = msg.instance_id;
  w.worker_id = msg.worker_id.SaturatedI64();
  w.ip = msg.ip;
  w.port = msg.port.SaturatedI64();
  w.peer_init_url = msg.peer_init_url;
  w.registration_time = w.last_heartbeat_time = WallSeconds();
  return w;
}

// Bulk records (events and full-sync batches) may wait; everything else is a
// request someone is waiting on, or cheap bookkeeping. A KV batch is bulk in
// any framing: so a pass that serves only requests never applies one, and the
// slices of a batch never nest.
// Records a requests-only pass (ServeWaitingRequests) leaves for the full
// pass: bulk (KV events, full-sync batches) and whatever registers, retires or
// re-syncs a worker. Between the slices of a KV batch only the rest is served,
// so the worker and holder the batch resolved at its start stay what they are
// until its last op: a batch applies wholly or, when such a change came first,
// not at all.
bool WaitsForFullPass(const ring::Record& r, const Result<std::string_view>& tag) {
  if ((r.type != framing::kMessage && r.type != framing::kRequest) || !tag.ok()) return false;
  const std::string_view t = *tag;
  return t == protocol::BatchedKVOperationView::kTag || t == "KVAdmitMsg" || t == "KVEvictMsg" ||
         t == "RegisterMsg" || t == "DeRegisterMsg" || t.starts_with("FullSync");
}

std::uint64_t Mix64(std::uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

}  // namespace

Controller::Controller(const Options& options)
    : options_(options), index_(options.index),
      sync_(std::make_unique<FullSync>(FullSync::Options{options.full_sync_threshold, options.full_sync_timeout_s,
                                                         options.heartbeat_interval_s, options.full_sync_max_batches,
                                                         options.full_sync_on_start},
                                       &stats_)),
      fan_outs_(std::make_unique<FanOuts>(options.events_remembered)),
      started_mono_(MonoSeconds()) {}

Controller::~Controller() = default;

bool Controller::full_sync_all_pending() const { return sync_->restart_wide(); }

std::size_t Controller::fanouts_in_flight() const { return fan_outs_->size(); }

Result<std::unique_ptr<Controller>> Controller::Start(const Options& options) {
  if (options.request_check_ops == 0 || options.ring_budget_records == 0 || options.drop_slice == 0)
    return Status(ErrorKind::kInvalidArgument, "request_check_ops, ring_budget_records and drop_slice must be > 0");
  if (!(options.full_sync_threshold >= 0 && options.full_sync_threshold <= 1))
    return Status(ErrorKind::kInvalidArgument, "full_sync_threshold must be within [0, 1]");
  auto l = transport::Listener::Start(options.listen);
  if (!l.ok()) return l.status();
  std::unique_ptr<Controller> c;
  try {
    c.reset(new Controller(options));
  } catch (const std::bad_alloc&) {  // a reserve the machine cannot hold
    return Status(ErrorKind::kInvalidArgument,
                  "not enough memory for an index reserve of " + std::to_string(options.index.reserve_keys) + " keys");
  }
  c->listener_ = std::move(l).value();
  c->listener_->Heartbeat();
  if (options.remote_feed) c->listener_->WatchWakeFd(options.remote_feed->wake_fd());
  Controller* self = c.get();
  c->listener_->OnDeparture([self](transport::Client& gone) { self->ServeClient(gone, SIZE_MAX, SIZE_MAX, false); });
  return c;
}

std::size_t Controller::PollOnce(std::chrono::milliseconds idle_wait) {
  // Attaches and departures are rare: while busy, the poll() system call
  // (about a microsecond) runs every kListenerPollPeriod, not every pass.
  const double now = MonoSeconds();
  if (idle_wait.count() > 0 || now >= next_listener_poll_) {
    next_listener_poll_ = now + kListenerPollPeriod;
    const bool sleeping = idle_wait.count() > 0;
    if (sleeping) {
      // Announce the sleep, then look once more: a client that published
      // before seeing the mark has its record seen here (doorbell Dekker pair).
      listener_->SetControllerSleeping(true);
      for (const auto& c : listener_->clients())
        if (!c->quarantined && c->requests.HasData()) {
          idle_wait = std::chrono::milliseconds(0);
          break;
        }
      // The other nodes' records ring the remote feed's eventfd, which the poll watches.
      if (options_.remote_feed && !options_.remote_feed->PrepareToSleep()) idle_wait = std::chrono::milliseconds(0);
    }
    transport::Listener::Events ev = listener_->Poll(idle_wait);
    if (sleeping) {
      listener_->SetControllerSleeping(false);
      if (options_.remote_feed) options_.remote_feed->Awake();
    }
    stats_.errors += ev.rejected.size();
    if (options_.log)
      for (const std::string& why : ev.rejected) options_.log("client refused: " + why);
    for (std::uint64_t id : ev.detached) ClientGone(id);
  }
  std::size_t handled = 0;
  const auto& clients = listener_->clients();
  const std::size_t n = clients.size();
  // Requests first, everywhere; then bulk, round-robin from a rotating start.
  handled += ServeWaitingRequests(nullptr);
  // A client waiting for a reply sees the progress word move while this
  // thread runs, and polls rather than yields (ring.h, WaitForData). That
  // pays only while this thread keeps its core: at normal priority on an
  // oversubscribed machine it is descheduled as often as the clients are, and
  // their polling only cost ingest (docs/PERFORMANCE.md "Under CPU
  // contention"). So the word moves only while the thread runs above
  // normal priority (--nice below 0, or a real-time policy).
  if (prioritized_) ++passes_;
  for (std::size_t k = 0; k < n; ++k) {
    transport::Client& c = *clients[(next_client_ + k) % n];
    if (prioritized_) c.segment.header()->controller_progress.store(passes_, std::memory_order_relaxed);  // a hint
    handled += ServeClient(c, options_.ring_budget_records, options_.ring_budget_bytes, false);
  }
  if (n) next_client_ = (next_client_ + 1) % n;
  DropSomeKeys();
  handled += ApplyRemote();  // counted: the loop keeps passing (not sleeping) while records flow
  if (options_.change_feed) {
    // A dump's records count as work: an idle node's dump goes on pass after pass, not one slice per sleep.
    const std::uint64_t fed = stats_.change_feed_records + stats_.change_feed_overflows;
    ContinueResync();
    handled += static_cast<std::size_t>(stats_.change_feed_records + stats_.change_feed_overflows - fed);
    options_.change_feed->Publish();  // this pass's changes, one store
  }
  if (fan_outs_->next_deadline() != 0 && now >= fan_outs_->next_deadline()) ExpireFanOuts(now);
  Housekeeping(now);
  return handled;
}

void Controller::Run(const std::atomic<bool>& stop, std::uint32_t spin_passes,
                     const std::function<void(bool idle)>& after_pass, std::chrono::microseconds spin_time) {
  using Clock = std::chrono::steady_clock;
  // Idle, the loop keeps passing for spin_passes passes and spin_time more,
  // then sleeps on the doorbell. Both budgets scale with the thread's
  // SpinShrink (spin_wait.h): they halve while idle spins do not pay off
  // (traffic sparser than the spin) and regrow while they do. A controller
  // descheduled while spinning spins on: it is the one thread every client
  // waits for, and a sleeping one costs each client's next record a wake-up
  // (measured: sleeping sooner under contention lowered ingest, PERFORMANCE.md).
  std::uint32_t idle = 0;
  std::optional<detail::SpinWait> spin;  // the idle period's, from its first idle pass
  std::uint32_t passes = 0;              // this idle period's pass budget
  Clock::time_point passes_spun{};       // when the passes were spun: the timed spin starts there
  Clock::duration spin_for{};
  bool asleep = false;
  while (!stop.load(std::memory_order_relaxed)) {  // relaxed: a flag, no data rides on it
    if (spin && !asleep && idle >= passes) {
      asleep = spin_time.count() == 0 || Clock::now() - passes_spun >= spin_for;  // the clock is read only now
      if (asleep) spin->Stop();
    }
    if (PollOnce(asleep ? kIdleSleep : std::chrono::milliseconds(0)) > 0) {
      // Full spin: the passes (~0.1 us each, not timed) and spin_time.
      if (spin) spin->Done(true, std::chrono::duration_cast<Clock::duration>(spin_time) + spin_passes * std::chrono::nanoseconds(100));
      spin.reset();
      idle = 0;
      asleep = false;
    } else if (++idle == 1) {
      spin.emplace(std::numeric_limits<std::uint64_t>::max());  // only its outcome is used
      const unsigned shrink = detail::SpinShrink();
      passes = spin_passes >> shrink;
      spin_for = std::chrono::duration_cast<Clock::duration>(spin_time) / (1u << shrink);
      if (passes <= 1) passes_spun = Clock::now();
    } else if (idle == passes) {
      passes_spun = Clock::now();
    }
    if (after_pass) after_pass(idle != 0);
  }
}

std::size_t Controller::ServeClient(transport::Client& c, std::size_t max_records, std::size_t max_bytes,
                                    bool requests_only) {
  if (c.quarantined) return 0;
  std::size_t n = 0, bytes = 0;
  ring::Record r;
  while (n < max_records && bytes < max_bytes && !c.quarantined && c.requests.Peek(&r) == ring::PollResult::kRecord) {
    // The tag is read once: it picks both the scheduling class and the handler.
    const std::optional<framing::Correlated> corr = framing::SplitCorrelated(r);
    Result<std::string_view> tag = r.type == framing::kMessage || (r.type == framing::kRequest && corr)
                                       ? protocol::PeekTag(corr ? corr->message : r.payload, options_.limits)
                                       : Result<std::string_view>(std::string_view());
    if (requests_only && WaitsForFullPass(r, tag)) break;
    HandleRecord(c, r, corr, tag);
    bytes += r.payload.size();
    c.requests.Release();
    ++n;
  }
  if (n) c.requests.PublishHead();
  if (c.requests.corrupt()) {
    listener_->Quarantine(c, segment::kRequestRing);
    ++stats_.quarantined_rings;
    Problem(c, "request ring quarantined: " + c.requests.corruption());
  }
  listener_->PublishReplies(c);
  return n;
}

std::size_t Controller::ServeWaitingRequests(const transport::Client* busy) {
  // Serves requests only (WaitsForFullPass stops each pass): no KV batch, so
  // no slice of one, runs inside this, this never runs inside itself, and
  // nothing served here retires the worker or holder of a batch in flight.
  std::size_t n = 0;
  // Most clients have nothing waiting: a look at the header where their
  // next record would be settles that, without a serving pass.
  for (const auto& cp : listener_->clients())
    if (cp.get() != busy && cp->requests.HasRecord())
      n += ServeClient(*cp, options_.ring_budget_records, options_.ring_budget_bytes, true);
  return n;
}

void Controller::HandleRecord(transport::Client& c, const ring::Record& r,
                              const std::optional<framing::Correlated>& corr, const Result<std::string_view>& tag) {
  ++stats_.messages;
  if (!framing::IsKnownType(r.type)) {  // the ring carries any type; the framing knows these
    ++stats_.errors;
    return Problem(c, "record of unknown type " + std::to_string(r.type));
  }
  if (r.type == framing::kControl) return HandleControl(c, r.payload);
  if (r.type == framing::kRoutedCommand) {  // the controller's to send, never to receive
    ++stats_.errors;
    return Problem(c, "routed command record sent to the controller");
  }
  if ((r.type == framing::kCommand || r.type == framing::kRequest) && !corr) {
    ++stats_.errors;
    return Problem(c, "correlated record shorter than its id");
  }
  if (r.type == framing::kCommand) return HandleCommandReply(c, corr->id, corr->message);
  if (!tag.ok()) {
    // No tag, so no way to know whether the sender waits for an answer; an
    // unsolicited ErrorMsg would be read as the reply to its next request.
    ++stats_.errors;
    return Problem(c, "undecodable record: " + tag.status().message());
  }
  HandleMessage(c, ReplyRoute{c.id, r.type, corr ? corr->id : 0}, corr ? corr->message : r.payload, *tag);
}

void Controller::HandleMessage(transport::Client& c, const ReplyRoute& route, std::span<const std::uint8_t> msg,
                               std::string_view tag) {
  if (tag == protocol::BatchedKVOperationView::kTag) return ServeKvBatch(c, msg);
  if (tag == protocol::BatchedP2PLookupKeys::kTag) {
    const auto t0 = std::chrono::steady_clock::now();
    HandleP2P(c, route, msg);
    stats_.p2p_latency.Record(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return;
  }
  auto m = protocol::DecodeTagged(tag, msg, options_.limits);  // the decoder found from the tag read once
  if (!m.ok()) {
    ++stats_.errors;
    Problem(c, std::string(tag) + ": " + m.status().message());
    if (ExpectsReply(tag)) ReplyError(c, route, m.status().message());
    return;
  }
  HandleGeneric(c, route, std::move(m).value());
}

bool Controller::ApplyOp(std::uint32_t worker, index::HolderId holder, protocol::OpType op, std::uint64_t key,
                         const protocol::Int& seq, bool* gap_counted) {
  if (op == protocol::OpType::kAdmit) (void)index_.Add(key, holder);  // over quota: counted by the index
  else index_.Remove(key, holder);
  ++stats_.kv_ops;
  if (holder >= last_seq_.size()) last_seq_.resize(holder + 1, kNoSeq);
  std::int64_t s = seq.SaturatedI64();
  bool gap = last_seq_[holder] != kNoSeq && s != last_seq_[holder] + 1;
  if (gap && !*gap_counted) {
    *gap_counted = true;  // as LMCache: the first gap of a batch counts once
    ++stats_.seq_discontinuities;
    sync_->SequenceGap(worker);  // better than LMCache: ask for a full sync
  }
  last_seq_[holder] = s;
  return gap;
}

void Controller::ServeKvBatch(transport::Client& c, std::span<const std::uint8_t> bytes) {
  if (Status s = protocol::Decode(bytes, &kv_view_, options_.limits); !s.ok()) {
    ++stats_.errors;
    return Problem(c, "BatchedKVOperationMsg: " + s.message());
  }
  KvBatch b;
  if (kv_view_.operations.empty() || !ResolveKvBatch(c, &b)) return;
  // Between slices, the requests waiting at the other clients' heads; none
  // of them changes workers (WaitsForFullPass), so `b` stays resolved.
  while (ApplyKvSlice(&b)) ServeWaitingRequests(&c);
  if (feed::ChangeFeed* f = options_.change_feed) {  // the whole batch was applied
    FeedHolder(b.holder);
    FeedWritten(f->Keys(b.holder, kv_view_.operations));
  }
}

bool Controller::ResolveKvBatch(transport::Client& c, KvBatch* b) {
  const std::size_t rest = kv_view_.operations.size() - b->next;
  auto found = registry_.Find(kv_view_.instance_id, kv_view_.worker_id.SaturatedI64());
  if (!found) {
    stats_.dropped_unknown_worker += rest;  // LMCache drops these too
    return false;
  }
  if (!MaySpeakFor(c, *found, "BatchedKVOperationMsg", nullptr)) {
    stats_.dropped_not_owner += rest;
    return false;
  }
  if (sync_->syncing(*found)) {
    stats_.dropped_syncing += rest;  // as LMCache: the sync's snapshot supersedes them
    return false;
  }
  b->worker = *found;
  b->holder = registry_.Holder(*found, kv_view_.location);
  return true;
}

bool Controller::ApplyKvSlice(KvBatch* b) {
  const std::span<const protocol::KVOpEvent> ops = kv_view_.operations;
  const std::size_t n = ops.size();
  // Keep the buckets of the next kPrefetchOps keys in flight: independent
  // DRAM reads overlap instead of each op waiting for its own miss.
  constexpr std::size_t kPrefetchOps = 16;
  auto prefetch = [&](std::size_t i) {
    std::uint64_t key = ops[i].key.bits();
    index_.Prefetch(std::span<const std::uint64_t>(&key, 1));
  };
  std::size_t i = b->next;  // in a register while the slice runs
  if (i == 0)
    for (std::size_t k = 0; k < std::min(n, kPrefetchOps); ++k) prefetch(k);
  for (; i < n; ++i) {
    // Every request_check_ops ops, across batches and clients, back to the
    // scheduler (ServeKvBatch) to let waiting requests in.
    if (ops_since_scan_ >= options_.request_check_ops) {
      ops_since_scan_ = 0;
      b->next = i;
      return true;
    }
    ++ops_since_scan_;
    if (i + kPrefetchOps < n) prefetch(i + kPrefetchOps);
    ApplyOp(b->worker, b->holder, ops[i].op_type, ops[i].key.bits(), ops[i].seq_num, &b->gap_counted);
  }
  b->next = n;
  return false;
}

void Controller::HandleP2P(transport::Client& c, const ReplyRoute& route, std::span<const std::uint8_t> bytes) {
  if (Status s = protocol::Decode(bytes, &p2p_view_, options_.limits); !s.ok()) {
    ++stats_.errors;
    Problem(c, "BatchedP2PLookupMsg: " + s.message());
    return ReplyError(c, route, s.message());
  }
  ++stats_.p2p_lookups;
  p2p::Hit hit = lookup_.Run(index_, registry_, p2p_view_.hashes, p2p_view_.instance_id, p2p_view_.worker_id.SaturatedI64(),
                             options_.policy);
  // Encoded straight from the lookup's result (views into the registry)
  // into the reply ring, after the request's id if it has one.
  const protocol::P2PLayoutView layout{hit.instance_id, hit.location, protocol::Int::FromU64(hit.num_hit_chunks),
                                       hit.peer_init_url};
  const std::size_t id_bytes = route.type == framing::kRequest ? framing::kCorrelationIdBytes : 0;
  std::span<std::uint8_t> out;
  std::size_t guess = id_bytes + 64 + hit.instance_id.size() + hit.location.size() + hit.peer_init_url.size();
  if (!ClaimReply(c, guess, &out)) return;
  if (id_bytes) framing::StoreCorrelationId(out, route.id);
  protocol::EncodeResult r = protocol::EncodeTo(protocol::BatchedP2PLookupRetView{{&layout, 1}}, out.subspan(id_bytes));
  if (!r.fits) {  // cannot happen with the guess above; stay correct anyway
    c.replies.Abort();
    return Reply(c, route,
                 protocol::BatchedP2PLookupRetMsg{{protocol::P2PLayout{std::string(hit.instance_id), std::string(hit.location),
                                                                      layout.num_hit_chunks,
                                                                      std::string(hit.peer_init_url)}}});
  }
  c.replies.Commit(id_bytes + r.bytes, route.type);
  c.replies.DemoteLastRecord();  // the requester reads it from the shared cache (1-hash round trip ~6 % faster)
}

void Controller::Reply(transport::Client& c, const ReplyRoute& route, const protocol::Message& m) {
  (void)Emit(c, route.type, route.id, m);
}

bool Controller::Emit(transport::Client& c, std::uint32_t type, std::uint64_t id, const protocol::Message& m) {
  const std::size_t id_bytes = type == framing::kMessage ? 0 : framing::kCorrelationIdBytes;
  std::span<std::uint8_t> out;
  std::string bytes = protocol::Encode(m);  // the cold path; hot replies encode in place
  if (!ClaimReply(c, id_bytes + bytes.size(), &out)) return false;
  if (id_bytes) framing::StoreCorrelationId(out, id);
  std::memcpy(out.data() + id_bytes, bytes.data(), bytes.size());
  c.replies.Commit(id_bytes + bytes.size(), type);
  c.replies.DemoteLastRecord();
  return true;
}

bool Controller::ClaimReply(transport::Client& c, std::size_t bytes, std::span<std::uint8_t>* out) {
  switch (c.replies.TryClaim(bytes, out)) {
    case ring::ClaimResult::kOk: return true;
    case ring::ClaimResult::kCorrupt:
      // The client's consumer position is garbage: like a corrupt request
      // ring, the client is quarantined (nothing of its is read or written again).
      if (!c.quarantined) {
        listener_->Quarantine(c, segment::kReplyRing);
        ++stats_.quarantined_rings;
        Problem(c, "reply ring quarantined: " + c.replies.corruption());
      }
      return false;
    default: ++stats_.reply_ring_full; return false;  // full, or a reply above the ring's largest record
  }
}

bool Controller::EmitCommand(transport::Client& c, std::uint64_t id, std::uint32_t worker, const protocol::Message& m) {
  if (c.role != segment::Role::kFront) return Emit(c, framing::kCommand, id, m);
  // A front carries many workers: the record names the one this is for.
  const registry::WorkerRecord& w = registry_.worker(worker);
  const std::size_t head = framing::RoutedCommandHeaderBytes(w.instance_id);
  std::string bytes = protocol::Encode(m);
  std::span<std::uint8_t> out;
  if (!ClaimReply(c, head + bytes.size(), &out)) return false;
  framing::StoreRoutedCommandHeader(out, id, w.worker_id, w.instance_id);
  std::memcpy(out.data() + head, bytes.data(), bytes.size());
  c.replies.Commit(head + bytes.size(), framing::kRoutedCommand);
  return true;
}

void Controller::ReplyControl(transport::Client& c, const std::string& json) {
  std::span<std::uint8_t> out;
  if (!ClaimReply(c, json.size(), &out)) return;
  std::memcpy(out.data(), json.data(), json.size());
  c.replies.Commit(json.size(), framing::kControl);
}

void Controller::ReplyError(transport::Client& c, const ReplyRoute& route, const std::string& text) {
  Reply(c, route, protocol::ErrorMsg{text});
}

void Controller::Problem(const transport::Client& c, const std::string& what) {
  if (!options_.log) return;
  double now = MonoSeconds();
  auto [it, fresh] = last_problem_log_.try_emplace(c.id, now);
  if (!fresh && now - it->second < 1.0) return;  // one line per client per second
  it->second = now;
  options_.log("client " + std::to_string(c.id) + " (pid " + std::to_string(c.pid) + "): " + what);
}

void Controller::HandleControl(transport::Client& c, std::span<const std::uint8_t> bytes) {
  ++stats_.control_requests;
  auto req = nlohmann::json::parse(bytes.begin(), bytes.end(), nullptr, /*allow_exceptions=*/false);
  std::string op = req.is_object() && req.contains("op") && req["op"].is_string() ? req["op"].get<std::string>() : "";
  if (op == "stats") return ReplyControl(c, StatsJson());
  if (op == "metrics") return ReplyControl(c, nlohmann::json{{"metrics", MetricsText()}}.dump());
  if (op == "digest") {
    char hex[19];
    std::snprintf(hex, sizeof hex, "0x%016llx", static_cast<unsigned long long>(IndexDigest()));
    return ReplyControl(c, nlohmann::json{{"digest", hex}, {"keys", index_.pairs()}}.dump());
  }
  ++stats_.errors;
  Problem(c, "unknown control request");
  ReplyControl(c, nlohmann::json{{"error", "unknown control request; expected {\"op\": \"stats\"|\"metrics\"|\"digest\"}"}}.dump());
}

std::uint32_t Controller::UpsertWorker(std::uint64_t owner, bool owner_is_front, const registry::WorkerRecord& rec,
                                       bool* is_new) {
  std::uint32_t w = registry_.Upsert(rec, is_new);
  if (w >= workers_.size()) workers_.resize(w + 1);
  if (*is_new) workers_[w] = WorkerState{};
  sync_->Track(w, *is_new);
  workers_[w].client = owner;
  workers_[w].owner_is_front = owner_is_front;
  workers_[w].last_heartbeat_mono = MonoSeconds();
  return w;
}

// A worker identity belongs to the connection that registered it: a client
// may name any (instance_id, worker_id) in a message, and without this rule
// one process could evict another's keys, inject phantom keys, or redirect
// peers to its own peer_init_url. The owner's departure (its socket closes)
// forgets its workers, so a restarted worker registers afresh. The ZeroMQ
// front is one owner for all its network peers (and its bulk and requests
// are two connections): ZeroMQ does not tell them apart here
// (docs/LMCACHE-SEMANTICS.md).
bool Controller::MaySpeakFor(transport::Client& c, std::uint32_t w, std::string_view what, const ReplyRoute* reply_to) {
  const WorkerState& ws = workers_[w];
  if (ws.client == c.id || (ws.owner_is_front && c.role == segment::Role::kFront)) return true;
  ++stats_.identity_refused;
  const registry::WorkerRecord& rec = registry_.worker(w);
  const transport::Client* owner = listener_->Find(ws.client);
  const std::string why = std::string(what) + " for worker " + rec.instance_id + "/" +
                          std::to_string(rec.worker_id) + " refused: that worker is registered by another connection (" +
                          (owner ? "pid " + std::to_string(owner->pid) : "client " + std::to_string(ws.client)) + ")";
  Problem(c, why);
  if (reply_to) ReplyError(c, *reply_to, "kvring: " + why);
  return false;
}

void Controller::HandleGeneric(transport::Client& c, const ReplyRoute& route, protocol::Message&& m) {
  using namespace protocol;
  // One dispatch, on the variant's index (the tag was read once, in
  // ServeClient, and picked the decoder): each message type's branch is
  // chosen at compile time.
  std::visit(
      [&](auto& msg) {
        using T = std::decay_t<decltype(msg)>;
        if constexpr (std::is_same_v<T, RegisterMsg>) {
          // As LMCache: a repeated registration starts the worker's keys
          // afresh; unlike LMCache, only from the connection that holds the identity.
          if (auto known = registry_.Find(msg.instance_id, msg.worker_id.SaturatedI64())) {
            if (!MaySpeakFor(c, *known, "RegisterMsg", &route)) return;
            ForgetWorker(*known);
          }
          bool is_new;
          UpsertWorker(c.id, c.role == segment::Role::kFront, WorkerRecordOf(msg), &is_new);
          RegisterRetMsg ret;
          ret.extra_config.emplace_back("heartbeat_interval_s", std::to_string(options_.heartbeat_interval_s));
          ret.extra_config.emplace_back("full_sync_timeout_s", std::to_string(options_.full_sync_timeout_s));
          Reply(c, route, ret);
        } else if constexpr (std::is_same_v<T, HeartbeatMsg>) {
          HandleHeartbeat(c, route, msg);
        } else if constexpr (std::is_same_v<T, DeRegisterMsg>) {
          if (auto w = registry_.Find(msg.instance_id, msg.worker_id.SaturatedI64()))
            if (MaySpeakFor(c, *w, "DeRegisterMsg", nullptr)) ForgetWorker(*w);
        } else if constexpr (std::is_same_v<T, FullSyncStartMsg> || std::is_same_v<T, FullSyncBatchMsg> ||
                             std::is_same_v<T, FullSyncEndMsg> || std::is_same_v<T, FullSyncStatusMsg>) {
          HandleFullSync(c, route, m);
        } else if constexpr (std::is_same_v<T, LookupMsg>) {
          const auto t0 = std::chrono::steady_clock::now();
          ++stats_.token_lookups;
          HandleTokenLookup(c, route, msg);
          stats_.token_lookup_latency.Record(
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        } else if constexpr (std::is_same_v<T, QueryInstMsg> || std::is_same_v<T, QueryWorkerInfoMsg>) {
          HandleQuery(c, route, m);
        } else if constexpr (std::is_same_v<T, CheckFinishMsg>) {
          HandleCheckFinish(c, route, msg);
        } else if constexpr (std::is_same_v<T, ClearMsg> || std::is_same_v<T, PinMsg> ||
                             std::is_same_v<T, CompressMsg> || std::is_same_v<T, DecompressMsg> ||
                             std::is_same_v<T, MoveMsg> || std::is_same_v<T, HealthMsg>) {
          HandleOrchestration(c, route, m);
        } else if constexpr (std::is_same_v<T, KVAdmitMsg> || std::is_same_v<T, KVEvictMsg>) {
          auto w = registry_.Find(msg.instance_id, msg.worker_id.SaturatedI64());
          if (!w) return void(++stats_.dropped_unknown_worker);
          if (!MaySpeakFor(c, *w, T::kTag, nullptr)) return void(++stats_.dropped_not_owner);
          if (sync_->syncing(*w)) return void(++stats_.dropped_syncing);
          bool gap_counted = false;
          const index::HolderId h = registry_.Holder(*w, msg.location);
          const OpType op = std::is_same_v<T, KVAdmitMsg> ? OpType::kAdmit : OpType::kEvict;
          ApplyOp(*w, h, op, msg.key.bits(), msg.seq_num, &gap_counted);
          if (feed::ChangeFeed* f = options_.change_feed) {
            FeedHolder(h);
            FeedWritten(f->Key(h, op, msg.key.bits()));
          }
        } else {
          ++stats_.errors;
          const std::string tag(T::kTag);
          Problem(c, tag + " is not a request the controller answers");
          if (ExpectsReply(tag)) ReplyError(c, route, "kvring: " + tag + " is not a request the controller answers");
        }
      },
      m);
}

void Controller::HandleHeartbeat(transport::Client& c, const ReplyRoute& route, const protocol::HeartbeatMsg& hb) {
  using namespace protocol;
  HeartbeatRetMsg ret;
  auto ask = [&](std::uint32_t w, const char* reason) {
    ret.commands.push_back({CommandKind::kFullSync, std::string(reason), std::nullopt});
    sync_->Asked(w, MonoSeconds());
  };
  auto known = registry_.Find(hb.instance_id, hb.worker_id.SaturatedI64());
  if (!known) {
    // Unknown (a restarted controller, or reaped): re-register and rebuild.
    bool is_new;
    const std::uint32_t w = UpsertWorker(c.id, c.role == segment::Role::kFront, WorkerRecordOf(hb), &is_new);
    workers_[w].heartbeats = true;
    ask(w, "worker_re_registered");
    return Reply(c, route, ret);
  }
  std::uint32_t w = *known;
  if (!MaySpeakFor(c, w, "HeartbeatMsg", &route)) return;
  registry_.worker(w).last_heartbeat_time = WallSeconds();
  workers_[w].last_heartbeat_mono = MonoSeconds();
  workers_[w].heartbeats = true;
  if (const char* reason = sync_->ReasonToAsk(w)) ask(w, reason);
  Reply(c, route, ret);
}

void Controller::HandleFullSync(transport::Client& c, const ReplyRoute& route, protocol::Message& m) {
  using namespace protocol;
  const double now = MonoSeconds();
  if (auto* st = std::get_if<FullSyncStartMsg>(&m)) {
    FullSyncStartRetMsg ret{st->sync_id, false, std::nullopt};
    auto w = registry_.Find(st->instance_id, st->worker_id.SaturatedI64());
    const std::string who = st->instance_id + "/" + std::to_string(st->worker_id.SaturatedI64());
    std::string refused;
    if (!w) refused = "Failed to start sync: worker " + who + " is not registered";
    else if (!MaySpeakFor(c, *w, "FullSyncStartMsg", nullptr))
      refused = "Failed to start sync: worker " + who + " is registered by another connection";
    else refused = sync_->Start(*w, st->sync_id, st->batch_count.SaturatedI64(), st->total_keys.SaturatedI64(), now);
    if (refused.empty()) {
      // The location starts afresh: its old keys drain in slices while the
      // batches fill a new holder.
      if (auto old = registry_.RetireHolder(*w, st->location)) RetireHolder(*old);
      ret.accepted = true;
    } else {
      ret.error_msg = refused;
      ++stats_.errors;
      Problem(c, refused);
    }
    return Reply(c, route, ret);
  }
  // The worker whose sync `msg` continues; counted and logged when none is.
  auto running = [&](const auto& msg) -> std::optional<std::uint32_t> {
    auto w = registry_.Find(msg.instance_id, msg.worker_id.SaturatedI64());
    if (w && !MaySpeakFor(c, *w, TagOf(m), nullptr)) return std::nullopt;
    if (w && sync_->Running(*w, msg.sync_id)) return w;
    ++stats_.errors;
    Problem(c, std::string(TagOf(m)) + " for " + msg.sync_id + " outside a running sync: dropped");
    return std::nullopt;
  };
  if (auto* b = std::get_if<FullSyncBatchMsg>(&m)) {
    auto w = running(*b);
    if (!w) return;
    const std::int64_t id = b->batch_id.SaturatedI64();
    if (!sync_->Batch(*w, id, b->keys.size(), now)) {
      ++stats_.errors;
      return Problem(c, "FullSyncBatchMsg batch_id " + std::to_string(id) + " outside the announced batch_count");
    }
    index::HolderId h = registry_.Holder(*w, b->location);
    for (const Int& k : b->keys) (void)index_.Add(k.bits(), h);
    if (feed::ChangeFeed* f = options_.change_feed) {
      FeedHolder(h);
      FeedWritten(f->Admits(h, b->keys));
    }
    return;
  }
  if (auto* e = std::get_if<FullSyncEndMsg>(&m)) {
    auto w = running(*e);
    if (!w) return;
    const std::int64_t received = sync_->End(*w, now);
    if (e->actual_total_keys.SaturatedI64() != received)
      Problem(c, "full sync " + e->sync_id + ": End reports " + std::to_string(e->actual_total_keys.SaturatedI64()) +
                     " keys, batches brought " + std::to_string(received));
    return;
  }
  auto& q = std::get<FullSyncStatusMsg>(m);
  FullSyncStatusRetMsg ret;
  ret.sync_id = q.sync_id;
  auto w = registry_.Find(q.instance_id, q.worker_id.SaturatedI64());
  if (w && !MaySpeakFor(c, *w, "FullSyncStatusMsg", &route)) return;
  if (w) {
    ret.is_complete = sync_->Completed(*w, q.sync_id);
    for (std::size_t i : sync_->MissingBatches(*w, q.sync_id)) ret.missing_batches.push_back(Int(static_cast<long long>(i)));
  }
  ret.global_progress = GlobalSyncProgress();
  ret.can_exit_freeze = sync_->MayLeaveFreeze(ret.global_progress);
  Reply(c, route, ret);
}

// LookupMsg, with LMCache's pending fix (its PR #4471): every instance that
// holds chunk 0 appears, credited with the end token of its own contiguous
// prefix and the location of its last chunk in it; the first entry is the
// holder of chunk 0 that LMCache's own walk would find (registration order).
void Controller::HandleTokenLookup(transport::Client& c, const ReplyRoute& route, const protocol::LookupMsg& m) {
  using namespace protocol;
  std::vector<std::int64_t> tokens;
  tokens.reserve(m.tokens.size());
  for (const Int& t : m.tokens) {
    if (!t.FitsI64()) return ReplyError(c, route, "LookupMsg: a token does not fit in 64 bits");
    tokens.push_back(t.AsI64());
  }
  if (options_.lookup_chunk_size == 0) return ReplyError(c, route, "LookupMsg: lookup_chunk_size is 0");
  ChunkHasher hasher(options_.lookup_chunk_size, pyhash::HashInt(options_.lookup_none_hash));
  std::vector<ChunkHash> chunks = hasher.Hash(tokens);
  struct Credit {
    std::string_view instance;
    std::string_view location;
    std::uint64_t end = 0;
    bool contiguous = true;
    std::tuple<std::uint64_t, std::uint64_t, std::uint64_t> rank;  // LMCache's find order
  };
  std::vector<Credit> credits;
  for (std::size_t i = 0; i < chunks.size(); ++i) {
    // This chunk's holders, one (the first in LMCache's order) per instance.
    std::vector<Credit> here;
    index_.ForEachHolder(Int::FromI64(chunks[i].hash).bits(), [&](index::HolderId h) {
      const registry::HolderInfo& info = registry_.holder(h);
      if (!info.live) return;
      const registry::WorkerRecord& w = registry_.worker(info.worker);
      Credit cr{w.instance_id, info.location, chunks[i].end, true,
                {registry_.InstanceOrder(w.instance_id), w.order, info.location_order}};
      for (Credit& e : here)
        if (e.instance == cr.instance) {
          if (cr.rank < e.rank) e = cr;
          return;
        }
      here.push_back(cr);
    });
    if (i == 0) {
      credits = std::move(here);
      std::sort(credits.begin(), credits.end(), [](const Credit& a, const Credit& b) { return a.rank < b.rank; });
    } else {
      for (Credit& cr : credits) {
        if (!cr.contiguous) continue;
        auto it = std::find_if(here.begin(), here.end(), [&](const Credit& e) { return e.instance == cr.instance; });
        if (it == here.end()) cr.contiguous = false;
        else cr.location = it->location, cr.end = it->end;
      }
    }
    if (std::none_of(credits.begin(), credits.end(), [](const Credit& cr) { return cr.contiguous; })) break;
  }
  LookupRetMsg ret{m.event_id, {}};
  for (const Credit& cr : credits)
    ret.layout_info.push_back({std::string(cr.instance), LocationEnd{std::string(cr.location), Int::FromU64(cr.end)}});
  Reply(c, route, ret);
}

void Controller::HandleQuery(transport::Client& c, const ReplyRoute& route, const protocol::Message& m) {
  using namespace protocol;
  auto info = [&](std::uint32_t w) {
    const registry::WorkerRecord& r = registry_.worker(w);
    return WorkerInfo{r.instance_id, Int::FromI64(r.worker_id), r.ip, Int::FromI64(r.port), r.peer_init_url,
                      r.registration_time, r.last_heartbeat_time};
  };
  if (auto* q = std::get_if<QueryInstMsg>(&m)) {
    // As LMCache: the first instance (registration order) with a worker on that ip.
    QueryInstRetMsg ret{q->event_id, std::nullopt};
    std::uint64_t best = 0;
    for (std::uint32_t w : registry_.Workers()) {
      const registry::WorkerRecord& r = registry_.worker(w);
      std::uint64_t order = registry_.InstanceOrder(r.instance_id);
      if (r.ip == q->ip && (!ret.instance_id || order < best)) {
        ret.instance_id = r.instance_id;
        best = order;
      }
    }
    return Reply(c, route, ret);
  }
  const auto& q = std::get<QueryWorkerInfoMsg>(m);
  // Live values (LMCache serves "all" from a cache up to 30 s stale). Unknown
  // instances or workers give an empty list, as LMCache.
  QueryWorkerInfoRetMsg ret{q.event_id, {}};
  const bool filter = q.worker_ids && !q.worker_ids->empty();
  auto wanted = [&](std::int64_t id) {
    return !filter || std::any_of(q.worker_ids->begin(), q.worker_ids->end(),
                                  [&](const Int& x) { return x.FitsI64() && x.AsI64() == id; });
  };
  const std::vector<std::uint32_t> workers = q.instance_id == "all" ? registry_.Workers() : WorkersOf(q.instance_id);
  for (std::uint32_t w : workers)
    if (wanted(registry_.worker(w).worker_id)) ret.worker_infos.push_back(info(w));
  Reply(c, route, ret);
}

// The fraction of the workers a full sync waits for that have completed one.
// It waits only for workers that could answer: live and heard from (a
// registration, a heartbeat or a sync message) within two heartbeat intervals. The ask to
// sync rides a heartbeat reply, so a worker silent for longer cannot be
// asked, and a dead one that no timeout has reaped yet is silent too;
// neither keeps every other worker in freeze (LMCache counts them all).
double Controller::GlobalSyncProgress() const {
  return sync_->GlobalProgress(
      MonoSeconds(), [&](std::uint32_t w) { return registry_.worker_live(w); },
      [&](std::uint32_t w) { return workers_[w].last_heartbeat_mono; });
}

std::size_t Controller::WorkersIn(SyncState state) const {
  std::size_t n = 0;
  for (std::uint32_t w = 0; w < workers_.size(); ++w)
    if (registry_.worker_live(w) && sync_->state(w) == state) ++n;
  return n;
}

void Controller::FeedHolder(index::HolderId h) {
  if (h >= fed_holders_.size()) fed_holders_.resize(h + 1, 0);
  if (fed_holders_[h]) return;
  fed_holders_[h] = 1;  // also when not written: the feed is lost() then, its reader resyncs
  FeedWritten(WriteHolderUp(h));
}

bool Controller::WriteHolderUp(index::HolderId h) {
  const registry::HolderInfo& info = registry_.holder(h);
  const registry::WorkerRecord& w = registry_.worker(info.worker);
  return options_.change_feed->HolderUp(h, w.worker_id, w.instance_id, info.location, w.peer_init_url);
}

// The dump. Its holder-ups go first, all in the pass it begins (so every
// change written between its slices finds its holder known), then each
// holder's keys through ChunkIndex::WalkKeys, whose guarantee (every key the
// holder keeps throughout is handed) is what makes "dump + the changes in
// between, applied in order" equal the index at the end. Records are written
// only while half the feed stays free for the changes themselves.
void Controller::ContinueResync() {
  feed::ChangeFeed* f = options_.change_feed;
  const feed::ResyncRequest asked = f->TakeResyncRequest();
  // A forced request restarts a dump in progress; a snapshot request during one is served by it.
  if (asked == feed::ResyncRequest::kForced || (asked == feed::ResyncRequest::kSnapshot && !resync_.active)) {
    if (!f->DumpHasRoom(0)) {
      f->RequestResync(asked);  // the reader is behind: ask again next pass
      return;
    }
    resync_.active = true;
    resync_.holders.clear();
    resync_.next = 0;
    resync_.walk = {};
    ++stats_.change_feed_resyncs;
    FeedWritten(f->Resync(asked == feed::ResyncRequest::kForced));
    for (index::HolderId h = 0; h < fed_holders_.size(); ++h)
      if (fed_holders_[h]) {
        resync_.holders.push_back(h);
        FeedWritten(WriteHolderUp(h));
      }
  }
  if (!resync_.active) return;
  std::size_t budget = options_.resync_keys_per_pass;
  while (resync_.next < resync_.holders.size()) {
    const index::HolderId h = resync_.holders[resync_.next];
    // A holder gone meanwhile went with its kHolderDown (and an id reused
    // since has its own kHolderUp and keys in the feed): nothing to dump.
    bool more = h < fed_holders_.size() && fed_holders_[h];
    if (more) {
      const std::size_t n = std::min(budget, f->keys_per_record());
      if (!f->DumpHasRoom(n)) return;  // next pass
      resync_.keys.clear();
      more = index_.WalkKeys(h, &resync_.walk, n, [&](std::span<const std::uint64_t> run) {
        resync_.keys.insert(resync_.keys.end(), run.begin(), run.end());
      });
      if (!resync_.keys.empty()) FeedWritten(f->DumpAdmits(h, resync_.keys));
      budget -= resync_.keys.size();
    }
    if (!more) {
      ++resync_.next;
      resync_.walk = {};
    }
    if (budget == 0) return;
  }
  FeedWritten(f->ResyncEnd());
  resync_.active = false;
}

std::size_t Controller::ApplyRemote() {
  feed::RemoteFeed* rf = options_.remote_feed;
  if (!rf || !rf->HasRecord()) return 0;
  return rf->Drain(options_.remote_records_per_pass, SIZE_MAX,
            [&](std::span<const std::uint8_t> bytes) { ApplyRemoteRecord(bytes); });
}

// One record of another node. Its holders become remote workers of the
// registry (WorkerRecord::node: a name space no local message reaches), so
// lookups see them with their peer URLs and nothing local can speak for them.
void Controller::ApplyRemoteRecord(std::span<const std::uint8_t> bytes) {
  feed::RemoteRecord rr;
  feed::Change c;
  if (!feed::DecodeRemoteRecord(bytes, &rr).ok() ||
      (rr.what == feed::kRemoteChange && !feed::DecodeChange(rr.change, &c).ok()))
    return void(++stats_.remote_refused);
  const std::string node(rr.node);
  auto it = remote_nodes_.find(node);
  if (rr.what == feed::kRemoteNodeGone) {
    if (it == remote_nodes_.end()) return;
    DropRemoteNode(it->second);
    remote_nodes_.erase(it);
    ++stats_.remote_nodes_gone;
    return;
  }
  if (it == remote_nodes_.end()) {
    if (remote_nodes_.size() >= options_.max_remote_nodes) return void(++stats_.remote_refused);
    it = remote_nodes_.emplace(node, RemoteNode{}).first;
  }
  RemoteNode& n = it->second;
  if (rr.epoch < n.epoch) return void(++stats_.remote_refused);  // an older process of that node
  if (rr.epoch > n.epoch) {  // the node (re)started: what its last epoch said is void
    if (n.epoch != 0) ++stats_.remote_node_restarts;
    DropRemoteNode(n);
    n.epoch = rr.epoch;
    n.next_seq = rr.seq;
    // Joined after the epoch's first record (the stream was cut at a dump,
    // or its start aged out): the records before its next kResync are a
    // suffix of the node's history, which that dump replaces.
    n.missed = rr.seq != 1;
  }
  // JetStream may deliver a record again (a consumer that recreates itself
  // replays from where it thinks it was): what this epoch already applied is
  // skipped, so applying stays idempotent.
  if (rr.seq < n.next_seq) return void(++stats_.remote_duplicates);
  if (rr.seq != n.next_seq) {
    ++stats_.remote_seq_gaps;
    n.missed = true;  // repaired by the node's next dump
  }
  n.next_seq = rr.seq + 1;
  ++stats_.remote_records;
  auto mapped = n.holders.find(c.holder);
  switch (c.kind) {
    case feed::ChangeKind::kResync:
      // A forced dump replaces everything; a snapshot only what a reader
      // that missed records has (for one that missed nothing it repeats).
      if (c.forced || n.missed) {
        DropRemoteNode(n);
        n.missed = false;
        ++stats_.remote_resyncs;
      }
      return;
    case feed::ChangeKind::kResyncEnd:
      return;
    case feed::ChangeKind::kHolderUp: {
      if (mapped != n.holders.end()) {
        const registry::HolderInfo& known = registry_.holder(mapped->second);
        const registry::WorkerRecord& kw = registry_.worker(known.worker);
        if (kw.instance_id == c.instance_id && kw.worker_id == c.worker_id && known.location == c.location &&
            kw.peer_init_url.value_or("") == c.peer_init_url)
          return;  // a dump repeating a holder this controller has: its keys stay
        // The node reuses the id: what it named is gone.
        RetireRemoteHolder(mapped->second);
        n.holders.erase(mapped);
      }
      if (n.holders.size() >= options_.max_remote_holders_per_node) return void(++stats_.remote_refused);
      registry::WorkerRecord rec;
      rec.instance_id = std::string(c.instance_id);
      rec.worker_id = c.worker_id;
      if (!c.peer_init_url.empty()) rec.peer_init_url = std::string(c.peer_init_url);
      rec.node = node;
      rec.registration_time = WallSeconds();
      bool is_new;
      const std::uint32_t w = UpsertWorker(kRemoteClient, false, rec, &is_new);  // heartbeats stay 0: never reaped here
      n.holders[c.holder] = registry_.Holder(w, c.location);
      return;
    }
    case feed::ChangeKind::kHolderDown:
      if (mapped == n.holders.end()) return void(n.missed ? ++stats_.remote_before_dump : ++stats_.remote_refused);
      RetireRemoteHolder(mapped->second);
      n.holders.erase(mapped);
      return;
    case feed::ChangeKind::kKeys: {
      // While a dump is awaited, a holder whose holder-up was before the
      // reader's start is expected: the dump brings it.
      if (mapped == n.holders.end()) return void(n.missed ? ++stats_.remote_before_dump : ++stats_.remote_refused);
      const index::HolderId h = mapped->second;
      // As ApplyKvSlice: the buckets of the next keys in flight while this one
      // is applied (a joining node inserts millions of keys it has never seen).
      constexpr std::size_t kPrefetchKeys = 16;
      auto prefetch = [&](std::size_t i) {
        const std::uint64_t key = c.KeyAt(i);
        index_.Prefetch(std::span<const std::uint64_t>(&key, 1));
      };
      for (std::size_t i = 0; i < std::min<std::size_t>(c.count, kPrefetchKeys); ++i) prefetch(i);
      for (std::size_t i = 0; i < c.count; ++i) {
        if (i + kPrefetchKeys < c.count) prefetch(i + kPrefetchKeys);
        if (c.OpAt(i) == protocol::OpType::kAdmit) (void)index_.Add(c.KeyAt(i), h);
        else index_.Remove(c.KeyAt(i), h);
        // As for local batches: lookups waiting at a ring's head get in
        // every request_check_ops keys (nothing served there touches remote state).
        if (++ops_since_scan_ >= options_.request_check_ops) {
          ops_since_scan_ = 0;
          ServeWaitingRequests(nullptr);
        }
      }
      stats_.remote_kv_ops += c.count;
      return;
    }
  }
}

void Controller::RetireRemoteHolder(index::HolderId h) {
  const std::uint32_t w = registry_.holder(h).worker;
  const std::string location = registry_.holder(h).location;
  if (auto old = registry_.RetireHolder(w, location)) RetireHolder(*old);
  if (registry_.worker_live(w) && registry_.HoldersOf(w).empty()) ForgetWorker(w);  // its last holder
}

void Controller::DropRemoteNode(RemoteNode& n) {
  for (const auto& [id, h] : n.holders) RetireRemoteHolder(h);
  n.holders.clear();
}

void Controller::RetireHolder(index::HolderId h) {
  if (h < fed_holders_.size() && fed_holders_[h]) {
    fed_holders_[h] = 0;
    FeedWritten(options_.change_feed->HolderDown(h));
  }
  if (h < last_seq_.size()) last_seq_[h] = kNoSeq;
  dropping_.push_back(h);
}

void Controller::ForgetWorker(std::uint32_t worker) {
  for (index::HolderId h : registry_.Remove(worker)) RetireHolder(h);
  if (worker < workers_.size()) {
    workers_[worker] = WorkerState{};
    workers_[worker].client = kNoClient;
  }
  sync_->Forget(worker);
}

void Controller::ClientGone(std::uint64_t client_id) {
  last_problem_log_.erase(client_id);
  FailCommandsOf(client_id);
  for (std::uint32_t w = 0; w < workers_.size(); ++w)
    if (workers_[w].client == client_id && registry_.worker_live(w)) ForgetWorker(w);
}

void Controller::DropSomeKeys() {
  std::size_t budget = options_.drop_slice;
  while (!dropping_.empty() && budget > 0) {
    index::HolderId h = dropping_.back();
    std::size_t before = index_.KeysOf(h);
    std::size_t left = index_.DropHolderSlice(h, budget);
    budget -= std::min(budget, before - left);
    if (left == 0) {
      registry_.ReleaseHolder(h);
      dropping_.pop_back();
    }
  }
}

void Controller::Housekeeping(double now) {
  if (now < next_housekeeping_) return;
  next_housekeeping_ = now + kHousekeepingPeriod;
  listener_->Heartbeat();
  // Looked at again now and then: an operator may raise it from outside (chrt, renice).
  errno = 0;
  const int nice_value = getpriority(PRIO_PROCESS, static_cast<id_t>(gettid()));
  const bool raised_nice = errno == 0 && nice_value < 0;  // -1 is also getpriority's error value
  const int policy = sched_getscheduler(0);
  prioritized_ = raised_nice || policy == SCHED_FIFO || policy == SCHED_RR;
  SampleRates(now);
  for (std::uint32_t w = 0; w < workers_.size(); ++w) {
    if (!registry_.worker_live(w)) continue;
    WorkerState& ws = workers_[w];
    if (options_.worker_timeout_s > 0 && ws.heartbeats && now - ws.last_heartbeat_mono > options_.worker_timeout_s) {
      if (options_.log)
        options_.log("worker " + registry_.worker(w).instance_id + "/" + std::to_string(registry_.worker(w).worker_id) +
                     " missed its heartbeats for " + std::to_string(options_.worker_timeout_s) + " s: deregistered");
      ForgetWorker(w);
      ++stats_.workers_reaped;
      continue;
    }
    sync_->Expire(w, now, [&](const std::string& line) {
      if (options_.log) options_.log(line);
    });
  }
}

std::uint64_t Controller::IndexDigest() const {
  std::uint64_t sum = 0;
  for (std::uint32_t w : registry_.Workers()) {
    const registry::WorkerRecord& rec = registry_.worker(w);
    for (index::HolderId h : registry_.HoldersOf(w)) {
      std::string id = rec.instance_id + '\0' + std::to_string(rec.worker_id) + '\0' + registry_.holder(h).location;
      std::uint64_t idh = XXH3_64bits(id.data(), id.size());
      index_.ForEachKeyOf(h, [&](std::uint64_t key) { sum += Mix64(key ^ idh) ^ idh; });
    }
  }
  return sum;
}

std::string Controller::StatsJson() const {
  std::size_t quarantined_now = 0;
  for (const auto& c : listener_->clients()) quarantined_now += c->quarantined ? 1 : 0;
  nlohmann::json j = {
      {"name", options_.listen.name},
      {"uptime_s", MonoSeconds() - started_mono_},
      {"clients", listener_->clients().size()},
      {"workers", registry_.worker_count()},
      {"instances", registry_.Instances().size()},
      {"keys", index_.pairs()},
      {"index_bytes", index_.MemoryBytes()},
      {"index_overflow_keys", index_.OverflowKeys()},
      {"index_grouped_keys", index_.GroupedKeys()},
      {"quarantined_clients", quarantined_now},
      {"over_quota", index_.over_quota()},
      {"full_sync_workers_syncing", WorkersIn(SyncState::kSyncing)},
      {"full_sync_workers_completed", WorkersIn(SyncState::kCompleted)},
      {"full_sync_global_progress", GlobalSyncProgress()},
      {"fanouts_in_flight", fan_outs_->size()},
  };
  for (const StatsCounter& c : StatsCounters()) j[c.json_key] = stats_.*c.member;
  if (options_.remote_feed) {  // the other cluster nodes, as this controller knows them
    nlohmann::json nodes = nlohmann::json::array();
    for (const auto& [name, n] : remote_nodes_) {
      std::size_t keys = 0;
      for (const auto& [id, h] : n.holders) keys += index_.KeysOf(h);
      char epoch[19];
      std::snprintf(epoch, sizeof epoch, "0x%016llx", static_cast<unsigned long long>(n.epoch));
      nodes.push_back({{"node", name}, {"epoch", epoch}, {"next_seq", n.next_seq}, {"holders", n.holders.size()},
                       {"keys", keys}});
    }
    j["cluster_nodes"] = std::move(nodes);
  }
  for (const Extra& x : extras_) j[x.key] = nlohmann::json::parse(x.stats_json(), nullptr, /*allow_exceptions=*/false);
  return j.dump();
}

}  // namespace kvring::controller
