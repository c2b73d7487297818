// A tenant that opens everything it can gets EMFILE, and its neighbour keeps
// working. One daemon, its limit lowered with prlimit(1), serves two
// passthrough tenants: a FUSE mount (tenant A, this test opening files on
// it) and a vhost-user device (tenant B, driven by dpfs-bench). With
// --processes single the process's limit is divided between them; with
// per-device processes (the default) each has a process, and a limit, of
// its own.
#include <sys/resource.h>

#include "mount_fixture.h"

#ifndef DPFS_BENCH
#error "DPFS_BENCH must name the dpfs-bench binary"
#endif

namespace dpfs::itest {
namespace {

constexpr const char* kPrlimit = "/usr/bin/prlimit";
// Low enough to exhaust quickly, high enough for the reserve (256 + 256 for
// each of the two endpoints) and two shares of 640.
constexpr int kLimit = 2048;

// The --processes value, what the daemon logs of tenant A's descriptors,
// and A's share.
struct Layout {
  const char* processes;
  const char* plan;
  size_t share;
};

class FdBudgetTest : public ::testing::TestWithParam<Layout> {
 protected:
  void SetUp() override {
    std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    ASSERT_EQ(::access(kPrlimit, X_OK), 0) << kPrlimit << " is missing (util-linux)";
    // This process holds what tenant A opens: it needs more than the daemon.
    rlimit lim{};
    ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &lim), 0);
    ASSERT_GT(lim.rlim_cur, rlim_t(2 * kLimit)) << "the test itself needs descriptors";
    a_dir_ = mount_.base() + "/a";
    b_dir_ = mount_.base() + "/b";
    socket_ = mount_.base() + "/b.sock";
    ASSERT_EQ(::mkdir(a_dir_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir(b_dir_.c_str(), 0755), 0);
    const std::string config = mount_.base() + "/dpfs.toml";
    std::ofstream(config) << "[[device]]\nsocket = \"" << socket_
                          << "\"\ntag = \"b\"\n[device.backend]\ntype = \"passthrough:" << b_dir_
                          << "\"\n";
    // passthrough.max_fds so high that its own bound (ENFILE) is never
    // reached, and its attempt to raise the hard limit to fit it fails (past
    // nr_open): the process limit is what a greedy tenant meets.
    mount_.set_launcher(
        {kPrlimit, "--nofile=" + std::to_string(kLimit) + ":" + std::to_string(kLimit), "--"});
    std::string started =
        mount_.start_dpfs({"serve", "--config", config, "--backend", "passthrough:" + a_dir_,
                           "--fuse-mount", mount_.dir(), "--passthrough-max-fds", "16777216",
                           "--passthrough-io-uring", "off", "--processes", GetParam().processes});
    ASSERT_TRUE(started.empty()) << started;
    // The device's socket is bound before anything is mounted.
    struct stat st {};
    ASSERT_EQ(::stat(socket_.c_str(), &st), 0) << mount_.log();
  }

  void TearDown() override {
    for (int fd : held_) ::close(fd);
    std::string stopped = mount_.stop(SIGTERM, 20s);
    EXPECT_TRUE(stopped.empty()) << stopped;
  }

  // Tenant B's work: creates, setattrs, releases and unlinks files through
  // its device. "" or what failed.
  std::string tenant_b_works() {
    const RunResult r = run({DPFS_BENCH, "--socket", socket_, "--workload", "metadata",
                             "--duration", "0.3", "--warmup", "0", "--files", "20", "--json"},
                            30s);
    if (r.exit_code() != 0) return "dpfs-bench: " + r.describe();
    // --json prints one object: "errors": N.
    const size_t at = r.out.find("\"errors\":");
    if (at == std::string::npos) return "no error count in: " + r.out;
    const size_t value = r.out.find_first_not_of(' ', at + 9);
    if (value == std::string::npos || r.out[value] != '0' || std::isdigit(r.out[value + 1])) {
      return "tenant B's requests failed: " + r.out;
    }
    return "";
  }

  Mount mount_;
  std::string a_dir_, b_dir_, socket_;
  std::vector<int> held_;
};

TEST_P(FdBudgetTest, GreedyTenantGetsEmfileItsNeighbourDoesNot) {
  ASSERT_EQ(tenant_b_works(), "") << mount_.log();
  // Tenant A creates files and keeps every one open, until dpfs refuses.
  int error = 0;
  for (int i = 0;; ++i) {
    const std::string path = mount_.dir() + "/f" + std::to_string(i);
    const int fd = ::open(path.c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) {
      error = errno;
      break;
    }
    held_.push_back(fd);
    ASSERT_LT(i, 4 * kLimit) << "tenant A never ran out";
  }
  EXPECT_EQ(error, EMFILE) << errname(error);
  // Its share: what the reserve leaves (halved in one process; the log
  // says so).
  EXPECT_NE(mount_.log().find(GetParam().plan), std::string::npos) << mount_.log();
  EXPECT_GE(held_.size(), GetParam().share - 40);
  EXPECT_LE(held_.size(), GetParam().share);

  // Tenant B, on the same daemon, is not affected.
  EXPECT_EQ(tenant_b_works(), "") << mount_.log();

  // Tenant A gets a descriptor back when it closes one: once the kernel's
  // RELEASE (sent after close(2) returns) is served.
  ::close(held_.back());
  held_.pop_back();
  int fd = -1;
  for (auto deadline = std::chrono::steady_clock::now() + 10s;
       fd < 0 && std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(10ms)) {
    fd = ::open((mount_.dir() + "/again").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) {
      ASSERT_EQ(errno, EMFILE) << errname(errno);
    }
  }
  EXPECT_GE(fd, 0) << "the released descriptor never came back";
  if (fd >= 0) held_.push_back(fd);
}

INSTANTIATE_TEST_SUITE_P(
    Processes, FdBudgetTest,
    ::testing::Values(
        Layout{"single", "descriptors: limit 2048, 768 kept for dpfs, 640 for each of 2", 640},
        Layout{"per-device", "descriptors: limit 2048, 512 kept for dpfs, 1536 for each of 1 ",
               1536}),
    [](const auto& info) { return info.param.processes[0] == 's' ? "Single" : "PerDevice"; });

}  // namespace
}  // namespace dpfs::itest
