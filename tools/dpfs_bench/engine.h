// Runs a workload: one driver thread per group of request queues, each
// keeping `depth` requests in flight on each of its queues, event-driven
// (sleep on the call eventfds) or polling (spin on the used rings, no
// calls asked for). Warm-up first, then the measured interval; latencies,
// ops and CPU time count only in the measured interval.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "device.h"
#include "histogram.h"
#include "workloads.h"

namespace dpfs::bench {

struct RunOptions {
  unsigned threads = 1;   // driver threads; request queue i goes to thread (i-1) % threads
  double duration = 5;    // seconds measured
  double warmup = 1;      // seconds before
  bool poll = false;      // spin on the used rings instead of sleeping on calls
  bool progress = false;  // a progress line on stderr once a second
  pid_t device_pid = 0;   // the device's process, for its CPU time; 0: unknown
  int stall_ms = 5000;    // no completion for this long is an error
};

struct RunResult {
  uint64_t ops = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
  std::string first_error;
  double seconds = 0;
  Histogram latency;  // ns, per request
  double driver_cpu_s = 0;
  double device_cpu_s = -1;  // < 0: unknown
  uint64_t kicks = 0;        // eventfd writes the driver made
  std::string verified;      // the workload's verification summary
};

// Throws std::runtime_error when the device breaks the run (stalls).
RunResult run_workload(Device& device, Workload& workload, const RunOptions& options);

// Total CPU time (user + system) of every thread of `pid` and of its
// descendants so far, in seconds, from /proc/PID/task/*/schedstat; < 0 if
// it cannot be read. Descendants are found when called (a process that
// exited in between is not counted).
double process_cpu_seconds(pid_t pid);

}  // namespace dpfs::bench
