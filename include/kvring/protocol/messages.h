// LMCache cache-controller messages (lmcache/v1/cache_controller/message.py,
// the version shipped with LMCache 0.4.3), field for field.
//
// Every message is a msgspec tagged struct: on the wire a msgpack map whose
// "type" key holds the class name, then the fields in declaration order
// (inherited first). Each struct below lists its fields, in that order, in
// Fields(); the codec (codec.h) and the JSON conversion (json.h) are driven by
// those lists, so the order here *is* the wire order.
//
// Field kinds:
//   Req(name, &T::m)  no default: must be present on the wire, even when the
//                     type is optional (msgspec's "required but nullable").
//   Def(name, &T::m)  has a default (the member initializer): may be absent.
//
// Types: Int (see int.h) for every Python int; double for float; std::optional
// for Optional[...]; std::vector<std::pair<K, V>> for dicts (insertion order
// kept); dedicated structs for tuples.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "kvring/protocol/int.h"
#include "kvring/protocol/value.h"

namespace kvring::protocol {

template <typename S, typename M>
struct Field {
  std::string_view name;
  M S::*member;
  bool required;
};
template <typename S, typename M>
constexpr Field<S, M> Req(std::string_view name, M S::*member) { return {name, member, true}; }
template <typename S, typename M>
constexpr Field<S, M> Def(std::string_view name, M S::*member) { return {name, member, false}; }

// ---- supporting types ------------------------------------------------------

enum class OpType : std::uint8_t { kAdmit, kEvict };  // wire: "admit" / "evict"

// Untagged struct: {"op_type", "key", "seq_num"}, no "type" key.
struct KVOpEvent {
  OpType op_type = OpType::kAdmit;
  Int key;
  Int seq_num;
  static constexpr auto Fields() {
    return std::make_tuple(Req("op_type", &KVOpEvent::op_type), Req("key", &KVOpEvent::key),
                           Req("seq_num", &KVOpEvent::seq_num));
  }
  friend bool operator==(const KVOpEvent&, const KVOpEvent&) = default;
};

// A dataclass: a map of its 7 fields, no tag.
struct WorkerInfo {
  std::string instance_id;
  Int worker_id;
  std::string ip;
  Int port;
  std::optional<std::string> peer_init_url;
  double registration_time = 0;
  double last_heartbeat_time = 0;
  static constexpr auto Fields() {
    return std::make_tuple(
        Req("instance_id", &WorkerInfo::instance_id), Req("worker_id", &WorkerInfo::worker_id),
        Req("ip", &WorkerInfo::ip), Req("port", &WorkerInfo::port),
        Req("peer_init_url", &WorkerInfo::peer_init_url),
        Req("registration_time", &WorkerInfo::registration_time),
        Req("last_heartbeat_time", &WorkerInfo::last_heartbeat_time));
  }
  friend bool operator==(const WorkerInfo&, const WorkerInfo&) = default;
};

// Tuple[str, str] (MoveMsg positions, MoveWorkerMsg.new_position).
struct StrPair {
  std::string first;
  std::string second;
  friend bool operator==(const StrPair&, const StrPair&) = default;
};

// LookupRetMsg.layout_info value: Tuple[str, int] = (location, end token).
struct LocationEnd {
  std::string location;
  Int end;
  friend bool operator==(const LocationEnd&, const LocationEnd&) = default;
};

// BatchedP2PLookupRetMsg.layout_info element:
// Tuple[str, str, int, str] = (instance_id, location, num_hit_chunks, peer_init_url).
struct P2PLayout {
  std::string instance_id;
  std::string location;
  Int num_hit_chunks;
  std::string peer_init_url;
  friend bool operator==(const P2PLayout&, const P2PLayout&) = default;
};

using StrDict = std::vector<std::pair<std::string, std::string>>;
using IntDict = std::vector<std::pair<Int, Int>>;
using LayoutDict = std::vector<std::pair<std::string, LocationEnd>>;

// Heartbeat commands: tagged by "command_type". The base class HeartbeatCommand
// has tag "HeartbeatCommand"; FullSyncCommand has tag "full_sync". Both carry
// the same fields, so one struct with a kind serves both.
enum class CommandKind : std::uint8_t { kHeartbeat, kFullSync };
struct HeartbeatCommand {
  CommandKind kind = CommandKind::kFullSync;
  std::optional<std::string> reason;
  std::optional<ValueMap> args;  // Optional[Dict[str, Any]]
  static constexpr auto Fields() {
    return std::make_tuple(Def("reason", &HeartbeatCommand::reason),
                           Def("args", &HeartbeatCommand::args));
  }
  friend bool operator==(const HeartbeatCommand&, const HeartbeatCommand&) = default;
};
std::string_view CommandTag(CommandKind kind);

// ---- messages ---------------------------------------------------------------

#define KVRING_MSG(Name) \
  static constexpr std::string_view kTag = #Name; \
  friend bool operator==(const Name&, const Name&) = default

// WorkerReqMsg
struct RegisterMsg {
  std::string instance_id;
  Int worker_id;
  std::string ip;
  Int port;
  std::optional<std::string> peer_init_url;
  KVRING_MSG(RegisterMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &RegisterMsg::instance_id),
                           Req("worker_id", &RegisterMsg::worker_id), Req("ip", &RegisterMsg::ip),
                           Req("port", &RegisterMsg::port),
                           Req("peer_init_url", &RegisterMsg::peer_init_url));
  }
};
struct RegisterRetMsg {
  StrDict extra_config;
  KVRING_MSG(RegisterRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Def("extra_config", &RegisterRetMsg::extra_config));
  }
};

