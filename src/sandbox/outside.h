// Work that must be done outside the sandbox after the daemon entered it:
// unmounting its FUSE mount, removing its socket files. From inside, those
// paths are out of reach (and umount2 is forbidden).
#pragma once

#include <sys/types.h>

#include <functional>

#include "util/unique_fd.h"

namespace dpfs::sandbox {

// A process forked before the sandbox that stays where this one was (its
// mount namespace, root and privileges) and runs `cleanup` once: when run()
// asks, or when this process is gone, crashed or killed (the socket between
// them closes). It holds no other descriptor of ours: not /dev/fuse (which
// would keep a FUSE connection alive), not a listening socket (which would
// take front-ends in). `cleanup` runs on the helper's copy of this
// process's memory as it was at the fork; its argument is run()'s `quiet`
// (false when this process died).
//
// Not thread-safe: the main thread's. REQUIRES: constructed while no other
// thread runs (fork).
class OutsideCleanup {
 public:
  // Throws std::system_error.
  explicit OutsideCleanup(const std::function<void(bool quiet)>& cleanup);
  OutsideCleanup(const OutsideCleanup&) = delete;
  OutsideCleanup& operator=(const OutsideCleanup&) = delete;
  // run().
  ~OutsideCleanup();

  // Asks the helper to run `cleanup(quiet)`, waits until it has, and reaps
  // it. Idempotent.
  void run(bool quiet = false);

 private:
  util::UniqueFd socket_;  // ours; empty once run
  pid_t pid_ = -1;
};

}  // namespace dpfs::sandbox
