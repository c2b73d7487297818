// Request statistics of a session, as log lines.
#pragma once

#include <string>
#include <vector>

#include "fuse/session.h"

namespace dpfs::fuse {

// One line per opcode that saw requests ("LOOKUP 120 requests, 3 errors,
// mean 4.1 µs"), busiest first, after a line of totals. Reads the session's
// counters while workers update them: each line is consistent enough for an
// operator, not a transaction.
std::vector<std::string> format_stats(const fuse::FuseSession& session);

// Logs format_stats() at info, each line prefixed with `title`.
void log_stats(const fuse::FuseSession& session, const char* title);

}  // namespace dpfs::fuse
