// The contract between a transport and the FUSE session.
//
// A transport (/dev/fuse, a virtqueue, a socket) turns what the tenant sent
// into a Request: the readable buffers holding one FUSE request and the
// writable buffers that will hold its reply. The session decodes it, calls
// the backend, and encodes the reply straight into `out` (the ReplyTarget
// methods, fuse/reply.cc); then it calls complete() exactly once.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

struct fuse_entry_out;

#include "backend/backend.h"
#include "fuse/captured_request.h"
#include "util/iov.h"

namespace dpfs::fuse {

class FuseSession;

// CLOCK_MONOTONIC in nanoseconds (Request::received_ns).
uint64_t monotonic_ns();

class Request : public ReplyTarget {
 public:
  // Bytes the tenant sent: one FUSE request, header first.
  std::span<const iovec> in;
  // Where the reply goes, header first. A transport that writes replies
  // itself (/dev/fuse) points this at its own buffer.
  std::span<const iovec> out;

  // Called exactly once per handled request with the number of bytes written
  // at the start of `out`; 0 means the request takes no reply (FORGET,
  // BATCH_FORGET, INTERRUPT) or the reply did not fit. May be called from a
  // thread other than the one that called FuseSession::handle when a backend
  // answers from another event (a lock released by another worker); a
  // transport that needs completions on its own thread must marshal them.
  virtual void complete(size_t reply_len) = 0;

  // When the transport took the request (CLOCK_MONOTONIC ns), if it reads
  // the clock once for a batch; 0: the session reads it in handle(). The
  // latency the session records runs from here to the reply.
  uint64_t received_ns = 0;

  // Set by a transport whose `in` buffers the tenant cannot write once
  // received (a /dev/fuse read, a TCP frame): they are then parsed in place.
  // Left false for buffers in guest memory.
  bool in_is_private = false;

  // --- Handler-owned state (the session's, or a forwarder's). ------------
  // The header and arguments, read once out of `in` (see CapturedRequest).
  CapturedRequest captured;

  // --- Session-owned state; transports leave it alone. -------------------
  // Kept in the request so that steady state allocates nothing: the vectors
  // keep their capacity from one request to the next.
  struct SessionState {
    FuseSession* session = nullptr;
    uint64_t unique = 0;
    uint32_t opcode = 0;
    uint64_t started_ns = 0;
    // Set when the reply is encoded, before complete(): for the transport's
    // own per-queue statistics.
    uint64_t latency_ns = 0;      // handle() to reply
    int error = 0;                // the errno answered; 0 for success
    IovWriter writer;             // over `out`, positioned after the header
    std::vector<iovec> data_iov;  // READ destination
    uint32_t limit = 0;           // reply payload limit (READ/READDIR size, xattr size)
    bool plus = false;            // READDIRPLUS
  } session_state;

 protected:
  ~Request() = default;

  // The FUSE encoding of a backend's answer (fuse/reply.cc). A subclass may
  // override one to see the typed reply, and then calls this one.
  uint64_t request_id() const override;
  const char* operation() const override;
  void answer_error(int errno_value) override;
  void answer_status() override;
  void answer_entry(const Entry& entry) override;
  void answer_attr(const struct stat& attr, double timeout) override;
  void answer_open(uint64_t fh, uint32_t open_flags, int host_fd) override;
  void answer_create(const Entry& entry, uint64_t fh, uint32_t open_flags, int host_fd) override;
  void answer_read(size_t bytes) override;
  void answer_write(size_t bytes) override;
  void answer_readlink(std::string_view target) override;
  void answer_xattr(std::span<const std::byte> value) override;
  void answer_statfs(const struct statvfs& st) override;
  void answer_lock(const Lock& lock) override;
  void answer_lseek(uint64_t offset) override;
  bool dir_plus() const override;
  size_t dir_size() const override;
  bool dir_add(std::string_view name, uint64_t ino, uint32_t type, uint64_t next_offset) override;
  bool dir_add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) override;
  void dir_done() override;

 private:
  bool add_dirent(const fuse_entry_out* entry, std::string_view name, uint64_t ino, uint32_t type,
                  uint64_t next_offset);
};

}  // namespace dpfs::fuse
