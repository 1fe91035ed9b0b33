#include "controller/fan_outs.h"

#include <algorithm>

#include "kvring/protocol/orchestration.h"

namespace kvring::controller {
namespace {

using namespace kvring::protocol;
namespace orch = kvring::orchestration;

const char* OpName(FanOutKind kind) {
  static const char* const names[] = {"clear", "pin", "compress", "decompress", "move", "health"};
  return names[static_cast<int>(kind)];
}

}  // namespace

std::uint64_t FanOuts::Begin(FanOut f, const std::vector<std::pair<std::int64_t, std::uint64_t>>& targets) {
  const std::uint64_t id = next_fanout_id_++;
  f.parts.resize(targets.size());
  f.pending = targets.size();
  for (std::size_t i = 0; i < targets.size(); ++i) {
    FanOutPart& p = f.parts[i];
    p.worker_id = targets[i].first;
    p.client = targets[i].second;
    p.command_id = next_command_id_++;
    commands_.emplace(p.command_id, std::make_pair(id, i));
  }
  if (next_deadline_ == 0 || f.deadline < next_deadline_) next_deadline_ = f.deadline;
  const std::string event_id = f.event_id;
  fanouts_.emplace(id, std::move(f));
  Remember(event_id, EventRecord{id, {}});
  return id;
}

std::optional<std::pair<std::uint64_t, std::size_t>> FanOuts::Awaiting(std::uint64_t command_id,
                                                                       std::uint64_t client) const {
  auto it = commands_.find(command_id);
  if (it == commands_.end() || fanouts_.at(it->second.first).parts[it->second.second].client != client)
    return std::nullopt;
  return it->second;
}

std::optional<FanOut> FanOuts::Settle(std::uint64_t id, std::size_t part, PartState state, std::int64_t value,
                                      std::string error) {
  auto it = fanouts_.find(id);
  if (it == fanouts_.end()) return std::nullopt;
  FanOut& f = it->second;
  FanOutPart& p = f.parts[part];
  if (p.state != PartState::kPending) return std::nullopt;
  commands_.erase(p.command_id);
  p.state = state;
  p.value = value;
  p.error = std::move(error);
  if (--f.pending != 0) return std::nullopt;
  FanOut done = std::move(fanouts_.extract(it).mapped());
  Remember(done.event_id, EventRecord{0, EventStatus(done)});
  return done;
}

std::vector<std::pair<std::uint64_t, std::size_t>> FanOuts::Expired(double now) {
  std::vector<std::pair<std::uint64_t, std::size_t>> late;
  double next = 0;
  for (const auto& [id, f] : fanouts_) {
    if (f.deadline > now) {
      if (next == 0 || f.deadline < next) next = f.deadline;
      continue;
    }
    for (std::size_t i = 0; i < f.parts.size(); ++i)
      if (f.parts[i].state == PartState::kPending) late.emplace_back(id, i);
  }
  next_deadline_ = next;
  return late;
}

std::vector<std::pair<std::uint64_t, std::size_t>> FanOuts::PendingOn(std::uint64_t client) const {
  std::vector<std::pair<std::uint64_t, std::size_t>> out;
  for (const auto& [id, f] : fanouts_)
    for (std::size_t i = 0; i < f.parts.size(); ++i)
      if (f.parts[i].client == client && f.parts[i].state == PartState::kPending) out.emplace_back(id, i);
  return out;
}

std::optional<std::string> FanOuts::StatusOf(const std::string& event_id) const {
  auto it = events_.find(event_id);
  if (it == events_.end()) return std::nullopt;
  if (it->second.fanout != 0) return EventStatus(fanouts_.at(it->second.fanout));
  return it->second.status;
}

std::string FanOuts::EventStatus(const FanOut& f) {
  bool pending = false, failed = false;
  std::string detail;
  for (const FanOutPart& p : f.parts) {
    detail += "; worker " + std::to_string(p.worker_id) + ": ";
    switch (p.state) {
      case PartState::kPending: pending = true, detail += orch::kStatusPending; break;
      case PartState::kFinished: detail += orch::kStatusFinished; break;
      case PartState::kFailed: failed = true, detail += std::string(orch::kStatusFailed) + " (" + p.error + ")"; break;
    }
  }
  if (pending) return std::string(orch::kStatusPending) + detail;
  if (failed) return std::string(orch::kStatusFailed) + detail;
  return std::string(orch::kStatusFinished);
}

void FanOuts::Remember(const std::string& event_id, EventRecord rec) {
  auto [it, fresh] = events_.insert_or_assign(event_id, std::move(rec));
  if (fresh) event_order_.push_back(event_id);
  while (event_order_.size() > std::max<std::size_t>(1, remembered_)) {
    auto old = events_.find(event_order_.front());
    if (old != events_.end() && old->second.fanout == 0) events_.erase(old);  // in flight: kept
    else if (old != events_.end()) break;
    event_order_.pop_front();
  }
}

Message FanOuts::ReplyFor(const FanOut& f) {
  if (f.kind == FanOutKind::kHealth) {
    HealthRetMsg h{f.event_id, {}};
    for (const FanOutPart& p : f.parts) h.error_codes.emplace_back(Int::FromI64(p.worker_id), Int::FromI64(p.value));
    return h;
  }
  std::string failures, values;
  bool all_deadline = true, agree = true;
  for (const FanOutPart& p : f.parts) {
    const std::string who = "worker " + std::to_string(p.worker_id);
    values += (values.empty() ? "" : ", ") + who + ": " + std::to_string(p.value);
    if (p.state == PartState::kFailed) {
      failures += (failures.empty() ? "" : "; ") + who + ": " + p.error;
      all_deadline &= p.value == orch::kHealthNoReply;
    }
    agree &= p.value == f.parts.front().value;
  }
  const std::string what = std::string(OpName(f.kind)) + " " + f.event_id + " on instance '" + f.instance_id + "'";
  if (!failures.empty())
    return ErrorMsg{std::string(all_deadline ? orch::kDeadline : orch::kWorkerFailed) + ": " + what + ": " + failures};
  if (!agree)  // LMCache asserts that every worker reports the same count.
    return ErrorMsg{std::string(orch::kWorkerFailed) + ": " + what + ": the workers disagree on num_tokens (" + values +
                    ")"};
  const Int n = Int::FromI64(f.parts.front().value);
  switch (f.kind) {
    case FanOutKind::kClear: return ClearRetMsg{f.event_id, n};
    case FanOutKind::kPin: return PinRetMsg{f.event_id, n};
    case FanOutKind::kCompress: return CompressRetMsg{f.event_id, n};
    case FanOutKind::kDecompress: return DecompressRetMsg{f.event_id, n};
    case FanOutKind::kMove: return MoveRetMsg{f.event_id, n};
    case FanOutKind::kHealth: break;
  }
  return ErrorMsg{"kvring: internal: fan-out of unknown kind"};
}

}  // namespace kvring::controller
