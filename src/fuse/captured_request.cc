#include "fuse/captured_request.h"

#include <algorithm>
#include <cstring>

#include "util/iov.h"

namespace dpfs::fuse {

CapturedRequest& CapturedRequest::operator=(const CapturedRequest& other) {
  if (this == &other) return *this;
  header_ = other.header_;
  sent_ = other.sent_;
  payload_ = other.payload_;
  payload_len_ = other.payload_len_;
  too_large_ = other.too_large_;
  args_len_ = other.args_len_;
  args_ = other.args_;
  if (other.args_ != nullptr && other.args_ == other.buf_.get()) {
    if (buf_cap_ < other.args_len_) {
      buf_cap_ = other.buf_cap_;
      buf_ = std::make_unique<char[]>(buf_cap_);
    }
    std::memcpy(buf_.get(), other.args_, other.args_len_);
    args_ = buf_.get();
  }
  return *this;
}

bool CapturedRequest::capture(std::span<const iovec> in, bool in_is_private) {
  args_ = nullptr;
  args_len_ = 0;
  payload_.clear();
  payload_len_ = 0;
  too_large_ = false;
  header_ = {};
  sent_ = iov_length(in);

  IovReader reader(in, sent_);
  if (!reader.read(&header_)) return false;
  // From here only header_ is looked at: the tenant's copy may change.
  size_t end = sent_;
  if (header_.len >= sizeof(fuse_in_header) && header_.len < end) end = header_.len;
  size_t args = end - sizeof(fuse_in_header);
  size_t payload = 0;
  if (header_.opcode == FUSE_WRITE && args > sizeof(fuse_write_in)) {
    payload = args - sizeof(fuse_write_in);
    args = sizeof(fuse_write_in);
  } else if (args > kMaxArgs) {
    too_large_ = true;
    args = kMaxArgs;
  }

  if (in_is_private && in.size() == 1) {
    args_ = static_cast<const char*>(in[0].iov_base) + sizeof(fuse_in_header);
    reader.skip(args);
  } else {
    if (buf_cap_ < args) {
      // Whole pages, so that a few sizes of request settle the capacity.
      buf_cap_ = (args + 4095) & ~size_t(4095);
      buf_ = std::make_unique<char[]>(buf_cap_);
    }
    reader.read(buf_.get(), args);
    args_ = buf_.get();
    // The copy is what is used from here: no read of the tenant's buffers
    // may be moved past this point to stand in for a read of the copy.
    asm volatile("" ::: "memory");
  }
  args_len_ = args;
  if (payload != 0) {
    reader.take_iovecs(payload, &payload_);
    payload_len_ = payload;
  }
  return true;
}

}  // namespace dpfs::fuse
