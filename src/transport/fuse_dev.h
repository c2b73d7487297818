// The /dev/fuse transport: a FUSE file system mounted on this host, served
// by worker threads that read requests from the kernel's FUSE driver and
// write the replies back.
//
// FuseMount owns the connection (the /dev/fuse file descriptor) and the
// mount; DevFuseTransport owns the workers. A daemon builds them in that order and
// tears down in reverse, unmounting first so that the kernel can still flush
// through the workers what it holds:
//
//   FuseMount mount(options);          // open /dev/fuse, mount(2)
//   DevFuseTransport device(mount.fd(), session, threads, on_stop);
//   ...
//   mount.unmount();                   // the connection ends; workers see ENODEV
//   device.stop();                     // joins them
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fuse/handler.h"
#include "sandbox/outside.h"
#include "transport/fuse_uring.h"
#include "util/unique_fd.h"

namespace dpfs::transport {

// Start-up failures, as one line for the operator ("mount point /mnt/x does
// not exist").
class MountError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct MountOptions {
  std::string mount_point;
  // The largest READ the kernel may send (the session's max_write); 0 leaves
  // the kernel's default.
  uint32_t max_read = 0;
  // Create the mount point (one level) if it does not exist: only for the
  // default job, never for a path the operator typed.
  bool create_mount_point = false;
  // Without these the mount is nosuid,nodev: what the tenant stored there
  // gives no one on this host a set-user-ID program or a device.
  bool allow_suid = false;
  bool allow_dev = false;
};

// A FUSE file system mounted through /dev/fuse. The constructor checks the
// mount point (exists, is a directory, is not itself a mount point), opens
// /dev/fuse and mounts; the destructor unmounts and closes the connection.
//
// Not thread-safe: created, unmounted and destroyed by one thread (the main
// thread of the daemon). Needs CAP_SYS_ADMIN (mount(2) directly, no
// fusermount).
class FuseMount {
 public:
  // Throws MountError.
  explicit FuseMount(const MountOptions& options);
  FuseMount(const FuseMount&) = delete;
  FuseMount& operator=(const FuseMount&) = delete;
  ~FuseMount();

  // The /dev/fuse descriptor of the connection (O_RDWR|O_CLOEXEC, blocking).
  int fd() const { return fd_.get(); }
  // The mount point, absolute and canonical.
  const std::string& mount_point() const { return path_; }
  bool mounted() const { return mounted_; }

  // Unmounts. If the file system is busy (a process has a file open or its
  // working directory on it), detaches it lazily instead and logs that:
  // those processes then see ENOTCONN once the daemon stops. Idempotent;
  // also fine if someone else unmounted it already.
  void unmount();

  // Forks a process that stays where this one is now (this mount
  // namespace, this root, these privileges) and does one thing: unmount,
  // when unmount() asks it or when this process is gone (its socket
  // closes), so the mount never outlives the daemon. For a process about to
  // enter a sandbox, from which the mount point and /proc/self/mountinfo are
  // out of reach and umount2 is forbidden. It holds no other descriptor of
  // ours (not /dev/fuse, not a tenant's socket). Throws MountError.
  //
  // REQUIRES: mounted(); no other thread runs (fork).
  void keep_unmounter();

  // Quiet: "unmounted" is a debug line, for a start-up that failed after
  // mounting (its error must stay the operator's one line).
  void set_quiet_unmount(bool quiet) { quiet_ = quiet; }

  // `n` fresh descriptors of /dev/fuse, for DevFuseTransport's per-worker clones:
  // opened now, while /dev/fuse is in reach. Empty if it cannot be opened.
  static std::vector<util::UniqueFd> open_devices(unsigned n);

