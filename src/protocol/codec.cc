// Schema-driven msgpack decode/encode for every message. The per-type
// overloads below are the whole schema language: Int, double, bool, str,
// OpType, optional, list, dict, fixed tuples, untagged structs, commands and
// Any. Messages and views are walked through their Fields() lists.
#include "kvring/protocol/codec.h"

#include <array>
#include <cstring>
#include <unordered_map>

#include "protocol/msgpack_reader.h"
#include "protocol/msgpack_writer.h"
#include "protocol/traits.h"

namespace kvring::protocol {
namespace detail {
namespace {

constexpr std::string_view kTypeTag = "type";
constexpr std::string_view kCommandTag = "command_type";

// ---- expected-type names (msgspec's wording) --------------------------------

template <typename T>
std::string ExpectedName() {
  if constexpr (IsOptional<T>::value) return ExpectedName<typename T::value_type>() + " | null";
  else if constexpr (std::is_same_v<T, Int>) return "int";
  else if constexpr (std::is_same_v<T, double>) return "float";
  else if constexpr (std::is_same_v<T, bool>) return "bool";
  else if constexpr (IsString<T> || std::is_same_v<T, OpType>) return "str";
  else if constexpr (IsDict<T>::value || HasFields<T>) return "object";
  else return "array";  // lists and tuples
}

// Whether a value of wire type `t` can start a T (used by optional<T> to name
// the union in its error, as msgspec does).
template <typename T>
bool WireCompatible(WireType t) {
  if constexpr (std::is_same_v<T, Int>) return t == WireType::kInt;
  else if constexpr (std::is_same_v<T, double>) return t == WireType::kInt || t == WireType::kFloat;
  else if constexpr (std::is_same_v<T, bool>) return t == WireType::kBool;
  else if constexpr (IsString<T> || std::is_same_v<T, OpType>) return t == WireType::kStr;
  else if constexpr (IsDict<T>::value || HasFields<T>) return t == WireType::kMap;
  else return t == WireType::kArray;
}

// ---- decode ------------------------------------------------------------------

DecodeErr DecodeField(Reader& r, Int* out) { return r.ReadInt(out); }
DecodeErr DecodeField(Reader& r, double* out) { return r.ReadFloat(out); }
DecodeErr DecodeField(Reader& r, bool* out) { return r.ReadBool(out); }
DecodeErr DecodeField(Reader& r, std::string_view* out) { return r.ReadStr(out); }
DecodeErr DecodeField(Reader& r, std::string* out) {
  std::string_view v;
  if (DecodeErr e = r.ReadStr(&v)) return e;
  out->assign(v);
  return {};
}
DecodeErr DecodeField(Reader& r, OpType* out) {
  std::string_view v;
  if (DecodeErr e = r.ReadStr(&v)) return e;
  if (v == "admit") *out = OpType::kAdmit;
  else if (v == "evict") *out = OpType::kEvict;
  else return DecodeErr(ProtocolError::kValidation, "invalid enum value '" + std::string(v) + "'");
  return {};
}

template <typename T>
DecodeErr DecodeField(Reader& r, std::vector<T>* out);
template <typename K, typename V>
DecodeErr DecodeField(Reader& r, std::vector<std::pair<K, V>>* out);
template <typename T>
DecodeErr DecodeField(Reader& r, std::optional<T>* out);
template <typename S>
  requires HasFields<S>
DecodeErr DecodeField(Reader& r, S* out);
DecodeErr DecodeField(Reader& r, StrPair* out);
DecodeErr DecodeField(Reader& r, LocationEnd* out);
DecodeErr DecodeField(Reader& r, P2PLayout* out);
DecodeErr DecodeField(Reader& r, std::vector<P2PLayout>* out);
DecodeErr DecodeField(Reader& r, ValueMap* out);
DecodeErr DecodeAny(Reader& r, Value* out);

template <typename T>
DecodeErr DecodeField(Reader& r, std::optional<T>* out) {
  WireType t = WireType::kNil;
  if (DecodeErr e = r.Peek(&t)) return e;
  if (t == WireType::kNil) {
    (void)r.ReadNil();
    out->reset();
    return {};
  }
  if (!WireCompatible<T>(t)) return TypeError(ExpectedName<std::optional<T>>(), t);
  if (!out->has_value()) out->emplace();
  return DecodeField(r, &**out);
}

DecodeErr DecodeField(Reader& r, std::vector<Int>* out);
DecodeErr DecodeField(Reader& r, std::vector<KVOpEvent>* out);

template <typename T>
DecodeErr DecodeField(Reader& r, std::vector<T>* out) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadArrayHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  out->clear();
  out->reserve(n);  // n <= bytes remaining, checked by the header read
  for (std::uint32_t i = 0; i < n; ++i) {
    out->emplace_back();
    if (DecodeErr e = DecodeField(r, &out->back())) return std::move(e).AtIndex(i);
  }
  r.Leave();
  return {};
}

// ---- hot loops ----------------------------------------------------------------
// Lists of ints (hashes, keys, tokens) and of KVOpEvents carry nearly all the
// bytes. Their elements are first tried on a tight path that accepts only the
// exact byte patterns msgspec writes; anything else (other widths of headers,
// other key order, errors) falls back, element by element, to the general
// decoder above, so results and errors are the same either way.

// An array of ints into `out`: Ints, or their 64-bit patterns
// (BatchedP2PLookupKeys). Ints are read in place: through a local Int and a
// copy they took 6x as long (the 16-byte copy cannot be forwarded from the
// reader's two smaller stores).
template <typename T>
DecodeErr DecodeIntArray(Reader& r, std::vector<T>* out) {
  static_assert(std::is_same_v<T, Int> || std::is_same_v<T, std::uint64_t>);
  std::uint32_t n;
  if (DecodeErr e = r.ReadArrayHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  out->resize(n);  // n <= bytes remaining; a warmed vector keeps its capacity
  const std::uint8_t* base = r.data();
  const std::uint8_t* end = base + r.size();
  std::size_t pos = r.pos();
  T* dst = out->data();
  Int local;
  for (std::uint32_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, std::uint64_t>) {
      // A 9-byte int's pattern is its 8 bytes, whichever its sign.
      const std::uint8_t b = pos < r.size() ? base[pos] : 0;
      if (((b == msgpack_format::kUint64) | (b == msgpack_format::kInt64)) & (r.size() - pos >= 9)) {
        std::uint64_t be;
        std::memcpy(&be, base + pos + 1, 8);
        dst[i] = __builtin_bswap64(be);
        pos += 9;
        continue;
      }
    }
    Int* v = &local;
    if constexpr (std::is_same_v<T, Int>) v = &dst[i];
    std::size_t used = pos < r.size() ? TryReadInt(base + pos, end, v) : 0;
    if (used == 0) {
      r.set_pos(pos);
      if (DecodeErr e = r.ReadInt(v)) return std::move(e).AtIndex(i);
      pos = r.pos();
    } else {
      pos += used;
    }
    if constexpr (std::is_same_v<T, std::uint64_t>) dst[i] = v->bits();
  }
  r.set_pos(pos);
  r.Leave();
  return {};
}
DecodeErr DecodeField(Reader& r, std::vector<Int>* out) { return DecodeIntArray(r, out); }
DecodeErr DecodeField(Reader& r, std::vector<std::uint64_t>* out) { return DecodeIntArray(r, out); }

// One KVOpEvent exactly as msgspec writes it:
//   83 a7"op_type" a5"admit"|a5"evict" a3"key" <int> a7"seq_num" <int>
// Returns bytes consumed, or 0 to ask for the general decoder.
std::size_t TryFastKvOp(const std::uint8_t* p, const std::uint8_t* end, KVOpEvent* ev) {
  constexpr std::size_t kMin = 1 + 8 + 6 + 4 + 1 + 8 + 1;
  if (static_cast<std::size_t>(end - p) < kMin || p[0] != 0x83) return 0;
  if (std::memcmp(p + 1, "\xa7op_type", 8) != 0) return 0;
  if (std::memcmp(p + 9, "\xa5" "admit", 6) == 0) ev->op_type = OpType::kAdmit;
  else if (std::memcmp(p + 9, "\xa5" "evict", 6) == 0) ev->op_type = OpType::kEvict;
  else return 0;
  if (std::memcmp(p + 15, "\xa3key", 4) != 0) return 0;
  const std::uint8_t* q = p + 19;
  std::size_t used = TryReadInt(q, end, &ev->key);
  if (used == 0) return 0;
  q += used;
  if (end - q < 9 || std::memcmp(q, "\xa7seq_num", 8) != 0) return 0;
  q += 8;
  used = TryReadInt(q, end, &ev->seq_num);
  if (used == 0) return 0;
  return static_cast<std::size_t>(q + used - p);
}

DecodeErr DecodeField(Reader& r, std::vector<KVOpEvent>* out) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadArrayHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  out->resize(n);
  // The fast path descends one level (the op's map) without Reader::Enter.
  const bool depth_ok = r.depth() + 1 <= r.limits().max_depth;
  const std::uint8_t* base = r.data();
  const std::uint8_t* end = base + r.size();
  KVOpEvent* dst = out->data();
  for (std::uint32_t i = 0; i < n; ++i) {
    std::size_t used = depth_ok ? TryFastKvOp(base + r.pos(), end, &dst[i]) : 0;
    if (used != 0) {
      r.set_pos(r.pos() + used);
      continue;
    }
    if (DecodeErr e = DecodeField(r, &dst[i])) return std::move(e).AtIndex(i);
  }
  r.Leave();
  return {};
}

// Fixed-length tuples: an array of exactly N elements.
DecodeErr TupleHeader(Reader& r, std::uint32_t want) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadArrayHeader(&n)) return e;
  if (n != want)
    return DecodeErr(ProtocolError::kValidation, "expected array of length " + std::to_string(want) +
                                                 ", got " + std::to_string(n));
  return r.Enter();
}
template <typename... M>
DecodeErr DecodeTupleElems(Reader& r, M*... members) {
  std::size_t i = 0;
  DecodeErr err;
  auto one = [&](auto* member) {
    if (err) return;
    if (DecodeErr e = DecodeField(r, member)) err = std::move(e).AtIndex(i);
    ++i;
  };
  (one(members), ...);
  if (err) return err;
  r.Leave();
  return {};
}
DecodeErr DecodeField(Reader& r, StrPair* out) {
  if (DecodeErr e = TupleHeader(r, 2)) return e;
  return DecodeTupleElems(r, &out->first, &out->second);
}
DecodeErr DecodeField(Reader& r, LocationEnd* out) {
  if (DecodeErr e = TupleHeader(r, 2)) return e;
  return DecodeTupleElems(r, &out->location, &out->end);
}
DecodeErr DecodeField(Reader& r, P2PLayout* out) {
  if (DecodeErr e = TupleHeader(r, 4)) return e;
  return DecodeTupleElems(r, &out->instance_id, &out->location, &out->num_hit_chunks,
                          &out->peer_init_url);
}

