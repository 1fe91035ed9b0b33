#include "kvring/protocol/json.h"
#include "kvring/protocol/errors.h"

#include <charconv>
#include <cstdlib>

#include "protocol/traits.h"

namespace kvring::protocol {
namespace {

using detail::ForEachField;
using detail::HasFields;
using detail::IsDict;
using detail::IsOptional;
using detail::IsString;

// Marks a JSON integer literal too large for int64/uint64 (binary values
// never come from JSON text, so the marker cannot collide with real input).
constexpr std::uint8_t kBigIntSubtype = 0x42;

std::string Base64(std::string_view in) {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    std::uint32_t v = (std::uint8_t(in[i]) << 16) | (std::uint8_t(in[i + 1]) << 8) |
                      std::uint8_t(in[i + 2]);
    for (int k = 3; k >= 0; --k) out.push_back(kAlphabet[(v >> (6 * k)) & 63]);
  }
  std::size_t rest = in.size() - i;
  if (rest) {
    std::uint32_t v = std::uint8_t(in[i]) << 16;
    if (rest == 2) v |= std::uint8_t(in[i + 1]) << 8;
    out.push_back(kAlphabet[(v >> 18) & 63]);
    out.push_back(kAlphabet[(v >> 12) & 63]);
    out.push_back(rest == 2 ? kAlphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// ---- to JSON -------------------------------------------------------------------

Json IntJson(Int i) {
  if (i.negative()) return Json(static_cast<std::int64_t>(i.AsI64()));
  return Json(static_cast<std::uint64_t>(i.bits()));
}

Json ToJ(const Int& v) { return IntJson(v); }
Json ToJ(double v) { return Json(v); }
Json ToJ(bool v) { return Json(v); }
Json ToJ(const std::string& v) { return Json(v); }
Json ToJ(OpType v) { return Json(v == OpType::kAdmit ? "admit" : "evict"); }
Json ToJ(const StrPair& v) { return Json::array({v.first, v.second}); }
Json ToJ(const LocationEnd& v) { return Json::array({Json(v.location), IntJson(v.end)}); }
Json ToJ(const P2PLayout& v) {
  return Json::array({Json(v.instance_id), Json(v.location), IntJson(v.num_hit_chunks),
                      Json(v.peer_init_url)});
}
Json ToJ(const Value& v);
template <typename T> Json ToJ(const std::optional<T>& v);
template <typename T> Json ToJ(const std::vector<T>& v);
template <typename K, typename V> Json ToJ(const std::vector<std::pair<K, V>>& v);
template <typename S> requires HasFields<S> Json ToJ(const S& s);

std::string KeyText(const std::string& k) { return k; }
std::string KeyText(const Int& k) { return k.ToString(); }
std::string KeyText(const Value& k) {
  if (auto* s = std::get_if<std::string>(&k.v)) return *s;
  if (auto* i = std::get_if<Int>(&k.v)) return i->ToString();
  return ToJ(k).dump();
}

template <typename T> Json ToJ(const std::optional<T>& v) { return v ? ToJ(*v) : Json(nullptr); }
template <typename T> Json ToJ(const std::vector<T>& v) {
  Json a = Json::array();
  for (const auto& x : v) a.push_back(ToJ(x));
  return a;
}
template <typename K, typename V> Json ToJ(const std::vector<std::pair<K, V>>& v) {
  Json o = Json::object();
  for (const auto& [k, x] : v) o[KeyText(k)] = ToJ(x);
  return o;
}
Json ToJ(const Value& v) {
  return std::visit([](const auto& x) -> Json {
    using T = std::decay_t<decltype(x)>;
    if constexpr (std::is_same_v<T, std::monostate>) return Json(nullptr);
    else if constexpr (std::is_same_v<T, Bytes>) return Json(Base64(x.data));
    else if constexpr (std::is_same_v<T, Ext>)
      return Json{{"ext_type", static_cast<int>(x.type)}, {"data", Base64(x.data)}};
    else return ToJ(x);
  }, v.v);
}
template <typename S>
void FieldsToJ(const S& s, Json* o) {
  ForEachField<S>([&](const auto& f, std::size_t) { (*o)[std::string(f.name)] = ToJ(s.*(f.member)); });
}
template <typename S> requires HasFields<S> Json ToJ(const S& s) {
  Json o = Json::object();
  if constexpr (std::is_same_v<S, HeartbeatCommand>) o["command_type"] = std::string(CommandTag(s.kind));
  FieldsToJ(s, &o);
  return o;
}

// ---- from JSON -------------------------------------------------------------------

struct JErr {
  Status status;
  explicit operator bool() const { return !status.ok(); }
};
JErr Fail(ProtocolError kind, std::string what, const std::string& path) {
  return {ProtocolStatus(kind, what + " - at `$" + path + "`")};
}
const char* JsonTypeName(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return "None";
    case Json::value_t::boolean: return "bool";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned: return "int";
    case Json::value_t::binary: return "int";
    case Json::value_t::number_float: return "float";
    case Json::value_t::string: return "str";
    case Json::value_t::array: return "array";
    case Json::value_t::object: return "object";
    default: return "?";
  }
}
JErr TypeFail(const char* expected, const Json& j, const std::string& path) {
  return Fail(ProtocolError::kValidation, std::string("expected ") + expected + ", got " + JsonTypeName(j),
              path);
}
bool IsBigInt(const Json& j) {
  return j.is_binary() && j.get_binary().has_subtype() && j.get_binary().subtype() == kBigIntSubtype;
}

JErr ParseIntText(std::string_view text, Int* out, const std::string& path) {
  bool neg = !text.empty() && text[0] == '-';
  std::string_view digits = neg ? text.substr(1) : text;
  std::uint64_t mag = 0;
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), mag);
  bool all = !digits.empty() && p == digits.data() + digits.size();
  if (ec == std::errc::result_out_of_range && all)
    return Fail(ProtocolError::kOverflow, "can't serialize ints < -2**63 or > 2**64 - 1", path);
  if (ec != std::errc() || !all)
    return Fail(ProtocolError::kValidation, "expected int, got str '" + std::string(text) + "'", path);
  if (!neg) { *out = Int::FromU64(mag); return {}; }
  if (mag > (1ULL << 63))
    return Fail(ProtocolError::kOverflow, "can't serialize ints < -2**63 or > 2**64 - 1", path);
  *out = mag == 0 ? Int(0) : Int::FromI64(static_cast<std::int64_t>(~mag + 1));
  return {};
}

JErr FromJ(const Json& j, Int* out, const std::string& path) {
  if (j.is_number_unsigned()) { *out = Int::FromU64(j.get<std::uint64_t>()); return {}; }
  if (j.is_number_integer()) { *out = Int::FromI64(j.get<std::int64_t>()); return {}; }
  if (IsBigInt(j)) {
    const auto& b = j.get_binary();
    return ParseIntText(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()), out, path);
  }
  return TypeFail("int", j, path);
}
JErr FromJ(const Json& j, double* out, const std::string& path) {
  if (j.is_number()) { *out = j.get<double>(); return {}; }
  if (IsBigInt(j)) {
    const auto& b = j.get_binary();
    *out = std::strtod(std::string(b.begin(), b.end()).c_str(), nullptr);
    return {};
  }
  return TypeFail("float", j, path);
}
JErr FromJ(const Json& j, bool* out, const std::string& path) {
  if (!j.is_boolean()) return TypeFail("bool", j, path);
  *out = j.get<bool>();
  return {};
}
JErr FromJ(const Json& j, std::string* out, const std::string& path) {
  if (!j.is_string()) return TypeFail("str", j, path);
  *out = j.get<std::string>();
  return {};
}
JErr FromJ(const Json& j, OpType* out, const std::string& path) {
  if (!j.is_string()) return TypeFail("str", j, path);
  const auto& s = j.get_ref<const std::string&>();
  if (s == "admit") *out = OpType::kAdmit;
  else if (s == "evict") *out = OpType::kEvict;
  else return Fail(ProtocolError::kValidation, "invalid enum value '" + s + "'", path);
  return {};
}
template <std::size_t N>
JErr TupleCheck(const Json& j, const std::string& path) {
  if (!j.is_array()) return TypeFail("array", j, path);
  if (j.size() != N)
    return Fail(ProtocolError::kValidation,
                "expected array of length " + std::to_string(N) + ", got " + std::to_string(j.size()),
                path);
  return {};
}
JErr FromJ(const Json& j, StrPair* out, const std::string& path) {
  if (JErr e = TupleCheck<2>(j, path)) return e;
  if (JErr e = FromJ(j[0], &out->first, path + "[0]")) return e;
  return FromJ(j[1], &out->second, path + "[1]");
}
JErr FromJ(const Json& j, LocationEnd* out, const std::string& path) {
  if (JErr e = TupleCheck<2>(j, path)) return e;
  if (JErr e = FromJ(j[0], &out->location, path + "[0]")) return e;
  return FromJ(j[1], &out->end, path + "[1]");
}
JErr FromJ(const Json& j, P2PLayout* out, const std::string& path) {
  if (JErr e = TupleCheck<4>(j, path)) return e;
  if (JErr e = FromJ(j[0], &out->instance_id, path + "[0]")) return e;
  if (JErr e = FromJ(j[1], &out->location, path + "[1]")) return e;
  if (JErr e = FromJ(j[2], &out->num_hit_chunks, path + "[2]")) return e;
  return FromJ(j[3], &out->peer_init_url, path + "[3]");
}
JErr FromJ(const Json& j, Value* out, const std::string& path);
JErr FromJ(const Json& j, ValueMap* out, const std::string& path);
template <typename T> JErr FromJ(const Json& j, std::optional<T>* out, const std::string& path);
template <typename T> JErr FromJ(const Json& j, std::vector<T>* out, const std::string& path);
template <typename K, typename V>
JErr FromJ(const Json& j, std::vector<std::pair<K, V>>* out, const std::string& path);
template <typename S> requires HasFields<S>
JErr FromJ(const Json& j, S* out, const std::string& path);

