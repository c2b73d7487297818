#include "report.h"

#include <fmt/format.h>

namespace dpfs::bench {
namespace {

double per_op_us(double seconds, uint64_t ops) { return ops ? seconds * 1e6 / double(ops) : 0; }

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (uint8_t(c) < 0x20) {
      out += fmt::format("\\u{:04x}", int(c));
    } else {
      out += c;
    }
  }
  return out + "\"";
}

}  // namespace

std::string format_table(const RunDescription& d, const RunResult& r) {
  const double ops_s = r.seconds > 0 ? double(r.ops) / r.seconds : 0;
  std::string out = fmt::format(
      "{}: {} on {}: {} request queue{}, depth {}, {} driver thread{}, {}, {:.1f} s (+{:.1f} s "
      "warm-up)\n",
      d.label, d.workload, d.socket, d.request_queues, d.request_queues == 1 ? "" : "s", d.depth,
      d.threads, d.threads == 1 ? "" : "s", d.poll ? "polling" : "event-driven", r.seconds,
      d.warmup);
  out += fmt::format("{:>12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>7}\n", "ops/s", "MB/s",
                     "mean us", "p50 us", "p99 us", "p99.9 us", "drv us/op", "dev us/op", "errors");
  out += fmt::format(
      "{:>12.0f} {:>9.1f} {:>9.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>11.2f} {:>11} {:>7}\n", ops_s,
      r.seconds > 0 ? double(r.bytes) / r.seconds / 1e6 : 0, r.latency.mean() / 1e3,
      r.latency.quantile(0.5) / 1e3, r.latency.quantile(0.99) / 1e3,
      r.latency.quantile(0.999) / 1e3, r.latency.quantile(1.0) / 1e3,
      per_op_us(r.driver_cpu_s, r.ops),
      r.device_cpu_s >= 0 ? fmt::format("{:.2f}", per_op_us(r.device_cpu_s, r.ops)) : "-",
      r.errors);
  if (!r.first_error.empty()) out += "first error: " + r.first_error + "\n";
  if (!r.verified.empty()) out += r.verified + "\n";
  return out;
}

std::string format_json(const RunDescription& d, const RunResult& r) {
  const double ops_s = r.seconds > 0 ? double(r.ops) / r.seconds : 0;
  return fmt::format(
      "{{\"device\": {}, \"socket\": {}, \"workload\": {}, \"request_queues\": {}, \"depth\": {}, "
      "\"threads\": {}, \"block_size\": {}, \"poll\": {}, \"seconds\": {:.3f}, \"ops\": {}, "
      "\"ops_per_s\": {:.1f}, \"mb_per_s\": {:.2f}, \"lat_mean_us\": {:.3f}, \"lat_p50_us\": "
      "{:.3f}, \"lat_p99_us\": {:.3f}, \"lat_p999_us\": {:.3f}, \"lat_max_us\": {:.3f}, "
      "\"driver_cpu_us_per_op\": {:.3f}, "
      "\"device_cpu_us_per_op\": {}, \"kicks\": {}, \"errors\": {}, \"first_error\": {}, "
      "\"verified\": {}}}\n",
      json_string(d.label), json_string(d.socket), json_string(d.workload), d.request_queues,
      d.depth, d.threads, d.block_size, d.poll ? "true" : "false", r.seconds, r.ops, ops_s,
      r.seconds > 0 ? double(r.bytes) / r.seconds / 1e6 : 0, r.latency.mean() / 1e3,
      r.latency.quantile(0.5) / 1e3, r.latency.quantile(0.99) / 1e3,
      r.latency.quantile(0.999) / 1e3, r.latency.quantile(1.0) / 1e3,
      per_op_us(r.driver_cpu_s, r.ops),
      r.device_cpu_s >= 0 ? fmt::format("{:.3f}", per_op_us(r.device_cpu_s, r.ops)) : "null",
      r.kicks, r.errors, json_string(r.first_error), json_string(r.verified));
}

}  // namespace dpfs::bench