// Layouts decode into the elements already there (every field is assigned),
// so a reused reply keeps its strings' capacity.
DecodeErr DecodeField(Reader& r, std::vector<P2PLayout>* out) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadArrayHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  if (out->size() > n) out->resize(n);
  out->reserve(n);  // n <= bytes remaining, checked by the header read
  for (std::uint32_t i = 0; i < n; ++i) {
    if (i == out->size()) out->emplace_back();
    if (DecodeErr e = DecodeField(r, &(*out)[i])) return std::move(e).AtIndex(i);
  }
  r.Leave();
  return {};
}

// Python dict semantics for repeated keys: the first position, the last value.
struct KeyHash {
  std::size_t operator()(const std::string& s) const { return std::hash<std::string>()(s); }
  std::size_t operator()(const Int& i) const {
    return std::hash<std::uint64_t>()(i.bits()) ^ (i.negative() ? 0x9e3779b97f4a7c15ULL : 0);
  }
};
template <typename K, typename V>
void MergeRepeatedKeys(std::vector<std::pair<K, V>>* d) {
  if (d->size() < 2) return;
  std::vector<bool> dead(d->size(), false);
  bool any = false;
  auto merge = [&](std::size_t first, std::size_t j) {
    (*d)[first].second = std::move((*d)[j].second);
    dead[j] = true;
    any = true;
  };
  if (d->size() <= 8) {
    for (std::size_t j = 1; j < d->size(); ++j)
      for (std::size_t i = 0; i < j; ++i)
        if (!dead[i] && (*d)[i].first == (*d)[j].first) { merge(i, j); break; }
  } else {
    std::unordered_map<K, std::size_t, KeyHash> first;
    first.reserve(d->size());
    for (std::size_t j = 0; j < d->size(); ++j) {
      auto [it, inserted] = first.emplace((*d)[j].first, j);
      if (!inserted) merge(it->second, j);
    }
  }
  if (!any) return;
  std::size_t w = 0;
  for (std::size_t j = 0; j < d->size(); ++j)
    if (!dead[j]) (*d)[w++] = std::move((*d)[j]);
  d->resize(w);
}

