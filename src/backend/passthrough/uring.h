// The passthrough data path: READ, WRITE, FSYNC and FALLOCATE on io_uring.
//
// READs the page cache holds whole are answered first with preadv2
// RWF_NOWAIT, which never blocks; the ring gets everything else.
//
// One ring per worker thread, made on the thread's first I/O. The worker
// owns the submission side: it prepares an entry straight over the tenant's
// iovecs and submits it. Completions are reaped in two places:
//   - by the worker itself, right after io_uring_enter returns: a read from
//     the page cache (the common case) completes inline, during the submit,
//     and is answered without any other thread waking up;
//   - by a reaper thread per ring for the rest (I/O that went to the disk or
//     to io-wq). It sleeps on an eventfd registered with the ring. The worker
//     turns the eventfd off (IORING_CQ_EVENTFD_DISABLED) around its submit
//     and reaps after turning it back on, so inline completions never wake
//     the reaper, and any later one does. (io_uring_register_eventfd_async
//     is not enough: it ignores completions posted by task work, which is
//     how a read that went to the disk completes.)
// The two reap under one mutex; liburing allows the submission and
// completion sides of a ring on different threads.
//
// Why not a hook in the transports' worker loops (reap when the worker is
// idle)? Today the loops know nothing of backend descriptors; the reaper
// thread keeps the backend self-contained. Submissions are not deferred
// to the end of a batch either (that needs the same hook): each request is
// one io_uring_enter, which also reaps what completed meanwhile.
//
// Replies are answered from whichever thread reaps (Backend allows it).
// Where io_uring is unavailable (kernel, seccomp, RLIMIT_MEMLOCK), or the
// option is off, the same operations run as plain system calls.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <variant>

#include "backend/backend.h"

namespace dpfs::passthrough {

// What an operation keeps alive until it completes (the open file whose
// descriptor it uses).
using Keepalive = std::shared_ptr<const void>;

class Ring;

class DataPath {
 public:
  // `use_uring` false: every operation is a plain system call.
  explicit DataPath(bool use_uring, unsigned ring_entries = 256);
  ~DataPath();  // waits for operations in flight; stops the reapers
  DataPath(const DataPath&) = delete;
  DataPath& operator=(const DataPath&) = delete;

  void read(int fd, std::span<const iovec> dst, uint64_t offset, Keepalive keep, ReadReply reply);
  void write(int fd, std::span<const iovec> src, uint64_t offset, Keepalive keep,
             WriteReply reply);
  void fsync(int fd, bool datasync, Keepalive keep, StatusReply reply);
  void fallocate(int fd, uint32_t mode, uint64_t offset, uint64_t length, Keepalive keep,
                 StatusReply reply);

  // Whether this thread's operations go through a ring (for logs and tests).
  bool uring_active();

 private:
  Ring* ring();  // this thread's ring, or nullptr (io_uring unavailable)

  const bool use_uring_;
  const unsigned ring_entries_;
  const uint64_t id_;  // tells this instance apart in threads' caches
  std::mutex mu_;
  std::unordered_map<std::thread::id, std::unique_ptr<Ring>> rings_;  // guarded by mu_
  bool failed_ = false;  // io_uring_queue_init failed once: don't retry; guarded by mu_
};

}  // namespace dpfs::passthrough
