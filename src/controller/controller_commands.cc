// The controller's orchestration fan-outs (controller.h, "Orchestration"):
// one ControlMsg per worker of an instance, answers gathered in any order,
// one aggregate reply per orchestrator request, deadlines enforced by the
// loop (ExpireFanOuts), never by waiting. The table, the deadlines and the
// history are FanOuts' (fan_outs.h); this file sends and answers.
#include <algorithm>
#include <cstring>

#include "controller/fan_outs.h"
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

// The answer a worker owes for each command, and the number it carries.
template <typename Ret, typename Field>
std::optional<std::int64_t> ValueIf(const Message& m, Field Ret::*field) {
  if (auto* r = std::get_if<Ret>(&m)) return (r->*field).SaturatedI64();
  return std::nullopt;
}

}  // namespace

std::vector<std::uint32_t> Controller::WorkersOf(std::string_view instance_id) const {
  std::vector<std::uint32_t> out;
  for (std::uint32_t w : registry_.Workers())  // this node's: another node's controller commands its own
    if (registry_.worker(w).instance_id == instance_id && registry_.worker(w).node.empty()) out.push_back(w);
  std::sort(out.begin(), out.end(),
            [&](std::uint32_t a, std::uint32_t b) { return registry_.worker(a).worker_id < registry_.worker(b).worker_id; });
  return out;
}

void Controller::HandleOrchestration(transport::Client& c, const ReplyRoute& route, const Message& m) {
  // The worker-side message for worker `w` (LMCache's worker_event_id forms).
  std::vector<std::pair<std::uint32_t, Message>> commands;
  FanOut f;
  f.origin = route;
  auto fail = [&](const std::string& text) { ReplyError(c, route, text); };  // the orchestrator's mistake, not a protocol error
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
    if (commands.empty()) return Reply(c, route, HealthRetMsg{h->event_id, {}});  // as LMCache: an empty map
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
  if (fan_outs_->size() >= options_.max_fanouts)
    return fail(std::string(orch::kInvalid) + ": " + std::to_string(fan_outs_->size()) +
                " orchestrator commands are already waiting for their workers; try again later");

  ++stats_.fanouts;
  f.deadline = MonoNow() + options_.command_timeout_s;
  std::vector<std::pair<std::int64_t, std::uint64_t>> targets;
  for (const auto& [w, msg] : commands) targets.emplace_back(registry_.worker(w).worker_id, workers_[w].client);
  const std::uint64_t id = fan_outs_->Begin(std::move(f), targets);
  // Sent after the table is complete: settling a part may finish the fan-out.
  for (std::size_t i = 0; i < commands.size(); ++i) {
    const FanOutPart& p = fan_outs_->at(id).parts[i];
    transport::Client* target = listener_->Find(p.client);
    ++stats_.commands_sent;
    if (!target || target->quarantined) {
      SettlePart(id, i, true, orch::kHealthUnreachable, "its client has gone");
    } else if (!EmitCommand(*target, p.command_id, commands[i].first, commands[i].second)) {
      SettlePart(id, i, true, orch::kHealthUnreachable, "its command ring is full");
    } else {
      target->replies.Publish();  // another client's ring: ServeClient publishes only its own
      listener_->NotifyClient(*target);  // a worker may be idle in poll(), not reading its ring
    }
    if (!fan_outs_->contains(id)) return;  // every part failed at once: already answered
  }
}

void Controller::HandleCommandReply(transport::Client& c, std::uint64_t id, std::span<const std::uint8_t> bytes) {
  auto awaited = fan_outs_->Awaiting(id, c.id);
  if (!awaited) {
    ++stats_.late_command_replies;  // after its deadline (already reported), or not this client's command
    return;
  }
  auto [fanout_id, part] = *awaited;
  const FanOutKind kind = fan_outs_->at(fanout_id).kind;
  auto m = Decode(bytes, options_.limits);
  if (!m.ok())
    return SettlePart(fanout_id, part, true, orch::kHealthUndecodable,
                      "its answer could not be decoded: " + m.status().message());
  if (auto* e = std::get_if<ErrorMsg>(&*m))
    return SettlePart(fanout_id, part, true, orch::kHealthWorkerError, e->error);
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
    return SettlePart(fanout_id, part, true, orch::kHealthWrongReply,
                      "it answered " + std::string(TagOf(*m)) + " where " + std::string(want) + " was due");
  SettlePart(fanout_id, part, false, *v, {});
}

void Controller::SettlePart(std::uint64_t fanout_id, std::size_t part, bool failed, std::int64_t value,
                            std::string error) {
  if (!fan_outs_->contains(fanout_id)) return;
  const PartState was = fan_outs_->at(fanout_id).parts[part].state;
  std::optional<FanOut> done = fan_outs_->Settle(fanout_id, part, failed ? PartState::kFailed : PartState::kFinished,
                                                 value, std::move(error));
  if (failed && was == PartState::kPending) ++stats_.commands_failed;
  if (!done) return;
  if (transport::Client* origin = listener_->Find(done->origin.client)) {  // gone: nobody to tell
    if (Emit(*origin, done->origin.type, done->origin.id, FanOuts::ReplyFor(*done))) listener_->PublishReplies(*origin);
  }
}

void Controller::ExpireFanOuts(double now) {
  const std::string why = "no answer within the " + std::to_string(options_.command_timeout_s) + " s deadline";
  for (auto [id, i] : fan_outs_->Expired(now)) {
    ++stats_.commands_timed_out;
    SettlePart(id, i, true, orch::kHealthNoReply, why);
  }
}

void Controller::FailCommandsOf(std::uint64_t client_id) {
  for (auto [id, i] : fan_outs_->PendingOn(client_id))
    SettlePart(id, i, true, orch::kHealthUnreachable, "its client went away before answering");
}

void Controller::HandleCheckFinish(transport::Client& c, const ReplyRoute& route, const CheckFinishMsg& m) {
  std::optional<std::string> status = fan_outs_->StatusOf(m.event_id);
  if (!status) {
    return ReplyError(c, route, std::string(orch::kUnknownEvent) + " '" + m.event_id + "': no clear, pin, compress, " +
                                    "decompress, move or health command of that id is known (the last " +
                                    std::to_string(options_.events_remembered) + " are remembered)");
  }
  Reply(c, route, CheckFinishRetMsg{*status});
}

}  // namespace kvring::controller