template <typename K, typename V>
DecodeErr DecodeField(Reader& r, std::vector<std::pair<K, V>>* out) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadMapHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  out->clear();
  out->reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    out->emplace_back();
    if (DecodeErr e = DecodeField(r, &out->back().first)) return std::move(e).InKey();
    if (DecodeErr e = DecodeField(r, &out->back().second)) return std::move(e).AtDictValue();
  }
  r.Leave();
  MergeRepeatedKeys(out);
  return {};
}

// Reads a map key that must be a str (keys of struct maps).
DecodeErr ReadStructKey(Reader& r, std::string_view* key) {
  if (DecodeErr e = r.ReadStr(key)) return std::move(e).InKey();
  return {};
}

DecodeErr CheckTagValue(Reader& r, std::string_view tag_field, std::string_view expected) {
  std::string_view v;
  if (r.NextIsNil()) return TypeErrorNullTag("str").AtField(tag_field);
  if (DecodeErr e = r.ReadStr(&v)) return std::move(e).AtField(tag_field);
  if (v != expected) return InvalidValue(v).AtField(tag_field);
  return {};
}

template <typename T>
void AssignDefault(T* dst, const T& def) { *dst = def; }
template <typename T>
void AssignDefault(std::vector<T>* dst, const std::vector<T>&) { dst->clear(); }  // keeps capacity

// The entries of a struct map (header already read). `tag_field` is empty for
// untagged structs; otherwise a repeated tag must repeat the same value.
template <typename S>
DecodeErr DecodeStructBody(Reader& r, std::uint32_t n, S* s, std::string_view tag_field,
                           std::string_view tag_value) {
  std::uint32_t seen = 0;
  static_assert(FieldCount<S>() <= 32);
  for (std::uint32_t i = 0; i < n; ++i) {
    std::string_view key;
    if (DecodeErr e = ReadStructKey(r, &key)) return e;
    if (!tag_field.empty() && key == tag_field) {
      if (DecodeErr e = CheckTagValue(r, tag_field, tag_value)) return e;
      continue;
    }
    bool matched = false;
    DecodeErr err;
    ForEachField<S>([&](const auto& f, std::size_t idx) {
      if (matched || f.name != key) return;
      matched = true;
      seen |= 1u << idx;
      if (DecodeErr e = DecodeField(r, &(s->*(f.member)))) err = std::move(e).AtField(f.name);
    });
    if (err) return err;
    if (!matched) {
      if (DecodeErr e = r.Skip()) return e;
    }
  }
  [[maybe_unused]] static const S kDefaults{};
  DecodeErr err;
  ForEachField<S>([&](const auto& f, std::size_t idx) {
    if (err || (seen & (1u << idx))) return;
    if (f.required) err = MissingField(f.name);
    else AssignDefault(&(s->*(f.member)), kDefaults.*(f.member));
  });
  return err;
}