template <typename T> JErr FromJ(const Json& j, std::optional<T>* out, const std::string& path) {
  if (j.is_null()) { out->reset(); return {}; }
  out->emplace();
  return FromJ(j, &**out, path);
}
template <typename T> JErr FromJ(const Json& j, std::vector<T>* out, const std::string& path) {
  if (!j.is_array()) return TypeFail("array", j, path);
  out->clear();
  out->reserve(j.size());
  for (std::size_t i = 0; i < j.size(); ++i) {
    out->emplace_back();
    if (JErr e = FromJ(j[i], &out->back(), path + "[" + std::to_string(i) + "]")) return e;
  }
  return {};
}
JErr KeyFromJ(const std::string& k, std::string* out, const std::string&) { *out = k; return {}; }
JErr KeyFromJ(const std::string& k, Int* out, const std::string& path) { return ParseIntText(k, out, path); }
template <typename K, typename V>
JErr FromJ(const Json& j, std::vector<std::pair<K, V>>* out, const std::string& path) {
  if (!j.is_object()) return TypeFail("object", j, path);
  out->clear();
  for (const auto& [k, v] : j.items()) {
    out->emplace_back();
    if (JErr e = KeyFromJ(k, &out->back().first, path)) return e;
    if (JErr e = FromJ(v, &out->back().second, path + "[...]")) return e;
  }
  return {};
}
JErr FromJ(const Json& j, ValueMap* out, const std::string& path) {
  if (!j.is_object()) return TypeFail("object", j, path);
  out->clear();
  for (const auto& [k, v] : j.items()) {
    Value x;
    if (JErr e = FromJ(v, &x, path + "[...]")) return e;
    out->emplace_back(Value(k), std::move(x));
  }
  return {};
}
JErr FromJ(const Json& j, Value* out, const std::string& path) {
  switch (j.type()) {
    case Json::value_t::null: out->v = std::monostate{}; return {};
    case Json::value_t::boolean: out->v = j.get<bool>(); return {};
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
    case Json::value_t::binary: {
      Int i;
      if (JErr e = FromJ(j, &i, path)) return e;
      out->v = i;
      return {};
    }
    case Json::value_t::number_float: out->v = j.get<double>(); return {};
    case Json::value_t::string: out->v = j.get<std::string>(); return {};
    case Json::value_t::array: {
      ValueArray a;
      for (std::size_t i = 0; i < j.size(); ++i) {
        a.emplace_back();
        if (JErr e = FromJ(j[i], &a.back(), path + "[" + std::to_string(i) + "]")) return e;
      }
      out->v = std::move(a);
      return {};
    }
    case Json::value_t::object: {
      ValueMap m;
      if (JErr e = FromJ(j, &m, path)) return e;
      out->v = std::move(m);
      return {};
    }
    default: return Fail(ProtocolError::kValidation, "unsupported JSON value", path);
  }
}

