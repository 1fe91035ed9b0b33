#include "kvring/protocol/int.h"

namespace kvring::protocol {

std::string Int::ToString() const {
  if (!negative_) return std::to_string(bits_);
  // Magnitude of a negative int64 as unsigned: exact for INT64_MIN too.
  std::uint64_t mag = ~bits_ + 1;
  return "-" + std::to_string(mag);
}

}  // namespace kvring::protocol