template <typename S>
  requires HasFields<S>
DecodeErr DecodeField(Reader& r, S* out) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadMapHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  if constexpr (std::is_same_v<S, HeartbeatCommand>) {
    // Tagged by "command_type": find the tag first, wherever it is.
    std::size_t body = r.pos();
    std::string_view tag;
    bool found = false;
    for (std::uint32_t i = 0; i < n && !found; ++i) {
      std::string_view key;
      if (DecodeErr e = ReadStructKey(r, &key)) return e;
      if (key == kCommandTag) {
        if (r.NextIsNil()) return TypeErrorNullTag("str").AtField(kCommandTag);
        if (DecodeErr e = r.ReadStr(&tag)) return std::move(e).AtField(kCommandTag);
        found = true;
      } else if (DecodeErr e = r.Skip()) {
        return e;
      }
    }
    if (!found) return MissingField(kCommandTag);
    if (tag == CommandTag(CommandKind::kFullSync)) out->kind = CommandKind::kFullSync;
    else if (tag == CommandTag(CommandKind::kHeartbeat)) out->kind = CommandKind::kHeartbeat;
    else return InvalidValue(tag).AtField(kCommandTag);
    r.set_pos(body);
    if (DecodeErr e = DecodeStructBody(r, n, out, kCommandTag, tag)) return e;
  } else {
    if (DecodeErr e = DecodeStructBody(r, n, out, {}, {})) return e;
  }
  r.Leave();
  return {};
}

