// The protocol layer's errors: msgspec's error classes, as a refinement
// (ErrorDetail) of the base layer's ErrorKind::kProtocol. They mirror the
// Python exception that msgspec (or CPython) raises for the same input, so a
// caller can tell "bytes are malformed" from "bytes are fine but the schema
// does not fit", and ToString() names them as LMCache's logs would.
//
// Thread-safety: values and pure functions.
#pragma once

#include <cstdint>
#include <string>

#include "kvring/status.h"

namespace kvring::protocol {

enum class ProtocolError : std::uint8_t {
  kNone = 0,    // not a protocol error (another kind, or ok)
  kDecode,      // malformed msgpack: truncated, trailing bytes, bad opcode (msgspec.DecodeError)
  kValidation,  // well-formed msgpack that does not fit the schema (msgspec.ValidationError)
  kRecursion,   // nesting deeper than the configured limit (RecursionError)
  kUnicode,     // invalid UTF-8 in a str (UnicodeDecodeError)
  kLimit,       // a configured size limit (bytes, elements) was exceeded
  kOverflow,    // an integer outside [-2^63, 2^64-1] cannot be encoded (OverflowError)
};

// A Status of kind kProtocol carrying `error`.
Status ProtocolStatus(ProtocolError error, std::string message);

// The protocol error a Status carries; kNone for any other Status.
ProtocolError ProtocolErrorOf(const Status& status);

}  // namespace kvring::protocol
