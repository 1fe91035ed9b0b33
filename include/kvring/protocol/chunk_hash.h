// CPython's builtin hash(), as LMCache's ChunkedTokenDatabase ("builtin"
// hash) uses it to turn tokens into chunk hashes:
//
//   h[-1] = NONE_HASH
//   h[i]  = hash((h[i-1], tuple(tokens[i*C : (i+1)*C])))    C = chunk size
//
// with the last, partial chunk hashed too. Reproduced exactly for CPython
// >= 3.11 on 64-bit builds:
//   - int:   sign * (|v| mod (2^61 - 1)), and -1 becomes -2;
//   - tuple: the xxHash-derived loop of Objects/tupleobject.c (>= 3.8);
//   - str/bytes: SipHash-1-3 keyed from PYTHONHASHSEED (0 = all-zero key,
//     N > 0 = CPython's LCG expansion of N), as Python/pyhash.c does. A str is
//     hashed over its PEP 393 storage (latin-1, UCS-2 or UCS-4).
//
// Thread-safety: pure functions; ChunkHasher is immutable after construction.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvring/protocol/int.h"
#include "kvring/status.h"

namespace kvring {

namespace pyhash {

inline constexpr std::uint64_t kModulus = (1ULL << 61) - 1;  // _PyHASH_MODULUS

// hash(int) for a value in int64 range.
std::int64_t HashInt(std::int64_t v);
// hash(int) for any protocol Int ([-2^63, 2^64-1]).
std::int64_t HashInt(protocol::Int v);
// hash(int) for an arbitrarily large decimal literal ("-123", "2**256"-sized).
Result<std::int64_t> HashDecimal(std::string_view decimal);
// hash(tuple) from the hashes of its items.
std::int64_t HashTuple(std::span<const std::int64_t> item_hashes);

// SipHash-1-3 key derived from PYTHONHASHSEED (0..4294967295).
struct SipKey {
  std::uint64_t k0 = 0;
  std::uint64_t k1 = 0;
};
SipKey KeyFromSeed(std::uint32_t python_hash_seed);
std::int64_t HashBytes(std::string_view bytes, SipKey key);
// `utf8` must be valid UTF-8; it is hashed the way CPython hashes the str.
Result<std::int64_t> HashStr(std::string_view utf8, SipKey key);

}  // namespace pyhash

struct ChunkHash {
  std::uint64_t start = 0;
  std::uint64_t end = 0;
  std::int64_t hash = 0;
  friend bool operator==(const ChunkHash&, const ChunkHash&) = default;
};

class ChunkHasher {
 public:
  // `none_hash_item_hash` is hash(NONE_HASH): the hash of the first tuple
  // item. For an int NONE_HASH v that is HashInt(v) (or HashDecimal for a big
  // one); NONE_HASH = hash("seed") is an int too, so HashInt(HashStr(...)).
  // chunk_size must be > 0.
  ChunkHasher(std::uint32_t chunk_size, std::int64_t none_hash_item_hash)
      : chunk_size_(chunk_size), none_hash_(none_hash_item_hash) {}

  // Appends one entry per chunk (the last one may be partial).
  void Hash(std::span<const std::int64_t> tokens, std::vector<ChunkHash>* out) const;
  std::vector<ChunkHash> Hash(std::span<const std::int64_t> tokens) const;

  std::uint32_t chunk_size() const { return chunk_size_; }

 private:
  std::uint32_t chunk_size_;
  std::int64_t none_hash_;
};

}  // namespace kvring
