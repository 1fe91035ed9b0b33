#include "kvring/protocol/value.h"

#include <cmath>

namespace kvring::protocol {
namespace {

// A numeric key as Python compares it: bool and int by value, float equal to
// an int when integral.
struct Numeric {
  bool is_int;
  Int i;
  double d;
};
bool AsNumeric(const Value& v, Numeric* out) {
  if (auto* b = std::get_if<bool>(&v.v)) { *out = {true, Int(*b ? 1 : 0), 0}; return true; }
  if (auto* i = std::get_if<Int>(&v.v)) { *out = {true, *i, 0}; return true; }
  if (auto* d = std::get_if<double>(&v.v)) { *out = {false, Int(), *d}; return true; }
  return false;
}
bool IntEqualsDouble(Int i, double d) {
  if (!std::isfinite(d) || d != std::floor(d)) return false;
  if (i.negative()) return d >= -9223372036854775808.0 && d < 0 &&
                           static_cast<std::int64_t>(d) == i.AsI64();
  return d >= 0 && d < 18446744073709551616.0 && static_cast<std::uint64_t>(d) == i.bits();
}

}  // namespace

bool PyKeyEquals(const Value& a, const Value& b) {
  Numeric na, nb;
  if (AsNumeric(a, &na) && AsNumeric(b, &nb)) {
    if (na.is_int && nb.is_int) return na.i == nb.i;
    if (!na.is_int && !nb.is_int) return na.d == nb.d;
    return na.is_int ? IntEqualsDouble(na.i, nb.d) : IntEqualsDouble(nb.i, na.d);
  }
  if (a.v.index() != b.v.index()) return false;
  if (auto* x = std::get_if<ValueArray>(&a.v)) {  // tuples
    const auto& y = std::get<ValueArray>(b.v);
    if (x->size() != y.size()) return false;
    for (std::size_t k = 0; k < x->size(); ++k)
      if (!PyKeyEquals((*x)[k], y[k])) return false;
    return true;
  }
  return a == b;
}

}  // namespace kvring::protocol
