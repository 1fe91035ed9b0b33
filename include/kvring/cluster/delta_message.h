// A cluster delta message: what one node's publisher puts on its subject
// (`kvring.<cluster>.<node>`) of the cluster's JetStream stream, and what every
// other node's consumer takes apart. Shared by writer and readers.
//
//    0        4         8              16                 24
//   +--------+---------+--------------+------------------+----------------------
//   | "KVD1" | records | epoch (u64)  | first seq (u64)  | records: u32 length |
//   |  u32   |  u32    | of the node  | of its 1st record|   + change record
//   +--------+---------+--------------+------------------+----------------------
//
// epoch: random and non-zero, drawn when the node's publisher starts; a reader
// ignores messages of an epoch older than the node's newest. seq: the node's
// change records are numbered 1, 2, ... within an epoch, across messages, so
// a reader sees a gap. Change records: controller/change_feed.h. Little-endian.
//
// Everything here comes from the network: DecodeDeltaMessage validates the
// header, every length and every record before handing any of them on.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "kvring/controller/change_feed.h"
#include "kvring/status.h"

namespace kvring::cluster {

inline constexpr std::uint32_t kDeltaMagic = 0x3144564B;  // "KVD1"
inline constexpr std::size_t kDeltaHeaderBytes = 24;

struct DeltaHeader {
  std::uint32_t records = 0;
  std::uint64_t epoch = 0;
  std::uint64_t first_seq = 0;
};

// Appends messages: Begin, then Add per record while it fits, then Finish.
class DeltaWriter {
 public:
  void Begin(std::uint64_t epoch, std::uint64_t first_seq);
  void Add(std::span<const std::uint8_t> record);
  // The message's bytes (header patched with the record count).
  std::span<const std::uint8_t> Finish();
  std::size_t size() const { return buf_.size(); }
  std::uint32_t records() const { return records_; }

 private:
  std::string buf_;
  std::uint32_t records_ = 0;
};

// Validates the whole message first (header, each length, each record); only
// then calls on_record for each record, decoded and as bytes, in order.
// Garbage gives kProtocol and no call.
using OnRecord = std::function<void(const feed::Change& change, std::span<const std::uint8_t> record)>;
[[nodiscard]] Status DecodeDeltaMessage(std::span<const std::uint8_t> bytes, DeltaHeader* header,
                                        const OnRecord& on_record);


// ---- a node's lease -------------------------------------------------------------
//
// The value of key <node> in the bucket KVRING_<cluster>_LEASES, written by
// the node's publisher at each refresh, read by subscribers:
//
//   "0x<epoch: 16 hex digits> <rebuild from: decimal stream sequence>"
//
// rebuild from: a stream sequence from which the stream rebuilds the node's
// holdings exactly: its epoch's first message (the publisher sends one, with
// no records, as soon as it starts), then each dump's kResync message. 0: not
// known yet (nothing acknowledged). A joining subscriber starts reading at the
// smallest of the live nodes' (at the stream's start if any is 0) instead of
// replaying everything the stream keeps.
struct LeaseValue {
  std::uint64_t epoch = 0;
  std::uint64_t rebuild_from_seq = 0;
};
std::string EncodeLease(const LeaseValue& lease);
// Strict: exactly the format above, one spelling per value (lower-case hex, no
// leading zeros in the decimal; from the network: anything else is refused).
[[nodiscard]] bool DecodeLease(std::string_view text, LeaseValue* out);

}  // namespace kvring::cluster
