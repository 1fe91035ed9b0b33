// A bounds-checked msgpack pull reader over an untrusted byte span.
//
// Invariants: pos_ <= size_ always; every length or count read from the input
// is checked against the bytes that remain before it is used, so a header that
// claims more than the buffer holds fails as "truncated" without allocating.
// Nothing here throws or aborts.
//
// Errors are a DecodeErr: null when ok (one pointer test on the success path),
// otherwise a heap detail that callers decorate with the msgspec-style path
// ("$.operations[1].op_type") as the error unwinds.
#pragma once

#include <array>
#include <cstdint>
#include <vector>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>

#include "kvring/protocol/codec.h"
#include "kvring/protocol/errors.h"
#include "kvring/status.h"
#include "protocol/msgpack_format.h"

namespace kvring::protocol::detail {

enum class WireType : std::uint8_t { kNil, kBool, kInt, kFloat, kStr, kBin, kArray, kMap, kExt };

// msgspec's names for wire types in "Expected `X`, got `Y`".
const char* WireTypeName(WireType t);

constexpr std::array<WireType, 256> MakeWireTypeTable() {
  namespace mf = msgpack_format;
  std::array<WireType, 256> t{};
  for (int b = 0; b < 256; ++b) {
    WireType w = WireType::kInt;  // 0xcc..0xd3 and both fixint ranges
    if (b >= 0x80 && b <= 0x8f) w = WireType::kMap;
    else if (b >= 0x90 && b <= 0x9f) w = WireType::kArray;
    else if (b >= 0xa0 && b <= 0xbf) w = WireType::kStr;
    else switch (b) {
      case mf::kNil: case mf::kNeverUsed: w = WireType::kNil; break;
      case mf::kFalse: case mf::kTrue: w = WireType::kBool; break;
      case mf::kBin8: case mf::kBin16: case mf::kBin32: w = WireType::kBin; break;
      case mf::kExt8: case mf::kExt16: case mf::kExt32: case mf::kFixext1: case mf::kFixext2:
      case mf::kFixext4: case mf::kFixext8: case mf::kFixext16: w = WireType::kExt; break;
      case mf::kFloat32: case mf::kFloat64: w = WireType::kFloat; break;
      case mf::kStr8: case mf::kStr16: case mf::kStr32: w = WireType::kStr; break;
      case mf::kArray16: case mf::kArray32: w = WireType::kArray; break;
      case mf::kMap16: case mf::kMap32: w = WireType::kMap; break;
      default: break;
    }
    t[static_cast<std::size_t>(b)] = w;
  }
  return t;
}
inline constexpr std::array<WireType, 256> kWireTypeOf = MakeWireTypeTable();

struct ErrDetail {
  ProtocolError kind = ProtocolError::kValidation;
  std::string what;     // "expected int, got str"
  std::string path;     // relative path, segments prepended while unwinding
  std::string field;    // innermost struct field, for "field 'x': ..."
  bool in_key = false;  // error is in a map key: "`key` in `$path`"
  bool has_path = true; // decode-level errors (truncation) carry no path
};

class [[nodiscard]] DecodeErr {
 public:
  DecodeErr() = default;
  DecodeErr(ProtocolError kind, std::string what, bool has_path = true)
      : d_(std::make_unique<ErrDetail>()) {
    d_->kind = kind;
    d_->what = std::move(what);
    d_->has_path = has_path;
  }
  explicit operator bool() const { return d_ != nullptr; }
  ErrDetail& detail() { return *d_; }

  // Decorators, applied while unwinding; they return *this for chaining.
  DecodeErr&& AtField(std::string_view name) && {
    if (d_->field.empty()) d_->field = std::string(name);
    d_->path.insert(0, "." + std::string(name));
    return std::move(*this);
  }
  DecodeErr&& AtIndex(std::size_t i) && {
    d_->path.insert(0, "[" + std::to_string(i) + "]");
    return std::move(*this);
  }
  DecodeErr&& AtDictValue() && {
    d_->path.insert(0, "[...]");
    return std::move(*this);
  }
  DecodeErr&& InKey() && {
    d_->in_key = true;
    return std::move(*this);
  }
  Status ToStatus() const;

