#include "sandbox/proc_fd.h"

#include <atomic>

namespace dpfs::sandbox {
namespace {

std::atomic<bool> g_relative{false};

}  // namespace

std::string proc_fd_path(int fd) {
  return (g_relative.load(std::memory_order_relaxed) ? "" : "/proc/self/fd/") + std::to_string(fd);
}

void use_relative_proc_fd_paths() { g_relative.store(true, std::memory_order_relaxed); }

}  // namespace dpfs::sandbox