// WorkerMsg
struct DeRegisterMsg {
  std::string instance_id;
  Int worker_id;
  std::string ip;
  Int port;
  KVRING_MSG(DeRegisterMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &DeRegisterMsg::instance_id),
                           Req("worker_id", &DeRegisterMsg::worker_id),
                           Req("ip", &DeRegisterMsg::ip), Req("port", &DeRegisterMsg::port));
  }
};

#define KVRING_KV_OPERATION_MSG(Name)                                                 \
  struct Name {                                                                       \
    std::string instance_id;                                                          \
    Int worker_id;                                                                    \
    Int key;                                                                          \
    std::string location;                                                             \
    Int seq_num = 0;                                                                  \
    KVRING_MSG(Name);                                                                 \
    static constexpr auto Fields() {                                                  \
      return std::make_tuple(Req("instance_id", &Name::instance_id),                  \
                             Req("worker_id", &Name::worker_id), Req("key", &Name::key), \
                             Req("location", &Name::location),                        \
                             Def("seq_num", &Name::seq_num));                         \
    }                                                                                 \
  }
KVRING_KV_OPERATION_MSG(KVAdmitMsg);
KVRING_KV_OPERATION_MSG(KVEvictMsg);
#undef KVRING_KV_OPERATION_MSG

struct BatchedKVOperationMsg {
  std::string instance_id;
  Int worker_id;
  std::string location;
  std::vector<KVOpEvent> operations;
  KVRING_MSG(BatchedKVOperationMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &BatchedKVOperationMsg::instance_id),
                           Req("worker_id", &BatchedKVOperationMsg::worker_id),
                           Req("location", &BatchedKVOperationMsg::location),
                           Req("operations", &BatchedKVOperationMsg::operations));
  }
};

