// The controller's orchestration fan-outs (controller.h, "Orchestration"):
// the table of those in flight, the commands they wait for, their
// deadlines, and the history CheckFinishMsg reads. Owned by the Controller
// and used on its thread only. It sends nothing and answers nobody: the
// controller emits the commands, and the reply a finished fan-out returns.
//
// Invariants:
//   - every pending part has exactly one entry in the command table (its
//     command id -> fan-out, part); a settled part has none;
//   - a fan-out is in the table while a part is pending; the settle that
//     takes its last part extracts it (Settle returns it) and records its
//     final status in the history;
//   - `pending` counts the fan-out's pending parts; a part settles once;
//   - next_deadline() is 0 or at most the earliest deadline in flight
//     (Expire recomputes it);
//   - the history keeps the last `remembered` event ids, never one whose
//     fan-out is still in flight.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "kvring/protocol/messages.h"
#include "kvring/shm/framing.h"

namespace kvring::controller {

// Where a reply goes: a client, in the framing of its request.
struct ReplyRoute {
  std::uint64_t client = 0;
  std::uint32_t type = framing::kMessage;  // framing::kMessage or framing::kRequest
  std::uint64_t id = 0;                    // framing::kRequest's correlation id
};

enum class FanOutKind : std::uint8_t { kClear, kPin, kCompress, kDecompress, kMove, kHealth };
enum class PartState : std::uint8_t { kPending, kFinished, kFailed };

struct FanOutPart {
  std::int64_t worker_id = 0;
  std::uint64_t client = 0;
  std::uint64_t command_id = 0;
  PartState state = PartState::kPending;
  std::int64_t value = 0;  // num_tokens or health code (failures: a kHealth* code)
  std::string error;       // why it failed
};

struct FanOut {
  FanOutKind kind = FanOutKind::kHealth;
  std::string event_id;
  std::string instance_id;
  ReplyRoute origin;
  double deadline = 0;  // monotonic seconds
  std::vector<FanOutPart> parts;
  std::size_t pending = 0;
};

class FanOuts {
 public:
  explicit FanOuts(std::size_t remembered) : remembered_(remembered) {}

  std::size_t size() const { return fanouts_.size(); }
  bool contains(std::uint64_t id) const { return fanouts_.count(id) != 0; }
  const FanOut& at(std::uint64_t id) const { return fanouts_.at(id); }
  double next_deadline() const { return next_deadline_; }

  // Enters `f` with one pending part per (worker id, owning client) of
  // `targets`, each with a fresh command id; returns the fan-out's id.
  std::uint64_t Begin(FanOut f, const std::vector<std::pair<std::int64_t, std::uint64_t>>& targets);
  // The (fan-out, part) a command id answers, if `client` is the one it was sent to.
  std::optional<std::pair<std::uint64_t, std::size_t>> Awaiting(std::uint64_t command_id, std::uint64_t client) const;
  // Settles a pending part (a settled one stays as it is). Returns the
  // fan-out, taken out of the table, when that was its last pending part.
  std::optional<FanOut> Settle(std::uint64_t id, std::size_t part, PartState state, std::int64_t value,
                               std::string error);
  // The pending parts whose fan-out's deadline has passed, and those sent
  // to `client` (gone), for the controller to settle as failed.
  std::vector<std::pair<std::uint64_t, std::size_t>> Expired(double now);
  std::vector<std::pair<std::uint64_t, std::size_t>> PendingOn(std::uint64_t client) const;

  // CheckFinishMsg: the status of `event_id` (LMCache's words and, when not
  // finished, each worker's), or nullopt when it is not remembered.
  std::optional<std::string> StatusOf(const std::string& event_id) const;
  // The aggregate reply a finished fan-out owes its origin.
  static protocol::Message ReplyFor(const FanOut& f);

 private:
  struct EventRecord {
    std::uint64_t fanout = 0;  // in flight: its id; finished: 0
    std::string status;        // finished: CheckFinishRetMsg.status
  };
  static std::string EventStatus(const FanOut& f);
  void Remember(const std::string& event_id, EventRecord rec);

  std::size_t remembered_;
  std::unordered_map<std::uint64_t, FanOut> fanouts_;  // in flight, by fan-out id
  std::unordered_map<std::uint64_t, std::pair<std::uint64_t, std::size_t>> commands_;  // command id -> (fan-out, part)
  std::unordered_map<std::string, EventRecord> events_;  // by event id
  std::deque<std::string> event_order_;                  // oldest first, for forgetting
  std::uint64_t next_fanout_id_ = 1;
  std::uint64_t next_command_id_ = 1;
  double next_deadline_ = 0;  // earliest deadline in flight (0: none)
};

}  // namespace kvring::controller