 private:
  std::string path_;
  std::string device_;  // "major:minor" of our mount, from /proc/self/mountinfo
  util::UniqueFd fd_;
  bool mounted_ = false;
  bool quiet_ = false;
  std::unique_ptr<sandbox::OutsideCleanup> unmounter_;  // null: we unmount
};

// Serves one FUSE connection with worker threads.
//
// Each worker reads requests from its own clone of the connection's
// descriptor (FUSE_DEV_IOC_CLONE: the kernel then keeps a processing queue
// per worker, and a reply must be written to the descriptor its request was
// read from), or shares the connection's descriptor where cloning is not
// available. A worker owns a pool of request slots, each a request buffer
// and a reply buffer; a slot is reused only after its reply was written, so
// a backend may answer later, from any thread. Steady state allocates
// nothing: the pool grows only while every slot is held by a pending reply.
//
// A backend with a per-worker hook (backend/worker_hook.h, an io_uring
// ring): the worker then reads requests without blocking until the kernel
// has no more (at most a batch), lets the hook start the batch's I/O at
// once, and sleeps in poll(2) on its descriptor and the hook's.
//
// Stopping: a worker blocked in read(2) returns when the connection ends
// (unmount); if it is still alive (a lazily detached mount), stop() wakes
// the workers with SIGUSR2, for which the device installs a handler that
// does nothing. Workers unblock SIGUSR2; other threads need not.
//
// FUSE over io_uring (fuse_uring.h), where `uring` says to use it: the
// device sets its rings up before serving, accepts FUSE_OVER_IO_URING in the
// INIT reply (a transport matter the session never sees) and registers the
// rings' entries once that reply is written; the workers keep reading
// /dev/fuse for what still comes that way (INIT, FORGET, INTERRUPT). With
// fuse.io_uring = auto, whatever keeps it from being used is logged once
// and the device serves by read/write; with on, it fails instead (start-up,
// or failed() and on_stop once INIT shows the kernel will not).
//
// stop() and the destructor are for the thread that constructed the device.
// Replies (Request::complete) may come from any thread until the destructor
// runs; the backend must therefore be destroyed (answering what it still
// holds) before this device is.
class DevFuseTransport {
 public:
  // Starts `threads` workers on the connection `connection_fd` (borrowed:
  // it must outlive the device). `on_stop` is called once, from a worker,
  // when a worker stops by itself: the file system was unmounted, the
  // session was destroyed, or the connection failed. Throws MountError if
  // a thread cannot be started. `devices`: descriptors of /dev/fuse opened
  // beforehand (FuseMount::open_devices), for the workers' clones where
  // /dev/fuse can no longer be opened (a sandbox); the rest are opened here.
  // `uring`: from plan_fuse_uring(), made before the sandbox.
  DevFuseTransport(int connection_fd, fuse::RequestHandler& session, unsigned threads,
                   std::function<void()> on_stop, std::vector<util::UniqueFd> devices = {},
                   FuseUringPlan uring = {});
  DevFuseTransport(const DevFuseTransport&) = delete;
  DevFuseTransport& operator=(const DevFuseTransport&) = delete;
  ~DevFuseTransport();

  // Stops every worker and joins it. Idempotent.
  void stop();
  // Whether the workers have descriptors of their own (FUSE_DEV_IOC_CLONE).
  bool cloned() const { return cloned_; }
  // Whether a worker stopped on an error of the connection (logged), rather
  // than because the file system went away.
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // Whether requests are served through io_uring (after INIT).
  bool uring_serving() const { return uring_serving_.load(std::memory_order_acquire); }
  // Statistics lines: how requests came, through the rings or read(2).
  std::vector<std::string> stats() const;

  class Worker;

 private:
  void worker_stopped();
  // The INIT reply was written (`accepted`: with FUSE_OVER_IO_URING;
  // `offered`: the kernel offered it): starts the rings or gives up on them.
  // On the worker that answered INIT.
  void init_answered(bool accepted, bool offered);
  // Gives up on io_uring for this connection: logs why (auto), or fails the
  // device (on).
  void uring_unavailable(const std::string& why);

  fuse::RequestHandler& session_;
  std::function<void()> on_stop_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> notified_{false};
  std::atomic<bool> failed_{false};
  bool cloned_ = true;
  std::vector<std::unique_ptr<Worker>> workers_;
  FuseUringPlan uring_plan_;
  // Null unless the plan uses io_uring and the rings could be set up.
  std::unique_ptr<FuseRing> ring_;
  std::atomic<bool> init_answered_{false};
  std::atomic<bool> uring_serving_{false};
};

}  // namespace dpfs::transport