// ControlMsg / ControlRetMsg
struct ClearWorkerMsg {
  std::string worker_event_id;
  std::string location;
  KVRING_MSG(ClearWorkerMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("worker_event_id", &ClearWorkerMsg::worker_event_id),
                           Req("location", &ClearWorkerMsg::location));
  }
};
struct PinWorkerMsg {
  std::string worker_event_id;
  std::string location;
  std::vector<Int> tokens;
  KVRING_MSG(PinWorkerMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("worker_event_id", &PinWorkerMsg::worker_event_id),
                           Req("location", &PinWorkerMsg::location),
                           Req("tokens", &PinWorkerMsg::tokens));
  }
};
#define KVRING_COMPRESS_WORKER_MSG(Name)                                        \
  struct Name {                                                                 \
    std::string worker_event_id;                                                \
    std::string method;                                                         \
    std::string location;                                                       \
    std::optional<std::vector<Int>> tokens;                                     \
    KVRING_MSG(Name);                                                           \
    static constexpr auto Fields() {                                            \
      return std::make_tuple(Req("worker_event_id", &Name::worker_event_id),    \
                             Req("method", &Name::method),                      \
                             Req("location", &Name::location),                  \
                             Def("tokens", &Name::tokens));                     \
    }                                                                           \
  }
KVRING_COMPRESS_WORKER_MSG(CompressWorkerMsg);
KVRING_COMPRESS_WORKER_MSG(DecompressWorkerMsg);
#undef KVRING_COMPRESS_WORKER_MSG

struct MoveWorkerMsg {
  std::string worker_event_id;
  std::string old_position;  // a backend name
  StrPair new_position;      // (target peer_init_url, backend name)
  std::optional<std::vector<Int>> tokens;
  std::optional<bool> copy = true;
  KVRING_MSG(MoveWorkerMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("worker_event_id", &MoveWorkerMsg::worker_event_id),
                           Req("old_position", &MoveWorkerMsg::old_position),
                           Req("new_position", &MoveWorkerMsg::new_position),
                           Def("tokens", &MoveWorkerMsg::tokens), Def("copy", &MoveWorkerMsg::copy));
  }
};

#define KVRING_WORKER_EVENT_MSG(Name)                                                      \
  struct Name {                                                                            \
    std::string worker_event_id;                                                           \
    KVRING_MSG(Name);                                                                      \
    static constexpr auto Fields() {                                                       \
      return std::make_tuple(Req("worker_event_id", &Name::worker_event_id));              \
    }                                                                                      \
  }
KVRING_WORKER_EVENT_MSG(HealthWorkerMsg);
KVRING_WORKER_EVENT_MSG(CheckFinishWorkerMsg);
#undef KVRING_WORKER_EVENT_MSG

