// libFuzzer target: arbitrary bytes as FUSE requests into a session backed by
// memfs, split into buffers at fuzzer-chosen points, with a fuzzer-chosen
// reply buffer size. Any crash, sanitizer report or leak is a finding; so is
// a request that does not complete exactly once.
#include <linux/fuse.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "backend/memfs/memfs.h"
#include "fuse/request.h"
#include "fuse/session.h"

namespace {

class FuzzRequest final : public dpfs::fuse::Request {
 public:
  void complete(size_t reply_len) override {
    ++completions;
    if (reply_len > dpfs::iov_length(out)) std::abort();
  }
  int completions = 0;
};

struct World {
  World() : memfs(dpfs::MemfsOptions{1 << 24, 4096, 1.0, 1.0}), session(memfs, {}) {
    spdlog::set_level(spdlog::level::off);
    // Start initialized so the fuzzer reaches every opcode.
    fuse_in_header h{};
    fuse_init_in in{};
    h.len = sizeof(h) + sizeof(in);
    h.opcode = FUSE_INIT;
    in.major = 7;
    in.minor = FUSE_KERNEL_MINOR_VERSION;
    in.flags = 0xffffffff;
    in.flags2 = 0xffffffff;
    std::vector<uint8_t> bytes(h.len);
    std::memcpy(bytes.data(), &h, sizeof(h));
    std::memcpy(bytes.data() + sizeof(h), &in, sizeof(in));
    run(bytes.data(), bytes.size(), {}, 1 << 16);
  }

  void run(const uint8_t* data, size_t size, const std::vector<size_t>& splits, size_t out_size) {
    std::vector<uint8_t> in(data, data + size);
    std::vector<uint8_t> out(out_size);
    std::vector<iovec> in_iov, out_iov;
    size_t start = 0;
    for (size_t at : splits) {
      if (at <= start || at >= size) continue;
      in_iov.push_back({in.data() + start, at - start});
      start = at;
    }
    in_iov.push_back({in.data() + start, size - start});
    // Reply buffers split in two as a virtqueue could give them.
    const size_t half = out_size / 3;
    out_iov.push_back({out.data(), half});
    out_iov.push_back({out.data() + half, out_size - half});
    FuzzRequest req;
    req.in = in_iov;
    req.out = out_iov;
    session.handle(req);
    // SETLKW may legitimately stay pending; everything else completes now.
    if (req.completions > 1) std::abort();
    if (req.completions == 0) {
      fuse_in_header h{};
      if (size >= sizeof(h)) std::memcpy(&h, data, sizeof(h));
      if (h.opcode != FUSE_SETLKW) std::abort();
      memfs.interrupt(h.unique);  // answer it before its buffers go away
      if (req.completions != 1) std::abort();
    }
  }

  dpfs::Memfs memfs;
  dpfs::fuse::FuseSession session;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* world = new World();
  // First 4 bytes choose the layout: two split points and the reply size.
  if (size < 4) return 0;
  const std::vector<size_t> splits = {size_t(data[0]), size_t(data[0]) + size_t(data[1])};
  const size_t out_size = size_t(data[2]) << (data[3] & 15);
  world->run(data + 4, size - 4, splits, out_size);
  return 0;
}
