// Request latencies and counts, written by one thread, read by any.
//
// A queue (or a worker) records every request it completes; the operator's
// stats (SIGUSR1, exit) read them while the device runs. Recording is on the
// fast path, so it costs no locked instruction: each counter has a single
// writer (the thread that owns the queue), which adds with a relaxed load and
// store; readers see a value at most a few requests old.
//
// Latencies go into buckets of a quarter power of two (1-2-4 ns... with four
// steps between powers: 25% resolution), enough for p50/p99 to tell 20 µs
// from 30 µs without keeping samples.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>

#include "util/counter.h"

namespace dpfs::fuse {

using util::single_writer_add;

class LatencyHistogram {
 public:
  static constexpr unsigned kBuckets = 256;

  // Single writer.
  void record(uint64_t ns) {
    single_writer_add(buckets_[bucket(ns)]);
    single_writer_add(total_ns_, ns);
  }

  // Any thread.
  uint64_t count() const {
    uint64_t n = 0;
    for (const auto& b : buckets_) n += b.load(std::memory_order_relaxed);
    return n;
  }
  uint64_t total_ns() const { return total_ns_.load(std::memory_order_relaxed); }
  // The latency below which a fraction `q` (0..1) of the recorded requests
  // fell: the upper edge of the bucket holding that rank. 0 if none.
  uint64_t quantile_ns(double q) const {
    std::array<uint64_t, kBuckets> counts;
    uint64_t n = 0;
    for (unsigned i = 0; i < kBuckets; ++i)
      n += counts[i] = buckets_[i].load(std::memory_order_relaxed);
    if (n == 0) return 0;
    // Nearest rank: the ceil(q * n)-th smallest, at least the first.
    const uint64_t rank = q >= 1 ? n : std::max<uint64_t>(1, uint64_t(std::ceil(q * double(n))));
    uint64_t seen = 0;
    for (unsigned i = 0; i < kBuckets; ++i) {
      seen += counts[i];
      if (seen >= rank) return upper_edge(i);
    }
    return upper_edge(kBuckets - 1);
  }

  // Bucket of `ns`: values below 4 exactly, then 4 per power of two.
  static unsigned bucket(uint64_t ns) {
    if (ns < 4) return unsigned(ns);
    const unsigned e = 63 - unsigned(std::countl_zero(ns));  // 2..63
    const unsigned sub = unsigned(ns >> (e - 2)) & 3;
    return 4 * (e - 1) + sub;
  }
  // The smallest value of the next bucket: every value of bucket i is below it.
  static uint64_t upper_edge(unsigned i) {
    if (i < 4) return i + 1;
    const unsigned e = i / 4 + 1;
    const uint64_t sub = i % 4;
    const uint64_t lower = (4 + sub) << (e - 2);
    const uint64_t step = uint64_t(1) << (e - 2);
    return lower > UINT64_MAX - step ? UINT64_MAX : lower + step;
  }

 private:
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> total_ns_{0};
};

}  // namespace dpfs::fuse
