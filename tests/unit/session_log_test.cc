// A tenant's log lines are rate-limited per session: a flood of INITs or
// malformed requests on one session writes a bounded number of lines, and
// another session's first malformed request is still logged.
#include <gtest/gtest.h>
#include <linux/fuse.h>

#include <chrono>

#include "backend/null/null.h"
#include "fuse/session.h"
#include "log_capture.h"
#include "session_harness.h"
#include "util/rate_limited_log.h"

namespace dpfs::testing {
namespace {

constexpr int kFlood = 20'000;

// What a session may write in `seconds`: its burst, its refill, a summary per
// interval, and the session-up line of the test's own INIT.
size_t bound(double seconds) {
  const util::RateLimitedLog::Limits limits;
  return limits.burst + size_t(limits.per_second * (seconds + 1)) +
         size_t(seconds / limits.summary_interval_s) + 2;
}

class SessionLogTest : public ::testing::Test {
 protected:
  SessionLogTest()
      : flooded(backend, SessionOptions("tenant-a")), quiet(backend, SessionOptions("tenant-b")) {}

  static fuse::SessionOptions SessionOptions(const char* name) {
    fuse::SessionOptions o;
    o.name = name;
    return o;
  }

  static void init(fuse::FuseSession& session) {
    TestRequest req(init_request());
    session.handle(req);
    ASSERT_EQ(req.error(), 0);
  }

  // A GETATTR whose header claims more bytes than were sent.
  static void send_malformed(fuse::FuseSession& session) {
    auto bytes = RequestBuilder(FUSE_GETATTR).arg(fuse_getattr_in{}).bytes();
    reinterpret_cast<fuse_in_header*>(bytes.data())->len += 100;
    TestRequest req(std::move(bytes));
    session.handle(req);
    ASSERT_EQ(req.error(), -EINVAL);
  }

  static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  NullBackend backend;
  LogCapture capture;
  fuse::FuseSession flooded;
  fuse::FuseSession quiet;
};

TEST_F(SessionLogTest, InitFloodIsBoundedAndTheNeighbourStillLogs) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kFlood; ++i) init(flooded);
  const double took = seconds_since(start);
  const size_t flood_lines = capture.count("tenant-a");
  EXPECT_LE(flood_lines, bound(took)) << kFlood << " INITs in " << took << " s";
  EXPECT_GE(flood_lines, util::RateLimitedLog::Limits{}.burst) << "the first ones are logged";

  init(quiet);
  send_malformed(quiet);
  EXPECT_EQ(capture.count("tenant-b: malformed FUSE request"), 1u)
      << "a flood on another session must not silence this one";
}

TEST_F(SessionLogTest, MalformedFloodIsBoundedAndCarriesTheDropCount) {
  init(flooded);
  init(quiet);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < kFlood; ++i) send_malformed(flooded);
  const double took = seconds_since(start);
  EXPECT_LE(capture.count("tenant-a: malformed FUSE request"), bound(took));
  EXPECT_GT(flooded.log().dropped_total(), uint64_t(kFlood) - bound(took));

  send_malformed(quiet);
  EXPECT_EQ(capture.count("tenant-b: malformed FUSE request"), 1u);

  // What was dropped is reported: on the next line that gets through, or
  // (here, the flood being over) in the summary.
  flooded.log().flush();
  EXPECT_GE(capture.count("dropped"), 1u);
  EXPECT_EQ(quiet.log().dropped_total(), 0u);
}

}  // namespace
}  // namespace dpfs::testing
