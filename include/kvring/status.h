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

// Broad class of an error, for any layer. A layer that needs finer classes
// refines a kind with an ErrorDetail of its own (protocol/errors.h: msgspec's
// error classes under kProtocol); the base layer knows no layer's details.
enum class ErrorKind : std::uint8_t {
  kOk = 0,
  kProtocol,       // bytes or values that break a protocol's rules (detail: which)
  kInvalidArgument,
  kIo,
  kCorrupt,        // shared state failed validation
  kUnavailable,    // peer gone / not running
  kTimeout,
  kInternal,
  kPermission,     // a peer is not who it must be (uid, owner)
};

// A layer's refinement of a kind: a code the layer defines (0: none) and the
// name ToString() prints in place of the kind's. `name` has static storage.
struct ErrorDetail {
  std::uint8_t code = 0;
  const char* name = nullptr;
};

std::string_view ErrorKindName(ErrorKind kind);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(ErrorKind kind, std::string message) : kind_(kind), message_(std::move(message)) {}
  Status(ErrorKind kind, ErrorDetail detail, std::string message)
      : kind_(kind), detail_(detail), message_(std::move(message)) {}

  static Status Ok() { return Status(); }

  bool ok() const { return kind_ == ErrorKind::kOk; }
  ErrorKind kind() const { return kind_; }
  const ErrorDetail& detail() const { return detail_; }
  const std::string& message() const { return message_; }
  // "<detail name, else kind>: <message>", for logs and CLI output.
  std::string ToString() const;

 private:
  ErrorKind kind_ = ErrorKind::kOk;
  ErrorDetail detail_;
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
