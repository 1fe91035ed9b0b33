// msgpack writer with msgspec's encoding choices: the shortest int, str,
// array and map headers; non-negative ints always unsigned; floats always
// float64. Templated on where the bytes go:
//   StringSink  appends to a std::string (grows);
//   SpanSink    writes into caller memory and keeps counting past the end, so
//               the caller learns the size that would have been needed.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "kvring/protocol/int.h"
#include "protocol/msgpack_format.h"

namespace kvring::protocol::detail {

// Reserve(n) hands out room for up to n bytes (nullptr: they do not fit);
// Commit(n, used) then keeps the first `used` of them. Bulk writers fill the
// room through a local pointer: bytes stored one by one through the sink
// would make the compiler reload its members after every byte (a uint8_t
// store may alias anything).
struct StringSink {
  std::string* out;
  void Put(const void* p, std::size_t n) { out->append(static_cast<const char*>(p), n); }
  void Put1(std::uint8_t b) { out->push_back(static_cast<char>(b)); }
  std::uint8_t* Reserve(std::size_t n) {
    const std::size_t at = out->size();
    out->resize(at + n);
    return reinterpret_cast<std::uint8_t*>(out->data() + at);
  }
  void Commit(std::size_t reserved, std::size_t used) { out->resize(out->size() - reserved + used); }
};

struct SpanSink {
  std::uint8_t* data;
  std::size_t cap;
  std::size_t pos = 0;
  void Put(const void* p, std::size_t n) {
    // n == 0: an empty string_view may have a null data() (memcpy's
    // arguments must not be null even for no bytes).
    if (n != 0 && pos <= cap && n <= cap - pos) std::memcpy(data + pos, p, n);
    pos += n;
  }
  void Put1(std::uint8_t b) {
    if (pos < cap) data[pos] = b;
    ++pos;
  }
  bool fits() const { return pos <= cap; }
  std::uint8_t* Reserve(std::size_t n) { return pos <= cap && n <= cap - pos ? data + pos : nullptr; }
  void Commit(std::size_t, std::size_t used) { pos += used; }
};

template <typename Sink>
class Writer {
 public:
  explicit Writer(Sink* sink) : s_(sink) {}

  void Nil() { s_->Put1(msgpack_format::kNil); }
  void Bool(bool b) { s_->Put1(b ? msgpack_format::kTrue : msgpack_format::kFalse); }

  void Integer(Int v) {
    std::uint8_t buf[kMaxIntBytes];
    s_->Put(buf, PutInt(buf, v));
  }

  // Bulk writing: `fill(p)` writes up to `room` bytes at p through a local
  // pointer and returns how many it wrote; where `room` does not fit,
  // `otherwise()` writes the same bytes through this writer (a SpanSink then
  // counts on past its end, so the caller still learns the size).
  template <typename Fill, typename Otherwise>
  void Bulk(std::size_t room, Fill&& fill, Otherwise&& otherwise) {
    if (std::uint8_t* const p = s_->Reserve(room)) s_->Commit(room, fill(p));
    else otherwise();
  }

  // An array of ints (chunk hashes: the bulk of what kvring encodes), its
  // room checked once for the worst case.
  void IntArray(std::span<const Int> v) {
    ArrayHeader(v.size());
    Bulk(
        v.size() * kMaxIntBytes,
        [&](std::uint8_t* p) {
          std::uint8_t* q = p;
          for (Int x : v) q += PutInt(q, x);
          return static_cast<std::size_t>(q - p);
        },
        [&] {
          for (Int x : v) Integer(x);
        });
  }

  // The same for unsigned 64-bit values (a worker's chunk hashes as it
  // holds them), each written as Int::FromU64 would be.
  void UintArray(std::span<const std::uint64_t> v) {
    ArrayHeader(v.size());
    Bulk(
        v.size() * kMaxIntBytes,
        [&](std::uint8_t* p) {
          std::uint8_t* q = p;
          for (std::uint64_t x : v) q += PutUint(q, x);
          return static_cast<std::size_t>(q - p);
        },
        [&] {
          for (std::uint64_t x : v) Integer(Int::FromU64(x));
        });
  }

  void Float(double d) {
    std::uint64_t u;
    std::memcpy(&u, &d, 8);
    Tagged(msgpack_format::kFloat64, u);
  }

  void Str(std::string_view s) {
    using namespace msgpack_format;
    std::size_t n = s.size();
    if (n <= kFixstrMaxLen) s_->Put1(static_cast<std::uint8_t>(kFixstr | n));
    else if (n <= 0xff) Tagged(kStr8, static_cast<std::uint8_t>(n));
    else if (n <= 0xffff) Tagged(kStr16, static_cast<std::uint16_t>(n));
    else Tagged(kStr32, static_cast<std::uint32_t>(n));
    s_->Put(s.data(), n);
  }

  void Bin(std::string_view s) {
    using namespace msgpack_format;
    std::size_t n = s.size();
    if (n <= 0xff) Tagged(kBin8, static_cast<std::uint8_t>(n));
    else if (n <= 0xffff) Tagged(kBin16, static_cast<std::uint16_t>(n));
    else Tagged(kBin32, static_cast<std::uint32_t>(n));
    s_->Put(s.data(), n);
  }

