// A statistics counter that one thread writes and any thread reads.
//
// The writer is on a fast path (a queue's worker, a ring's owner, an NFS
// connection's driver), so adding costs no locked instruction: a relaxed
// load and store, which is exact because nobody else writes. Readers load it
// relaxed and see a value at most a few events old.
#pragma once

#include <atomic>
#include <cstdint>

namespace dpfs::util {

// Adds `n` to `counter`. REQUIRES: the calling thread is its only writer.
inline void single_writer_add(std::atomic<uint64_t>& counter, uint64_t n = 1) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

}  // namespace dpfs::util
