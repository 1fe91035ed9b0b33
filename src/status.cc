#include "kvring/status.h"

namespace kvring {

std::string_view ErrorKindName(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kOk: return "ok";
    case ErrorKind::kDecode: return "decode error";
    case ErrorKind::kValidation: return "validation error";
    case ErrorKind::kRecursion: return "recursion error";
    case ErrorKind::kUnicode: return "unicode error";
    case ErrorKind::kLimit: return "limit exceeded";
    case ErrorKind::kOverflow: return "overflow";
    case ErrorKind::kInvalidArgument: return "invalid argument";
    case ErrorKind::kIo: return "I/O error";
    case ErrorKind::kCorrupt: return "corrupt";
    case ErrorKind::kUnavailable: return "unavailable";
    case ErrorKind::kTimeout: return "timeout";
    case ErrorKind::kInternal: return "internal error";
    case ErrorKind::kPermission: return "permission";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(ErrorKindName(kind_)) + ": " + message_;
}

}  // namespace kvring