  void Ext(std::int8_t type, std::string_view s) {
    using namespace msgpack_format;
    std::size_t n = s.size();
    switch (n) {
      case 1: s_->Put1(kFixext1); break;
      case 2: s_->Put1(kFixext2); break;
      case 4: s_->Put1(kFixext4); break;
      case 8: s_->Put1(kFixext8); break;
      case 16: s_->Put1(kFixext16); break;
      default:
        if (n <= 0xff) Tagged(kExt8, static_cast<std::uint8_t>(n));
        else if (n <= 0xffff) Tagged(kExt16, static_cast<std::uint16_t>(n));
        else Tagged(kExt32, static_cast<std::uint32_t>(n));
    }
    s_->Put1(static_cast<std::uint8_t>(type));
    s_->Put(s.data(), n);
  }

  void ArrayHeader(std::size_t n) {
    using namespace msgpack_format;
    if (n <= kFixarrayMaxLen) s_->Put1(static_cast<std::uint8_t>(kFixarray | n));
    else if (n <= 0xffff) Tagged(kArray16, static_cast<std::uint16_t>(n));
    else Tagged(kArray32, static_cast<std::uint32_t>(n));
  }

  void MapHeader(std::size_t n) {
    using namespace msgpack_format;
    if (n <= kFixmapMaxLen) s_->Put1(static_cast<std::uint8_t>(kFixmap | n));
    else if (n <= 0xffff) Tagged(kMap16, static_cast<std::uint16_t>(n));
    else Tagged(kMap32, static_cast<std::uint32_t>(n));
  }

  static constexpr std::size_t kMaxIntBytes = 9;
  static std::size_t PutUint(std::uint8_t* p, std::uint64_t u) {
    if (u > 0xffffffffULL) [[likely]] {  // a random hash: 9 bytes, no branch on a sign
      p[0] = msgpack_format::kUint64;
      const std::uint64_t be = __builtin_bswap64(u);
      std::memcpy(p + 1, &be, 8);
      return 9;
    }
    return PutInt(p, Int::FromU64(u));
  }
  // Writes `v` at p in msgspec's shortest form; returns its length.
  static std::size_t PutInt(std::uint8_t* p, Int v) {
    using namespace msgpack_format;
    // Chunk hashes, the bulk of what kvring encodes, are random 64-bit
    // values of either sign: nearly all take 9 bytes. Deciding that first,
    // with the tag picked without a branch on the sign (which a random hash
    // would mispredict half the time): random hashes encode 20 % faster, a KV
    // batch 27 % (bench/codec_bench.cc, BM_EncodeP2PLookup_RandomHashes).
    const std::uint64_t u = v.bits();
    const bool negative = v.negative();
    const bool nine_bytes = (negative & (static_cast<std::int64_t>(u) < INT32_MIN)) |
                            (!negative & (u > 0xffffffffULL));
    if (nine_bytes) [[likely]] {
      p[0] = static_cast<std::uint8_t>(kUint64 + (negative ? kInt64 - kUint64 : 0));
      const std::uint64_t be = __builtin_bswap64(u);
      std::memcpy(p + 1, &be, 8);
      return 9;
    }
    if (!negative) {
      if (u <= kPosFixintMax) { p[0] = static_cast<std::uint8_t>(u); return 1; }
      if (u <= 0xff) return PutTagged(p, kUint8, static_cast<std::uint8_t>(u));
      if (u <= 0xffff) return PutTagged(p, kUint16, static_cast<std::uint16_t>(u));
      return PutTagged(p, kUint32, static_cast<std::uint32_t>(u));
    }
    const std::int64_t i = v.AsI64();
    if (i >= -32) { p[0] = static_cast<std::uint8_t>(i); return 1; }
    if (i >= INT8_MIN) return PutTagged(p, kInt8, static_cast<std::uint8_t>(static_cast<std::int8_t>(i)));
    if (i >= INT16_MIN) return PutTagged(p, kInt16, static_cast<std::uint16_t>(static_cast<std::int16_t>(i)));
    return PutTagged(p, kInt32, static_cast<std::uint32_t>(static_cast<std::int32_t>(i)));
  }

 private:
  // A tag byte and `v` big-endian at p; returns the bytes written.
  template <typename U>
  static std::size_t PutTagged(std::uint8_t* p, std::uint8_t tag, U v) {
    p[0] = tag;
    for (std::size_t i = 0; i < sizeof(U); ++i) p[1 + i] = static_cast<std::uint8_t>(v >> (8 * (sizeof(U) - 1 - i)));
    return 1 + sizeof(U);
  }
  template <typename U>
  void Tagged(std::uint8_t tag, U v) {
    std::uint8_t buf[1 + sizeof(U)];
    s_->Put(buf, PutTagged(buf, tag, v));
  }

  Sink* s_;
};

}  // namespace kvring::protocol::detail
