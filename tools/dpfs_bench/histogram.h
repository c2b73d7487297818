// A latency histogram in nanoseconds: exact below 64 ns, then 64 buckets per
// power of two (under 1.6% error), up to 2^40 ns. Recording is a couple of
// instructions and allocates nothing.
//
// Not thread-safe: one per driver thread, merged at the end.
#pragma once

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>

namespace dpfs::bench {

class Histogram {
 public:
  void record(uint64_t ns) {
    ++counts_[index(ns)];
    ++count_;
    sum_ += ns;
  }
  void merge(const Histogram& o) {
    for (size_t i = 0; i < counts_.size(); ++i) counts_[i] += o.counts_[i];
    count_ += o.count_;
    sum_ += o.sum_;
  }
  void clear() { *this = Histogram(); }

  uint64_t count() const { return count_; }
  double mean() const { return count_ ? double(sum_) / double(count_) : 0; }
  // The value at quantile q (0..1), as its bucket's midpoint.
  double quantile(double q) const {
    if (count_ == 0) return 0;
    const uint64_t rank = uint64_t(q * double(count_ - 1)) + 1;
    uint64_t seen = 0;
    for (size_t i = 0; i < counts_.size(); ++i) {
      seen += counts_[i];
      if (seen >= rank) return midpoint(i);
    }
    return midpoint(counts_.size() - 1);
  }

 private:
  static constexpr unsigned kSub = 6;  // 64 buckets per power of two
  static constexpr size_t kBuckets = (41 - kSub) * 64 + 64;

  static size_t index(uint64_t v) {
    if (v < (1u << kSub)) return size_t(v);
    const unsigned e = unsigned(std::bit_width(v)) - 1;  // >= kSub
    if (e >= 40) return kBuckets - 1;
    return size_t(e - kSub + 1) * 64 + size_t((v >> (e - kSub)) & 63);
  }
  static double midpoint(size_t i) {
    if (i < 64) return double(i);
    const unsigned e = unsigned(i / 64) + kSub - 1;
    const uint64_t low = (uint64_t(64) + (i % 64)) << (e - kSub);
    return double(low) + double(uint64_t(1) << (e - kSub)) / 2;
  }

  std::array<uint64_t, kBuckets> counts_{};
  uint64_t count_ = 0;
  uint64_t sum_ = 0;
};

}  // namespace dpfs::bench
