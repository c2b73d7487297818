// Counts the answers of commands sent together and runs `done` after the
// last, with the first error (0 if none). The answers may come on several
// connections' threads at once (a cluster's nodes).
#pragma once

#include <atomic>
#include <cstddef>

#include "util/unique_function.h"

namespace dpfs::kv {

struct Fan {
  // REQUIRES: n > 0.
  Fan(size_t n, util::UniqueFunction<void(int)> done) : left(n), done(std::move(done)) {}
  void one(int error) {
    if (error != 0) {
      int none = 0;
      first_error.compare_exchange_strong(none, error, std::memory_order_relaxed);
    }
    if (left.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      done(first_error.load(std::memory_order_relaxed));
    }
  }
  std::atomic<size_t> left;
  std::atomic<int> first_error{0};
  util::UniqueFunction<void(int)> done;
};

}  // namespace dpfs::kv
