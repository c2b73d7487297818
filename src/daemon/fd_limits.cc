#include "daemon/fd_limits.h"

#include <fmt/format.h>
#include <sys/resource.h>

#include <cerrno>
#include <stdexcept>
#include <system_error>

namespace dpfs::daemon {

FdPlan divide_fd_limit(uint64_t limit, uint64_t configured, size_t endpoints, size_t budgeted) {
  FdPlan plan;
  plan.limit = limit;
  plan.reserve = FdPlan::kReserveBase + FdPlan::kReservePerEndpoint * endpoints;
  if (budgeted == 0) return plan;
  const uint64_t left = limit > plan.reserve ? limit - plan.reserve : 0;
  if (configured == 0) {
    plan.per_device = left / budgeted;
    if (plan.per_device < FdPlan::kMinPerDevice) {
      throw std::invalid_argument(fmt::format(
          "the descriptor limit (RLIMIT_NOFILE) of {} leaves {} for {} device{} after the {} "
          "dpfs keeps for itself: raise it (ulimit -Hn) to at least {}",
          limit, left, budgeted, budgeted == 1 ? "" : "s", plan.reserve,
          plan.reserve + FdPlan::kMinPerDevice * budgeted));
    }
    return plan;
  }
  if (configured > left / budgeted) {
    throw std::invalid_argument(fmt::format(
        "max_fds_per_device {} for {} device{} needs {} descriptors with the {} dpfs keeps for "
        "itself, but the limit (RLIMIT_NOFILE) is {}: lower it to {} or raise the limit",
        configured, budgeted, budgeted == 1 ? "" : "s", plan.reserve + configured * budgeted,
        plan.reserve, limit, left / budgeted));
  }
  plan.per_device = configured;
  return plan;
}

FdPlan plan_fd_limit(uint64_t configured, size_t endpoints, size_t budgeted) {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    throw std::system_error(errno, std::generic_category(), "getrlimit(RLIMIT_NOFILE)");
  }
  if (lim.rlim_cur < lim.rlim_max) {
    rlimit raised{lim.rlim_max, lim.rlim_max};
    if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  // RLIM_INFINITY is not a count; the kernel caps descriptors at nr_open.
  const uint64_t limit = lim.rlim_cur == RLIM_INFINITY ? (1u << 20) : uint64_t(lim.rlim_cur);
  return divide_fd_limit(limit, configured, endpoints, budgeted);
}

}  // namespace dpfs::daemon
