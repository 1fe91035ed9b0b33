#include "protocol/msgpack_reader.h"

#include <array>
#include <cstdio>

namespace kvring::protocol::detail {
namespace mf = msgpack_format;

const char* WireTypeName(WireType t) {
  switch (t) {
    case WireType::kNil: return "None";
    case WireType::kBool: return "bool";
    case WireType::kInt: return "int";
    case WireType::kFloat: return "float";
    case WireType::kStr: return "str";
    case WireType::kBin: return "bytes";
    case WireType::kArray: return "array";
    case WireType::kMap: return "object";
    case WireType::kExt: return "ext";
  }
  return "?";
}

DecodeErr TypeError(std::string_view expected, WireType got) {
  return DecodeErr(ProtocolError::kValidation,
                   "expected " + std::string(expected) + ", got " + WireTypeName(got));
}
DecodeErr TypeErrorNullTag(std::string_view expected) {
  return DecodeErr(ProtocolError::kValidation, "expected " + std::string(expected) + ", got null");
}
DecodeErr InvalidValue(std::string_view value) {
  return DecodeErr(ProtocolError::kValidation, "invalid value '" + std::string(value) + "'");
}
DecodeErr MissingField(std::string_view name) {
  return DecodeErr(ProtocolError::kValidation, "missing required field '" + std::string(name) + "'");
}

Status DecodeErr::ToStatus() const {
  if (!d_) return Status();
  std::string msg;
  if (!d_->field.empty() && !d_->in_key) msg = "field '" + d_->field + "': ";
  msg += d_->what;
  if (d_->has_path && (!d_->path.empty() || d_->kind == ProtocolError::kValidation)) {
    if (d_->in_key) msg += " - at `key` in `$" + d_->path + "`";
    else msg += " - at `$" + d_->path + "`";
  }
  return ProtocolStatus(d_->kind, std::move(msg));
}

DecodeErr Reader::Truncated() const {
  return DecodeErr(ProtocolError::kDecode,
                   "truncated at byte " + std::to_string(pos_) + " of " + std::to_string(size_),
                   /*has_path=*/false);
}
DecodeErr Reader::TypeMismatch(std::string_view expected) const {
  if (pos_ >= size_) return Truncated();
  std::uint8_t b = p_[pos_];
  if (b == mf::kNeverUsed) return InvalidOpcode(pos_);
  return TypeError(expected, kWireTypeOf[b]);
}
DecodeErr Reader::InvalidOpcode(std::size_t at) const {
  return DecodeErr(ProtocolError::kDecode, "invalid opcode 0xc1 at byte " + std::to_string(at),
                   /*has_path=*/false);
}
DecodeErr Reader::TooLong(const char* what, std::uint64_t len) const {
  return DecodeErr(ProtocolError::kLimit, std::string(what) + " of " + std::to_string(len) +
                                          " at byte " + std::to_string(pos_) +
                                          " exceeds the configured limit");
}
DecodeErr Reader::BadUtf8(std::size_t at) const {
  return DecodeErr(ProtocolError::kUnicode, "invalid UTF-8 in str at byte " + std::to_string(at));
}
DecodeErr Reader::DepthExceeded() const {
  return DecodeErr(ProtocolError::kRecursion,
                   "nesting deeper than " + std::to_string(limits_.max_depth) + " levels at byte " +
                       std::to_string(pos_),
                   /*has_path=*/false);
}

DecodeErr Reader::ReadFloat(double* out) {
  if (pos_ >= size_) return Truncated();
  std::uint8_t b = p_[pos_];
  if (b == mf::kFloat64) {
    if (DecodeErr e = Need(9)) return e;
    std::uint64_t u = Load<std::uint64_t>(pos_ + 1);
    std::memcpy(out, &u, 8);
    pos_ += 9;
    return {};
  }
  if (b == mf::kFloat32) {
    if (DecodeErr e = Need(5)) return e;
    std::uint32_t u = Load<std::uint32_t>(pos_ + 1);
    float f;
    std::memcpy(&f, &u, 4);
    *out = f;  // exact widening
    pos_ += 5;
    return {};
  }
  if (kWireTypeOf[b] == WireType::kInt) {
    Int i;
    if (DecodeErr e = ReadInt(&i)) return e;
    *out = i.negative() ? static_cast<double>(i.AsI64()) : static_cast<double>(i.bits());
    return {};
  }
  return TypeMismatch("float");
}

DecodeErr Reader::ReadContainerHeader(bool map, std::uint32_t* n, const char* expected) {
  if (pos_ >= size_) return Truncated();
  std::uint8_t b = p_[pos_];
  std::size_t head;
  std::uint32_t len;
  if (map && (b & 0xf0) == mf::kFixmap) { len = b & 0x0f; head = 1; }
  else if (!map && (b & 0xf0) == mf::kFixarray) { len = b & 0x0f; head = 1; }
  else if (b == (map ? mf::kMap16 : mf::kArray16)) {
    if (DecodeErr e = Need(3)) return e;
    len = Load<std::uint16_t>(pos_ + 1);
    head = 3;
  } else if (b == (map ? mf::kMap32 : mf::kArray32)) {
    if (DecodeErr e = Need(5)) return e;
    len = Load<std::uint32_t>(pos_ + 1);
    head = 5;
  } else {
    return TypeMismatch(expected);
  }
  // Every element needs at least one byte: a count the buffer cannot hold is
  // truncation, found before anyone reserves memory for it.
  std::uint64_t min_bytes = map ? 2ull * len : len;
  if (min_bytes > size_ - pos_ - head) return Truncated();
  if (len > limits_.max_container_len) return TooLong(map ? "map" : "array", len);
  pos_ += head;
  *n = len;
  return {};
}
DecodeErr Reader::ReadArrayHeader(std::uint32_t* n, const char* expected) {
  return ReadContainerHeader(false, n, expected);
}
DecodeErr Reader::ReadMapHeader(std::uint32_t* n, const char* expected) {
  return ReadContainerHeader(true, n, expected);
}

DecodeErr Reader::ReadBin(std::string_view* out) {
  if (pos_ >= size_) return Truncated();
  std::uint8_t b = p_[pos_];
  std::size_t head;
  std::uint32_t len;
  if (b == mf::kBin8) { if (DecodeErr e = Need(2)) return e; len = p_[pos_ + 1]; head = 2; }
  else if (b == mf::kBin16) { if (DecodeErr e = Need(3)) return e; len = Load<std::uint16_t>(pos_ + 1); head = 3; }
  else if (b == mf::kBin32) { if (DecodeErr e = Need(5)) return e; len = Load<std::uint32_t>(pos_ + 1); head = 5; }
  else return TypeMismatch("bytes");
  if (len > size_ - pos_ - head) return Truncated();
  if (len > limits_.max_str_len) return TooLong("bin", len);
  *out = std::string_view(reinterpret_cast<const char*>(p_ + pos_ + head), len);
  pos_ += head + len;
  return {};
}

DecodeErr Reader::ReadExt(std::int8_t* type, std::string_view* out) {
  if (pos_ >= size_) return Truncated();
  std::uint8_t b = p_[pos_];
  std::size_t head;
  std::uint32_t len;
  switch (b) {
    case mf::kFixext1: len = 1; head = 1; break;
    case mf::kFixext2: len = 2; head = 1; break;
    case mf::kFixext4: len = 4; head = 1; break;
    case mf::kFixext8: len = 8; head = 1; break;
    case mf::kFixext16: len = 16; head = 1; break;
    case mf::kExt8: if (DecodeErr e = Need(2)) return e; len = p_[pos_ + 1]; head = 2; break;
    case mf::kExt16: if (DecodeErr e = Need(3)) return e; len = Load<std::uint16_t>(pos_ + 1); head = 3; break;
    case mf::kExt32: if (DecodeErr e = Need(5)) return e; len = Load<std::uint32_t>(pos_ + 1); head = 5; break;
    default: return TypeMismatch("ext");
  }
  // type byte + payload
  if (std::uint64_t{len} + 1 > size_ - pos_ - head) return Truncated();
  if (len > limits_.max_str_len) return TooLong("ext", len);
  *type = static_cast<std::int8_t>(p_[pos_ + head]);
  *out = std::string_view(reinterpret_cast<const char*>(p_ + pos_ + head + 1), len);
  pos_ += head + 1 + len;
  return {};
}

DecodeErr Reader::Skip() {
  WireType t = WireType::kNil;
  if (DecodeErr e = Peek(&t)) return e;
  switch (t) {
    case WireType::kNil: ++pos_; return {};
    case WireType::kBool: ++pos_; return {};
    case WireType::kInt: { Int i; return ReadInt(&i); }
    case WireType::kFloat: { double d; return ReadFloat(&d); }
    case WireType::kStr: {
      // Skipped strings are not UTF-8 checked by msgspec either; bounds only.
      std::uint8_t b = p_[pos_];
      std::size_t head;
      std::uint32_t len;
      if ((b & 0xe0) == mf::kFixstr) { len = b & 0x1f; head = 1; }
      else if (b == mf::kStr8) { if (DecodeErr e = Need(2)) return e; len = p_[pos_ + 1]; head = 2; }
      else if (b == mf::kStr16) { if (DecodeErr e = Need(3)) return e; len = Load<std::uint16_t>(pos_ + 1); head = 3; }
      else { if (DecodeErr e = Need(5)) return e; len = Load<std::uint32_t>(pos_ + 1); head = 5; }
      if (len > size_ - pos_ - head) return Truncated();
      pos_ += head + len;
      return {};
    }
    case WireType::kBin: { std::string_view v; return ReadBin(&v); }
    case WireType::kExt: { std::int8_t ty; std::string_view v; return ReadExt(&ty, &v); }
    case WireType::kArray:
    case WireType::kMap: return SkipDepth();
  }
  return {};
}

// Containers are skipped iteratively with an explicit count of what is still
// owed, so a hostile nesting depth costs no stack; depth_ still enforces the
// configured nesting limit (as msgspec does for ignored fields).
DecodeErr Reader::SkipDepth() {
  std::uint64_t owed = 1;  // values still to skip at or below the start level
  const std::uint32_t base_depth = depth_;
  // What each open ancestor container still owes, innermost last.
  std::vector<std::uint64_t> stack;
  auto push = [&](std::uint64_t v) { stack.push_back(v); };
  auto pop = [&]() {
    std::uint64_t v = stack.back();
    stack.pop_back();
    return v;
  };
  while (true) {
    while (owed == 0) {
      if (stack.empty()) { depth_ = base_depth; return {}; }
      owed = pop();
      --depth_;
    }
    WireType t = WireType::kNil;
    if (DecodeErr e = Peek(&t)) return e;
    if (t == WireType::kArray || t == WireType::kMap) {
      std::uint32_t n;
      if (DecodeErr e = ReadContainerHeader(t == WireType::kMap, &n, "")) return e;
      --owed;
      if (DecodeErr e = Enter()) return e;
      push(owed);
      owed = t == WireType::kMap ? 2ull * n : n;
    } else {
      if (DecodeErr e = Skip()) return e;
      --owed;
    }
  }
}

std::size_t TryReadShortInt(const std::uint8_t* p, const std::uint8_t* end, Int* out) {
  using namespace msgpack_format;
  const std::uint8_t b = *p;
  if (b <= kPosFixintMax) { *out = Int::FromU64(b); return 1; }
  if (b >= kNegFixintMin) { *out = Int(static_cast<std::int8_t>(b)); return 1; }
  std::size_t avail = static_cast<std::size_t>(end - p);
  auto be = [&](auto tag) {
    using T = decltype(tag);
    std::make_unsigned_t<T> u;
    std::memcpy(&u, p + 1, sizeof u);
    if constexpr (sizeof u == 2) u = __builtin_bswap16(u);
    else if constexpr (sizeof u == 4) u = __builtin_bswap32(u);
    else if constexpr (sizeof u == 8) u = __builtin_bswap64(u);
    T v;
    std::memcpy(&v, &u, sizeof v);
    return v;
  };
  switch (b) {
    case kUint8: if (avail < 2) return 0; *out = Int::FromU64(p[1]); return 2;
    case kUint16: if (avail < 3) return 0; *out = Int::FromU64(be(std::uint16_t{})); return 3;
    case kUint32: if (avail < 5) return 0; *out = Int::FromU64(be(std::uint32_t{})); return 5;
    case kUint64: if (avail < 9) return 0; *out = Int::FromU64(be(std::uint64_t{})); return 9;
    case kInt8: if (avail < 2) return 0; *out = Int(static_cast<std::int8_t>(p[1])); return 2;
    case kInt16: if (avail < 3) return 0; *out = Int(be(std::int16_t{})); return 3;
    case kInt32: if (avail < 5) return 0; *out = Int(be(std::int32_t{})); return 5;
    case kInt64: if (avail < 9) return 0; *out = Int::FromI64(be(std::int64_t{})); return 9;
    default: return 0;
  }
}

bool Reader::IsValidUtf8(const char* s, std::size_t n) {
  const auto* p = reinterpret_cast<const unsigned char*>(s);
  // Field names, tags and ids are short and ASCII: all of it at once first.
  std::uint64_t any_high = 0;
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    std::uint64_t w;
    std::memcpy(&w, p + i, 8);
    any_high |= w;
  }
  for (; i < n; ++i) any_high |= p[i];
  if ((any_high & 0x8080808080808080ULL) == 0) return true;
  i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time.
    if (i + 8 <= n) {
      std::uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ULL) == 0) { i += 8; continue; }
    }
    unsigned char c = p[i];
    if (c < 0x80) { ++i; continue; }
    std::size_t len;
    std::uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (std::size_t k = 1; k < len; ++k) {
      unsigned char cc = p[i + k];
      if ((cc & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3f);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) return false;
    if (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) return false;
    i += len;
  }
  return true;
}

}  // namespace kvring::protocol::detail