// Dict[str, Any]: str keys, Any values.
DecodeErr DecodeField(Reader& r, ValueMap* out) {
  std::uint32_t n;
  if (DecodeErr e = r.ReadMapHeader(&n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  out->clear();
  out->reserve(n);
  for (std::uint32_t i = 0; i < n; ++i) {
    std::string_view key;
    if (DecodeErr e = r.ReadStr(&key)) return std::move(e).InKey();
    Value v;
    if (DecodeErr e = DecodeAny(r, &v)) return std::move(e).AtDictValue();
    out->emplace_back(Value(std::string(key)), std::move(v));
  }
  r.Leave();
  // Keys are all str here, so plain equality is Python's.
  if (out->size() > 1) {
    std::vector<std::pair<std::string, Value>> tmp;
    tmp.reserve(out->size());
    for (auto& [k, v] : *out) tmp.emplace_back(std::get<std::string>(k.v), std::move(v));
    MergeRepeatedKeys(&tmp);
    out->clear();
    for (auto& [k, v] : tmp) out->emplace_back(Value(std::move(k)), std::move(v));
  }
  return {};
}

DecodeErr DecodeAny(Reader& r, Value* out) {
  WireType t = WireType::kNil;
  if (DecodeErr e = r.Peek(&t)) return e;
  switch (t) {
    case WireType::kNil: (void)r.ReadNil(); out->v = std::monostate{}; return {};
    case WireType::kBool: { bool b = false; if (DecodeErr e = r.ReadBool(&b)) return e; out->v = b; return {}; }
    case WireType::kInt: { Int i; if (DecodeErr e = r.ReadInt(&i)) return e; out->v = i; return {}; }
    case WireType::kFloat: { double d = 0; if (DecodeErr e = r.ReadFloat(&d)) return e; out->v = d; return {}; }
    case WireType::kStr: { std::string_view s; if (DecodeErr e = r.ReadStr(&s)) return e; out->v = std::string(s); return {}; }
    case WireType::kBin: { std::string_view s; if (DecodeErr e = r.ReadBin(&s)) return e; out->v = Bytes{std::string(s)}; return {}; }
    case WireType::kExt: {
      std::int8_t ty; std::string_view s;
      if (DecodeErr e = r.ReadExt(&ty, &s)) return e;
      out->v = Ext{ty, std::string(s)};
      return {};
    }
    case WireType::kArray: {
      std::uint32_t n;
      if (DecodeErr e = r.ReadArrayHeader(&n)) return e;
      if (DecodeErr e = r.Enter()) return e;
      ValueArray a;
      a.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        a.emplace_back();
        if (DecodeErr e = DecodeAny(r, &a.back())) return std::move(e).AtIndex(i);
      }
      r.Leave();
      out->v = std::move(a);
      return {};
    }
    case WireType::kMap: {
      std::uint32_t n;
      if (DecodeErr e = r.ReadMapHeader(&n)) return e;
      if (DecodeErr e = r.Enter()) return e;
      ValueMap m;
      m.reserve(n);
      for (std::uint32_t i = 0; i < n; ++i) {
        Value k, v;
        if (DecodeErr e = DecodeAny(r, &k)) return std::move(e).InKey();
        if (std::holds_alternative<ValueMap>(k.v))
          return DecodeErr(ProtocolError::kValidation, "unhashable dict key: object").InKey();
        if (DecodeErr e = DecodeAny(r, &v)) return std::move(e).AtDictValue();
        bool merged = false;
        // Any-typed maps are small in practice (command args); a linear merge
        // is bounded by the nesting/size limits of the message.
        if (m.size() <= 64) {
          for (auto& [ek, ev] : m)
            if (PyKeyEquals(ek, k)) { ev = std::move(v); merged = true; break; }
        }
        if (!merged) m.emplace_back(std::move(k), std::move(v));
      }
      r.Leave();
      out->v = std::move(m);
      return {};
    }
  }
  return {};
}

// ---- top level -----------------------------------------------------------------

DecodeErr CheckSize(Bytes_t bytes, const DecodeLimits& limits) {
  if (bytes.size() > limits.max_message_bytes)
    return DecodeErr(ProtocolError::kLimit,
                     "message of " + std::to_string(bytes.size()) + " bytes exceeds the limit of " +
                         std::to_string(limits.max_message_bytes),
                     false);
  if (limits.max_depth > kMaxDepthCap)
    return DecodeErr(ProtocolError::kLimit,  // the limit asked for is above what the decoder allows
                     "max_depth above " + std::to_string(kMaxDepthCap), false);
  return {};
}

// Reads the top-level map header and finds the tag value, leaving the reader
// at the first entry so the body can be decoded from the start.
DecodeErr BeginTagged(Reader& r, std::string_view tag_field, std::uint32_t* n,
                      std::string_view* tag) {
  WireType t = WireType::kNil;
  if (DecodeErr e = r.Peek(&t)) return e;
  if (t != WireType::kMap) return TypeError("object", t);  // checked before any length
  if (DecodeErr e = r.ReadMapHeader(n)) return e;
  if (DecodeErr e = r.Enter()) return e;
  std::size_t body = r.pos();
  for (std::uint32_t i = 0; i < *n; ++i) {
    std::string_view key;
    if (DecodeErr e = ReadStructKey(r, &key)) return e;
    if (key == tag_field) {
      if (r.NextIsNil()) return TypeErrorNullTag("str").AtField(tag_field);
      if (DecodeErr e = r.ReadStr(tag)) return std::move(e).AtField(tag_field);
      r.set_pos(body);
      return {};
    }
    if (DecodeErr e = r.Skip()) return e;
  }
  return MissingField(tag_field);
}

DecodeErr Finish(Reader& r) {
  r.Leave();
  if (r.remaining() != 0)
    return DecodeErr(ProtocolError::kDecode, "trailing bytes at byte " + std::to_string(r.pos()),
                     false);
  return {};
}

using MessageDecoder = DecodeErr (*)(Reader&, std::uint32_t, Message*);

template <typename M>
DecodeErr DecodeMessageBody(Reader& r, std::uint32_t n, Message* out) {
  M m;
  if (DecodeErr e = DecodeStructBody(r, n, &m, kTypeTag, M::kTag)) return e;
  *out = std::move(m);
  return {};
}

template <std::size_t... I>
std::unordered_map<std::string_view, MessageDecoder> MakeDecoderTable(std::index_sequence<I...>) {
  return {{std::variant_alternative_t<I, Message>::kTag,
           &DecodeMessageBody<std::variant_alternative_t<I, Message>>}...};
}
const std::unordered_map<std::string_view, MessageDecoder>& DecoderTable() {
  static const auto table =
      MakeDecoderTable(std::make_index_sequence<std::variant_size_v<Message>>());
  return table;
}

template <typename View>
Status DecodeView(Bytes_t bytes, View* out, const DecodeLimits& limits) {
  if (DecodeErr e = CheckSize(bytes, limits)) return e.ToStatus();
  Reader r(bytes.data(), bytes.size(), limits);
  std::uint32_t n;
  std::string_view tag;
  if (DecodeErr e = BeginTagged(r, kTypeTag, &n, &tag)) return e.ToStatus();
  if (tag != View::kTag)
    return ProtocolStatus(ProtocolError::kValidation, "expected a " + std::string(View::kTag) +
                                              ", got tag '" + std::string(tag) + "'");
  if (DecodeErr e = DecodeStructBody(r, n, out, kTypeTag, View::kTag)) return e.ToStatus();
  if (DecodeErr e = Finish(r)) return e.ToStatus();
  return Status();
}

// ---- encode ------------------------------------------------------------------

template <typename W> void EncodeValue(W& w, const Int& v) { w.Integer(v); }
template <typename W> void EncodeValue(W& w, double v) { w.Float(v); }
template <typename W> void EncodeValue(W& w, bool v) { w.Bool(v); }
template <typename W> void EncodeValue(W& w, std::string_view v) { w.Str(v); }
template <typename W> void EncodeValue(W& w, const std::string& v) { w.Str(v); }
template <typename W> void EncodeValue(W& w, OpType v) {
  w.Str(v == OpType::kAdmit ? "admit" : "evict");
}
template <typename W> void EncodeValue(W& w, const Value& v);
template <typename W, typename T> void EncodeValue(W& w, const std::optional<T>& v);
template <typename W, typename T> void EncodeValue(W& w, const std::vector<T>& v);
template <typename W> void EncodeValue(W& w, const std::vector<Int>& v) { w.IntArray(v); }
template <typename W> void EncodeValue(W& w, std::span<const std::uint64_t> v) { w.UintArray(v); }
template <typename W> void EncodeValue(W& w, const std::vector<KVOpEvent>& v);
template <typename W, typename K, typename V>
void EncodeValue(W& w, const std::vector<std::pair<K, V>>& v);
template <typename W, typename S> requires HasFields<S> void EncodeValue(W& w, const S& s);

template <typename W> void EncodeValue(W& w, const StrPair& v) {
  w.ArrayHeader(2); w.Str(v.first); w.Str(v.second);
}
template <typename W> void EncodeValue(W& w, const LocationEnd& v) {
  w.ArrayHeader(2); w.Str(v.location); w.Integer(v.end);
}
template <typename W> void EncodeValue(W& w, const P2PLayout& v) {
  w.ArrayHeader(4); w.Str(v.instance_id); w.Str(v.location); w.Integer(v.num_hit_chunks);
  w.Str(v.peer_init_url);
}
template <typename W> void EncodeValue(W& w, const P2PLayoutView& v) {  // the same tuple, from views
  w.ArrayHeader(4); w.Str(v.instance_id); w.Str(v.location); w.Integer(v.num_hit_chunks);
  w.Str(v.peer_init_url);
}
template <typename W> void EncodeValue(W& w, std::span<const P2PLayoutView> v) {
  w.ArrayHeader(v.size());
  for (const auto& x : v) EncodeValue(w, x);
}
template <typename W, typename T> void EncodeValue(W& w, const std::optional<T>& v) {
  if (v) EncodeValue(w, *v);
  else w.Nil();
}
template <typename W, typename T> void EncodeValue(W& w, const std::vector<T>& v) {
  w.ArrayHeader(v.size());
  for (const auto& x : v) EncodeValue(w, x);
}
template <typename W, typename K, typename V>
void EncodeValue(W& w, const std::vector<std::pair<K, V>>& v) {
  w.MapHeader(v.size());
  for (const auto& [k, x] : v) { EncodeValue(w, k); EncodeValue(w, x); }
}
template <typename W> void EncodeValue(W& w, const Value& v) {
  std::visit([&](const auto& x) {
    using T = std::decay_t<decltype(x)>;
    if constexpr (std::is_same_v<T, std::monostate>) w.Nil();
    else if constexpr (std::is_same_v<T, Bytes>) w.Bin(x.data);
    else if constexpr (std::is_same_v<T, Ext>) w.Ext(x.type, x.data);
    else EncodeValue(w, x);
  }, v.v);
}

template <typename W, typename S>
void EncodeStruct(W& w, const S& s, std::string_view tag_field, std::string_view tag) {
  w.MapHeader(FieldCount<S>() + (tag_field.empty() ? 0 : 1));
  if (!tag_field.empty()) { w.Str(tag_field); w.Str(tag); }
  ForEachField<S>([&](const auto& f, std::size_t) {
    w.Str(f.name);
    EncodeValue(w, s.*(f.member));
  });
}
// What a worker sends most: a batch's KV events, each map's constant bytes
// (its header and field names, as KVOpEvent::Fields() spells them) copied
// whole and the room checked once for the batch.
constexpr bool KvOpFieldsAre(std::string_view a, std::string_view b, std::string_view c) {
  const auto f = KVOpEvent::Fields();
  return std::tuple_size_v<decltype(f)> == 3 && std::get<0>(f).name == a && std::get<1>(f).name == b &&
         std::get<2>(f).name == c;
}
static_assert(KvOpFieldsAre("op_type", "key", "seq_num"), "the bytes below spell these fields");
template <typename W> void EncodeValue(W& w, const std::vector<KVOpEvent>& v) {
  static constexpr std::string_view kHead = "\x83" "\xa7" "op_type";  // fixmap of 3, then the first name
  static constexpr std::string_view kAdmit = "\xa5" "admit", kEvict = "\xa5" "evict";
  static constexpr std::string_view kKey = "\xa3" "key", kSeq = "\xa7" "seq_num";
  static_assert(kHead.size() + kAdmit.size() + kKey.size() + kSeq.size() + 2 * W::kMaxIntBytes == kKvOpMaxBytes);
  auto put = [](std::uint8_t* q, std::string_view bytes) {
    std::memcpy(q, bytes.data(), bytes.size());
    return bytes.size();
  };
  w.ArrayHeader(v.size());
  w.Bulk(
      v.size() * kKvOpMaxBytes,
      [&](std::uint8_t* p) {
        std::uint8_t* q = p;
        for (const KVOpEvent& op : v) {
          q += put(q, kHead);
          q += put(q, op.op_type == OpType::kAdmit ? kAdmit : kEvict);
          q += put(q, kKey);
          q += W::PutInt(q, op.key);
          q += put(q, kSeq);
          q += W::PutInt(q, op.seq_num);
        }
        return static_cast<std::size_t>(q - p);
      },
      [&] {
        for (const KVOpEvent& op : v) EncodeStruct(w, op, {}, {});
      });
}

template <typename W, typename S> requires HasFields<S> void EncodeValue(W& w, const S& s) {
  if constexpr (std::is_same_v<S, HeartbeatCommand>) EncodeStruct(w, s, kCommandTag, CommandTag(s.kind));
  else EncodeStruct(w, s, {}, {});
}

template <typename W>
void EncodeMessage(W& w, const Message& m) {
  std::visit([&](const auto& msg) {
    using M = std::decay_t<decltype(msg)>;
    EncodeStruct(w, msg, kTypeTag, M::kTag);
  }, m);
}

template <typename S>
EncodeResult EncodeTaggedTo(const S& s, std::span<std::uint8_t> out) {
  SpanSink sink{out.data(), out.size()};
  Writer<SpanSink> w(&sink);
  EncodeStruct(w, s, kTypeTag, S::kTag);
  return {sink.pos, sink.fits()};
}

}  // namespace
}  // namespace detail

