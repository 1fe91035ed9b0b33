// A fixed-size log-linear latency histogram (64 sub-buckets per power of
// two: values within 1.6 %), plain data so that worker processes can fill one
// each in shared memory and the parent can merge them.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>

namespace kvring::tools {

struct LatencyHistogram {
  static constexpr int kSubBits = 6;
  static constexpr std::size_t kSub = std::size_t{1} << kSubBits;
  static constexpr std::size_t kBuckets = kSub + (64 - kSubBits) * kSub;
  std::uint64_t count = 0;
  std::uint64_t max = 0;
  std::uint64_t buckets[kBuckets] = {};

  static std::size_t BucketOf(std::uint64_t v) {
    if (v < kSub) return static_cast<std::size_t>(v);
    int e = 63 - std::countl_zero(v);  // >= kSubBits
    return kSub + static_cast<std::size_t>(e - kSubBits) * kSub + ((v >> (e - kSubBits)) & (kSub - 1));
  }
  // The middle of a bucket's value range.
  static std::uint64_t ValueOf(std::size_t b) {
    if (b < kSub) return b;
    std::size_t e = (b - kSub) / kSub + kSubBits, sub = (b - kSub) % kSub;
    std::uint64_t lo = (std::uint64_t{1} << e) + (static_cast<std::uint64_t>(sub) << (e - kSubBits));
    return lo + (std::uint64_t{1} << (e - kSubBits)) / 2;
  }
  void Add(std::uint64_t v) {
    ++buckets[BucketOf(v)];
    ++count;
    if (v > max) max = v;
  }
  void Merge(const LatencyHistogram& o) {
    for (std::size_t i = 0; i < kBuckets; ++i) buckets[i] += o.buckets[i];
    count += o.count;
    if (o.max > max) max = o.max;
  }
  // The value at quantile q in [0, 1] (0 when empty).
  std::uint64_t Quantile(double q) const {
    if (count == 0) return 0;
    auto rank = static_cast<std::uint64_t>(q * static_cast<double>(count - 1)) + 1;
    std::uint64_t seen = 0;
    for (std::size_t i = 0; i < kBuckets; ++i) {
      seen += buckets[i];
      if (seen >= rank) return ValueOf(i) > max ? max : ValueOf(i);
    }
    return max;
  }
};

}  // namespace kvring::tools
