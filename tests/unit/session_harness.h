// Drives a FuseSession with hand-built requests, as a transport would.
#pragma once

#include <linux/fuse.h>

#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "backend/backend.h"
#include "fuse/request.h"
#include "fuse/session.h"

namespace dpfs::testing {

// A request whose bytes live in test-owned buffers. `in` may be split into
// several buffers at chosen offsets, as a virtqueue chain could split it.
class TestRequest final : public fuse::Request {
 public:
  explicit TestRequest(std::vector<uint8_t> bytes, size_t out_size = 1 << 21,
                       std::vector<size_t> splits = {})
      : bytes_(std::move(bytes)), out_buf_(out_size, 0xee) {
    size_t start = 0;
    for (size_t at : splits) {
      in_iov_.push_back({bytes_.data() + start, at - start});
      start = at;
    }
    in_iov_.push_back({bytes_.data() + start, bytes_.size() - start});
    out_iov_.push_back({out_buf_.data(), out_buf_.size()});
    in = in_iov_;
    out = out_iov_;
  }

  void complete(size_t reply_len) override {
    ++completions;
    this->reply_len = reply_len;
  }

  const fuse_out_header& header() const {
    return *reinterpret_cast<const fuse_out_header*>(out_buf_.data());
  }
  int error() const { return header().error; }
  template <typename T>
  const T& payload() const {
    return *reinterpret_cast<const T*>(out_buf_.data() + sizeof(fuse_out_header));
  }
  std::vector<uint8_t> reply_bytes() const {
    return {out_buf_.begin(), out_buf_.begin() + long(reply_len)};
  }
  const uint8_t* reply_data() const { return out_buf_.data() + sizeof(fuse_out_header); }

  int completions = 0;
  size_t reply_len = 0;

 private:
  std::vector<uint8_t> bytes_;
  std::vector<uint8_t> out_buf_;
  std::vector<iovec> in_iov_;
  std::vector<iovec> out_iov_;
};

// Builds request bytes: header, then arguments appended in order. The
// header's len is filled in by bytes().
class RequestBuilder {
 public:
  RequestBuilder(uint32_t opcode, uint64_t nodeid = 1, uint64_t unique = 7) {
    hdr_.opcode = opcode;
    hdr_.nodeid = nodeid;
    hdr_.unique = unique;
    hdr_.uid = 1000;
    hdr_.gid = 100;
    hdr_.pid = 4242;
  }
  template <typename T>
  RequestBuilder& arg(const T& v) {
    const auto* p = reinterpret_cast<const uint8_t*>(&v);
    args_.insert(args_.end(), p, p + sizeof(T));
    return *this;
  }
  RequestBuilder& raw(std::string_view s) {
    args_.insert(args_.end(), s.begin(), s.end());
    return *this;
  }
  RequestBuilder& name(std::string_view s) {
    raw(s);
    args_.push_back(0);
    return *this;
  }
  std::vector<uint8_t> bytes() const {
    fuse_in_header h = hdr_;
    h.len = uint32_t(sizeof(h) + args_.size());
    std::vector<uint8_t> out(reinterpret_cast<const uint8_t*>(&h),
                             reinterpret_cast<const uint8_t*>(&h) + sizeof(h));
    out.insert(out.end(), args_.begin(), args_.end());
    return out;
  }
  fuse_in_header& header() { return hdr_; }

 private:
  fuse_in_header hdr_{};
  std::vector<uint8_t> args_;
};

inline std::vector<uint8_t> init_request(uint32_t minor = FUSE_KERNEL_MINOR_VERSION,
                                         uint64_t flags = ~0ull) {
  fuse_init_in in{};
  in.major = 7;
  in.minor = minor;
  in.max_readahead = 128 * 1024;
  in.flags = uint32_t(flags) | FUSE_INIT_EXT;
  in.flags2 = uint32_t(flags >> 32);
  return RequestBuilder(FUSE_INIT, 0, 1).arg(in).bytes();
}

}  // namespace dpfs::testing
