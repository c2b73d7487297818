#include "fuse/latency.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>

namespace dpfs::fuse {
namespace {

TEST(LatencyHistogramTest, BucketsAreOrderedAndBoundEveryValue) {
  unsigned last = 0;
  for (uint64_t v : {0ull, 1ull, 3ull, 4ull, 5ull, 7ull, 8ull, 1000ull, 1023ull, 1024ull,
                     1ull << 40, (1ull << 63) - 1, ~0ull}) {
    const unsigned b = LatencyHistogram::bucket(v);
    ASSERT_LT(b, LatencyHistogram::kBuckets) << v;
    EXPECT_GE(b, last) << v;
    last = b;
    EXPECT_LE(v, LatencyHistogram::upper_edge(b)) << v;
    if (b > 0) {
      EXPECT_GE(v, LatencyHistogram::upper_edge(b - 1)) << v;
    }
  }
  std::mt19937_64 rng(1);
  for (int i = 0; i < 100000; ++i) {
    const uint64_t v = rng() >> (rng() % 64);
    const unsigned b = LatencyHistogram::bucket(v);
    const uint64_t upper = LatencyHistogram::upper_edge(b);
    ASSERT_LE(v, upper) << v;
    if (upper != UINT64_MAX) {
      ASSERT_LT(v, upper) << v;
    }
    if (b > 0) {
      ASSERT_GE(v, LatencyHistogram::upper_edge(b - 1)) << v;
    }
    // A quarter power of two: the bucket is at most 25% wide.
    if (v >= 4) {
      ASSERT_LE(upper - v, v / 4 + 1) << v;
    }
  }
}

TEST(LatencyHistogramTest, QuantilesWithinABucket) {
  LatencyHistogram h;
  EXPECT_EQ(h.quantile_ns(0.5), 0u) << "empty";
  // 98 fast requests at 10 µs, 2 slow ones at 1 ms.
  for (int i = 0; i < 98; ++i) h.record(10'000);
  h.record(1'000'000);
  h.record(1'000'000);
  EXPECT_EQ(h.count(), 100u);
  EXPECT_EQ(h.total_ns(), 98u * 10'000 + 2'000'000);
  const uint64_t p50 = h.quantile_ns(0.5);
  EXPECT_GT(p50, 10'000u);
  EXPECT_LE(p50, 12'500u);
  EXPECT_LE(h.quantile_ns(0.98), 12'500u) << "rank 98 is still a fast one";
  EXPECT_GT(h.quantile_ns(0.99), 1'000'000u);
  EXPECT_LE(h.quantile_ns(0.99), 1'250'000u);
  EXPECT_EQ(h.quantile_ns(1.0), h.quantile_ns(0.995));
}

}  // namespace
}  // namespace dpfs::fuse
