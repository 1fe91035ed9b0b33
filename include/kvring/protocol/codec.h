// msgpack codec for LMCache controller messages, byte-exact with msgspec.
//
// Encoding writes what msgspec.msgpack.encode writes: a map, "type" first,
// every field in declaration order (defaults included), shortest int/str/
// array/map headers, floats always as float64. Decoding accepts what msgspec's
// Decoder(Msg) accepts (any key order, unknown keys skipped, any header width,
// int for float) and rejects what it rejects, with an error naming the
// problem and msgspec's path (`$.operations[1].op_type`).
//
// All input is untrusted. Every decode runs under DecodeLimits; a length or
// count that cannot fit in the bytes that remain is rejected before anything
// is allocated, nesting is bounded, and no input makes the decoder abort or
// throw.
//
// Hot path: Decode(bytes, View*) fills a caller-owned view whose strings point
// into `bytes` and whose vectors keep their capacity between calls, so a
// warmed-up view decodes BatchedKVOperationMsg / BatchedP2PLookupMsg with no
// heap allocation. EncodeTo(msg, span) writes into caller memory (a ring slot)
// and reports "does not fit" as a result, not an error.
//
// Thread-safety: all functions are reentrant; share nothing mutable.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvring/protocol/messages.h"
#include "kvring/status.h"

