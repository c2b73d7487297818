// Micro-benchmarks of the framework's per-request cost: a request decoded,
// dispatched to the null backend and its reply encoded, with no transport.
// Run: build/dpfs_session_bench (Release build).
#include <benchmark/benchmark.h>
#include <linux/fuse.h>
#include <spdlog/spdlog.h>

#include <cstring>
#include <vector>

#include "backend/null/null.h"
#include "fuse/request.h"
#include "fuse/session.h"

namespace {

class BenchRequest final : public dpfs::fuse::Request {
 public:
  void complete(size_t len) override { reply_len = len; }
  size_t reply_len = 0;
};

// A request's bytes with its header filled in.
template <typename Arg>
std::vector<uint8_t> request(uint32_t opcode, uint64_t nodeid, const Arg& arg) {
  fuse_in_header h{};
  h.len = uint32_t(sizeof(h) + sizeof(arg));
  h.opcode = opcode;
  h.nodeid = nodeid;
  h.unique = 2;
  std::vector<uint8_t> bytes(h.len);
  std::memcpy(bytes.data(), &h, sizeof(h));
  std::memcpy(bytes.data() + sizeof(h), &arg, sizeof(arg));
  return bytes;
}

struct World {
  World() : backend(dpfs::NullOptions{}), session(backend, {}) {
    spdlog::set_level(spdlog::level::warn);
    fuse_init_in init{};
    init.major = 7;
    init.minor = FUSE_KERNEL_MINOR_VERSION;
    init.flags = 0xffffffff;
    run(request(FUSE_INIT, 0, init));
  }
  size_t run(std::vector<uint8_t> bytes) {
    iovec in{bytes.data(), bytes.size()};
    iovec out{reply.data(), reply.size()};
    req.in = {&in, 1};
    req.out = {&out, 1};
    session.handle(req);
    return req.reply_len;
  }
  dpfs::NullBackend backend;
  dpfs::fuse::FuseSession session;
  BenchRequest req;
  std::vector<uint8_t> reply = std::vector<uint8_t>(sizeof(fuse_out_header) + (1 << 20));
};

void BM_Getattr(benchmark::State& state) {
  World w;
  std::vector<uint8_t> bytes = request(FUSE_GETATTR, dpfs::kRootIno, fuse_getattr_in{});
  iovec in{bytes.data(), bytes.size()};
  iovec out{w.reply.data(), w.reply.size()};
  w.req.in = {&in, 1};
  w.req.out = {&out, 1};
  for (auto _ : state) {
    w.session.handle(w.req);
    benchmark::DoNotOptimize(w.req.reply_len);
  }
  if (w.req.reply_len != sizeof(fuse_out_header) + sizeof(fuse_attr_out)) {
    state.SkipWithError("GETATTR did not answer an attr");
  }
}
BENCHMARK(BM_Getattr);

void BM_Read(benchmark::State& state) {
  World w;
  fuse_read_in arg{};
  arg.size = uint32_t(state.range(0));
  std::vector<uint8_t> bytes = request(FUSE_READ, 2, arg);
  iovec in{bytes.data(), bytes.size()};
  iovec out{w.reply.data(), w.reply.size()};
  w.req.in = {&in, 1};
  w.req.out = {&out, 1};
  for (auto _ : state) {
    w.session.handle(w.req);
    benchmark::DoNotOptimize(w.req.reply_len);
  }
  if (w.req.reply_len != sizeof(fuse_out_header) + arg.size) {
    state.SkipWithError("READ did not answer the bytes asked");
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Read)->Arg(4096)->Arg(1 << 20);

}  // namespace

BENCHMARK_MAIN();
