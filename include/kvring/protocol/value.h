// Value: a dynamically typed msgpack value, for the fields LMCache types as
// `Any` (HeartbeatCommand.args). Mirrors what msgspec decodes an Any into:
// None, bool, int, float, str, bytes, list, dict, Ext.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "kvring/protocol/int.h"

namespace kvring::protocol {

struct Value;
using ValueArray = std::vector<Value>;
// Insertion-ordered, keys unique (Python dict semantics: a repeated key keeps
// its first position and takes the last value).
using ValueMap = std::vector<std::pair<Value, Value>>;

struct Bytes {
  std::string data;
  friend bool operator==(const Bytes&, const Bytes&) = default;
};

struct Ext {
  std::int8_t type = 0;
  std::string data;
  friend bool operator==(const Ext&, const Ext&) = default;
};

struct Value {
  using Storage = std::variant<std::monostate, bool, Int, double, std::string, Bytes,
                               ValueArray, ValueMap, Ext>;
  Storage v;

  // Implicit from each alternative, like a literal. Integer literals become
  // Int (not bool, which a plain variant conversion could pick).
  Value() = default;
  Value(std::monostate) {}                              // NOLINT
  Value(bool b) : v(b) {}                               // NOLINT
  Value(Int i) : v(i) {}                                // NOLINT
  Value(int i) : v(Int(i)) {}                           // NOLINT
  Value(long long i) : v(Int(i)) {}                     // NOLINT
  Value(double d) : v(d) {}                             // NOLINT
  Value(std::string s) : v(std::move(s)) {}             // NOLINT
  Value(const char* s) : v(std::string(s)) {}           // NOLINT
  Value(Bytes b) : v(std::move(b)) {}                   // NOLINT
  Value(ValueArray a) : v(std::move(a)) {}              // NOLINT
  Value(ValueMap m) : v(std::move(m)) {}                // NOLINT
  Value(Ext e) : v(std::move(e)) {}                     // NOLINT

  bool is_nil() const { return std::holds_alternative<std::monostate>(v); }
  friend bool operator==(const Value&, const Value&) = default;
};

// Python's `==` between dict keys: 1 == 1.0 == True. Used to merge repeated
// keys the way a Python dict does.
bool PyKeyEquals(const Value& a, const Value& b);

}  // namespace kvring::protocol