 private:
  std::unique_ptr<ErrDetail> d_;
};

DecodeErr TypeError(std::string_view expected, WireType got);
DecodeErr TypeErrorNullTag(std::string_view expected);  // msgspec says `null` here
DecodeErr InvalidValue(std::string_view value);
DecodeErr MissingField(std::string_view name);

// The widths other than 9 bytes (TryReadInt's slow path; msgpack_reader.cc).
std::size_t TryReadShortInt(const std::uint8_t* p, const std::uint8_t* end, Int* out);

// Reads an int at p (p < end) without error reporting: returns the bytes
// consumed, or 0 when the value is not an int or is cut short (the caller
// then takes the slow path, which produces the error).
inline std::size_t TryReadInt(const std::uint8_t* p, const std::uint8_t* end, Int* out) {
  using namespace msgpack_format;
  const std::uint8_t b = *p;
  // Random chunk hashes, nearly all 9 bytes and of either sign, inline and
  // without a branch on which of the two tags (a switch on it mispredicts
  // half the time); other widths out of line.
  if (((b == kUint64) | (b == kInt64)) & (end - p >= 9)) [[likely]] {
    std::uint64_t be;
    std::memcpy(&be, p + 1, 8);
    const std::uint64_t u = __builtin_bswap64(be);
    const bool negative = (b == kInt64) & (static_cast<std::int64_t>(u) < 0);
    *out = negative ? Int::FromI64(static_cast<std::int64_t>(u)) : Int::FromU64(u);
    return 9;
  }
  return TryReadShortInt(p, end, out);
}

class Reader {
 public:
  Reader(const std::uint8_t* data, std::size_t size, const DecodeLimits& limits)
      : p_(data), size_(size), limits_(limits) {}

  std::size_t pos() const { return pos_; }
  const std::uint8_t* data() const { return p_; }
  std::size_t size() const { return size_; }
  std::uint32_t depth() const { return depth_; }
  void set_pos(std::size_t pos) { pos_ = pos; }
  std::size_t remaining() const { return size_ - pos_; }
  const DecodeLimits& limits() const { return limits_; }

  // Type of the next value (consumes nothing). Fails on end of input or 0xc1.
  DecodeErr Peek(WireType* t) const {
    if (pos_ >= size_) return Truncated();
    std::uint8_t b = p_[pos_];
    *t = kWireTypeOf[b];
    if (b == msgpack_format::kNeverUsed) return InvalidOpcode(pos_);
    return {};
  }

  // Reads an int of any width. Non-int values fail with a type error.
  DecodeErr ReadInt(Int* out) {
    using namespace msgpack_format;
    if (pos_ >= size_) return Truncated();
    std::uint8_t b = p_[pos_];
    if (b <= kPosFixintMax) { *out = Int::FromU64(b); ++pos_; return {}; }
    if (b >= kNegFixintMin) { *out = Int(static_cast<std::int8_t>(b)); ++pos_; return {}; }
    switch (b) {
      case kUint8: return ReadFixed<std::uint8_t>(out);
      case kUint16: return ReadFixed<std::uint16_t>(out);
      case kUint32: return ReadFixed<std::uint32_t>(out);
      case kUint64: return ReadFixed<std::uint64_t>(out);
      case kInt8: return ReadFixed<std::int8_t>(out);
      case kInt16: return ReadFixed<std::int16_t>(out);
      case kInt32: return ReadFixed<std::int32_t>(out);
      case kInt64: return ReadFixed<std::int64_t>(out);
      default: return TypeMismatch("int");
    }
  }

  DecodeErr ReadBool(bool* out) {
    if (pos_ >= size_) return Truncated();
    std::uint8_t b = p_[pos_];
    if (b == msgpack_format::kTrue || b == msgpack_format::kFalse) {
      *out = b == msgpack_format::kTrue;
      ++pos_;
      return {};
    }
    return TypeMismatch("bool");
  }

