#include "vhost_user/adaptive_poll.h"

#include <gtest/gtest.h>

namespace dpfs::vhost_user {
namespace {

constexpr uint64_t kUs = 1000;

TEST(AdaptivePoll, StartsAtTheConfiguredBudget) {
  EXPECT_EQ(AdaptivePoll(50 * kUs).budget_ns(), 50 * kUs);
  EXPECT_EQ(AdaptivePoll(0).budget_ns(), 0u);
}

// A driver whose next request comes later than the budget (a guest under
// TCG, say): the worker stops spinning after a few requests.
TEST(AdaptivePoll, ShrinksToNothingWhenRequestsComeLaterThanTheBudget) {
  AdaptivePoll p(50 * kUs);
  int windows = 0;
  while (p.budget_ns() > 0 && windows < 100) {
    p.woke_after(200 * kUs);  // the next request, long after the window ran out
    ++windows;
  }
  EXPECT_EQ(p.budget_ns(), 0u);
  EXPECT_LE(windows, 4);
  p.woke_after(200 * kUs);
  EXPECT_EQ(p.budget_ns(), 0u) << "a late request must not grow it";
}

// Requests that come soon after the worker went to sleep: polling would
// have caught them, and the budget comes back, up to the configured one.
TEST(AdaptivePoll, GrowsBackWhenKicksComeWithinTheBudget) {
  AdaptivePoll p(50 * kUs);
  for (int i = 0; i < 10; ++i) p.woke_after(1000 * kUs);
  ASSERT_EQ(p.budget_ns(), 0u);
  p.woke_after(10 * kUs);
  EXPECT_EQ(p.budget_ns(), AdaptivePoll::kMinNs);
  for (int i = 0; i < 10; ++i) p.woke_after(10 * kUs);
  EXPECT_EQ(p.budget_ns(), 50 * kUs) << "never past the configured budget";
}

TEST(AdaptivePoll, ABudgetOfZeroStaysZero) {
  AdaptivePoll p(0);
  p.woke_after(1);
  EXPECT_EQ(p.budget_ns(), 0u);
}

}  // namespace
}  // namespace dpfs::vhost_user