// Single-int replies.
#define KVRING_INT_RET_MSG(Name, field)                                         \
  struct Name {                                                                 \
    Int field;                                                                  \
    KVRING_MSG(Name);                                                           \
    static constexpr auto Fields() { return std::make_tuple(Req(#field, &Name::field)); } \
  }
KVRING_INT_RET_MSG(ClearWorkerRetMsg, num_tokens);
KVRING_INT_RET_MSG(PinWorkerRetMsg, num_tokens);
KVRING_INT_RET_MSG(CompressWorkerRetMsg, num_tokens);
KVRING_INT_RET_MSG(DecompressWorkerRetMsg, num_tokens);
KVRING_INT_RET_MSG(MoveWorkerRetMsg, num_tokens);
KVRING_INT_RET_MSG(HealthWorkerRetMsg, error_code);
#undef KVRING_INT_RET_MSG

// Single-str messages.
#define KVRING_STR_MSG(Name, field)                                             \
  struct Name {                                                                 \
    std::string field;                                                          \
    KVRING_MSG(Name);                                                           \
    static constexpr auto Fields() { return std::make_tuple(Req(#field, &Name::field)); } \
  }
KVRING_STR_MSG(CheckFinishWorkerRetMsg, status);
KVRING_STR_MSG(CheckFinishMsg, event_id);
KVRING_STR_MSG(CheckFinishRetMsg, status);
KVRING_STR_MSG(ErrorMsg, error);
#undef KVRING_STR_MSG

// OrchMsg / OrchRetMsg
struct LookupMsg {
  std::string event_id;
  std::vector<Int> tokens;
  KVRING_MSG(LookupMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &LookupMsg::event_id), Req("tokens", &LookupMsg::tokens));
  }
};
struct LookupRetMsg {
  std::string event_id;
  LayoutDict layout_info;  // instance_id -> (location, end token)
  KVRING_MSG(LookupRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &LookupRetMsg::event_id),
                           Req("layout_info", &LookupRetMsg::layout_info));
  }
};
struct ClearMsg {
  std::string event_id;
  std::string instance_id;
  std::string location;
  KVRING_MSG(ClearMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &ClearMsg::event_id),
                           Req("instance_id", &ClearMsg::instance_id),
                           Req("location", &ClearMsg::location));
  }
};
struct PinMsg {
  std::string event_id;
  std::string instance_id;
  std::string location;
  std::vector<Int> tokens;
  KVRING_MSG(PinMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &PinMsg::event_id),
                           Req("instance_id", &PinMsg::instance_id),
                           Req("location", &PinMsg::location), Req("tokens", &PinMsg::tokens));
  }
};
#define KVRING_COMPRESS_MSG(Name)                                                       \
  struct Name {                                                                         \
    std::string event_id;                                                               \
    std::string instance_id;                                                            \
    std::string method;                                                                 \
    std::string location;                                                               \
    std::optional<std::vector<Int>> tokens; /* None: all tokens */                      \
    KVRING_MSG(Name);                                                                   \
    static constexpr auto Fields() {                                                    \
      return std::make_tuple(Req("event_id", &Name::event_id),                          \
                             Req("instance_id", &Name::instance_id),                    \
                             Req("method", &Name::method), Req("location", &Name::location), \
                             Def("tokens", &Name::tokens));                             \
    }                                                                                   \
  }
KVRING_COMPRESS_MSG(CompressMsg);
KVRING_COMPRESS_MSG(DecompressMsg);
#undef KVRING_COMPRESS_MSG

struct MoveMsg {
  std::string event_id;
  StrPair old_position;  // (instance_id, location)
  StrPair new_position;  // (instance_id, location)
  std::optional<std::vector<Int>> tokens;
  std::optional<bool> copy = false;
  KVRING_MSG(MoveMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &MoveMsg::event_id),
                           Req("old_position", &MoveMsg::old_position),
                           Req("new_position", &MoveMsg::new_position),
                           Def("tokens", &MoveMsg::tokens), Def("copy", &MoveMsg::copy));
  }
};

#define KVRING_EVENT_INT_RET_MSG(Name)                                                  \
  struct Name {                                                                         \
    std::string event_id;                                                               \
    Int num_tokens;                                                                     \
    KVRING_MSG(Name);                                                                   \
    static constexpr auto Fields() {                                                    \
      return std::make_tuple(Req("event_id", &Name::event_id),                          \
                             Req("num_tokens", &Name::num_tokens));                     \
    }                                                                                   \
  }
KVRING_EVENT_INT_RET_MSG(ClearRetMsg);
KVRING_EVENT_INT_RET_MSG(PinRetMsg);
KVRING_EVENT_INT_RET_MSG(CompressRetMsg);
KVRING_EVENT_INT_RET_MSG(DecompressRetMsg);
KVRING_EVENT_INT_RET_MSG(MoveRetMsg);
#undef KVRING_EVENT_INT_RET_MSG

