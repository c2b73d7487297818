// The daemon's log: spdlog's default logger, one line per event on stderr.
//
// Everything logs through spdlog::info() and friends, so the default logger
// set here also carries what the session and the backends log. Call once at
// start-up, before any thread starts.
#pragma once

#include <spdlog/common.h>

namespace dpfs::daemon {

void init_logging(spdlog::level::level_enum level);

}  // namespace dpfs::daemon
