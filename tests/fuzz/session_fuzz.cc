// libFuzzer target: sequences of FUSE requests, built from fuzzer bytes
// (fuzz_session.h), into a session backed by memfs.
#include <spdlog/spdlog.h>

#include "backend/memfs/memfs.h"
#include "fuzz_session.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  dpfs::Memfs memfs(dpfs::MemfsOptions{1 << 22, 256, 1.0, 1.0});
  dpfs::fuse::FuseSession session(memfs, {});
  dpfs::fuzz::run_input(session, memfs, data, size);
  return 0;
}
