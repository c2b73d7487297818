#include "fuse/session_stats.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "session_harness.h"

namespace dpfs::daemon {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

TEST(Stats, EmptySessionHasOnlyTotals) {
  Backend backend;
  fuse::FuseSession session(backend, {});
  EXPECT_THAT(format_stats(session), ElementsAre("0 requests, 0 errors"));
}

TEST(Stats, OneLinePerOpcodeWithRequests) {
  Backend backend;  // answers ENOSYS to everything
  fuse::FuseSession session(backend, {});
  testing::TestRequest init(testing::init_request());
  session.handle(init);
  for (int i = 0; i < 2; ++i) {
    testing::TestRequest lookup(testing::RequestBuilder(FUSE_LOOKUP).name("x").bytes());
    session.handle(lookup);
  }
  const std::vector<std::string> lines = format_stats(session);
  ASSERT_EQ(lines.size(), 3u);
  EXPECT_EQ(lines[0], "3 requests, 2 errors");
  EXPECT_THAT(lines[1], StartsWith("LOOKUP "));  // busiest first
  EXPECT_THAT(lines[1], HasSubstr("2 requests"));
  EXPECT_THAT(lines[1], HasSubstr("2 errors"));
  EXPECT_THAT(lines[1], HasSubstr("µs"));
  EXPECT_THAT(lines[2], StartsWith("INIT "));
  EXPECT_THAT(lines[2], HasSubstr("0 errors"));
}

}  // namespace
}  // namespace dpfs::daemon
