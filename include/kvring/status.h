// Status and Result<T>: the error values returned across kvring's library
// boundaries. No exceptions are thrown on hot paths; a failed operation returns
// a Status naming what went wrong.
//
// Thread-safety: values; copy freely, no shared state.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace kvring {

// Broad class of an error. The protocol kinds mirror the Python exception
// classes that msgspec (or CPython) raises for the same input, so a caller can
// tell "bytes are malformed" from "bytes are fine but the schema does not fit".
enum class ErrorKind : std::uint8_t {
  kOk = 0,
  kDecode,         // malformed msgpack: truncated, trailing bytes, bad opcode
  kValidation,     // well-formed msgpack that does not fit the schema
  kRecursion,      // nesting deeper than the configured limit
  kUnicode,        // invalid UTF-8 in a str
  kLimit,          // a configured size limit (bytes, elements) was exceeded
  kOverflow,       // an integer outside [-2^63, 2^64-1] cannot be encoded
  kInvalidArgument,
  kIo,
  kCorrupt,        // shared state failed validation
  kUnavailable,    // peer gone / not running
  kTimeout,
  kInternal,
  kPermission,     // a peer is not who it must be (uid, owner)
};

std::string_view ErrorKindName(ErrorKind kind);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return kind_ == ErrorKind::kOk; }
  ErrorKind kind() const { return kind_; }
  const std::string& message() const { return message_; }
  // "<kind>: <message>", for logs and CLI output.
  std::string ToString() const;

 private:
  ErrorKind kind_ = ErrorKind::kOk;
  std::string message_;
};

// Either a value or a non-ok Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}            // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {}     // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  const T& value() const& { return std::get<0>(v_); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& operator*() const& { return value(); }
  T& operator*() & { return value(); }
  const T* operator->() const { return &value(); }
  T* operator->() { return &value(); }
  // The error; Status::Ok() when a value is held.
  Status status() const { return ok() ? Status() : std::get<1>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace kvring
