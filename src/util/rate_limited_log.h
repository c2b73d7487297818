// A log channel for the lines an untrusted party can cause: a tenant's
// malformed requests and INITs, a front-end's refused messages and broken
// rings. One per device (session, virtqueue, vhost-user connection), so that
// one tenant's flood neither floods the operator's log nor uses up the lines
// of the others.
//
// A token bucket: `burst` lines may go out at once, then `per_second` lines a
// second. A line that finds the bucket empty is dropped and counted; the next
// line that gets through carries "(N lines dropped)". While lines are being
// dropped, a summary ("N lines dropped in the last S s") goes out at most once
// per `summary_interval_s`, so a flood that never lets a line through is still
// visible, and the destructor reports what was dropped since the last line.
//
//   util::RateLimitedLog log("fs0");
//   log.warn("{}: INIT again; renegotiating", name);
//
// Safe for concurrent use (a mutex held only to take a token; formatting and
// writing happen outside it, and not at all for a dropped line).
#pragma once

#include <spdlog/spdlog.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>

namespace dpfs::util {

// How much a RateLimitedLog lets through (outside the class so that it can
// be a default argument of the constructor).
struct LogLimits {
  uint32_t burst = 20;               // lines at once
  uint32_t per_second = 5;           // then this many a second
  uint32_t summary_interval_s = 60;  // at most one summary this often
};

class RateLimitedLog {
 public:
  using Limits = LogLimits;

  // What admit() decided for one line.
  struct Admission {
    bool emit = false;        // write the line
    uint64_t dropped = 0;     // lines dropped since the last one written; say so on this one
    uint64_t summary = 0;     // nonzero: write a summary of this many dropped lines (line dropped)
    uint64_t summary_ns = 0;  // over this span
  };

  explicit RateLimitedLog(std::string name, Limits limits = Limits{});
  RateLimitedLog(const RateLimitedLog&) = delete;
  RateLimitedLog& operator=(const RateLimitedLog&) = delete;
  ~RateLimitedLog();

  template <typename... Args>
  void log(spdlog::level::level_enum level, fmt::format_string<Args...> format, Args&&... args) {
    log_with(level, [&] { return fmt::format(format, std::forward<Args>(args)...); });
  }
  // The same for a line that `make_line()` builds, called only if the line
  // goes out.
  template <typename MakeLine>
  void log_with(spdlog::level::level_enum level, MakeLine&& make_line) {
    if (!spdlog::should_log(level)) return;  // a discarded level takes no token
    const Admission a = admit(now_ns());
    if (a.emit) {
      write(level, make_line(), a.dropped);
    } else if (a.summary != 0) {
      write_summary(a.summary, a.summary_ns);
    }
  }
  template <typename... Args>
  void info(fmt::format_string<Args...> format, Args&&... args) {
    log(spdlog::level::info, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void warn(fmt::format_string<Args...> format, Args&&... args) {
    log(spdlog::level::warn, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void error(fmt::format_string<Args...> format, Args&&... args) {
    log(spdlog::level::err, format, std::forward<Args>(args)...);
  }

  // The decision for a line offered at `now_ns` (CLOCK_MONOTONIC), without
  // writing anything: for log() and for tests that drive the clock.
  Admission admit(uint64_t now_ns);

  // Writes a summary of the lines dropped since the last one written, if
  // any (the destructor calls it; so may a periodic timer).
  void flush();

  // Lines dropped so far, over the channel's life.
  uint64_t dropped_total() const;
  const std::string& name() const { return name_; }

  static uint64_t now_ns();

 private:
  void write(spdlog::level::level_enum level, const std::string& line, uint64_t dropped);
  void write_summary(uint64_t dropped, uint64_t span_ns);

  const std::string name_;
  const Limits limits_;
  mutable std::mutex mutex_;
  // Guarded by mutex_. The bucket holds credit in line-nanoseconds: a line
  // costs kLineCost, and each nanosecond adds per_second, so the arithmetic
  // stays in integers; it holds at most burst lines' worth.
  uint64_t credit_;
  uint64_t last_refill_ns_ = 0;
  bool started_ = false;
  uint64_t dropped_ = 0;         // since the last line or summary written
  uint64_t last_report_ns_ = 0;  // when that was
  uint64_t dropped_total_ = 0;
};

}  // namespace dpfs::util
