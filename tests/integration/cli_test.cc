// The daemon's command line as an operator meets it: help text, start-up
// errors as one line on stderr with a nonzero exit, configuration files,
// clean unmount on SIGINT/SIGTERM, and the null backend.
#include <sched.h>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (on_tmpfs()) GTEST_SKIP() << "the daemon's command line has no tmpfs equivalent";
    std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    ASSERT_EQ(::access(dpfs_binary().c_str(), X_OK), 0) << dpfs_binary() << ": " << errname(errno);
    mount_ = std::make_unique<Mount>();
  }
  void TearDown() override {
    if (mount_) close_fds_under(mount_->dir());
  }

  // A start-up failure: nonzero exit, within the timeout, and exactly one
  // line on stderr, which must contain every one of `mentions`.
  void expect_one_line_failure(const RunResult& r, const std::vector<std::string>& mentions) {
    EXPECT_FALSE(r.timed_out) << "the daemon did not give up: " << r.describe();
    EXPECT_TRUE(r.exited()) << r.describe();
    EXPECT_NE(r.exit_code(), 0) << r.describe();
    auto lines = lines_of(r.err);
    EXPECT_EQ(lines.size(), 1u) << "expected exactly one line on stderr: " << r.describe();
    for (const auto& m : mentions) {
      EXPECT_NE(r.err.find(m), std::string::npos)
          << "stderr does not mention '" << m << "': " << r.describe();
    }
  }

  std::string write_config(const std::string& name, const std::string& text) {
    std::string p = mount_->base() + "/" + name;
    EXPECT_EQ(write_file(p, text), 0);
    configs_.push_back(p);
    return p;
  }
  ~CliTest() override {
    for (const auto& c : configs_) ::unlink(c.c_str());
  }

  std::unique_ptr<Mount> mount_;
  std::vector<std::string> configs_;
};

void expect_mentions_options(const RunResult& r) {
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  std::string text = r.out + r.err;
  for (const char* opt : {"--backend", "--fuse-mount", "--threads", "--config"}) {
    EXPECT_NE(text.find(opt), std::string::npos)
        << "help does not mention " << opt << ": " << r.describe();
  }
}

TEST_F(CliTest, HelpMentionsOptions) { expect_mentions_options(run({dpfs_binary(), "--help"})); }

TEST_F(CliTest, ServeHelpMentionsOptions) {
  expect_mentions_options(run({dpfs_binary(), "serve", "--help"}));
}

TEST_F(CliTest, MissingMountDirIsOneLine) {
  std::string missing = mount_->base() + "/does-not-exist";
  RunResult r =
      run({dpfs_binary(), "serve", "--backend", "memfs", "--fuse-mount", missing, "--threads", "2"},
          15s);
  expect_one_line_failure(r, {missing});
  EXPECT_FALSE(find_mount(missing)) << "something got mounted";
}

TEST_F(CliTest, AlreadyMountedDirIsOneLine) {
  const std::string& dir = mount_->dir();
  ASSERT_SYS(::mount("tmpfs", dir.c_str(), "tmpfs", 0, "mode=0755"));
  RunResult r = run(
      {dpfs_binary(), "serve", "--backend", "memfs", "--fuse-mount", dir, "--threads", "2"}, 15s);
  auto top = find_mount(dir);
  ASSERT_TRUE(top);
  EXPECT_EQ(top->fstype, "tmpfs") << "the daemon mounted over an existing mount";
  while (find_mount(dir)) {
    if (::umount2(dir.c_str(), MNT_DETACH) != 0) break;
  }
  expect_one_line_failure(r, {dir});
}

TEST_F(CliTest, MissingDevFuseIsOneLine) {
  // In a mount namespace of its own, the daemon sees an empty /dev.
  RunResult r = run({dpfs_binary(), "serve", "--backend", "memfs", "--fuse-mount", mount_->dir(),
                     "--threads", "2"},
                    15s, [] {
                      if (::unshare(CLONE_NEWNS) != 0 ||
                          ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
                          ::mount("tmpfs", "/dev", "tmpfs", 0, "mode=0755") != 0) {
                        dprintf(2, "test setup: cannot hide /dev/fuse: %s\n", strerror(errno));
                        ::_exit(125);
                      }
                    });
  ASSERT_NE(r.exit_code(), 125) << r.describe();
  expect_one_line_failure(r, {"/dev/fuse"});
}

