// The virtio-fs device over vhost-user: what a tenant's virtio-fs driver
// talks to when QEMU (or another front-end) connects to our socket.
//
// Queue 0 is the hiprio queue (FORGET, INTERRUPT), queues 1..N the request
// queues (virtio 1.2 §5.11). Each queue belongs to one worker thread, which
// pops descriptor chains, hands them to the FUSE session as Requests whose
// iovecs point straight into guest memory (no bounce buffer), pushes the
// used entries and notifies the guest once per batch.
//
// Threads: the vhost-user control thread calls the VhostUserDevice methods;
// while it changes memory or rings it pauses the workers (a barrier), so
// the hot path takes no lock. A reply a backend answers later, from another
// thread, is handed to the owning worker through its completion list. A
// backend's per-worker hook (backend/worker_hook.h, an io_uring ring) is
// made on each worker, flushed after each batch of chains, and its
// descriptor watched with the kicks (or polled, with --poll).
//
// One device per tenant: a broken queue or a disconnect stops only this
// device's queues; the daemon and other devices keep running.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fuse/latency.h"
#include "fuse/session.h"
#include "util/unique_fd.h"
#include "vhost_user/connection.h"
#include "virtio/guest_memory.h"
#include "virtio/queue.h"

namespace dpfs::vhost_user {

struct VirtioFsDeviceOptions {
  std::string name = "virtio-fs";  // for logs
  uint32_t request_queues = 1;     // N: QEMU's num-request-queues
  unsigned threads = 1;            // workers; queue i belongs to worker i % threads
  bool poll = false;               // busy-poll the queues instead of sleeping on kicks
  // Polling: consecutive empty rounds after which a worker sleeps on its
  // kicks again until the next request.
  uint32_t poll_idle_rounds = 1u << 16;
  // Adaptive polling, without `poll`: after a kick, a worker keeps polling
  // its queues (kicks off) until none has had work for this long, then
  // sleeps on kicks again. A driver that refills within the budget finds
  // the worker awake: no kick, no wake-up on either side. 0: sleep as soon
  // as the queues are empty.
  uint32_t poll_budget_us = 50;  // the daemon's default: DeviceConfig
  // Where each split ring records its progress (request_queues + 1 of
  // them, in memory a successor process finds: docs/restart.md), or null.
  virtio::RingRecord* records = nullptr;
};

// Counters for one queue, readable while the device runs; written only by
// the worker that owns the queue (see fuse/latency.h).
struct QueueStats {
  std::atomic<uint64_t> requests{0};       // replies placed in the used ring
  std::atomic<uint64_t> errors{0};         // of which error replies
  fuse::LatencyHistogram latency;          // from the session taking a request to its reply
  std::atomic<uint64_t> notifications{0};  // interrupts sent to the guest
  std::atomic<uint64_t> kicks{0};          // kicks the worker woke up for
  std::atomic<bool> broken{false};         // the reason is in the log
};

class VirtioFsDevice final : public VhostUserDevice {
 public:
  VirtioFsDevice(fuse::RequestHandler& session, VirtioFsDeviceOptions options);
  VirtioFsDevice(const VirtioFsDevice&) = delete;
  VirtioFsDevice& operator=(const VirtioFsDevice&) = delete;
  ~VirtioFsDevice() override;

  // Ends the worker threads, each after dropping its backend hook (the
  // backend's state on that worker: an NFS connection it drives, an
  // io_uring ring) on its own thread. Call before the backend goes, with
  // the front-end gone; the device itself stays, to take replies the
  // backend answers as it goes (they are no longer published).
  void stop_workers();

  // VhostUserDevice: called by the Connection on the control thread;
  // 0 or a negative errno.
  uint64_t features() const override;
  uint64_t protocol_features() const override;
  uint32_t queue_num() const override { return uint32_t(queues_.size()); }
  uint32_t max_mem_slots() const override { return virtio::GuestMemory::kMaxRegions; }
  int set_features(uint64_t features) override;
  int set_mem_table(std::vector<MemoryRegionFd> regions) override;
  int add_mem_reg(MemoryRegionFd region) override;
  int rem_mem_reg(const MemoryRegion& region) override;
  int set_vring_num(uint32_t index, uint32_t num) override;
  int set_vring_addr(uint32_t index, const VringAddr& addr) override;
  int set_vring_base(uint32_t index, uint32_t base) override;
  uint32_t get_vring_base(uint32_t index) override;
  int set_vring_kick(uint32_t index, util::UniqueFd fd) override;
  int set_vring_call(uint32_t index, util::UniqueFd fd) override;
  int set_vring_err(uint32_t index, util::UniqueFd fd) override;
  int set_vring_enable(uint32_t index, bool enable) override;
  void reset_device() override;
  void disconnect() override;

  // While set, rings start by resuming from their records (a successor
  // replaying its predecessor's journal); off, they start afresh.
  void set_resume(bool resume) { resume_ = resume; }
  // Signals every started queue's call eventfd: answers a predecessor
  // published may never have been signalled (it died in between), and a
  // driver that sleeps until then would wait for good. A spurious
  // notification costs a driver one look at its used ring.
  void notify_all();

  // REQUIRES: index < queue_num().
  const QueueStats& queue_stats(uint32_t index) const;
  const VirtioFsDeviceOptions& options() const { return options_; }

  class Queue;
  class QueueWorker;

 private:
  // Stops every worker from touching queues and memory until resume().
  void pause();
  void resume();
  // Starts queue `index` if it has everything it needs and is enabled.
  void maybe_start(Queue& q);
  void stop_queue(Queue& q);
  // Points every started queue at its rings in `mem`; a queue whose rings
  // are not there is stopped, with a line saying `why`. REQUIRES: paused.
  void remap_queues(const virtio::GuestMemory& mem, const char* why);
  // Drops guest memory no request still points into. REQUIRES: paused.
  void release_retired_memory();
  // Requests handed to the session and not yet answered, on every queue:
  // counted by each queue's own slots, which only its worker touches.
  // REQUIRES: paused, or the workers stopped.
  uint64_t in_flight() const;

  fuse::RequestHandler& session_;
  VirtioFsDeviceOptions options_;
  uint64_t acked_features_ = 0;
  std::unique_ptr<virtio::GuestMemory> memory_;
  // Tables replaced while requests were in flight into them.
  std::vector<std::unique_ptr<virtio::GuestMemory>> retired_;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::vector<std::unique_ptr<QueueWorker>> workers_;
  // The pause barrier between the control thread and the workers.
  std::mutex pause_mu_;
  std::condition_variable pause_cv_;
  std::atomic<bool> pause_requested_{false};  // set under pause_mu_
  unsigned paused_workers_ = 0;               // guarded by pause_mu_
  unsigned pause_depth_ = 0;                  // control thread only
  bool workers_stopped_ = false;              // control thread only: stop_workers() ran
  bool resume_ = false;                       // control thread only
};

}  // namespace dpfs::vhost_user
