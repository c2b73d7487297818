// FUSE over io_uring (Linux 6.14+): the kernel hands requests to the daemon
// as completions of commands the daemon queued on an io_uring, and takes
// each reply with the command that waits for the next request -- one
// io_uring_enter per batch instead of a read(2) and a write(2) per request.
// The protocol is summed up in fuse_uring_abi.h.
//
// FuseRing is the part of DevFuseTransport (fuse_dev.h) that serves a connection
// this way once INIT has been answered over read/write. The kernel keeps one
// queue per possible CPU; FuseRing runs one thread per ring, at most as many
// as the device has workers and as there are queues, and ring thread r owns
// the queues q with q % rings == r, each with kEntriesPerQueue entries (a
// header and a payload buffer, a Request over them). FORGET and INTERRUPT
// still arrive on the device's read/write workers.
//
// Threads: a ring is driven by its owner thread alone (IORING_SETUP_SINGLE_
// ISSUER). A request taken from a ring is handed to the session on that
// thread; its reply (Request::complete) may come from any thread. A reply
// on the owner thread queues its commit directly; one from another thread
// (a backend answering from its own event: a lock released by another
// worker, an NFS reply) is pushed on the ring's list of foreign replies
// and the owner is woken through an eventfd it polls on its ring; the owner
// then queues the commit. So only the owner ever touches the submission
// queue, and no lock is taken on any path.
#pragma once

#include <linux/fuse.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "fuse/handler.h"
#include "transport/fuse_uring_mode.h"

namespace dpfs::transport {

// The fuse module's switch, which only root may turn on.
inline constexpr const char* kEnableUringParameter = "/sys/module/fuse/parameters/enable_uring";

// What start-up found out about FUSE over io_uring, before the sandbox
// (which hides /sys): whether to offer it at INIT, and if not, why.
struct FuseUringPlan {
  FuseUringMode mode = FuseUringMode::kOff;
  bool use = false;
  // Why it is not used (use == false), for the one log line that says so.
  std::string reason;
  // The kernel's queues: one per possible CPU.
  unsigned queues = 0;
};

// The plan from what the host says: `enable_uring` is the fuse module's
// parameter (nullopt: the module has none, its kernel predates FUSE over
// io_uring or was built without it), `possible_cpus` the number of queues.
// Throws MountError for kOn when it cannot be used, saying what to fix.
FuseUringPlan plan_fuse_uring(FuseUringMode mode, std::optional<bool> enable_uring,
                              unsigned possible_cpus);
// The same from this host's /sys. Throws MountError as above.
FuseUringPlan plan_fuse_uring(FuseUringMode mode);

// "0-1,4-7" (/sys/devices/system/cpu/possible) -> 8: one more than the
// highest CPU listed, the kernel's queue ids being CPU numbers. 0 if it
// does not parse.
unsigned count_cpu_list(std::string_view list);

// Where a ring request's bytes are: the kernel puts the fuse_in_header in
// the header buffer, the first argument (the per-opcode struct, whose size
// it does not send) in op_in, and the other arguments (payload_sz bytes) in
// the payload; the header's len covers all three. nullopt if they do not
// add up or do not fit the buffers.
struct RingRequestLayout {
  size_t op_in_len = 0;
  size_t payload_len = 0;
};
std::optional<RingRequestLayout> ring_request_layout(const fuse_in_header& header,
                                                     uint32_t payload_sz, size_t payload_capacity);

// The INIT reply of a device that serves a ring: sets FUSE_OVER_IO_URING in
// `reply` (the fuse_out_header and fuse_init_out written to /dev/fuse) if
// the kernel offered it in `request` (the INIT read from /dev/fuse) and the
// reply is a successful one with FUSE_INIT_EXT. Returns whether it did; an
// INIT that does not offer it, or a short or failed one, is left alone.
// `offered`: set to whether the kernel offered it.
bool accept_uring_in_init_reply(std::span<const char> request, std::span<char> reply,
                                bool* offered);

class FuseRing {
 public:
  // Entries each queue gets: the requests one CPU's senders can have in
  // the daemon at once (more wait in the kernel). Payload buffers are
  // allocated untouched: an entry costs memory only for what it carried.
  static constexpr unsigned kEntriesPerQueue = 32;

  // Starts `rings` threads serving the `queues` queues of the connection
  // `fd` (borrowed) for `session`, each with its ring set up and its
  // buffers allocated, waiting for start(). Returns once they are: check
  // setup_error(). `payload_size`: each entry's payload buffer.
  FuseRing(int fd, fuse::RequestHandler& session, unsigned queues, unsigned rings,
           size_t payload_size);
  FuseRing(const FuseRing&) = delete;
  FuseRing& operator=(const FuseRing&) = delete;
  // Stops (see stop()). Replies may still come until then.
  ~FuseRing();

  // Empty if every ring was set up; otherwise why not (then use stop()).
  const std::string& setup_error() const { return setup_error_; }

  // INIT was answered with FUSE_OVER_IO_URING: registers every entry, from
  // each ring's thread, and returns once they are submitted. Returns ""
  // or the first error the kernel answered a REGISTER with (it then serves
  // this connection by read/write).
  std::string start();

  // Stops the threads and joins them. Requests still held by the backend
  // may be answered until the destructor; their commits are then dropped
  // (the connection ending answers them in the kernel). Idempotent.
  void stop();

  // Requests taken from the rings so far.
  uint64_t requests() const;
  // Of those, the replies made on another thread than their ring's.
  uint64_t foreign_replies() const;
  unsigned queues() const { return queues_; }
  unsigned rings() const { return unsigned(threads_.size()); }

  class Thread;

 private:
  std::vector<std::unique_ptr<Thread>> threads_;
  unsigned queues_ = 0;
  std::string setup_error_;
  bool stopped_ = false;
};

}  // namespace dpfs::transport
