// The contract between a transport and the FUSE session.
//
// A transport (/dev/fuse, a virtqueue, a socket) turns what the tenant sent
// into a Request: the readable buffers holding one FUSE request and the
// writable buffers that will hold its reply. The session decodes it, calls
// the backend, and encodes the reply straight into `out`; then it calls
// complete() exactly once.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "fuse/captured_request.h"
#include "util/iov.h"

namespace dpfs::fuse {

class FuseSession;

class Request {
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
};

}  // namespace dpfs::fuse
