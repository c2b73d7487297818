// How long a worker polls after its last request before it sleeps on
// kicks: the configured budget when polling pays, less (down to none) when
// it does not -- the rule of KVM's halt polling.
//
// Polling pays when the next request comes within the budget: the worker
// finds it without a kick and a wake-up. It does not when the driver sends
// its next request later than that (a guest under load, a slow tenant): the
// worker then spins the whole budget for nothing after every request. So
// the worker, once it has slept, looks at how long the sleep lasted: up to
// the configured budget, a longer poll would have caught the request, and
// the budget grows (from kMinNs, doubling, up to the configured one);
// longer, polling could not have, and the budget halves (below kMinNs:
// none, the worker sleeps at once). A poll that finds work changes nothing.
//
// Not thread-safe: one worker's.
#pragma once

#include <algorithm>
#include <cstdint>

namespace dpfs::vhost_user {

class AdaptivePoll {
 public:
  static constexpr uint64_t kMinNs = 4000;

  explicit AdaptivePoll(uint64_t max_ns) : max_(max_ns), budget_(max_ns) {}

  // How long to poll now; 0: sleep on kicks at once.
  uint64_t budget_ns() const { return budget_; }

  // A kick woke the worker `slept_ns` after it went to sleep.
  void woke_after(uint64_t slept_ns) {
    if (max_ == 0) return;
    if (slept_ns <= max_) {
      budget_ = std::min(max_, std::max(kMinNs, budget_ * 2));
    } else {
      budget_ = budget_ / 2 < kMinNs ? 0 : budget_ / 2;
    }
  }

 private:
  const uint64_t max_;
  uint64_t budget_;
};

}  // namespace dpfs::vhost_user
