#include "fuse/session_stats.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace dpfs::fuse {

std::vector<std::string> format_stats(const fuse::FuseSession& session) {
  struct Row {
    uint32_t opcode;
    uint64_t requests;
    uint64_t errors;
    uint64_t total_ns;
  };
  std::vector<Row> rows;
  uint64_t requests = 0;
  uint64_t errors = 0;
  for (uint32_t op = 0; op < fuse::FuseSession::kMaxOpcode; ++op) {
    const fuse::OpStats s = session.stats(op);
    const Row row{op, s.requests, s.errors, s.total_ns};
    if (row.requests == 0) continue;
    rows.push_back(row);
    requests += row.requests;
    errors += row.errors;
  }
  std::stable_sort(rows.begin(), rows.end(),
                   [](const Row& a, const Row& b) { return a.requests > b.requests; });
  std::vector<std::string> lines;
  lines.push_back(fmt::format("{} requests, {} errors", requests, errors));
  for (const Row& r : rows) {
    lines.push_back(fmt::format("{:<16} {:>10} requests {:>8} errors   mean {:.1f} µs",
                                fuse::opcode_name(r.opcode), r.requests, r.errors,
                                double(r.total_ns) / double(r.requests) / 1000.0));
  }
  for (std::string& line : session.extra_stats()) lines.push_back(std::move(line));
  return lines;
}

void log_stats(const fuse::FuseSession& session, const char* title) {
  for (const std::string& line : format_stats(session)) spdlog::info("{}: {}", title, line);
}

}  // namespace dpfs::fuse