  // float64, float32, or any int (msgspec widens ints into float fields).
  DecodeErr ReadFloat(double* out);

  // A str, UTF-8 validated; the view points into the input.
  DecodeErr ReadStr(std::string_view* out, const char* expected = "str") {
    using namespace msgpack_format;
    if (pos_ >= size_) return Truncated();
    std::uint8_t b = p_[pos_];
    std::uint32_t len;
    std::size_t head;
    if ((b & 0xe0) == kFixstr) { len = b & 0x1f; head = 1; }
    else if (b == kStr8) { if (DecodeErr e = Need(2)) return e; len = p_[pos_ + 1]; head = 2; }
    else if (b == kStr16) { if (DecodeErr e = Need(3)) return e; len = Load<std::uint16_t>(pos_ + 1); head = 3; }
    else if (b == kStr32) { if (DecodeErr e = Need(5)) return e; len = Load<std::uint32_t>(pos_ + 1); head = 5; }
    else return TypeMismatch(expected);
    if (len > size_ - pos_ - head) return Truncated();
    if (len > limits_.max_str_len) return TooLong("str", len);
    const char* s = reinterpret_cast<const char*>(p_ + pos_ + head);
    if (!IsValidUtf8(s, len)) return BadUtf8(pos_);
    *out = std::string_view(s, len);
    pos_ += head + len;
    return {};
  }

  // Container headers. The count is checked against the bytes that remain
  // (each element takes at least one byte) and against the limits.
  DecodeErr ReadArrayHeader(std::uint32_t* n, const char* expected = "array");
  DecodeErr ReadMapHeader(std::uint32_t* n, const char* expected = "object");

  // bin and ext payloads (for Any values and skipping).
  DecodeErr ReadBin(std::string_view* out);
  DecodeErr ReadExt(std::int8_t* type, std::string_view* out);

  DecodeErr ReadNil() {
    if (pos_ >= size_) return Truncated();
    if (p_[pos_] != msgpack_format::kNil) return TypeMismatch("None");
    ++pos_;
    return {};
  }
  bool NextIsNil() const { return pos_ < size_ && p_[pos_] == msgpack_format::kNil; }

  // Skips one complete value of any type, nested up to the depth limit.
  DecodeErr Skip();

  // Nesting accounting for containers the caller descends into.
  DecodeErr Enter() {
    if (++depth_ > limits_.max_depth) return DepthExceeded();
    return {};
  }
  void Leave() { --depth_; }

  DecodeErr Truncated() const;
  DecodeErr TypeMismatch(std::string_view expected) const;

  static bool IsValidUtf8(const char* s, std::size_t n);

 private:
  template <typename T>
  DecodeErr ReadFixed(Int* out) {
    if (DecodeErr e = Need(1 + sizeof(T))) return e;
    T v = Load<T>(pos_ + 1);
    pos_ += 1 + sizeof(T);
    if constexpr (std::is_signed_v<T>) *out = Int::FromI64(v);
    else *out = Int::FromU64(v);
    return {};
  }
  template <typename T>
  T Load(std::size_t at) const {
    // msgpack is big-endian.
    std::make_unsigned_t<T> u = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i) u = static_cast<decltype(u)>((u << 8) | p_[at + i]);
    T v;
    std::memcpy(&v, &u, sizeof(T));
    return v;
  }
  DecodeErr Need(std::size_t n) const {
    if (n > size_ - pos_) return Truncated();
    return {};
  }
  DecodeErr ReadContainerHeader(bool map, std::uint32_t* n, const char* expected);
  DecodeErr SkipDepth();
  DecodeErr InvalidOpcode(std::size_t at) const;
  DecodeErr TooLong(const char* what, std::uint64_t len) const;
  DecodeErr BadUtf8(std::size_t at) const;
  DecodeErr DepthExceeded() const;

  const std::uint8_t* p_;
  std::size_t size_;
  std::size_t pos_ = 0;
  const DecodeLimits& limits_;
  std::uint32_t depth_ = 0;
};

}  // namespace kvring::protocol::detail
