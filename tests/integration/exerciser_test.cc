// dpfs-exerciser (tools/exerciser.cc) on every configuration: random reads,
// writes, truncates, holes, fallocate, copy_file_range, mapped reads and
// writes and reopens, every byte checked against a model of the file.
//
// A failure prints the exerciser's output: the last operations, the first
// bad offset, expected and actual bytes. Rerun it by hand with the same seed
// (`dpfs-exerciser -N ops -S seed FILE`) on a mount to reproduce it.
#include "mount_fixture.h"

#ifndef DPFS_EXERCISER
#error "DPFS_EXERCISER must name the dpfs-exerciser binary"
#endif

namespace dpfs::itest {
namespace {

class ExerciserTest : public MountTest {
 protected:
  // A run takes seconds on memfs (about 7 s for 100000 ops on two cores);
  // the watchdog is for hangs.
  int timeout_seconds() const override { return 400; }

  // Runs the exerciser on `file` in this test's directory; it must exit 0
  // and end with its success line.
  void exercise(const std::string& file, uint64_t ops, uint64_t seed,
                const std::vector<std::string>& flags = {}) {
    std::vector<std::string> args{DPFS_EXERCISER, "-N", std::to_string(ops), "-S",
                                  std::to_string(seed)};
    args.insert(args.end(), flags.begin(), flags.end());
    args.push_back(path(file));
    const RunResult r = run(args, std::chrono::seconds(timeout_seconds() - 20));
    ASSERT_FALSE(r.timed_out) << "the exerciser did not finish: " << r.describe();
    ASSERT_EQ(r.exit_code(), 0) << r.describe();
    const auto lines = lines_of(r.out);
    ASSERT_FALSE(lines.empty()) << r.describe();
    EXPECT_EQ(lines.back(), std::to_string(ops) + " ops, 0 failures") << r.describe();
  }
};

// As many operations as the configuration asks (backends.h: 100000 where an
// operation costs no round trip).
TEST_P(ExerciserTest, ManyRandomOps) { exercise("file", backend().exerciser_ops, 1); }

// Without mappings every operation is a plain system call, and a different
// seed gives a different sequence.
TEST_P(ExerciserTest, NoMmapOtherSeed) {
  exercise("file", backend().exerciser_ops, 4242, {"--no-mmap"});
}

DPFS_CONFORMANCE_SUITE(ExerciserTest);

}  // namespace
}  // namespace dpfs::itest
