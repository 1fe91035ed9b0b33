// The framing of a kRecordRoutedCommand (ring_descriptor.h): a fan-out
// command the controller sends to a client of role kFront, which carries
// many workers' traffic and so must be told which worker a command is for.
//
//   +-----------+----------------+----------------+------------------+-----------+
//   | id u64    | worker_id i64  | instance u32 n | instance: n bytes | Msg       |
//   +-----------+----------------+----------------+------------------+-----------+
//   little-endian, no padding; the Msg (msgpack) takes the rest of the record.
//
// The front answers with a plain kRecordCommand of the same id. Written by the
// controller, read by the front: the reader checks every length against the
// record before it uses it.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>

#include "kvring/shm/ring.h"

namespace kvring::ring {

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
inline std::optional<RoutedCommand> SplitRoutedCommand(const Record& r) {
  if (r.type != kRecordRoutedCommand || r.payload.size() < kRoutedCommandFixedBytes) return std::nullopt;
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

}  // namespace kvring::ring
