// What the driver threads send: each workload is a small state machine per
// slot (a request in flight), so dependent requests (LOOKUP then GETATTR,
// OPEN/READ/RELEASE, CREATE/SETATTR/RELEASE/UNLINK) keep `depth` chains
// busy at once. Every completed request counts as one op.
//
// next() and complete() are called by the driver threads, concurrently for
// different slots: a workload keeps per-slot state in SlotState and shares
// only what prepare() set up (read-only) and atomics.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "device.h"
#include "fuse_messages.h"

namespace dpfs::bench {

struct WorkloadOptions {
  uint64_t file_size = 64ull << 20;  // the data file
  uint32_t block_size = 0;           // 0: the workload's default
  uint32_t files = 1000;             // lookup: how many names
  bool verify = true;                // write workloads: read back what was written
};

// Per-slot state, owned by the thread driving the slot.
struct SlotState {
  uint32_t step = 0;
  uint64_t nodeid = 0;
  uint64_t fh = 0;
  uint64_t rng = 0;
  uint64_t counter = 0;
  uint64_t cursor = 0;  // sequential workloads: next offset
  std::string name;
  // Set by the engine.
  unsigned thread = 0;
  uint32_t queue = 0;
  uint32_t slot = 0;
  uint64_t unique = 0;
};

class Workload {
 public:
  virtual ~Workload() = default;
  virtual std::string_view name() const = 0;
  // Bytes each slot's data buffer needs.
  virtual uint32_t data_size() const { return 4096; }
  // Payload bytes one op moves, for MB/s (0 for metadata).
  virtual uint32_t op_bytes() const { return 0; }
  // Before the run, one request at a time: create and fill files. Throws
  // std::runtime_error saying what the device refused.
  virtual void prepare(Device&) {}
  // Builds the slot's next request.
  virtual void next(Slot& slot, SlotState& st) = 0;
  // Checks the reply to the slot's request and advances the state; ""
  // or what is wrong (counted as an error; the state machine restarts).
  virtual std::string complete(const Reply& reply, SlotState& st) = 0;
  // After the run: verifies what was written. Returns a summary for the
  // report ("" when there is nothing to verify), or sets *error.
  virtual std::string verify(Device&, std::string* /*error*/) { return ""; }
};

// The workload names, for --help and the checks.
const std::vector<std::string>& workload_names();
// nullptr for an unknown name.
std::unique_ptr<Workload> make_workload(std::string_view name, const WorkloadOptions& options);

}  // namespace dpfs::bench
