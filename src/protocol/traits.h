// Compile-time shape of message field types, shared by the msgpack codec and
// the JSON conversion so both walk a message the same way.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "kvring/protocol/messages.h"

namespace kvring::protocol::detail {

template <typename T> struct IsOptional : std::false_type {};
template <typename T> struct IsOptional<std::optional<T>> : std::true_type {};

template <typename T> struct IsVector : std::false_type {};
template <typename T> struct IsVector<std::vector<T>> : std::true_type {};

// A dict is a vector of pairs (insertion-ordered).
template <typename T> struct IsDict : std::false_type {};
template <typename K, typename V> struct IsDict<std::vector<std::pair<K, V>>> : std::true_type {};

template <typename T>
concept HasFields = requires { T::Fields(); };
template <typename T>
concept TaggedMessage = HasFields<T> && requires { T::kTag; };

template <typename T>
constexpr bool IsString = std::is_same_v<T, std::string> || std::is_same_v<T, std::string_view>;

// Calls fn(field, index) for each field of S, in declaration order.
template <typename S, typename Fn>
constexpr void ForEachField(Fn&& fn) {
  constexpr auto fields = S::Fields();
  std::apply([&](const auto&... f) {
    std::size_t i = 0;
    (fn(f, i++), ...);
  }, fields);
}

template <typename S>
constexpr std::size_t FieldCount() {
  return std::tuple_size_v<decltype(S::Fields())>;
}

}  // namespace kvring::protocol::detail