namespace kvring::protocol {

struct DecodeLimits {
  std::size_t max_message_bytes = 64u << 20;  // a 65,536-hash lookup is ~600 KiB
  // Containers nested deeper than this fail (msgspec: about 1,000 with
  // CPython's default recursion limit). Capped at kMaxDepthCap.
  std::uint32_t max_depth = 1000;
  std::uint32_t max_container_len = 64u << 20;  // elements of one array or map
  std::uint32_t max_str_len = 64u << 20;        // bytes of one str/bin/ext
};
inline constexpr std::uint32_t kMaxDepthCap = 100000;

using Bytes_t = std::span<const std::uint8_t>;

// Decodes one message of the `Msg` union. The whole input must be one map.
Result<Message> Decode(Bytes_t bytes, const DecodeLimits& limits = {});
// Decodes `AnyCommand` (FullSyncCommand | HeartbeatCommand), tag "command_type".
Result<HeartbeatCommand> DecodeCommand(Bytes_t bytes, const DecodeLimits& limits = {});

// The value of the "type" key, without decoding the rest (the controller uses
// it to pick a hot-path decoder). Points into `bytes`.
Result<std::string_view> PeekTag(Bytes_t bytes, const DecodeLimits& limits = {});

// ---- zero-allocation views of the two high-volume messages ----------------

struct BatchedKVOperationView {
  std::string_view instance_id;
  Int worker_id;
  std::string_view location;
  std::vector<KVOpEvent> operations;  // cleared and refilled; capacity kept
  static constexpr std::string_view kTag = "BatchedKVOperationMsg";
  static constexpr auto Fields() {
    return std::make_tuple(Req("instance_id", &BatchedKVOperationView::instance_id),
                           Req("worker_id", &BatchedKVOperationView::worker_id),
                           Req("location", &BatchedKVOperationView::location),
                           Req("operations", &BatchedKVOperationView::operations));
  }
};

// A BatchedP2PLookupMsg whose hashes are held as `Hashes`: one field list
// (wire order) for the three shapes below.
template <typename Hashes>
struct BatchedP2PLookupOf {
  Hashes hashes;
  std::string_view instance_id;
  Int worker_id;
  static constexpr std::string_view kTag = "BatchedP2PLookupMsg";
  static constexpr auto Fields() {
    return std::make_tuple(Req("hashes", &BatchedP2PLookupOf::hashes),
                           Req("instance_id", &BatchedP2PLookupOf::instance_id),
                           Req("worker_id", &BatchedP2PLookupOf::worker_id));
  }
};

// The view: hashes as Ints, cleared and refilled (capacity kept).
using BatchedP2PLookupView = BatchedP2PLookupOf<std::vector<Int>>;
// As the controller reads it: each hash as its 64-bit pattern (Int::bits(),
// the index's key, so -1 and 2^64-1 name one chunk), decoded straight into a
// reused array, nothing copied after. Decode only.
using BatchedP2PLookupKeys = BatchedP2PLookupOf<std::vector<std::uint64_t>>;
// To encode straight from the caller's hashes (each sent as the unsigned int
// it is, as Int::FromU64 would), nothing copied first: what a worker's lookup
// sends. Encodes to the same bytes as a view holding the same values.
using BatchedP2PLookupRequest = BatchedP2PLookupOf<std::span<const std::uint64_t>>;

// The lookup's reply from strings it does not own (the controller's lookup
// result: views into its registry), encoded straight into a ring slot with
// nothing copied first. The same bytes as the BatchedP2PLookupRetMsg holding
// the same layouts. Encode only.
struct P2PLayoutView {
  std::string_view instance_id;
  std::string_view location;
  Int num_hit_chunks;
  std::string_view peer_init_url;
};
struct BatchedP2PLookupRetView {
  std::span<const P2PLayoutView> layout_info;
  static constexpr std::string_view kTag = "BatchedP2PLookupRetMsg";
  static constexpr auto Fields() { return std::make_tuple(Req("layout_info", &BatchedP2PLookupRetView::layout_info)); }
};

// Decodes a message whose tag the caller has read already (PeekTag): the
// decoder is found from `tag`, without looking for the tag field again; the
// body is still checked to carry that tag (the bytes may have changed since:
// ring memory). The same results as Decode for the same bytes.
Result<Message> DecodeTagged(std::string_view tag, Bytes_t bytes, const DecodeLimits& limits = {});

// Decode into a view. The tag must be the view's message; the strings stay
// valid as long as `bytes` does. On error the view's contents are unspecified.
Status Decode(Bytes_t bytes, BatchedKVOperationView* out, const DecodeLimits& limits = {});
Status Decode(Bytes_t bytes, BatchedP2PLookupView* out, const DecodeLimits& limits = {});
Status Decode(Bytes_t bytes, BatchedP2PLookupKeys* out, const DecodeLimits& limits = {});
// The lookup's reply (a worker's hot path), into a caller-owned message whose
// layouts and strings keep their capacity: no allocation once warmed up. The
// tag must be BatchedP2PLookupRetMsg (anything else, an ErrorMsg included,
// is an error: decode it with the general Decode).
Status Decode(Bytes_t bytes, BatchedP2PLookupRetMsg* out, const DecodeLimits& limits = {});

// ---- encoding --------------------------------------------------------------

// Appends msgspec's encoding of `m` to `out`.
void Encode(const Message& m, std::string* out);
std::string Encode(const Message& m);
void EncodeCommand(const HeartbeatCommand& c, std::string* out);

// Encoding into caller memory: `bytes` is the full encoded size whether or not
// it fit; when !fits, `out` holds a prefix that must not be published.
struct EncodeResult {
  std::size_t bytes = 0;
  bool fits = false;
};
EncodeResult EncodeTo(const Message& m, std::span<std::uint8_t> out);
EncodeResult EncodeTo(const BatchedKVOperationView& m, std::span<std::uint8_t> out);
EncodeResult EncodeTo(const BatchedP2PLookupView& m, std::span<std::uint8_t> out);
EncodeResult EncodeTo(const BatchedP2PLookupRequest& m, std::span<std::uint8_t> out);
EncodeResult EncodeTo(const BatchedP2PLookupRetMsg& m, std::span<std::uint8_t> out);
EncodeResult EncodeTo(const BatchedP2PLookupRetView& m, std::span<std::uint8_t> out);

// Room that always holds a BatchedKVOperationMsg of n ops:
// KvBatchBytesBound(instance_id.size(), location.size(), n). Its ops are
// written in bulk when the room left for them is at least n * kKvOpMaxBytes
// (otherwise field by field, slower, same bytes).
inline constexpr std::size_t kKvOpMaxBytes = 45;        // one KVOpEvent, key and seq_num 9 bytes each
inline constexpr std::size_t kKvBatchHeaderMaxBytes = 94;  // the rest, besides the two names' characters
constexpr std::size_t KvBatchBytesBound(std::size_t instance_id_bytes, std::size_t location_bytes, std::size_t ops) {
  return kKvBatchHeaderMaxBytes + instance_id_bytes + location_bytes + ops * kKvOpMaxBytes;
}

}  // namespace kvring::protocol
