// The process's descriptor limit, divided between devices at start-up.
//
// Every descriptor a tenant can make dpfs hold (passthrough: its open files
// and the inode descriptors cached for it) counts against one limit, the
// process's RLIMIT_NOFILE. Shared first come first served, one tenant that
// opens everything it can would leave its neighbours -- and the daemon's own
// sockets and eventfds -- with EMFILE. So the limit is raised once (the soft
// limit to the hard one), a reserve is kept for the daemon, and the rest is
// divided: each device whose backend holds descriptors for its tenant gets a
// budget (util::FdBudget) and answers EMFILE when its own is spent.
//
// Start-up only (not thread-safe: it sets a process-wide limit).
#pragma once

#include <cstddef>
#include <cstdint>

namespace dpfs::daemon {

struct FdPlan {
  // What the daemon keeps for itself: a base, and per transport endpoint
  // (vhost-user device, FUSE mount, remote listener) its sockets, epoll and
  // wake descriptors, io_uring rings and up to 3 eventfds per virtqueue.
  static constexpr uint64_t kReserveBase = 256;
  static constexpr uint64_t kReservePerEndpoint = 256;
  // A budget smaller than this serves no tenant usefully.
  static constexpr uint64_t kMinPerDevice = 16;

  uint64_t limit = 0;       // RLIMIT_NOFILE (soft, now equal to the hard one)
  uint64_t reserve = 0;     // kept for the daemon
  uint64_t per_device = 0;  // each budgeted device's share (0 when none has a budget)
};

// Divides `limit` descriptors: `endpoints` transport endpoints share the
// reserve, `budgeted` of them hold descriptors for their tenant and get
// `configured` each (0: an equal share of what the reserve leaves). Throws
// std::invalid_argument (one line for the operator) when the budgets do not
// fit the limit.
FdPlan divide_fd_limit(uint64_t limit, uint64_t configured, size_t endpoints, size_t budgeted);

// Raises the soft RLIMIT_NOFILE to the hard limit, then divide_fd_limit()s it.
FdPlan plan_fd_limit(uint64_t configured, size_t endpoints, size_t budgeted);

}  // namespace dpfs::daemon