using detail::DecodeErr;
using detail::Reader;

Result<Message> DecodeTagged(std::string_view tag, Bytes_t bytes, const DecodeLimits& limits) {
  if (DecodeErr e = detail::CheckSize(bytes, limits)) return e.ToStatus();
  const auto& table = detail::DecoderTable();
  auto it = table.find(tag);
  if (it == table.end())
    return ProtocolStatus(ProtocolError::kValidation, "unknown tag '" + std::string(tag) + "' - at `$.type`");
  Reader r(bytes.data(), bytes.size(), limits);
  detail::WireType t = detail::WireType::kNil;
  if (DecodeErr e = r.Peek(&t)) return e.ToStatus();
  if (t != detail::WireType::kMap) return detail::TypeError("object", t).ToStatus();
  std::uint32_t n;
  if (DecodeErr e = r.ReadMapHeader(&n)) return e.ToStatus();
  if (DecodeErr e = r.Enter()) return e.ToStatus();
  Message m;
  if (DecodeErr e = it->second(r, n, &m)) return e.ToStatus();
  if (DecodeErr e = detail::Finish(r)) return e.ToStatus();
  return m;
}

Result<Message> Decode(Bytes_t bytes, const DecodeLimits& limits) {
  if (DecodeErr e = detail::CheckSize(bytes, limits)) return e.ToStatus();
  Reader r(bytes.data(), bytes.size(), limits);
  std::uint32_t n;
  std::string_view tag;
  if (DecodeErr e = detail::BeginTagged(r, detail::kTypeTag, &n, &tag)) return e.ToStatus();
  const auto& table = detail::DecoderTable();
  auto it = table.find(tag);
  if (it == table.end())
    return ProtocolStatus(ProtocolError::kValidation,
                  "unknown tag '" + std::string(tag) + "' - at `$.type`");
  Message m;
  if (DecodeErr e = it->second(r, n, &m)) return e.ToStatus();
  if (DecodeErr e = detail::Finish(r)) return e.ToStatus();
  return m;
}

