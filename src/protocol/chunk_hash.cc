#include "kvring/protocol/chunk_hash.h"
#include "kvring/protocol/errors.h"

#include <cstring>

namespace kvring {
namespace pyhash {
namespace {

std::int64_t FinishIntHash(std::uint64_t mag_mod, bool negative) {
  std::int64_t h = static_cast<std::int64_t>(mag_mod);
  if (negative) h = -h;
  return h == -1 ? -2 : h;
}

// Python/pyhash.c: ROTATE and the SipHash rounds.
inline std::uint64_t Rotl(std::uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }
inline void HalfRound(std::uint64_t& a, std::uint64_t& b, std::uint64_t& c, std::uint64_t& d,
                      int s, int t) {
  a += b;
  c += d;
  b = Rotl(b, s) ^ a;
  d = Rotl(d, t) ^ c;
  a = Rotl(a, 32);
}
inline void SipRound(std::uint64_t& v0, std::uint64_t& v1, std::uint64_t& v2, std::uint64_t& v3) {
  HalfRound(v0, v1, v2, v3, 13, 16);
  HalfRound(v2, v1, v0, v3, 17, 21);
}

std::uint64_t SipHash13(SipKey key, const std::uint8_t* in, std::size_t n) {
  std::uint64_t b = static_cast<std::uint64_t>(n) << 56;
  std::uint64_t v0 = key.k0 ^ 0x736f6d6570736575ULL;
  std::uint64_t v1 = key.k1 ^ 0x646f72616e646f6dULL;
  std::uint64_t v2 = key.k0 ^ 0x6c7967656e657261ULL;
  std::uint64_t v3 = key.k1 ^ 0x7465646279746573ULL;
  while (n >= 8) {
    std::uint64_t mi = 0;
    for (int i = 7; i >= 0; --i) mi = (mi << 8) | in[i];  // little-endian load
    in += 8;
    n -= 8;
    v3 ^= mi;
    SipRound(v0, v1, v2, v3);
    v0 ^= mi;
  }
  std::uint64_t t = 0;
  for (std::size_t i = n; i > 0; --i) t = (t << 8) | in[i - 1];
  b |= t;
  v3 ^= b;
  SipRound(v0, v1, v2, v3);
  v0 ^= b;
  v2 ^= 0xff;
  SipRound(v0, v1, v2, v3);
  SipRound(v0, v1, v2, v3);
  SipRound(v0, v1, v2, v3);
  return (v0 ^ v1) ^ (v2 ^ v3);
}

std::int64_t HashBuffer(const std::uint8_t* p, std::size_t n, SipKey key) {
  if (n == 0) return 0;
  std::int64_t x = static_cast<std::int64_t>(SipHash13(key, p, n));
  return x == -1 ? -2 : x;
}

}  // namespace

std::int64_t HashInt(std::int64_t v) {
  bool neg = v < 0;
  std::uint64_t mag = neg ? ~static_cast<std::uint64_t>(v) + 1 : static_cast<std::uint64_t>(v);
  return FinishIntHash(mag % kModulus, neg);
}

std::int64_t HashInt(protocol::Int v) {
  if (v.negative()) return HashInt(v.AsI64());
  return FinishIntHash(v.bits() % kModulus, false);
}

Result<std::int64_t> HashDecimal(std::string_view decimal) {
  bool neg = false;
  std::string_view d = decimal;
  if (!d.empty() && (d[0] == '-' || d[0] == '+')) {
    neg = d[0] == '-';
    d.remove_prefix(1);
  }
  if (d.empty()) return Status(ErrorKind::kInvalidArgument, "not an integer: '" + std::string(decimal) + "'");
  unsigned __int128 acc = 0;
  for (char c : d) {
    if (c < '0' || c > '9')
      return Status(ErrorKind::kInvalidArgument, "not an integer: '" + std::string(decimal) + "'");
    acc = (acc * 10 + static_cast<unsigned>(c - '0')) % kModulus;
  }
  return FinishIntHash(static_cast<std::uint64_t>(acc), neg);
}

std::int64_t HashTuple(std::span<const std::int64_t> items) {
  // Objects/tupleobject.c, tuplehash (64-bit constants).
  constexpr std::uint64_t kPrime1 = 11400714785074694791ULL;
  constexpr std::uint64_t kPrime2 = 14029467366897019727ULL;
  constexpr std::uint64_t kPrime5 = 2870177450012600261ULL;
  std::uint64_t acc = kPrime5;
  for (std::int64_t item : items) {
    acc += static_cast<std::uint64_t>(item) * kPrime2;
    acc = Rotl(acc, 31);
    acc *= kPrime1;
  }
  acc += static_cast<std::uint64_t>(items.size()) ^ (kPrime5 ^ 3527539ULL);
  if (acc == static_cast<std::uint64_t>(-1)) return 1546275796;
  return static_cast<std::int64_t>(acc);
}

SipKey KeyFromSeed(std::uint32_t seed) {
  SipKey key;
  if (seed == 0) return key;  // PYTHONHASHSEED=0 disables randomization: zero key
  // Python/bootstrap_hash.c, lcg_urandom over the 24-byte secret; SipHash
  // uses its first 16 bytes as two little-endian words.
  std::uint8_t buf[24];
  std::uint32_t x = seed;
  for (auto& byte : buf) {
    x = x * 214013u + 2531011u;
    byte = static_cast<std::uint8_t>((x >> 16) & 0xff);
  }
  for (int i = 7; i >= 0; --i) key.k0 = (key.k0 << 8) | buf[i];
  for (int i = 15; i >= 8; --i) key.k1 = (key.k1 << 8) | buf[i];
  return key;
}

std::int64_t HashBytes(std::string_view bytes, SipKey key) {
  return HashBuffer(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), key);
}

Result<std::int64_t> HashStr(std::string_view utf8, SipKey key) {
  // Decode to code points and pick CPython's PEP 393 storage width.
  std::vector<std::uint32_t> cps;
  cps.reserve(utf8.size());
  std::uint32_t max_cp = 0;
  const auto* p = reinterpret_cast<const std::uint8_t*>(utf8.data());
  std::size_t n = utf8.size();
  for (std::size_t i = 0; i < n;) {
    std::uint8_t c = p[i];
    std::uint32_t cp;
    std::size_t len;
    if (c < 0x80) { cp = c; len = 1; }
    else if ((c & 0xe0) == 0xc0) { cp = c & 0x1f; len = 2; }
    else if ((c & 0xf0) == 0xe0) { cp = c & 0x0f; len = 3; }
    else if ((c & 0xf8) == 0xf0) { cp = c & 0x07; len = 4; }
    else return protocol::ProtocolStatus(protocol::ProtocolError::kUnicode, "invalid UTF-8");
    if (i + len > n) return protocol::ProtocolStatus(protocol::ProtocolError::kUnicode, "invalid UTF-8");
    for (std::size_t k = 1; k < len; ++k) {
      if ((p[i + k] & 0xc0) != 0x80) return protocol::ProtocolStatus(protocol::ProtocolError::kUnicode, "invalid UTF-8");
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    cps.push_back(cp);
    max_cp = std::max(max_cp, cp);
    i += len;
  }
  std::size_t width = max_cp < 0x100 ? 1 : max_cp < 0x10000 ? 2 : 4;
  std::vector<std::uint8_t> storage(cps.size() * width);
  for (std::size_t i = 0; i < cps.size(); ++i)
    for (std::size_t b = 0; b < width; ++b)
      storage[i * width + b] = static_cast<std::uint8_t>(cps[i] >> (8 * b));
  return HashBuffer(storage.data(), storage.size(), key);
}

}  // namespace pyhash

void ChunkHasher::Hash(std::span<const std::int64_t> tokens, std::vector<ChunkHash>* out) const {
  std::vector<std::int64_t> items;
  items.reserve(chunk_size_);
  std::int64_t prev_item_hash = none_hash_;
  for (std::size_t start = 0; start < tokens.size(); start += chunk_size_) {
    std::size_t end = std::min<std::size_t>(start + chunk_size_, tokens.size());
    items.clear();
    for (std::size_t i = start; i < end; ++i) items.push_back(pyhash::HashInt(tokens[i]));
    std::int64_t chunk_tuple = pyhash::HashTuple(items);
    std::int64_t pair[2] = {prev_item_hash, chunk_tuple};
    std::int64_t h = pyhash::HashTuple(pair);
    out->push_back({start, end, h});
    prev_item_hash = pyhash::HashInt(h);  // h is an int: the next tuple hashes it again
  }
}

std::vector<ChunkHash> ChunkHasher::Hash(std::span<const std::int64_t> tokens) const {
  std::vector<ChunkHash> out;
  Hash(tokens, &out);
  return out;
}

}  // namespace kvring
