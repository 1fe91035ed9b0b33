// Int: a Python int as msgspec puts it on the wire, in [-2^63, 2^64-1].
//
// Chunk hashes are Python ints. With the builtin hash they are signed 64-bit,
// but other hash functions (or an uint64 encoder) produce values >= 2^63, and
// msgspec accepts both. A plain int64_t or uint64_t would lose half the range,
// so Int keeps the 64-bit pattern plus a sign flag. Two Ints are equal only
// when they are the same Python int: -1 and 2^64-1 differ.
//
// Invariant: negative_ implies static_cast<int64_t>(bits_) < 0.
#pragma once

#include <cstdint>
#include <string>

namespace kvring::protocol {

class Int {
 public:
  constexpr Int() = default;
  // Any value of a signed 64-bit type is representable.
  constexpr Int(long long v)  // NOLINT: implicit so that Int x = 5 reads naturally
      : bits_(static_cast<std::uint64_t>(v)), negative_(v < 0) {}
  constexpr Int(long v) : Int(static_cast<long long>(v)) {}                // NOLINT
  constexpr Int(int v) : Int(static_cast<long long>(v)) {}                 // NOLINT
  static constexpr Int FromU64(std::uint64_t v) { return Int(v, false); }
  static constexpr Int FromI64(std::int64_t v) { return Int(static_cast<long long>(v)); }

  constexpr bool negative() const { return negative_; }
  // The value's low 64 bits (two's complement). For index keys: a chunk hash's
  // identity inside kvring is this pattern.
  constexpr std::uint64_t bits() const { return bits_; }
  constexpr bool FitsI64() const { return negative_ || bits_ <= 0x7fffffffffffffffULL; }
  // Meaningful only when FitsI64().
  constexpr std::int64_t AsI64() const { return static_cast<std::int64_t>(bits_); }
  // The value, or INT64_MAX when it is above (an id or count that large is
  // out of range wherever kvring compares it).
  constexpr std::int64_t SaturatedI64() const { return FitsI64() ? AsI64() : INT64_MAX; }
  // Decimal text, exact.
  std::string ToString() const;

  friend constexpr bool operator==(Int a, Int b) = default;
  friend constexpr bool operator<(Int a, Int b) {
    if (a.negative_ != b.negative_) return a.negative_;
    return a.negative_ ? static_cast<std::int64_t>(a.bits_) < static_cast<std::int64_t>(b.bits_)
                       : a.bits_ < b.bits_;
  }

 private:
  constexpr Int(std::uint64_t bits, bool negative) : bits_(bits), negative_(negative) {}
  std::uint64_t bits_ = 0;
  bool negative_ = false;
};

}  // namespace kvring::protocol
