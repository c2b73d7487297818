// The passthrough data path: READ, WRITE, FSYNC and FALLOCATE on io_uring.
//
// One ring per worker thread; each operation is prepared as a submission
// entry straight over the tenant's iovecs (no copy). How the ring is driven
// depends on the thread:
//
//   - A transport worker (attach_worker()): the ring is driven by the
//     worker's loop through a WorkerHook (backend/worker_hook.h). Entries
//     prepared while the worker handles a batch of requests are submitted
//     together in flush(), at the end of the batch: one io_uring_enter for
//     the whole batch. A read from the page cache completes during that
//     submit and is answered right after it, in the same batch (so the
//     transport publishes it with the batch's other replies). What
//     completes later (I/O that went to the disk or to io-wq) signals the
//     ring's eventfd, which the worker waits on with its queues, and is
//     answered there (or by poll() in a busy-polling worker). Only the
//     worker touches the ring: no lock, no other thread.
//   - Any other thread (the remote server's per-connection threads, tests):
//     each operation is submitted at once, what completed inline is
//     answered at once, and a reaper thread per ring answers the rest. It
//     sleeps on the ring's eventfd, which the submitting thread turns off
//     (IORING_CQ_EVENTFD_DISABLED) around its submit, so inline completions
//     never wake it. (io_uring_register_eventfd_async would not do: it
//     ignores completions posted by task work, which is how a read that
//     went to the disk completes.) Both reap under one mutex.
//
// Replies are answered on whichever thread reaps (Backend allows it).
// Where io_uring is unavailable (kernel, seccomp, RLIMIT_MEMLOCK), or the
// option is off, the same operations run as plain system calls.
//
// Counters (stats()): operations, io_uring_enter calls that submitted, and
// operations done as system calls -- the operator's (and the tests') view of
// how well submissions batch.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"

namespace dpfs::passthrough {

// What an operation keeps alive until it completes (the open file whose
// descriptor it uses).
using Keepalive = std::shared_ptr<const void>;

class Ring;

class DataPath {
 public:
  // `use_uring` false: every operation is a plain system call.
  // `at_once_without_wait`: with a ring, reads of data in the page cache and
  // writes that need no wait are done at once (RWF_NOWAIT); only those that
  // would wait go through the ring.
  explicit DataPath(bool use_uring, bool at_once_without_wait = true, unsigned ring_entries = 256);
  // Waits until every operation in flight has been answered (a worker's
  // ring is reaped by its worker, which still runs), then closes the rings.
  ~DataPath();
  DataPath(const DataPath&) = delete;
  DataPath& operator=(const DataPath&) = delete;

  // The calling thread is a transport worker: its operations are submitted
  // in batches by the returned hook (see above). nullptr when io_uring is off
  // or unavailable, or the thread already has a ring; its operations then go
  // the fallback way.
  std::unique_ptr<WorkerHook> attach_worker();

  void read(int fd, std::span<const iovec> dst, uint64_t offset, Keepalive keep, ReadReply reply);
  void write(int fd, std::span<const iovec> src, uint64_t offset, Keepalive keep, WriteReply reply);
  void fsync(int fd, SyncMode mode, Keepalive keep, StatusReply reply);
  void fallocate(int fd, uint32_t mode, uint64_t offset, uint64_t length, Keepalive keep,
                 StatusReply reply);

  // Whether this thread's operations go through a ring (for logs and tests).
  bool uring_active();

  struct Counters {
    uint64_t uring_ops = 0;       // operations submitted to a ring
    uint64_t submits = 0;         // io_uring_enter calls that submitted them
    uint64_t syscall_ops = 0;     // operations done as plain system calls
    uint64_t cached_reads = 0;    // reads served from the page cache, without a ring
    uint64_t cached_writes = 0;   // writes done at once (RWF_NOWAIT), without a ring
    uint64_t worker_rings = 0;    // rings driven by a worker's hook
    uint64_t fallback_rings = 0;  // rings with a reaper thread
  };
  // Totals so far, over every ring this data path had. Any thread.
  Counters counters() const;
  // One line for the operator: "io_uring: 1200 operations, 40 submits
  // (30.0 per submit), ...".
  std::vector<std::string> stats() const;

 private:
  Ring* ring();  // this thread's ring, or nullptr (io_uring unavailable)
  // Answers a write of which `done` bytes are written: the rest, if any, by
  // plain writes.
  static void finish_write(int fd, std::span<const iovec> src, uint64_t offset, size_t done,
                           WriteReply reply);
  // This thread's ring, made if needed (attached: for a worker). REQUIRES: mu_.
  std::shared_ptr<Ring>& ring_slot(bool attached, bool* created);

  const bool use_uring_;
  const bool at_once_without_wait_;
  const unsigned ring_entries_;
  const uint64_t id_;  // tells this instance apart in threads' caches
  mutable std::mutex mu_;
  std::unordered_map<std::thread::id, std::shared_ptr<Ring>> rings_;  // guarded by mu_
  bool failed_ = false;  // io_uring_queue_init failed once: don't retry; guarded by mu_
  Counters retired_;     // counts of rings dropped from rings_; guarded by mu_
  std::atomic<uint64_t> syscall_ops_{0};
  // The file system refused a non-blocking write (EOPNOTSUPP): writes are
  // plain system calls.
  std::atomic<bool> nowait_writes_unsupported_{false};
};

}  // namespace dpfs::passthrough