TEST_F(CliTest, UnknownConfigKeyIsNamed) {
  std::string cfg =
      write_config("unknown.toml", "[backend]\ntype = \"memfs\"\nfrobnicate_level = 3\n");
  RunResult r = run({dpfs_binary(), "serve", "--config", cfg, "--fuse-mount", mount_->dir()}, 15s);
  expect_one_line_failure(r, {"frobnicate_level"});
  EXPECT_FALSE(find_mount(mount_->dir()));
  std::string top = write_config("top.toml", "colour = \"blue\"\n");
  r = run({dpfs_binary(), "serve", "--config", top, "--fuse-mount", mount_->dir()}, 15s);
  expect_one_line_failure(r, {"colour"});
}

TEST_F(CliTest, MalformedConfigIsOneLine) {
  std::string cfg = write_config("broken.toml", "[backend\ntype = memfs\n");
  RunResult r = run({dpfs_binary(), "serve", "--config", cfg, "--fuse-mount", mount_->dir()}, 15s);
  expect_one_line_failure(r, {cfg});
  std::string missing = mount_->base() + "/no-such.toml";
  r = run({dpfs_binary(), "serve", "--config", missing, "--fuse-mount", mount_->dir()}, 15s);
  expect_one_line_failure(r, {missing});
}

TEST_F(CliTest, BadOptionValuesAreOneLine) {
  RunResult r = run({dpfs_binary(), "serve", "--backend", "memfs", "--fuse-mount", mount_->dir(),
                     "--threads", "0"},
                    15s);
  expect_one_line_failure(r, {"threads"});
  r = run({dpfs_binary(), "serve", "--backend", "no-such-backend", "--fuse-mount", mount_->dir()},
          15s);
  expect_one_line_failure(r, {"no-such-backend"});
  r = run({dpfs_binary(), "serve", "--no-such-option"}, 15s);
  expect_one_line_failure(r, {"--no-such-option"});
  EXPECT_FALSE(find_mount(mount_->dir()));
}

TEST_F(CliTest, ConfigFileSelectsBackendAndMountPoint) {
  std::string cfg = write_config("full.toml",
                                 "threads = 1\n\n[backend]\ntype = \"memfs\"\n\n"
                                 "[fuse]\nmount = \"" +
                                     mount_->dir() + "\"\n");
  std::string problem = mount_->start_dpfs({"serve", "--config", cfg});
  ASSERT_TRUE(problem.empty()) << problem;
  EXPECT_EQ(write_file(mount_->dir() + "/hello", "world"), 0);
  EXPECT_EQ(read_file(mount_->dir() + "/hello").value_or("<error>"), "world");
  std::string stop = mount_->stop(SIGTERM);
  EXPECT_TRUE(stop.empty()) << stop;
}

// `dpfs stats SOCKET` prints what the running daemon counted.
TEST_F(CliTest, StatsCommandShowsLiveCounts) {
  const std::string socket = mount_->base() + "/stats.sock";
  std::vector<std::string> args = mount_->memfs_args();
  args.insert(args.end(), {"--stats-socket", socket});
  std::string problem = mount_->start_dpfs(args);
  ASSERT_TRUE(problem.empty()) << problem;
  struct stat st;
  ASSERT_SYS(::stat(socket.c_str(), &st));
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "operator-only";
  ASSERT_EQ(write_file(mount_->dir() + "/f", "data"), 0);
  EXPECT_ERRNO(ENOENT, ::stat((mount_->dir() + "/missing").c_str(), &st));

  RunResult r = run({dpfs_binary(), "stats", socket}, 10s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find(mount_->dir() + ": "), std::string::npos) << r.out;
  const size_t lookup = r.out.find("LOOKUP ");
  ASSERT_NE(lookup, std::string::npos) << r.out;
  EXPECT_NE(r.out.find("CREATE "), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("WRITE "), std::string::npos) << r.out;
  // The failed lookup of "missing" is counted as an error.
  const std::string line = r.out.substr(lookup, r.out.find('\n', lookup) - lookup);
  EXPECT_EQ(line.find(" 0 errors"), std::string::npos) << line;

  std::string stop = mount_->stop(SIGTERM);
  EXPECT_TRUE(stop.empty()) << stop;
  EXPECT_ERRNO(ENOENT, ::stat(socket.c_str(), &st)) << "removed on exit";
  expect_one_line_failure(run({dpfs_binary(), "stats", socket}, 10s), {socket, "does not exist"});
}

TEST_F(CliTest, SigintUnmountsCleanly) {
  std::string problem = mount_->start_dpfs(mount_->memfs_args());
  ASSERT_TRUE(problem.empty()) << problem;
  EXPECT_EQ(write_file(mount_->dir() + "/f", "data"), 0);
  std::string stop = mount_->stop(SIGINT);
  EXPECT_TRUE(stop.empty()) << stop;
  EXPECT_FALSE(find_mount(mount_->dir()));
  struct stat st;
  EXPECT_ERRNO(ENOENT, ::stat((mount_->dir() + "/f").c_str(), &st))
      << "the mount point shows the directory beneath again";
}

