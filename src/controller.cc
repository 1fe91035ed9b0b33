#include "kvring/controller.h"

#include <cstring>
#include <ctime>
#include <thread>

namespace kvring::controller {
namespace {

constexpr std::int64_t kNoSeq = INT64_MIN;
constexpr std::uint64_t kNoClient = ~0ULL;

double NowSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

std::int64_t Small(const protocol::Int& i) { return i.FitsI64() ? i.AsI64() : INT64_MAX; }

bool ExpectsReply(std::string_view tag) {
  // WorkerReqMsg and OrchMsg types: the sender waits for an answer.
  for (std::string_view t : {"RegisterMsg", "HeartbeatMsg", "BatchedP2PLookupMsg", "FullSyncStartMsg",
                             "FullSyncStatusMsg", "LookupMsg", "QueryInstMsg", "ClearMsg", "PinMsg",
                             "CompressMsg", "DecompressMsg", "MoveMsg", "HealthMsg", "CheckFinishMsg",
                             "QueryWorkerInfoMsg"})
    if (tag == t) return true;
  return false;
}

}  // namespace

Controller::Controller(const Options& options) : options_(options), index_(options.index) {}

Result<std::unique_ptr<Controller>> Controller::Start(const Options& options) {
  auto l = transport::Listener::Start(options.listen);
  if (!l.ok()) return l.status();
  std::unique_ptr<Controller> c(new Controller(options));
  c->listener_ = std::move(l).value();
  return c;
}

std::size_t Controller::PollOnce(std::chrono::milliseconds idle_wait) {
  transport::Listener::Events ev = listener_->Poll(idle_wait);
  stats_.errors += ev.rejected.size();
  for (std::uint64_t id : ev.detached) ClientGone(id);
  std::size_t handled = 0;
  for (const auto& cp : listener_->clients()) {
    transport::Client& c = *cp;
    if (c.quarantined) continue;
    handled += c.requests.Drain(options_.ring_budget_records, SIZE_MAX, [&](const ring::Record& r) {
      HandleRecord(c, r.payload);
    });
    if (c.requests.corrupt()) {
      listener_->Quarantine(c, segment::kRequestRing);
      ++stats_.quarantined_rings;
    }
    c.replies.Publish();
  }
  DropSomeKeys();
  return handled;
}

void Controller::Run(const std::atomic<bool>& stop, std::uint32_t spin_passes) {
  std::uint32_t idle = 0;
  while (!stop.load(std::memory_order_relaxed)) {  // relaxed: a flag, no data rides on it
    bool sleep = idle >= spin_passes;
    if (PollOnce(sleep ? std::chrono::milliseconds(1) : std::chrono::milliseconds(0)) > 0) idle = 0;
    else ++idle;
  }
}

void Controller::HandleRecord(transport::Client& c, std::span<const std::uint8_t> bytes) {
  ++stats_.messages;
  auto tag = protocol::PeekTag(bytes, options_.limits);
  if (!tag.ok()) {
    // No tag, so no way to know whether the sender waits for an answer; an
    // unsolicited ErrorMsg would be read as the reply to its next request.
    ++stats_.errors;
    return;
  }
  if (*tag == protocol::BatchedKVOperationView::kTag) return HandleKvBatch(bytes);
  if (*tag == protocol::BatchedP2PLookupView::kTag) return HandleP2P(c, bytes);
  auto m = protocol::Decode(bytes, options_.limits);
  if (!m.ok()) {
    ++stats_.errors;
    if (ExpectsReply(*tag)) ReplyError(c, m.status().message());
    return;
  }
  HandleGeneric(c, std::move(m).value());
}

void Controller::ApplyOp(std::uint32_t worker, index::HolderId holder, protocol::OpType op, std::uint64_t key,
                         const protocol::Int& seq) {
  if (op == protocol::OpType::kAdmit) (void)index_.Add(key, holder);
  else index_.Remove(key, holder);
  ++stats_.kv_ops;
  if (holder >= last_seq_.size()) last_seq_.resize(holder + 1, kNoSeq);
  std::int64_t s = Small(seq);
  if (last_seq_[holder] != kNoSeq && s != last_seq_[holder] + 1) {
    ++stats_.seq_discontinuities;
    needs_full_sync_[worker] = true;  // better than LMCache: ask for a full sync
  }
  last_seq_[holder] = s;
}

void Controller::HandleKvBatch(std::span<const std::uint8_t> bytes) {
  if (Status s = protocol::Decode(bytes, &kv_view_, options_.limits); !s.ok()) {
    ++stats_.errors;
    return;
  }
  auto w = registry_.Find(kv_view_.instance_id, Small(kv_view_.worker_id));
  if (!w) {
    ++stats_.dropped_unknown_worker;  // LMCache drops these too
    return;
  }
  index::HolderId h = registry_.Holder(*w, kv_view_.location);
  for (const auto& op : kv_view_.operations) ApplyOp(*w, h, op.op_type, op.key.bits(), op.seq_num);
}

void Controller::HandleP2P(transport::Client& c, std::span<const std::uint8_t> bytes) {
  if (Status s = protocol::Decode(bytes, &p2p_view_, options_.limits); !s.ok()) {
    ++stats_.errors;
    return ReplyError(c, s.message());
  }
  ++stats_.p2p_lookups;
  hashes_.resize(p2p_view_.hashes.size());
  for (std::size_t i = 0; i < hashes_.size(); ++i) hashes_[i] = p2p_view_.hashes[i].bits();
  p2p::Hit hit = lookup_.Run(index_, registry_, hashes_, p2p_view_.instance_id, Small(p2p_view_.worker_id),
                             options_.policy);
  if (p2p_reply_.layout_info.size() != 1) p2p_reply_.layout_info.resize(1);
  protocol::P2PLayout& l = p2p_reply_.layout_info[0];
  // assign() reuses each string's capacity: no allocation once warmed up.
  l.instance_id.assign(hit.instance_id);
  l.location.assign(hit.location);
  l.num_hit_chunks = protocol::Int::FromU64(hit.num_hit_chunks);
  l.peer_init_url.assign(hit.peer_init_url);
  // Encode straight into the reply ring.
  std::span<std::uint8_t> out;
  std::size_t guess = 64 + l.instance_id.size() + l.location.size() + l.peer_init_url.size();
  if (c.replies.TryClaim(guess, &out) != ring::ClaimResult::kOk) {
    ++stats_.reply_ring_full;
    return;
  }
  protocol::EncodeResult r = protocol::EncodeTo(p2p_reply_, out);
  if (!r.fits) {  // cannot happen with the guess above; stay correct anyway
    c.replies.Abort();
    return Reply(c, p2p_reply_);
  }
  c.replies.Commit(r.bytes);
}

void Controller::Reply(transport::Client& c, const protocol::Message& m) {
  std::span<std::uint8_t> out;
  std::string bytes = protocol::Encode(m);  // the cold path; hot replies encode in place
  if (c.replies.TryClaim(bytes.size(), &out) != ring::ClaimResult::kOk) {
    ++stats_.reply_ring_full;
    return;
  }
  std::memcpy(out.data(), bytes.data(), bytes.size());
  c.replies.Commit(bytes.size());
}

void Controller::ReplyError(transport::Client& c, const std::string& text) {
  Reply(c, protocol::ErrorMsg{text});
}

void Controller::HandleGeneric(transport::Client& c, protocol::Message&& m) {
  using namespace protocol;
  auto worker_record = [](const auto& msg) {
    registry::WorkerRecord w;
    w.instance_id = msg.instance_id;
    w.worker_id = Small(msg.worker_id);
    w.ip = msg.ip;
    w.port = Small(msg.port);
    w.peer_init_url = msg.peer_init_url;
    w.registration_time = w.last_heartbeat_time = NowSeconds();
    return w;
  };
  auto upsert = [&](const registry::WorkerRecord& rec, bool* is_new) {
    std::uint32_t w = registry_.Upsert(rec, is_new);
    if (w >= worker_client_.size()) {
      worker_client_.resize(w + 1, kNoClient);
      needs_full_sync_.resize(w + 1, false);
    }
    worker_client_[w] = c.id;
    if (*is_new) needs_full_sync_[w] = false;
    return w;
  };
  if (auto* reg = std::get_if<RegisterMsg>(&m)) {
    bool is_new;
    std::uint32_t w = upsert(worker_record(*reg), &is_new);
    if (!is_new) {
      // As LMCache: a repeated registration starts the worker's keys afresh.
      for (index::HolderId h : registry_.Remove(w)) dropping_.push_back(h);
      w = upsert(worker_record(*reg), &is_new);
    }
    RegisterRetMsg ret;
    ret.extra_config.emplace_back("heartbeat_interval_s", std::to_string(options_.heartbeat_interval_s));
    return Reply(c, ret);
  }
  if (auto* hb = std::get_if<HeartbeatMsg>(&m)) {
    HeartbeatRetMsg ret;
    auto w = registry_.Find(hb->instance_id, Small(hb->worker_id));
    if (!w) {
      bool is_new;
      upsert(worker_record(*hb), &is_new);
      ret.commands.push_back({CommandKind::kFullSync, std::string("worker_re_registered"), std::nullopt});
    } else {
      registry_.worker(*w).last_heartbeat_time = NowSeconds();
      if (needs_full_sync_[*w]) {
        needs_full_sync_[*w] = false;
        ret.commands.push_back({CommandKind::kFullSync, std::string("kv_op_seq_gap"), std::nullopt});
      }
    }
    return Reply(c, ret);
  }
  if (auto* de = std::get_if<DeRegisterMsg>(&m)) {
    if (auto w = registry_.Find(de->instance_id, Small(de->worker_id))) ForgetWorker(*w);
    return;
  }
  auto single = [&](const auto& op, OpType type) {
    auto w = registry_.Find(op.instance_id, Small(op.worker_id));
    if (!w) {
      ++stats_.dropped_unknown_worker;
      return;
    }
    ApplyOp(*w, registry_.Holder(*w, op.location), type, op.key.bits(), op.seq_num);
  };
  if (auto* a = std::get_if<KVAdmitMsg>(&m)) return single(*a, OpType::kAdmit);
  if (auto* e = std::get_if<KVEvictMsg>(&m)) return single(*e, OpType::kEvict);
  ++stats_.errors;
  std::string tag(TagOf(m));
  if (ExpectsReply(tag)) ReplyError(c, "kvring: " + tag + " is not handled by this controller yet");
}

void Controller::ForgetWorker(std::uint32_t worker) {
  for (index::HolderId h : registry_.Remove(worker)) {
    if (h < last_seq_.size()) last_seq_[h] = kNoSeq;
    dropping_.push_back(h);
  }
  if (worker < worker_client_.size()) worker_client_[worker] = kNoClient;
}

void Controller::ClientGone(std::uint64_t client_id) {
  for (std::uint32_t w = 0; w < worker_client_.size(); ++w)
    if (worker_client_[w] == client_id && registry_.worker_live(w)) ForgetWorker(w);
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

}  // namespace kvring::controller
