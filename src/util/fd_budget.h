// The share of the process's descriptor limit (RLIMIT_NOFILE) that one
// device -- one tenant -- may hold open on its behalf: the descriptors its
// backend keeps for it (passthrough: open files, cached inode descriptors).
// The daemon divides the limit between its devices at start-up
// (daemon/fd_limits.h), so a tenant that opens everything it can gets EMFILE
// from its own budget while its neighbours' budgets, and the reserve the
// daemon keeps for itself (sockets, eventfds, guest memory), are untouched.
//
// A limit of 0 means no budget (everything is granted). Safe for concurrent
// use (one atomic counter).
#pragma once

#include <atomic>
#include <cstddef>

namespace dpfs::util {

class FdBudget {
 public:
  explicit FdBudget(size_t limit = 0) : limit_(limit) {}
  FdBudget(const FdBudget&) = delete;
  FdBudget& operator=(const FdBudget&) = delete;

  // Takes `n` descriptors from the budget; false (nothing taken) when fewer
  // are left.
  bool try_take(size_t n = 1) {
    if (limit_ == 0) {
      used_.fetch_add(n, std::memory_order_relaxed);
      return true;
    }
    size_t used = used_.load(std::memory_order_relaxed);
    do {
      if (used + n > limit_) return false;
    } while (!used_.compare_exchange_weak(used, used + n, std::memory_order_relaxed));
    return true;
  }
  // Returns `n` descriptors taken before.
  void give_back(size_t n = 1) { used_.fetch_sub(n, std::memory_order_relaxed); }

  size_t limit() const { return limit_; }  // 0: unlimited
  size_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  const size_t limit_;
  std::atomic<size_t> used_{0};
};

// One descriptor taken from a budget, returned when this goes: held beside
// the descriptor it pays for. Move-only; empty when default-constructed.
class FdCharge {
 public:
  FdCharge() = default;
  explicit FdCharge(FdBudget* budget) : budget_(budget) {}
  FdCharge(FdCharge&& other) noexcept : budget_(other.budget_) { other.budget_ = nullptr; }
  FdCharge& operator=(FdCharge&& other) noexcept {
    if (this != &other) {
      reset();
      budget_ = other.budget_;
      other.budget_ = nullptr;
    }
    return *this;
  }
  FdCharge(const FdCharge&) = delete;
  FdCharge& operator=(const FdCharge&) = delete;
  ~FdCharge() { reset(); }

  void reset() {
    if (budget_ != nullptr) budget_->give_back();
    budget_ = nullptr;
  }

 private:
  FdBudget* budget_ = nullptr;
};

}  // namespace dpfs::util