Result<HeartbeatCommand> DecodeCommand(Bytes_t bytes, const DecodeLimits& limits) {
  if (DecodeErr e = detail::CheckSize(bytes, limits)) return e.ToStatus();
  Reader r(bytes.data(), bytes.size(), limits);
  detail::WireType t = detail::WireType::kNil;
  if (DecodeErr e = r.Peek(&t)) return e.ToStatus();
  if (t != detail::WireType::kMap) return detail::TypeError("object", t).ToStatus();
  HeartbeatCommand c;
  if (DecodeErr e = detail::DecodeField(r, &c)) return e.ToStatus();
  if (r.remaining() != 0)
    return ProtocolStatus(ProtocolError::kDecode, "trailing bytes at byte " + std::to_string(r.pos()));
  return c;
}

Result<std::string_view> PeekTag(Bytes_t bytes, const DecodeLimits& limits) {
  if (DecodeErr e = detail::CheckSize(bytes, limits)) return e.ToStatus();
  Reader r(bytes.data(), bytes.size(), limits);
  std::uint32_t n;
  std::string_view tag;
  if (DecodeErr e = detail::BeginTagged(r, detail::kTypeTag, &n, &tag)) return e.ToStatus();
  return tag;
}

Status Decode(Bytes_t bytes, BatchedKVOperationView* out, const DecodeLimits& limits) {
  return detail::DecodeView(bytes, out, limits);
}
Status Decode(Bytes_t bytes, BatchedP2PLookupView* out, const DecodeLimits& limits) {
  return detail::DecodeView(bytes, out, limits);
}
namespace detail {
namespace {
// The frame both share: `head` (map header, tag, first key) where the
// message starts, then `body(r)` reading the rest inside the map (true when
// it all matched), then nothing. Inlined: as a call, a 32-hash lookup's
// decode took 48 ns instead of 38 (codec_bench BM_DecodeP2PLookup_Keys/32).
template <typename Body>
[[gnu::always_inline]] inline bool TryExact(Bytes_t bytes, std::string_view head, const DecodeLimits& limits, Body body) {
  if (CheckSize(bytes, limits) || bytes.size() < head.size() || std::memcmp(bytes.data(), head.data(), head.size()) != 0)
    return false;
  Reader r(bytes.data(), bytes.size(), limits);
  r.set_pos(head.size());
  if (r.Enter() || !body(r)) return false;
  r.Leave();
  return r.remaining() == 0;
}

// A lookup exactly as msgspec lays it out, nothing after:
//   84 a4"type" b3"BatchedP2PLookupMsg" a6"hashes" <array of int>
//   ab"instance_id" <str> a9"worker_id" <int>
// read with the same primitives and limits as the general decoder but none
// of its key matching (~100 ns of a lookup's decode). Returns false for
// anything else, having decided nothing: the general decoder then gives the
// result or error it always gives.
bool TryExactLookup(Bytes_t bytes, BatchedP2PLookupKeys* out, const DecodeLimits& limits) {
  static constexpr std::string_view kHead = "\x84\xa4type\xb3" "BatchedP2PLookupMsg" "\xa6hashes";
  static constexpr std::string_view kInstance = "\xabinstance_id", kWorker = "\xa9worker_id";
  static_assert(BatchedP2PLookupKeys::kTag == "BatchedP2PLookupMsg" && std::tuple_size_v<decltype(BatchedP2PLookupKeys::Fields())> == 3);
  return TryExact(bytes, kHead, limits, [&](Reader& r) {
    auto literal = [&](std::string_view s) {
      if (r.remaining() < s.size() || std::memcmp(r.data() + r.pos(), s.data(), s.size()) != 0) return false;
      r.set_pos(r.pos() + s.size());
      return true;
    };
    if (DecodeField(r, &out->hashes) || !literal(kInstance) || r.ReadStr(&out->instance_id) || !literal(kWorker) ||
        r.ReadInt(&out->worker_id))
      return false;
    return true;
  });
}

// The lookup's reply as kvring and msgspec write it:
//   82 a4"type" b6"BatchedP2PLookupRetMsg" ab"layout_info" <array of layouts>
// the same way: false for anything else, decided by the general decoder.
bool TryExactLookupReply(Bytes_t bytes, BatchedP2PLookupRetMsg* out, const DecodeLimits& limits) {
  static constexpr std::string_view kHead = "\x82\xa4type\xb6" "BatchedP2PLookupRetMsg" "\xablayout_info";
  static_assert(BatchedP2PLookupRetMsg::kTag == "BatchedP2PLookupRetMsg" && std::tuple_size_v<decltype(BatchedP2PLookupRetMsg::Fields())> == 1);
  return TryExact(bytes, kHead, limits, [&](Reader& r) { return !DecodeField(r, &out->layout_info); });
}
}  // namespace
}  // namespace detail

