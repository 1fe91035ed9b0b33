// The transport's framing: what the record types of a kvring ring mean, and
// how the correlated and routed records lay out their payloads. The ring
// itself (ring_descriptor.h, ring.h) carries bytes under a 32-bit type and
// reserves only type 0 (padding); everything here is the transport's
// contract between a client and the controller, shared by both sides and by
// `kvring inspect`. Changing anything here changes kSegmentLayoutVersion
// (segment_descriptor.h).
//
//   kMessage        one msgpack-encoded LMCache Msg (msgspec's bytes)
//   kControl        a kvring control request or reply (JSON, e.g. {"op":"stats"}):
//                   kvring's own tools, without adding to LMCache's Msg union
//   kRequest        a request the *client* numbered (an orchestrator keeps many
//                   in flight); the controller answers with a kRequest of the id
//   kCommand        a ControlMsg the *controller* numbered (sent to a worker);
//                   the worker answers with a kCommand of the same id
//   kRoutedCommand  a kCommand for a client of role kFront, which carries many
//                   workers' traffic: it names the worker; answered by a kCommand
//
//   correlated payload (kRequest, kCommand)
//   +-----------+-----------------------------------------------+
//   | id u64    | Msg (msgpack), the rest of the record         |
//   +-----------+-----------------------------------------------+
//
//   routed payload (kRoutedCommand)
//   +-----------+----------------+----------------+-------------------+-----------+
//   | id u64    | worker_id i64  | instance u32 n | instance: n bytes | Msg       |
//   +-----------+----------------+----------------+-------------------+-----------+
//   little-endian, no padding.
//
// LMCache's replies carry no request id (ControlRetMsgs, ErrorMsg) and
// fan-outs finish out of order, so the ids ride here. Who numbered an id
// follows from the record type, never from its value. Every reader checks
// every length against the record before it uses it; a type outside
// [kMessage, kMaxType] is the reader's to refuse.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

#include "kvring/shm/ring.h"

namespace kvring::framing {

inline constexpr std::uint32_t kMessage = 1;
inline constexpr std::uint32_t kControl = 2;
inline constexpr std::uint32_t kRequest = 3;
inline constexpr std::uint32_t kCommand = 4;
inline constexpr std::uint32_t kRoutedCommand = 5;
inline constexpr std::uint32_t kMaxType = kRoutedCommand;
static_assert(kMessage != ring::kRecordPadding, "type 0 is the ring's");

inline constexpr bool IsKnownType(std::uint32_t type) { return type >= kMessage && type <= kMaxType; }

// ---- correlated records ----------------------------------------------------
inline constexpr std::size_t kCorrelationIdBytes = 8;

// A correlated record split into its id and its msgpack message.
struct Correlated {
  std::uint64_t id = 0;
  std::span<const std::uint8_t> message;
};
static_assert(std::endian::native == std::endian::little, "ids and lengths are stored in host order");

// nullopt: another type, or a payload shorter than an id.
inline std::optional<Correlated> SplitCorrelated(const ring::Record& r) {
  if ((r.type != kRequest && r.type != kCommand) || r.payload.size() < kCorrelationIdBytes) return std::nullopt;
  Correlated c;
  std::memcpy(&c.id, r.payload.data(), kCorrelationIdBytes);
  c.message = r.payload.subspan(kCorrelationIdBytes);
  return c;
}
inline void StoreCorrelationId(std::span<std::uint8_t> out, std::uint64_t id) {
  std::memcpy(out.data(), &id, kCorrelationIdBytes);
}

// ---- routed commands ---------------------------------------------------------
inline constexpr std::size_t kRoutedCommandFixedBytes = 8 + 8 + 4;

struct RoutedCommand {
  std::uint64_t id = 0;
  std::int64_t worker_id = 0;
  std::string_view instance_id;          // in ring memory
  std::span<const std::uint8_t> message;  // in ring memory
};

inline std::size_t RoutedCommandHeaderBytes(std::string_view instance_id) {
  return kRoutedCommandFixedBytes + instance_id.size();
}

// Writes the header into `out` (at least RoutedCommandHeaderBytes long).
inline void StoreRoutedCommandHeader(std::span<std::uint8_t> out, std::uint64_t id, std::int64_t worker_id,
                                     std::string_view instance_id) {
  const auto n = static_cast<std::uint32_t>(instance_id.size());
  std::memcpy(out.data(), &id, 8);
  std::memcpy(out.data() + 8, &worker_id, 8);
  std::memcpy(out.data() + 16, &n, 4);
  if (n) std::memcpy(out.data() + kRoutedCommandFixedBytes, instance_id.data(), n);
}

// nullopt: another record type, or lengths that do not fit the record.
inline std::optional<RoutedCommand> SplitRoutedCommand(const ring::Record& r) {
  if (r.type != kRoutedCommand || r.payload.size() < kRoutedCommandFixedBytes) return std::nullopt;
  RoutedCommand c;
  std::uint32_t n = 0;
  std::memcpy(&c.id, r.payload.data(), 8);
  std::memcpy(&c.worker_id, r.payload.data() + 8, 8);
  std::memcpy(&n, r.payload.data() + 16, 4);
  if (n > r.payload.size() - kRoutedCommandFixedBytes) return std::nullopt;
  c.instance_id = std::string_view(reinterpret_cast<const char*>(r.payload.data()) + kRoutedCommandFixedBytes, n);
  c.message = r.payload.subspan(kRoutedCommandFixedBytes + n);
  return c;
}

}  // namespace kvring::framing
