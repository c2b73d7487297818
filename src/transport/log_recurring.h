// A warning the kernel's side of /dev/fuse can repeat without end (a reply
// it will not take, a ring entry it fails): logged the first few times, then
// one in 10,000, each line with the count so far.
#pragma once

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdint>
#include <utility>

namespace dpfs::transport {

template <typename... Args>
void log_recurring(std::atomic<uint64_t>& count, fmt::format_string<Args...> format,
                   Args&&... args) {
  const uint64_t n = count.fetch_add(1, std::memory_order_relaxed);
  if (n < 10 || n % 10000 == 0) {
    spdlog::warn("{} ({} so far)", fmt::format(format, std::forward<Args>(args)...), n + 1);
  }
}

}  // namespace dpfs::transport