Status Decode(Bytes_t bytes, BatchedP2PLookupKeys* out, const DecodeLimits& limits) {
  if (detail::TryExactLookup(bytes, out, limits)) return Status();
  return detail::DecodeView(bytes, out, limits);
}
Status Decode(Bytes_t bytes, BatchedP2PLookupRetMsg* out, const DecodeLimits& limits) {
  if (detail::TryExactLookupReply(bytes, out, limits)) return Status();
  return detail::DecodeView(bytes, out, limits);
}

void Encode(const Message& m, std::string* out) {
  detail::StringSink sink{out};
  detail::Writer<detail::StringSink> w(&sink);
  detail::EncodeMessage(w, m);
}
std::string Encode(const Message& m) {
  std::string out;
  Encode(m, &out);
  return out;
}
void EncodeCommand(const HeartbeatCommand& c, std::string* out) {
  detail::StringSink sink{out};
  detail::Writer<detail::StringSink> w(&sink);
  detail::EncodeValue(w, c);
}

EncodeResult EncodeTo(const Message& m, std::span<std::uint8_t> out) {
  detail::SpanSink sink{out.data(), out.size()};
  detail::Writer<detail::SpanSink> w(&sink);
  detail::EncodeMessage(w, m);
  return {sink.pos, sink.fits()};
}
EncodeResult EncodeTo(const BatchedKVOperationView& m, std::span<std::uint8_t> out) {
  return detail::EncodeTaggedTo(m, out);
}
EncodeResult EncodeTo(const BatchedP2PLookupView& m, std::span<std::uint8_t> out) {
  return detail::EncodeTaggedTo(m, out);
}
EncodeResult EncodeTo(const BatchedP2PLookupRequest& m, std::span<std::uint8_t> out) {
  return detail::EncodeTaggedTo(m, out);
}
EncodeResult EncodeTo(const BatchedP2PLookupRetMsg& m, std::span<std::uint8_t> out) {
  return detail::EncodeTaggedTo(m, out);
}
EncodeResult EncodeTo(const BatchedP2PLookupRetView& m, std::span<std::uint8_t> out) {
  return detail::EncodeTaggedTo(m, out);
}

std::string_view CommandTag(CommandKind kind) {
  return kind == CommandKind::kFullSync ? "full_sync" : "HeartbeatCommand";
}

std::string_view TagOf(const Message& m) {
  return std::visit([](const auto& msg) { return std::decay_t<decltype(msg)>::kTag; }, m);
}

}  // namespace kvring::protocol
