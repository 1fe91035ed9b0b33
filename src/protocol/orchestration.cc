#include "kvring/protocol/orchestration.h"

#include <cstdio>
#include <random>

namespace kvring::orchestration {

std::string NewEventId(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t hi = rng(), lo = rng();
  hi = (hi & ~0xf000ULL) | 0x4000ULL;                       // version 4
  lo = (lo & ~(0xc000ULL << 48)) | (0x8000ULL << 48);       // RFC 4122 variant
  char buf[37];
  std::snprintf(buf, sizeof buf, "%08x-%04x-%04x-%04x-%012llx", static_cast<unsigned>(hi >> 32),
                static_cast<unsigned>(hi >> 16 & 0xffff), static_cast<unsigned>(hi & 0xffff),
                static_cast<unsigned>(lo >> 48), static_cast<unsigned long long>(lo & 0xffffffffffffULL));
  std::string id(prefix);
  id += buf;
  return id;
}

ErrorClass ErrorClassOf(std::string_view text) {
  if (text.starts_with(kUnknownInstance)) return ErrorClass::kUnknownInstance;
  if (text.starts_with(kUnknownEvent)) return ErrorClass::kUnknownEvent;
  if (text.starts_with(kDeadline)) return ErrorClass::kDeadline;
  if (text.starts_with(kWorkerFailed)) return ErrorClass::kWorkerFailed;
  if (text.starts_with(kInvalid)) return ErrorClass::kInvalid;
  return ErrorClass::kOther;
}

}  // namespace kvring::orchestration