TEST_F(CliTest, SigtermWhileBusyStillExits) {
  std::string problem = mount_->start_dpfs(mount_->memfs_args());
  ASSERT_TRUE(problem.empty()) << problem;
  // A reader in the middle of its reads when the daemon is told to stop.
  ASSERT_EQ(write_file(mount_->dir() + "/f", pattern(1, 0, 1 << 20)), 0);
  Child reader([&](Child& self) -> std::string {
    if (!read_file(mount_->dir() + "/f")) return "the first read failed";
    self.signal();  // reading now, and going on
    for (int i = 0; i < 100000; ++i) {
      if (!read_file(mount_->dir() + "/f")) return "";  // the mount went away: expected
    }
    return "";
  });
  ASSERT_TRUE(reader.wait()) << reader.join();
  std::string stop = mount_->stop(SIGTERM);
  EXPECT_TRUE(stop.empty()) << stop;
  ::kill(reader.pid(), SIGKILL);
  reader.join();
}

// A request the backend keeps waiting (F_SETLKW on a held lock) must not
// keep the daemon from stopping.
TEST_F(CliTest, SigtermWithBlockedLockWaiter) {
  std::string problem = mount_->start_dpfs(mount_->memfs_args());
  ASSERT_TRUE(problem.empty()) << problem;
  std::string file = mount_->dir() + "/locked";
  ASSERT_EQ(write_file(file, "x"), 0);
  Child holder([&](Child& self) -> std::string {
    int fd = ::open(file.c_str(), O_RDWR);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    if (::fcntl(fd, F_SETLK, &fl) != 0) return "F_SETLK: " + errname(errno);
    self.signal();
    self.wait(30s);
    return "";
  });
  ASSERT_TRUE(holder.wait()) << holder.join();
  Child waiter([&](Child& self) -> std::string {
    int fd = ::open(file.c_str(), O_RDWR);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    self.signal();
    // An error when the daemon goes (the connection ends); never the lock,
    // which the holder still has.
    const int rc = ::fcntl(fd, F_SETLKW, &fl);
    self.signal();  // it returned
    if (rc == 0) return "F_SETLKW got a lock another process holds";
    return "";
  });
  ASSERT_TRUE(waiter.wait());
  // Stopped only once the waiter waits in F_SETLKW.
  ASSERT_TRUE(in_system_call(waiter.pid(), SYS_fcntl, 10s)) << "the waiter never blocked";
  close_fds_under(mount_->dir());
  std::string stop = mount_->stop(SIGTERM);
  EXPECT_TRUE(stop.empty()) << stop;
  // Its F_SETLKW ended with the daemon (an error: the connection is gone).
  const bool ended = waiter.wait(10s);
  EXPECT_TRUE(ended) << "F_SETLKW still waits after the daemon stopped";
  if (!ended) ::kill(waiter.pid(), SIGKILL);
  EXPECT_EQ(waiter.join(), "");
  holder.signal();
  ::kill(holder.pid(), SIGKILL);
  holder.join();
}

TEST_F(CliTest, NullBackendServesZeros) {
  std::string problem = mount_->start_dpfs(
      {"serve", "--backend", "null", "--fuse-mount", mount_->dir(), "--threads", "2"});
  ASSERT_TRUE(problem.empty()) << problem;
  // The largest regular file in the root.
  std::string big;
  off_t size = 0;
  for (const auto& n : list_dir(mount_->dir())) {
    struct stat st;
    std::string p = mount_->dir() + "/" + n;
    if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= size) {
      big = p;
      size = st.st_size;
    }
  }
  ASSERT_FALSE(big.empty()) << "the null backend lists no regular file";
  EXPECT_GE(size, off_t(1) << 30) << big << " is not large";
  int fd = ::open(big.c_str(), O_RDONLY);
  ASSERT_SYS(fd);
  for (off_t off : {off_t(0), size / 2 + 12345, size - (off_t(1) << 20)}) {
    std::string buf(256 * 1024, 'x');
    ssize_t n = pread_all(fd, buf.data(), buf.size(), off);
    EXPECT_EQ(n, static_cast<ssize_t>(buf.size())) << "pread at " << off << ": " << errname(errno);
    EXPECT_EQ(check_zero(buf, uint64_t(off)), "");
  }
  char c;
  EXPECT_EQ(::pread(fd, &c, 1, size), 0) << "at EOF";
  ::close(fd);
  std::string stop = mount_->stop(SIGTERM);
  EXPECT_TRUE(stop.empty()) << stop;
}

}  // namespace
}  // namespace dpfs::itest
