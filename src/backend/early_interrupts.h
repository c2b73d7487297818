// INTERRUPTs that came before the request they name was waiting: workers
// race, and a backend may still have the request's first try out (at a
// store, in another thread). A few are kept, by request id, so that the
// request is answered EINTR when it would start to wait.
//
// Not thread-safe: the owner guards it with the lock that guards its
// waiters, so that "not waiting yet" and "remembered" are one step.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>

namespace dpfs {

class EarlyInterrupts {
 public:
  // The interrupt of request `unique` found no waiter: remember it (the
  // oldest goes past kMax). Request id 0 names nothing.
  void note(uint64_t unique) {
    if (unique == 0) return;
    ids_.push_back(unique);
    if (ids_.size() > kMax) ids_.pop_front();
  }
  // True (and forgotten) if request `unique` was interrupted already.
  bool take(uint64_t unique) {
    auto it = std::find(ids_.begin(), ids_.end(), unique);
    if (unique == 0 || it == ids_.end()) return false;
    ids_.erase(it);
    return true;
  }
  void clear() { ids_.clear(); }

 private:
  static constexpr size_t kMax = 256;
  std::deque<uint64_t> ids_;
};

}  // namespace dpfs
