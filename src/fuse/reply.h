// The FUSE encoding of replies: what fuse::Request does when a backend
// completes a Reply (backend.h's ReplyTarget), and the header-only answers
// the session gives itself.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>

#include "fuse/request.h"

namespace dpfs::fuse {

// Writes the reply header at the start of `out` (the payload, if any, is
// already after it); returns the reply's length, or 0 if `out` cannot hold
// a header.
size_t write_header(std::span<const iovec> out, uint64_t unique, int error, size_t payload);

// Ends `req` with what its writer holds (error 0) or with -errno `error`.
void send_written(Request& req, int error);
// Ends `req` with `payload`; EIO if it does not fit the tenant's buffer.
void send(Request& req, const void* payload, size_t len);

template <typename T>
void send(Request& req, const T& obj) {
  send(req, &obj, sizeof(obj));
}

}  // namespace dpfs::fuse