template <typename S>
JErr FieldsFromJ(const Json& j, S* s, const std::string& path) {
  JErr err;
  [[maybe_unused]] static const S kDefaults{};
  ForEachField<S>([&](const auto& f, std::size_t) {
    if (err) return;
    auto it = j.find(std::string(f.name));
    if (it == j.end()) {
      if (f.required) err = Fail(ProtocolError::kValidation, "missing required field '" + std::string(f.name) + "'", path);
      else s->*(f.member) = kDefaults.*(f.member);
      return;
    }
    err = FromJ(*it, &(s->*(f.member)), path + "." + std::string(f.name));
  });
  return err;
}
template <typename S> requires HasFields<S>
JErr FromJ(const Json& j, S* out, const std::string& path) {
  if (!j.is_object()) return TypeFail("object", j, path);
  if constexpr (std::is_same_v<S, HeartbeatCommand>) {
    auto it = j.find("command_type");
    if (it == j.end())
      return Fail(ProtocolError::kValidation, "missing required field 'command_type'", path);
    if (!it->is_string()) return TypeFail("str", *it, path + ".command_type");
    const auto& tag = it->get_ref<const std::string&>();
    if (tag == CommandTag(CommandKind::kFullSync)) out->kind = CommandKind::kFullSync;
    else if (tag == CommandTag(CommandKind::kHeartbeat)) out->kind = CommandKind::kHeartbeat;
    else return Fail(ProtocolError::kValidation, "invalid value '" + tag + "'", path + ".command_type");
  }
  return FieldsFromJ(j, out, path);
}

