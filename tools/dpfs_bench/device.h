// A virtio-fs device as the benchmark's driver sees it once it is up: the
// vhost-user set-up done, the hiprio queue and N request queues running,
// FUSE_INIT answered, and buffer slots ready in shared memory.
//
// Not thread-safe. Each request queue (its DriverQueue and its slots)
// belongs to one driver thread during a run; SyncChannel is for set-up,
// verification and the hostile cases, when no run is going on.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "driver_queue.h"
#include "frontend.h"
#include "fuse_messages.h"
#include "shared_memory.h"

namespace dpfs::bench {

struct DeviceOptions {
  std::string socket;
  uint32_t request_queues = 1;
  uint32_t depth = 1;         // slots per request queue
  uint32_t data_size = 4096;  // bytes of each slot's data buffer
  uint32_t queue_size = 0;    // ring entries; 0: enough for depth
  bool init = true;           // send FUSE_INIT in the constructor
};

// One request at a time on request queue 1, with its own slot.
class SyncChannel {
 public:
  SyncChannel(DriverQueue& queue, Slot slot) : queue_(queue), slot_(slot) {}

  Slot& slot() { return slot_; }
  uint64_t next_unique() { return unique_ += 2; }
  // Submits the request built in slot() and waits for its reply (up to
  // `timeout_ms`); returns "" with *reply filled, or what went wrong
  // (no descriptors, no answer in time).
  std::string call(Reply* reply, int timeout_ms = 5000);

 private:
  DriverQueue& queue_;
  Slot slot_;
  uint64_t unique_ = 1;  // odd: never equal to a run's uniques
};

class Device {
 public:
  // Connects and sets everything up; throws std::runtime_error saying what
  // failed.
  explicit Device(const DeviceOptions& options);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const DeviceOptions& options() const { return options_; }
  Frontend& frontend() { return *frontend_; }
  SharedMemory& memory() { return *memory_; }
  DriverQueue& hiprio() { return *hiprio_; }
  // Request queue `i`, 1..request_queues.
  DriverQueue& queue(uint32_t i) { return *queues_[i - 1]; }
  std::vector<Slot>& slots(uint32_t i) { return slots_[i - 1]; }
  SyncChannel& sync() { return *sync_; }
  // FUSE_INIT's answer (0 before init()).
  uint32_t max_write() const { return max_write_; }
  uint32_t fuse_minor() const { return minor_; }

  // Sends FUSE_INIT; throws if the device refuses it.
  void init();

 private:
  DeviceOptions options_;
  std::unique_ptr<SharedMemory> memory_;
  std::unique_ptr<Frontend> frontend_;
  std::unique_ptr<DriverQueue> hiprio_;
  std::vector<std::unique_ptr<DriverQueue>> queues_;
  std::vector<std::vector<Slot>> slots_;
  std::unique_ptr<SyncChannel> sync_;
  uint32_t max_write_ = 0;
  uint32_t minor_ = 0;
};

}  // namespace dpfs::bench
