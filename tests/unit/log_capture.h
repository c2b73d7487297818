// Captures what the daemon logs through spdlog's default logger while a test
// runs, then restores the logger it replaced.
#pragma once

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dpfs::testing {

class LogCapture {
 public:
  explicit LogCapture(spdlog::level::level_enum level = spdlog::level::info)
      : previous_(spdlog::default_logger()),
        previous_level_(spdlog::get_level()),
        sink_(std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(kCapacity)) {
    auto logger = std::make_shared<spdlog::logger>("capture", sink_);
    logger->set_pattern("%v");
    logger->set_level(level);
    spdlog::set_default_logger(logger);
    spdlog::set_level(level);
  }
  LogCapture(const LogCapture&) = delete;
  LogCapture& operator=(const LogCapture&) = delete;
  ~LogCapture() {
    spdlog::set_default_logger(previous_);
    spdlog::set_level(previous_level_);
  }

  // Every line so far (at most kCapacity, more than any bounded test writes).
  std::vector<std::string> lines() const { return sink_->last_formatted(); }
  // How many of them contain `text`.
  size_t count(std::string_view text) const {
    size_t n = 0;
    for (const std::string& line : lines()) n += line.find(text) != std::string::npos;
    return n;
  }

  static constexpr size_t kCapacity = 1 << 16;

 private:
  std::shared_ptr<spdlog::logger> previous_;
  spdlog::level::level_enum previous_level_;
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink_;
};

}  // namespace dpfs::testing