using JsonDecoder = JErr (*)(const Json&, Message*);
template <typename M>
JErr MessageFromJ(const Json& j, Message* out) {
  M m;
  if (JErr e = FieldsFromJ(j, &m, "")) return e;
  *out = std::move(m);
  return {};
}
template <std::size_t... I>
std::unordered_map<std::string_view, JsonDecoder> MakeTable(std::index_sequence<I...>) {
  return {{std::variant_alternative_t<I, Message>::kTag,
           &MessageFromJ<std::variant_alternative_t<I, Message>>}...};
}

// SAX handler that builds the DOM but keeps out-of-range integer literals.
class BigIntSax : public nlohmann::detail::json_sax_dom_parser<Json> {
 public:
  using Base = nlohmann::detail::json_sax_dom_parser<Json>;
  explicit BigIntSax(Json& root) : Base(root, /*allow_exceptions=*/false) {}
  bool number_float(double val, const std::string& raw) {
    bool integral = raw.find_first_of(".eE") == std::string::npos;
    if (!integral) return Base::number_float(val, raw);
    Json::binary_t b(std::vector<std::uint8_t>(raw.begin(), raw.end()), kBigIntSubtype);
    return Base::binary(b);
  }
};

}  // namespace

Json ToJson(const Message& m) {
  return std::visit([](const auto& msg) {
    using M = std::decay_t<decltype(msg)>;
    Json o = Json::object();
    o["type"] = std::string(M::kTag);
    FieldsToJ(msg, &o);
    return o;
  }, m);
}
Json ToJson(const HeartbeatCommand& c) { return ToJ(c); }

Result<Message> MessageFromJson(const Json& j) {
  if (!j.is_object()) return TypeFail("object", j, "").status;
  auto it = j.find("type");
  if (it == j.end()) return ProtocolStatus(ProtocolError::kValidation, "missing required field 'type'");
  if (!it->is_string()) return TypeFail("str", *it, ".type").status;
  static const auto table = MakeTable(std::make_index_sequence<std::variant_size_v<Message>>());
  auto d = table.find(it->get_ref<const std::string&>());
  if (d == table.end())
    return ProtocolStatus(ProtocolError::kValidation,
                  "unknown tag '" + it->get<std::string>() + "' - at `$.type`");
  Message m;
  if (JErr e = d->second(j, &m)) return e.status;
  return m;
}

Result<HeartbeatCommand> CommandFromJson(const Json& j) {
  HeartbeatCommand c;
  if (JErr e = FromJ(j, &c, "")) return e.status;
  return c;
}

Result<Json> ParseJson(std::string_view text) {
  Json root;
  BigIntSax sax(root);
  bool ok = Json::sax_parse(text.begin(), text.end(), &sax, nlohmann::detail::input_format_t::json,
                            /*strict=*/true);
  if (!ok || sax.is_errored()) return Status(ErrorKind::kInvalidArgument, "malformed JSON");
  return root;
}

std::optional<std::string> JsonIntegerText(const Json& j) {
  if (j.is_number_unsigned()) return std::to_string(j.get<std::uint64_t>());
  if (j.is_number_integer()) return std::to_string(j.get<std::int64_t>());
  if (IsBigInt(j)) {
    const auto& b = j.get_binary();
    return std::string(b.begin(), b.end());
  }
  return std::nullopt;
}

}  // namespace kvring::protocol
