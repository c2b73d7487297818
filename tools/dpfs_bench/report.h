// The results of a run, as a table for people or one JSON object for
// scripts (bench/device_bench.sh reads it).
#pragma once

#include <string>

#include "engine.h"

namespace dpfs::bench {

// What was run, for the report's header and JSON fields.
struct RunDescription {
  std::string label;  // the device's name in the report ("dpfs", "virtiofsd")
  std::string socket;
  std::string workload;
  uint32_t request_queues = 1;
  uint32_t depth = 1;
  unsigned threads = 1;
  uint32_t block_size = 0;
  bool poll = false;
  double warmup = 0;
};

std::string format_table(const RunDescription& d, const RunResult& r);
std::string format_json(const RunDescription& d, const RunResult& r);

}  // namespace dpfs::bench
