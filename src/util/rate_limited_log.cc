#include "util/rate_limited_log.h"

#include <time.h>

#include <algorithm>

namespace dpfs::util {
namespace {

constexpr uint64_t kLineCost = 1'000'000'000;  // credit of one line: a second's refill at 1/s
constexpr uint64_t kNsPerSecond = 1'000'000'000;

}  // namespace

RateLimitedLog::RateLimitedLog(std::string name, Limits limits)
    : name_(std::move(name)), limits_(limits), credit_(uint64_t(limits.burst) * kLineCost) {}

RateLimitedLog::~RateLimitedLog() { flush(); }

uint64_t RateLimitedLog::now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return uint64_t(ts.tv_sec) * kNsPerSecond + uint64_t(ts.tv_nsec);
}

RateLimitedLog::Admission RateLimitedLog::admit(uint64_t now) {
  std::lock_guard lock(mutex_);
  const uint64_t capacity = uint64_t(limits_.burst) * kLineCost;
  if (!started_) {
    started_ = true;
    last_refill_ns_ = now;
    last_report_ns_ = now;
  }
  if (now > last_refill_ns_ && limits_.per_second > 0) {
    // Past the time a refill from empty takes, the bucket is full anyway;
    // the clamp keeps the product from overflowing.
    const uint64_t elapsed = std::min(now - last_refill_ns_, capacity / limits_.per_second + 1);
    credit_ = std::min(capacity, credit_ + elapsed * limits_.per_second);
  }
  last_refill_ns_ = std::max(last_refill_ns_, now);

  Admission a;
  if (credit_ >= kLineCost) {
    credit_ -= kLineCost;
    a.emit = true;
    a.dropped = dropped_;
    dropped_ = 0;
    last_report_ns_ = now;
    return a;
  }
  ++dropped_;
  ++dropped_total_;
  if (now - std::min(now, last_report_ns_) >= uint64_t(limits_.summary_interval_s) * kNsPerSecond) {
    a.summary = dropped_;
    a.summary_ns = now - std::min(now, last_report_ns_);
    dropped_ = 0;
    last_report_ns_ = now;
  }
  return a;
}

void RateLimitedLog::flush() {
  uint64_t dropped;
  uint64_t span;
  {
    std::lock_guard lock(mutex_);
    if (dropped_ == 0) return;
    const uint64_t now = std::max(now_ns(), last_report_ns_);
    dropped = dropped_;
    span = now - last_report_ns_;
    dropped_ = 0;
    last_report_ns_ = now;
  }
  write_summary(dropped, span);
}

uint64_t RateLimitedLog::dropped_total() const {
  std::lock_guard lock(mutex_);
  return dropped_total_;
}

void RateLimitedLog::write(spdlog::level::level_enum level, const std::string& line,
                           uint64_t dropped) {
  if (dropped == 0) {
    spdlog::log(level, "{}", line);
  } else {
    spdlog::log(level, "{} ({} line{} dropped)", line, dropped, dropped == 1 ? "" : "s");
  }
}

void RateLimitedLog::write_summary(uint64_t dropped, uint64_t span_ns) {
  spdlog::warn("{}: {} log line{} dropped in the last {:.1f} s (limit: {} at once, then {}/s)",
               name_, dropped, dropped == 1 ? "" : "s", double(span_ns) / 1e9, limits_.burst,
               limits_.per_second);
}

}  // namespace dpfs::util
