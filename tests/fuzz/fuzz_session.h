// The request side shared by the session fuzz targets: FUSE requests built
// from fuzzer bytes and handed to a FuseSession over some backend. Headers
// are mostly well-formed (so the fuzzer reaches every opcode's decoder and
// the backend behind it) and sometimes lie about their length; request bytes
// are split into buffers at fuzzer-chosen points and replies go into
// fuzzer-sized buffers, as a virtqueue could give them. A crash, a sanitizer
// report, a reply longer than its buffer or a request not completed exactly
// once is a finding, and so is a reply whose header is not one (its length
// not the reply's, its error neither 0 nor an errno). Backends must answer
// synchronously (as memfs does, and passthrough without io_uring).
#pragma once

#include <linux/fuse.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/backend.h"
#include "fuse/request.h"
#include "fuse/session.h"
#include "fuzz_input.h"
#include "util/iov.h"

namespace dpfs::fuzz {

class FuzzRequest final : public dpfs::fuse::Request {
 public:
  void complete(size_t reply_len) override {
    if (reply_len > dpfs::iov_length(out)) std::abort();
    if (reply_len >= sizeof(fuse_out_header)) {
      fuse_out_header h{};
      dpfs::iov_copy_out(out, &h, sizeof(h));
      if (h.len != reply_len || h.error > 0 || h.error <= -4096) std::abort();
    }
    completions.fetch_add(1, std::memory_order_release);
  }
  // Atomic: a backend may answer on a thread of its own (kv_reply_fuzz).
  std::atomic<int> completions{0};
};

// Reply space, reused: 1 MiB of payload and a header.
inline std::vector<uint8_t>& reply_buffer() {
  static std::vector<uint8_t> buf((1 << 20) + 64);
  return buf;
}

// Builds one request from the input and hands it to the session.
// `backend` is what the session serves (to answer a waiting SETLKW).
inline void run_one(dpfs::fuse::FuseSession& session, dpfs::Backend& backend, Input& in,
                    uint64_t unique) {
  const uint8_t flags = in.byte();
  const uint8_t opcode = in.byte();
  const uint8_t node = in.byte();
  const uint8_t split0 = in.byte(), split1 = in.byte();
  const uint8_t out_shift = in.byte();
  size_t args_len = std::min<size_t>(in.u16(), in.n);

  fuse_in_header h{};
  h.opcode = (flags & 0x80) ? uint32_t(opcode) << 8 : opcode % 54;
  h.nodeid = (flags & 0x40) ? uint64_t(node) << 40 : node % 16;
  h.unique = unique;
  h.uid = (flags & 0x20) ? 1000 : 0;
  h.gid = (flags & 0x20) ? 1000 : 0;
  h.pid = 1;
  h.len = uint32_t(sizeof(h) + args_len);
  if (flags & 0x10) h.len = uint32_t(split0) * 3;  // a lying length
  if (flags & 0x08) h.total_extlen = split1;

  std::vector<uint8_t> bytes(sizeof(h) + args_len);
  std::memcpy(bytes.data(), &h, sizeof(h));
  std::memcpy(bytes.data() + sizeof(h), in.p, args_len);
  in.p += args_len;
  in.n -= args_len;
  if ((flags & 0x07) == 7 && bytes.size() > 4) bytes.resize(bytes.size() / 2);  // truncated

  std::vector<iovec> in_iov;
  size_t at0 = std::min<size_t>(split0, bytes.size());
  size_t at1 = std::min<size_t>(at0 + split1, bytes.size());
  in_iov.push_back({bytes.data(), at0});
  in_iov.push_back({bytes.data() + at0, at1 - at0});
  in_iov.push_back({bytes.data() + at1, bytes.size() - at1});

  std::vector<uint8_t>& reply = reply_buffer();
  const size_t out_size = std::min(reply.size(), size_t(16) << (out_shift % 17));
  const size_t cut = out_size / 3;
  std::vector<iovec> out_iov = {{reply.data(), cut}, {reply.data() + cut, out_size - cut}};

  FuzzRequest req;
  req.in = in_iov;
  req.out = out_iov;
  session.handle(req);
  if (req.completions > 1) std::abort();
  if (req.completions == 0) {
    // Only a SETLKW waiting for a lock may stay pending; answer it before its
    // buffers go away.
    if (h.opcode != FUSE_SETLKW) std::abort();
    backend.interrupt(unique);
    if (req.completions != 1) std::abort();
  }
}

// A well-formed INIT (FUSE_KERNEL_MINOR_VERSION, every flag in `flags` and
// `flags2` offered), answered at once.
inline void init_session(dpfs::fuse::FuseSession& session, uint32_t flags = 0xffffffff,
                         uint32_t flags2 = 0xffffffff) {
  fuse_init_in init{};
  init.major = 7;
  init.minor = FUSE_KERNEL_MINOR_VERSION;
  init.flags = flags;
  init.flags2 = flags2;
  std::vector<uint8_t> init_req(sizeof(fuse_in_header) + sizeof(init));
  fuse_in_header h{};
  h.len = uint32_t(init_req.size());
  h.opcode = FUSE_INIT;
  std::memcpy(init_req.data(), &h, sizeof(h));
  std::memcpy(init_req.data() + sizeof(h), &init, sizeof(init));
  FuzzRequest req;
  iovec in_iov{init_req.data(), init_req.size()};
  iovec out_iov{reply_buffer().data(), 4096};
  req.in = {&in_iov, 1};
  req.out = {&out_iov, 1};
  session.handle(req);
  if (req.completions != 1) std::abort();
}

// Runs one input: a well-formed INIT, then up to 64 requests.
inline void run_input(dpfs::fuse::FuseSession& session, dpfs::Backend& backend, const uint8_t* data,
                      size_t size) {
  // Every input starts with a well-formed INIT so the fuzzer reaches the
  // other opcodes; it may send its own INITs too.
  init_session(session);
  Input in{data, size};
  uint64_t unique = 2;
  for (int i = 0; i < 64 && in.n >= 8; ++i) run_one(session, backend, in, unique++);
}

}  // namespace dpfs::fuzz