struct HealthMsg {
  std::string event_id;
  std::string instance_id;
  KVRING_MSG(HealthMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &HealthMsg::event_id),
                           Req("instance_id", &HealthMsg::instance_id));
  }
};
struct HealthRetMsg {
  std::string event_id;
  IntDict error_codes;  // worker_id -> code; int keys on the wire
  KVRING_MSG(HealthRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &HealthRetMsg::event_id),
                           Req("error_codes", &HealthRetMsg::error_codes));
  }
};
struct QueryInstMsg {
  std::string event_id;
  std::string ip;
  KVRING_MSG(QueryInstMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &QueryInstMsg::event_id), Req("ip", &QueryInstMsg::ip));
  }
};
struct QueryInstRetMsg {
  std::string event_id;
  std::optional<std::string> instance_id;
  KVRING_MSG(QueryInstRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &QueryInstRetMsg::event_id),
                           Req("instance_id", &QueryInstRetMsg::instance_id));
  }
};

struct HeartbeatMsg {
  std::string instance_id;
  Int worker_id;
  std::string ip;
  Int port;
  std::optional<std::string> peer_init_url;
  KVRING_MSG(HeartbeatMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &HeartbeatMsg::instance_id),
                           Req("worker_id", &HeartbeatMsg::worker_id),
                           Req("ip", &HeartbeatMsg::ip), Req("port", &HeartbeatMsg::port),
                           Req("peer_init_url", &HeartbeatMsg::peer_init_url));
  }
};
struct HeartbeatRetMsg {
  std::vector<HeartbeatCommand> commands;
  KVRING_MSG(HeartbeatRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Def("commands", &HeartbeatRetMsg::commands));
  }
};

struct BatchedP2PLookupMsg {
  std::vector<Int> hashes;  // note: first on the wire
  std::string instance_id;
  Int worker_id;            // the requester's TP rank
  KVRING_MSG(BatchedP2PLookupMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("hashes", &BatchedP2PLookupMsg::hashes),
                           Req("instance_id", &BatchedP2PLookupMsg::instance_id),
                           Req("worker_id", &BatchedP2PLookupMsg::worker_id));
  }
};
struct BatchedP2PLookupRetMsg {
  std::vector<P2PLayout> layout_info;
  KVRING_MSG(BatchedP2PLookupRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("layout_info", &BatchedP2PLookupRetMsg::layout_info));
  }
};

struct QueryWorkerInfoMsg {
  std::string event_id;
  std::string instance_id;  // "all" is special
  std::optional<std::vector<Int>> worker_ids;
  KVRING_MSG(QueryWorkerInfoMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &QueryWorkerInfoMsg::event_id),
                           Req("instance_id", &QueryWorkerInfoMsg::instance_id),
                           Req("worker_ids", &QueryWorkerInfoMsg::worker_ids));
  }
};
struct QueryWorkerInfoRetMsg {
  std::string event_id;
  std::vector<WorkerInfo> worker_infos;
  KVRING_MSG(QueryWorkerInfoRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("event_id", &QueryWorkerInfoRetMsg::event_id),
                           Req("worker_infos", &QueryWorkerInfoRetMsg::worker_infos));
  }
};

