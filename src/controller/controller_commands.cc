// The controller's orchestration fan-outs (controller.h, "Orchestration"):
// one ControlMsg per worker of an instance, answers gathered in any order,
// one aggregate reply per orchestrator request, deadlines enforced by the
// loop (ExpireFanOuts), never by waiting.
#include <algorithm>
#include <cstring>

#include "kvring/controller/controller.h"
#include "kvring/protocol/orchestration.h"

namespace kvring::controller {
namespace {

using namespace kvring::protocol;
namespace orch = kvring::orchestration;

double MonoNow() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

std::int64_t SmallInt(const Int& i) { return i.FitsI64() ? i.AsI64() : INT64_MAX; }

const char* OpName(int kind) {
  static const char* const names[] = {"clear", "pin", "compress", "decompress", "move", "health"};
  return names[kind];
}

// The answer a worker owes for each command, and the number it carries.
template <typename Ret, typename Field>
std::optional<std::int64_t> ValueIf(const Message& m, Field Ret::*field) {
  if (auto* r = std::get_if<Ret>(&m)) return SmallInt(r->*field);
  return std::nullopt;
}

}  // namespace

std::vector<std::uint32_t> Controller::WorkersOf(std::string_view instance_id) const {
  std::vector<std::uint32_t> out;
  for (std::uint32_t w : registry_.Workers())
    if (registry_.worker(w).instance_id == instance_id) out.push_back(w);
  std::sort(out.begin(), out.end(),
            [&](std::uint32_t a, std::uint32_t b) { return registry_.worker(a).worker_id < registry_.worker(b).worker_id; });
  return out;
}

void Controller::HandleOrchestration(transport::Client& c, const Message& m) {
  // The worker-side message for worker `w` (LMCache's worker_event_id forms).
  std::vector<std::pair<std::uint32_t, Message>> commands;
  FanOut f;
  f.origin = current_;
  auto fail = [&](const std::string& text) { ReplyError(c, text); };  // the orchestrator's mistake, not a protocol error
  auto unknown = [&](const std::string& instance) {
    fail(std::string(orch::kUnknownInstance) + " '" + instance + "': no live worker of it is registered");
  };
  auto wid = [&](std::uint32_t w) { return std::to_string(registry_.worker(w).worker_id); };

  if (auto* h = std::get_if<HealthMsg>(&m)) {
    f.kind = FanOutKind::kHealth;
    f.event_id = h->event_id;
    f.instance_id = h->instance_id;
    for (std::uint32_t w : WorkersOf(h->instance_id))
      commands.emplace_back(w, HealthWorkerMsg{orch::NewEventId("HealthWorker" + wid(w))});
    if (commands.empty()) return Reply(c, HealthRetMsg{h->event_id, {}});  // as LMCache: an empty map
  } else if (auto* mv = std::get_if<MoveMsg>(&m)) {
    f.kind = FanOutKind::kMove;
    f.event_id = mv->event_id;
    f.instance_id = mv->old_position.first;
    std::vector<std::uint32_t> src = WorkersOf(mv->old_position.first), dst = WorkersOf(mv->new_position.first);
    if (src.empty()) return unknown(mv->old_position.first);
    if (dst.empty()) return unknown(mv->new_position.first);
    // As LMCache: sorted sources paired with sorted destinations, the shorter list wins.
    for (std::size_t i = 0; i < std::min(src.size(), dst.size()); ++i) {
      const registry::WorkerRecord& d = registry_.worker(dst[i]);
      if (!d.peer_init_url)
        return fail(std::string(orch::kInvalid) + ": worker " + std::to_string(d.worker_id) + " of instance '" +
                    d.instance_id + "' has no peer_init_url to move to");
      commands.emplace_back(src[i], MoveWorkerMsg{orch::NewEventId("MoveWorker" + wid(src[i])), mv->old_position.second,
                                                  StrPair{*d.peer_init_url, mv->new_position.second}, mv->tokens,
                                                  mv->copy});
    }
  } else {
    auto each = [&](const std::string& instance, auto make) {
      std::vector<std::uint32_t> ws = WorkersOf(instance);
      for (std::uint32_t w : ws) commands.emplace_back(w, make(w));
      return !ws.empty();
    };
    bool any = false;
    if (auto* cl = std::get_if<ClearMsg>(&m)) {
      f.kind = FanOutKind::kClear;
      f.event_id = cl->event_id;
      f.instance_id = cl->instance_id;
      any = each(cl->instance_id, [&](std::uint32_t w) {
        return ClearWorkerMsg{"Worker" + wid(w) + cl->event_id, cl->location};
      });
    } else if (auto* pn = std::get_if<PinMsg>(&m)) {
      f.kind = FanOutKind::kPin;
      f.event_id = pn->event_id;
      f.instance_id = pn->instance_id;
      any = each(pn->instance_id, [&](std::uint32_t w) {
        return PinWorkerMsg{"Worker" + wid(w) + pn->event_id, pn->location, pn->tokens};
      });
    } else if (auto* cp = std::get_if<CompressMsg>(&m)) {
      f.kind = FanOutKind::kCompress;
      f.event_id = cp->event_id;
      f.instance_id = cp->instance_id;
      any = each(cp->instance_id, [&](std::uint32_t w) {
        return CompressWorkerMsg{orch::NewEventId("CompressWorker" + wid(w)), cp->method, cp->location, cp->tokens};
      });
    } else {
      const auto& dc = std::get<DecompressMsg>(m);
      f.kind = FanOutKind::kDecompress;
      f.event_id = dc.event_id;
      f.instance_id = dc.instance_id;
      any = each(dc.instance_id, [&](std::uint32_t w) {
        return DecompressWorkerMsg{orch::NewEventId("DecompressWorker" + wid(w)), dc.method, dc.location, dc.tokens};
      });
    }
    if (!any) return unknown(f.instance_id);
  }
  if (fanouts_.size() >= options_.max_fanouts)
    return fail(std::string(orch::kInvalid) + ": " + std::to_string(fanouts_.size()) +
                " orchestrator commands are already waiting for their workers; try again later");

  ++stats_.fanouts;
  const std::uint64_t id = next_fanout_id_++;
  f.deadline = MonoNow() + options_.command_timeout_s;
  f.parts.resize(commands.size());
  f.pending = commands.size();
  FanOut& fan = fanouts_.emplace(id, std::move(f)).first->second;
  RememberEvent(fan.event_id, EventRecord{id, {}});
  if (next_fanout_deadline_ == 0 || fan.deadline < next_fanout_deadline_) next_fanout_deadline_ = fan.deadline;
  for (std::size_t i = 0; i < commands.size(); ++i) {
    FanOutPart& p = fan.parts[i];
    const std::uint32_t w = commands[i].first;
    p.worker_id = registry_.worker(w).worker_id;
    p.client = workers_[w].client;
    p.command_id = next_command_id_++;
    commands_.emplace(p.command_id, std::make_pair(id, i));
  }
  // Sent after the table is complete: settling a part may finish the fan-out.
  for (std::size_t i = 0; i < commands.size(); ++i) {
    const FanOutPart& p = fanouts_.at(id).parts[i];
    transport::Client* target = listener_->Find(p.client);
    ++stats_.commands_sent;
    if (!target || target->quarantined) {
      SettlePart(id, i, PartState::kFailed, orch::kHealthUnreachable, "its client has gone");
    } else if (!EmitCommand(*target, p.command_id, commands[i].first, commands[i].second)) {
      SettlePart(id, i, PartState::kFailed, orch::kHealthUnreachable, "its command ring is full");
    } else {
      target->replies.Publish();  // another client's ring: ServeClient publishes only its own
      listener_->NotifyClient(*target);  // a worker may be idle in poll(), not reading its ring
    }
    if (!fanouts_.count(id)) return;  // every part failed at once: already answered
  }
}

void Controller::HandleCommandReply(transport::Client& c, std::uint64_t id, std::span<const std::uint8_t> bytes) {
  auto it = commands_.find(id);
  if (it == commands_.end() || fanouts_.at(it->second.first).parts[it->second.second].client != c.id) {
    ++stats_.late_command_replies;  // after its deadline (already reported), or not this client's command
    return;
  }
  auto [fanout_id, part] = it->second;
  const FanOutKind kind = fanouts_.at(fanout_id).kind;
  auto m = Decode(bytes, options_.limits);
  if (!m.ok())
    return SettlePart(fanout_id, part, PartState::kFailed, orch::kHealthUndecodable,
                      "its answer could not be decoded: " + m.status().message());
  if (auto* e = std::get_if<ErrorMsg>(&*m))
    return SettlePart(fanout_id, part, PartState::kFailed, orch::kHealthWorkerError, e->error);
  std::optional<std::int64_t> v;
  std::string_view want;
  switch (kind) {
    case FanOutKind::kClear: v = ValueIf(*m, &ClearWorkerRetMsg::num_tokens), want = ClearWorkerRetMsg::kTag; break;
    case FanOutKind::kPin: v = ValueIf(*m, &PinWorkerRetMsg::num_tokens), want = PinWorkerRetMsg::kTag; break;
    case FanOutKind::kCompress:
      v = ValueIf(*m, &CompressWorkerRetMsg::num_tokens), want = CompressWorkerRetMsg::kTag;
      break;
    case FanOutKind::kDecompress:
      v = ValueIf(*m, &DecompressWorkerRetMsg::num_tokens), want = DecompressWorkerRetMsg::kTag;
      break;
    case FanOutKind::kMove: v = ValueIf(*m, &MoveWorkerRetMsg::num_tokens), want = MoveWorkerRetMsg::kTag; break;
    case FanOutKind::kHealth: v = ValueIf(*m, &HealthWorkerRetMsg::error_code), want = HealthWorkerRetMsg::kTag; break;
  }
  if (!v)
    return SettlePart(fanout_id, part, PartState::kFailed, orch::kHealthWrongReply,
                      "it answered " + std::string(TagOf(*m)) + " where " + std::string(want) + " was due");
  SettlePart(fanout_id, part, PartState::kFinished, *v, {});
}

void Controller::SettlePart(std::uint64_t fanout_id, std::size_t part, PartState state, std::int64_t value,
                            std::string error) {
  FanOut& f = fanouts_.at(fanout_id);
  FanOutPart& p = f.parts[part];
  if (p.state != PartState::kPending) return;
  commands_.erase(p.command_id);
  p.state = state;
  p.value = value;
  p.error = std::move(error);
  if (state == PartState::kFailed) ++stats_.commands_failed;
  if (--f.pending == 0) FinishFanOut(fanout_id);
}

void Controller::FinishFanOut(std::uint64_t fanout_id) {
  auto node = fanouts_.extract(fanout_id);
  FanOut& f = node.mapped();
  for (const FanOutPart& p : f.parts) commands_.erase(p.command_id);  // parts cut short by the deadline

  Message reply;
  if (f.kind == FanOutKind::kHealth) {
    HealthRetMsg h{f.event_id, {}};
    for (const FanOutPart& p : f.parts) h.error_codes.emplace_back(Int::FromI64(p.worker_id), Int::FromI64(p.value));
    reply = std::move(h);
  } else {
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
    const std::string what = std::string(OpName(static_cast<int>(f.kind))) + " " + f.event_id + " on instance '" +
                             f.instance_id + "'";
    const std::int64_t n = f.parts.front().value;
    if (!failures.empty()) {
      reply = ErrorMsg{std::string(all_deadline ? orch::kDeadline : orch::kWorkerFailed) + ": " + what + ": " + failures};
    } else if (!agree) {
      // LMCache asserts that every worker reports the same count.
      reply = ErrorMsg{std::string(orch::kWorkerFailed) + ": " + what + ": the workers disagree on num_tokens (" +
                       values + ")"};
    } else {
      switch (f.kind) {
        case FanOutKind::kClear: reply = ClearRetMsg{f.event_id, Int::FromI64(n)}; break;
        case FanOutKind::kPin: reply = PinRetMsg{f.event_id, Int::FromI64(n)}; break;
        case FanOutKind::kCompress: reply = CompressRetMsg{f.event_id, Int::FromI64(n)}; break;
        case FanOutKind::kDecompress: reply = DecompressRetMsg{f.event_id, Int::FromI64(n)}; break;
        case FanOutKind::kMove: reply = MoveRetMsg{f.event_id, Int::FromI64(n)}; break;
        case FanOutKind::kHealth: break;
      }
    }
  }
  RememberEvent(f.event_id, EventRecord{0, EventStatus(f)});
  if (transport::Client* origin = listener_->Find(f.origin.client)) {  // gone: nobody to tell
    if (Emit(*origin, f.origin.type, f.origin.id, reply)) listener_->PublishReplies(*origin);
  }
}

void Controller::ExpireFanOuts(double now) {
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
  next_fanout_deadline_ = next;
  const std::string why = "no answer within the " + std::to_string(options_.command_timeout_s) + " s deadline";
  for (auto [id, i] : late) {
    ++stats_.commands_timed_out;
    if (fanouts_.count(id)) SettlePart(id, i, PartState::kFailed, orch::kHealthNoReply, why);
  }
}

void Controller::FailCommandsOf(std::uint64_t client_id) {
  std::vector<std::pair<std::uint64_t, std::size_t>> gone;
  for (const auto& [id, f] : fanouts_)
    for (std::size_t i = 0; i < f.parts.size(); ++i)
      if (f.parts[i].client == client_id && f.parts[i].state == PartState::kPending) gone.emplace_back(id, i);
  for (auto [id, i] : gone)
    if (fanouts_.count(id))
      SettlePart(id, i, PartState::kFailed, orch::kHealthUnreachable, "its client went away before answering");
}

std::string Controller::EventStatus(const FanOut& f) const {
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

void Controller::RememberEvent(const std::string& event_id, EventRecord rec) {
  auto [it, fresh] = events_.insert_or_assign(event_id, std::move(rec));
  if (fresh) event_order_.push_back(event_id);
  while (event_order_.size() > std::max<std::size_t>(1, options_.events_remembered)) {
    auto old = events_.find(event_order_.front());
    if (old != events_.end() && old->second.fanout == 0) events_.erase(old);  // in flight: kept
    else if (old != events_.end()) break;
    event_order_.pop_front();
  }
}

void Controller::HandleCheckFinish(transport::Client& c, const CheckFinishMsg& m) {
  auto it = events_.find(m.event_id);
  if (it == events_.end()) {
    return ReplyError(c, std::string(orch::kUnknownEvent) + " '" + m.event_id + "': no clear, pin, compress, " +
                             "decompress, move or health command of that id is known (the last " +
                             std::to_string(options_.events_remembered) + " are remembered)");
  }
  if (it->second.fanout != 0) return Reply(c, CheckFinishRetMsg{EventStatus(fanouts_.at(it->second.fanout))});
  Reply(c, CheckFinishRetMsg{it->second.status});
}

}  // namespace kvring::controller
