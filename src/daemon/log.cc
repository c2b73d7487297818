#include "daemon/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace dpfs::daemon {

void init_logging(spdlog::level::level_enum level) {
  // Colors only when stderr is a terminal (the sink checks); a service
  // manager's journal gets plain lines.
  auto logger = spdlog::stderr_color_mt("dpfs");
  logger->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%-7l%$ %v");
  logger->set_level(level);
  logger->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(std::move(logger));
}

}  // namespace dpfs::daemon