struct FullSyncStartMsg {
  std::string instance_id;
  Int worker_id;
  std::string location;
  std::string sync_id;
  Int total_keys;
  Int batch_count;
  KVRING_MSG(FullSyncStartMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &FullSyncStartMsg::instance_id),
                           Req("worker_id", &FullSyncStartMsg::worker_id),
                           Req("location", &FullSyncStartMsg::location),
                           Req("sync_id", &FullSyncStartMsg::sync_id),
                           Req("total_keys", &FullSyncStartMsg::total_keys),
                           Req("batch_count", &FullSyncStartMsg::batch_count));
  }
};
struct FullSyncStartRetMsg {
  std::string sync_id;
  bool accepted = false;
  std::optional<std::string> error_msg;
  KVRING_MSG(FullSyncStartRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("sync_id", &FullSyncStartRetMsg::sync_id),
                           Req("accepted", &FullSyncStartRetMsg::accepted),
                           Def("error_msg", &FullSyncStartRetMsg::error_msg));
  }
};
struct FullSyncBatchMsg {
  std::string instance_id;
  Int worker_id;
  std::string location;
  std::string sync_id;
  Int batch_id;
  std::vector<Int> keys;
  KVRING_MSG(FullSyncBatchMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &FullSyncBatchMsg::instance_id),
                           Req("worker_id", &FullSyncBatchMsg::worker_id),
                           Req("location", &FullSyncBatchMsg::location),
                           Req("sync_id", &FullSyncBatchMsg::sync_id),
                           Req("batch_id", &FullSyncBatchMsg::batch_id),
                           Req("keys", &FullSyncBatchMsg::keys));
  }
};
struct FullSyncEndMsg {
  std::string instance_id;
  Int worker_id;
  std::string location;
  std::string sync_id;
  Int actual_total_keys;
  KVRING_MSG(FullSyncEndMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &FullSyncEndMsg::instance_id),
                           Req("worker_id", &FullSyncEndMsg::worker_id),
                           Req("location", &FullSyncEndMsg::location),
                           Req("sync_id", &FullSyncEndMsg::sync_id),
                           Req("actual_total_keys", &FullSyncEndMsg::actual_total_keys));
  }
};
struct FullSyncStatusMsg {
  std::string instance_id;
  Int worker_id;
  std::string sync_id;
  KVRING_MSG(FullSyncStatusMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &FullSyncStatusMsg::instance_id),
                           Req("worker_id", &FullSyncStatusMsg::worker_id),
                           Req("sync_id", &FullSyncStatusMsg::sync_id));
  }
};
struct FullSyncStatusRetMsg {
  std::string sync_id;
  bool is_complete = false;
  double global_progress = 0;
  bool can_exit_freeze = false;
  std::vector<Int> missing_batches;
  KVRING_MSG(FullSyncStatusRetMsg);
  static constexpr auto Fields() {
    return std::make_tuple(Req("sync_id", &FullSyncStatusRetMsg::sync_id),
                           Req("is_complete", &FullSyncStatusRetMsg::is_complete),
                           Req("global_progress", &FullSyncStatusRetMsg::global_progress),
                           Req("can_exit_freeze", &FullSyncStatusRetMsg::can_exit_freeze),
                           Def("missing_batches", &FullSyncStatusRetMsg::missing_batches));
  }
};

#undef KVRING_MSG

// The 51 members of LMCache's `Msg` union, in its declaration order.
using Message = std::variant<
    RegisterMsg, RegisterRetMsg, DeRegisterMsg, KVAdmitMsg, KVEvictMsg, BatchedKVOperationMsg,
    ClearWorkerMsg, ClearWorkerRetMsg, PinWorkerMsg, PinWorkerRetMsg, CompressWorkerMsg,
    CompressWorkerRetMsg, DecompressWorkerMsg, DecompressWorkerRetMsg, MoveWorkerMsg,
    MoveWorkerRetMsg, HealthWorkerMsg, HealthWorkerRetMsg, CheckFinishWorkerMsg,
    CheckFinishWorkerRetMsg, LookupMsg, LookupRetMsg, ClearMsg, ClearRetMsg, PinMsg, PinRetMsg,
    CompressMsg, CompressRetMsg, DecompressMsg, DecompressRetMsg, MoveMsg, MoveRetMsg, HealthMsg,
    HealthRetMsg, CheckFinishMsg, CheckFinishRetMsg, ErrorMsg, QueryInstMsg, QueryInstRetMsg,
    HeartbeatMsg, HeartbeatRetMsg, BatchedP2PLookupMsg, BatchedP2PLookupRetMsg, QueryWorkerInfoMsg,
    QueryWorkerInfoRetMsg, FullSyncStartMsg, FullSyncStartRetMsg, FullSyncBatchMsg, FullSyncEndMsg,
    FullSyncStatusMsg, FullSyncStatusRetMsg>;
static_assert(std::variant_size_v<Message> == 51);

// The class name (the "type" tag) of whatever `m` holds.
std::string_view TagOf(const Message& m);

}  // namespace kvring::protocol
