// A FUSE request's deciding bytes, read once out of tenant memory.
//
// A virtio-fs request lies in guest memory that the guest may rewrite while
// dpfs reads it (another vCPU, a device the guest programs). Anything read
// twice from there -- a name checked for '/' and then used, a length checked
// and then trusted -- can differ between the reads. So every byte that
// decides anything (the header, the fixed-size arguments, names, link
// targets, xattr names and values) is copied here exactly once, and only
// this copy is checked and used. Only bulk data stays in place: a WRITE's
// payload, which no decision depends on, is kept as iovecs into the
// tenant's buffers (zero-copy), as is every READ destination.
//
// A transport whose buffers the tenant cannot write after they were
// received (a /dev/fuse read, a TCP frame in dpfs's own buffer) says so with
// Request::in_is_private; the copy is then a view of that buffer.
//
// Storage is kept from one request to the next (grown, never shrunk): the
// steady state allocates nothing. Not thread-safe; belongs to one Request.
#pragma once

#include <linux/fuse.h>
#include <linux/limits.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace dpfs::fuse {

class CapturedRequest {
 public:
  // The most argument bytes any request other than WRITE needs: a SETXATTR
  // of the largest value the kernel allows, its name, and a page for
  // extensions. A larger request is refused (too_large()).
  static constexpr size_t kMaxArgs =
      sizeof(fuse_setxattr_in) + XATTR_NAME_MAX + 1 + XATTR_SIZE_MAX + 4096;

  CapturedRequest() = default;
  // Copies carry their own copy of the arguments (a request object copied
  // in tests); a view of a private buffer stays a view.
  CapturedRequest(const CapturedRequest& other) { *this = other; }
  CapturedRequest& operator=(const CapturedRequest& other);

  // Reads the request in `in` once. Returns false if it cannot hold a
  // header (then nothing else is valid). `in_is_private`: `in` is dpfs's
  // own memory, so the arguments are viewed in place, not copied.
  bool capture(std::span<const iovec> in, bool in_is_private);

  // The header, as copied. Nothing in it is checked yet.
  const fuse_in_header& header() const { return header_; }
  // Bytes the tenant sent, header included (the sum of its buffers).
  size_t sent() const { return sent_; }
  // The bytes after the header, up to the header's length (or what was
  // sent, if that is less or the length is below a header), in memory the
  // tenant cannot reach. For WRITE, only the fuse_write_in.
  std::span<const char> args() const { return {args_, args_len_}; }
  // WRITE only: the payload after the fuse_write_in, in place in the
  // tenant's buffers. Empty for every other opcode.
  std::span<const iovec> payload() const { return payload_; }
  size_t payload_length() const { return payload_len_; }
  // A request other than WRITE longer than kMaxArgs: args() holds only
  // its first kMaxArgs bytes.
  bool too_large() const { return too_large_; }

 private:
  fuse_in_header header_{};
  size_t sent_ = 0;
  const char* args_ = nullptr;
  size_t args_len_ = 0;
  std::vector<iovec> payload_;
  size_t payload_len_ = 0;
  bool too_large_ = false;
  std::unique_ptr<char[]> buf_;  // the private copy; args_ points into it
  size_t buf_cap_ = 0;
};

}  // namespace dpfs::fuse
