#include "kvring/protocol/errors.h"

namespace kvring::protocol {
namespace {

const char* Name(ProtocolError e) {
  switch (e) {
    case ProtocolError::kNone: return nullptr;
    case ProtocolError::kDecode: return "decode error";
    case ProtocolError::kValidation: return "validation error";
    case ProtocolError::kRecursion: return "recursion error";
    case ProtocolError::kUnicode: return "unicode error";
    case ProtocolError::kLimit: return "limit exceeded";
    case ProtocolError::kOverflow: return "overflow";
  }
  return nullptr;
}

}  // namespace

Status ProtocolStatus(ProtocolError error, std::string message) {
  return Status(ErrorKind::kProtocol, ErrorDetail{static_cast<std::uint8_t>(error), Name(error)}, std::move(message));
}

ProtocolError ProtocolErrorOf(const Status& status) {
  if (status.kind() != ErrorKind::kProtocol) return ProtocolError::kNone;
  const std::uint8_t code = status.detail().code;
  return code <= static_cast<std::uint8_t>(ProtocolError::kOverflow) ? static_cast<ProtocolError>(code)
                                                                      : ProtocolError::kNone;
}

}  // namespace kvring::protocol
