// RateLimitedLog: the token bucket decided with a test clock, and what it
// writes through spdlog (captured).
#include "util/rate_limited_log.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "log_capture.h"

namespace dpfs::util {
namespace {

constexpr uint64_t kSecond = 1'000'000'000;
constexpr uint64_t kT0 = 1000 * kSecond;

TEST(RateLimitedLog, BurstThenDropsEverything) {
  RateLimitedLog log("t", {.burst = 20, .per_second = 5, .summary_interval_s = 60});
  int emitted = 0;
  for (int i = 0; i < 20'000; ++i) emitted += log.admit(kT0).emit;
  EXPECT_EQ(emitted, 20) << "a burst of 20 at one instant, nothing more";
  EXPECT_EQ(log.dropped_total(), 19'980u);
}

TEST(RateLimitedLog, RefillsAtTheRateAndTheNextLineCarriesTheDropCount) {
  RateLimitedLog log("t", {.burst = 20, .per_second = 5, .summary_interval_s = 60});
  for (int i = 0; i < 120; ++i) log.admit(kT0);  // 20 out, 100 dropped
  // 200 ms refills one line.
  EXPECT_FALSE(log.admit(kT0 + kSecond / 5 - 1).emit);
  const auto a = log.admit(kT0 + kSecond / 5);
  ASSERT_TRUE(a.emit);
  EXPECT_EQ(a.dropped, 101u) << "100 in the burst's wake and one just before the refill";
  const auto b = log.admit(kT0 + kSecond / 5);
  EXPECT_FALSE(b.emit);
  // A second later five more, the first reporting the one dropped between.
  int emitted = 0;
  uint64_t reported = 0;
  for (int i = 0; i < 100; ++i) {
    const auto c = log.admit(kT0 + kSecond / 5 + kSecond);
    emitted += c.emit;
    reported += c.dropped;
  }
  EXPECT_EQ(emitted, 5);
  EXPECT_EQ(reported, 1u);
}

TEST(RateLimitedLog, FullAgainAfterAQuietSpellAndNoOverflowOnHugeGaps) {
  RateLimitedLog log("t", {.burst = 3, .per_second = 1000, .summary_interval_s = 60});
  for (int i = 0; i < 10; ++i) log.admit(kT0);
  // Years later the bucket holds the burst, not more (and did not wrap).
  int emitted = 0;
  for (int i = 0; i < 10; ++i) emitted += log.admit(UINT64_MAX / 2).emit;
  EXPECT_EQ(emitted, 3);
}

TEST(RateLimitedLog, PeriodicSummaryWhileEverythingIsDropped) {
  RateLimitedLog log("t", {.burst = 1, .per_second = 0, .summary_interval_s = 10});
  EXPECT_TRUE(log.admit(kT0).emit);
  for (int i = 0; i < 50; ++i) EXPECT_EQ(log.admit(kT0 + kSecond).summary, 0u);
  const auto s = log.admit(kT0 + 10 * kSecond);
  EXPECT_FALSE(s.emit);
  EXPECT_EQ(s.summary, 51u) << "every line dropped since the last one written";
  EXPECT_EQ(s.summary_ns, 10 * kSecond);
  EXPECT_EQ(log.admit(kT0 + 11 * kSecond).summary, 0u) << "at most one summary per interval";
  EXPECT_EQ(log.dropped_total(), 52u);
}

TEST(RateLimitedLog, WritesLinesWithTheDropCountAndASummaryAtTheEnd) {
  testing::LogCapture capture;
  {
    RateLimitedLog log("dev0", {.burst = 2, .per_second = 0, .summary_interval_s = 60});
    for (int i = 0; i < 1000; ++i) log.warn("dev0: bad request {}", i);
    EXPECT_EQ(capture.count("bad request"), 2u);
    EXPECT_EQ(capture.count("dev0: bad request 0"), 1u);
    EXPECT_EQ(capture.count("dev0: bad request 1"), 1u);
  }
  // The destructor reports what never got through.
  EXPECT_EQ(capture.count("dev0: 998 log lines dropped"), 1u);
  EXPECT_EQ(capture.lines().size(), 3u);
}

TEST(RateLimitedLog, ALevelTheLoggerDiscardsTakesNoToken) {
  testing::LogCapture capture(spdlog::level::info);
  RateLimitedLog log("dev0", {.burst = 1, .per_second = 0, .summary_interval_s = 60});
  for (int i = 0; i < 10; ++i) log.log(spdlog::level::debug, "noise {}", i);
  log.warn("the one that matters");
  EXPECT_EQ(capture.count("the one that matters"), 1u);
  EXPECT_EQ(log.dropped_total(), 0u);
}

TEST(RateLimitedLog, ChannelsAreIndependent) {
  testing::LogCapture capture;
  // No refill, so the count does not depend on how long the loop takes.
  RateLimitedLog flooded("a", {.burst = 20, .per_second = 0, .summary_interval_s = 3600});
  RateLimitedLog quiet("b", {.burst = 20, .per_second = 0, .summary_interval_s = 3600});
  for (int i = 0; i < 20'000; ++i) flooded.warn("a: flood {}", i);
  quiet.warn("b: first complaint");
  EXPECT_EQ(capture.count("a: flood"), 20u);
  EXPECT_EQ(capture.count("b: first complaint"), 1u);
}

}  // namespace
}  // namespace dpfs::util
