// FUSE over io_uring through the kernel: a daemon with --fuse-io-uring on
// serves real file operations from every CPU's queue, including replies
// made on other threads (a lock released by another process, an INTERRUPT
// that arrives by read(2)), and its statistics show that the requests came
// through the ring. With the fuse module's enable_uring off, auto serves by
// read/write and says why, and on refuses to start, saying what to fix.
//
// The tests set /sys/module/fuse/parameters/enable_uring themselves (root)
// and put back what they found. They skip, saying so, on a kernel whose
// fuse module has no such parameter (before 6.14, or built without
// CONFIG_FUSE_IO_URING).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/file.h>
#include <sys/xattr.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

constexpr const char* kEnableUring = "/sys/module/fuse/parameters/enable_uring";

// Sets enable_uring for the scope of a test and restores it.
class EnableUring {
 public:
  explicit EnableUring(bool on) {
    std::ifstream in(kEnableUring);
    if (!in) return;
    in >> saved_;
    present_ = true;
    ok_ = write(on ? "1" : "0");
  }
  ~EnableUring() {
    if (present_) write(saved_ == "Y" || saved_ == "1" ? "1" : "0");
  }
  bool present() const { return present_; }
  bool ok() const { return ok_; }

 private:
  static bool write(const char* value) {
    std::ofstream out(kEnableUring);
    out << value;
    out.flush();
    return bool(out);
  }
  std::string saved_;
  bool present_ = false;
  bool ok_ = false;
};

// The transport's statistics line after SIGUSR1 ("fuse transport: io_uring
// on (...): N requests through the ring, M by read/write").
struct TransportStats {
  long long ring = -1;
  long long read_write = -1;
  long long foreign = -1;  // ring replies made on other threads
  std::string line;
};
TransportStats transport_stats(Mount& m) {
  const std::string key = "fuse transport: io_uring ";
  const size_t before = m.log().size();
  ::kill(m.pid(), SIGUSR1);
  for (int i = 0; i < 500; ++i) {
    const std::string log = m.log();
    const size_t at = log.rfind(key);
    if (at != std::string::npos && at >= before) {
      TransportStats s;
      s.line = log.substr(at, log.find('\n', at) - at);
      const size_t counts = s.line.find(" requests through the ring");
      const size_t colon = counts == std::string::npos ? 0 : s.line.rfind(": ", counts) + 2;
      if (std::sscanf(s.line.c_str() + colon,
                      "%lld requests through the ring, %lld by read/write, %lld ring replies",
                      &s.ring, &s.read_write, &s.foreign) == 3) {
        return s;
      }
    }
    std::this_thread::sleep_for(10ms);
  }
  ADD_FAILURE() << "no transport statistics in the log 5 s after SIGUSR1:\n" << m.log();
  return {};
}

std::vector<std::string> serve_args(const Mount& m, const std::string& mode) {
  return {"serve", "--backend",       "memfs", "--fuse-mount", m.dir(), "--threads",
          "2",     "--fuse-io-uring", mode};
}

// Runs `f` on a thread pinned to `cpu`: the kernel puts a request on the
// queue of the CPU its sender runs on.
template <typename F>
void on_cpu(unsigned cpu, F&& f) {
  std::thread t([&] {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    ::sched_setaffinity(0, sizeof(set), &set);
    f();
  });
  t.join();
}

unsigned cpus() { return std::max(1u, std::thread::hardware_concurrency()); }

// Creates, writes, reads back, lists, renames, links, stats and removes
// files under `dir`; returns "" or what went wrong.
std::string exercise(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0) return "mkdir " + dir + ": " + errname(errno);
  const std::string data = pattern(1, 0, 300 * 1024);
  const std::string file = dir + "/file";
  if (write_file(file, data) != 0) return "write " + file + ": " + errname(errno);
  const std::optional<std::string> back = read_file(file);
  if (!back) return "read " + file + ": " + errname(errno);
  if (const std::string bad = check_pattern(*back, 1, 0);
      !bad.empty() || back->size() != data.size()) {
    return "read back " + file + ": " + bad;
  }
  for (int i = 0; i < 20; ++i) {
    const std::string name = dir + "/f" + std::to_string(i);
    if (write_file(name, "x" + std::to_string(i)) != 0) return "create " + name;
  }
  if (list_dir(dir).size() != 21) return "readdir " + dir + ": expected 21 entries";
  if (::rename(file.c_str(), (dir + "/renamed").c_str()) != 0) return "rename: " + errname(errno);
  if (::symlink("renamed", (dir + "/link").c_str()) != 0) return "symlink: " + errname(errno);
  char target[64] = {};
  if (::readlink((dir + "/link").c_str(), target, sizeof(target) - 1) != 7) {
    return "readlink: " + errname(errno);
  }
  struct stat st {};
  if (::stat((dir + "/link").c_str(), &st) != 0 || size_t(st.st_size) != data.size()) {
    return "stat through the link: wrong size or " + errname(errno);
  }
  if (::setxattr((dir + "/renamed").c_str(), "user.k", "v", 1, 0) != 0) {
    return "setxattr: " + errname(errno);
  }
  char value[8] = {};
  if (::getxattr((dir + "/renamed").c_str(), "user.k", value, sizeof(value)) != 1 ||
      value[0] != 'v') {
    return "getxattr: " + errname(errno);
  }
  for (const std::string& name : list_dir(dir)) {
    if (::unlink((dir + "/" + name).c_str()) != 0) return "unlink " + name + ": " + errname(errno);
  }
  if (::rmdir(dir.c_str()) != 0) return "rmdir: " + errname(errno);
  return "";
}

class FuseUringTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (const std::string problem = environment_problem(); !problem.empty()) {
      FAIL() << problem;
    }
    if (!std::ifstream(kEnableUring)) {
      GTEST_SKIP() << "this kernel's fuse module has no " << kEnableUring
                   << " (FUSE over io_uring needs Linux 6.14+ with CONFIG_FUSE_IO_URING)";
    }
  }
};

TEST_F(FuseUringTest, ServesFileOperationsThroughTheRing) {
  EnableUring enable(true);
  ASSERT_TRUE(enable.ok()) << "cannot write 1 to " << kEnableUring;
  Mount m;
  ASSERT_EQ(m.start_dpfs(serve_args(m, "on")), "");

  // From every CPU, so that every queue (and ring thread) serves some.
  for (unsigned cpu = 0; cpu < cpus(); ++cpu) {
    std::string problem;
    on_cpu(cpu, [&] { problem = exercise(m.dir() + "/cpu" + std::to_string(cpu)); });
    EXPECT_EQ(problem, "") << "on CPU " << cpu;
  }
  // Many requests at once: more than a queue has entries.
  {
    ASSERT_EQ(write_file(m.dir() + "/shared", pattern(2, 0, 64 * 1024)), 0);
    std::atomic<int> failures{0};
    std::vector<std::thread> readers;
    for (int t = 0; t < 48; ++t) {
      readers.emplace_back([&] {
        for (int i = 0; i < 20; ++i) {
          Fd fd(::open((m.dir() + "/shared").c_str(), O_RDONLY));
          std::string buf(4096, '\0');
          if (fd.get() < 0 ||
              pread_all(fd.get(), buf.data(), buf.size(), (i % 16) * 4096) != 4096 ||
              !check_pattern(buf, 2, (i % 16) * 4096).empty()) {
            failures.fetch_add(1);
          }
        }
      });
    }
    for (auto& r : readers) r.join();
    EXPECT_EQ(failures.load(), 0);
  }

  const TransportStats s = transport_stats(m);
  // Every request after INIT goes through the ring: LOOKUPs, CREATEs,
  // WRITEs, READs... hundreds of them; by read(2) only INIT and FORGETs.
  EXPECT_GT(s.ring, 300) << s.line;
  EXPECT_LT(s.read_write, s.ring) << s.line;
  // Logged once INIT has set the rings up (possibly after the mount
  // answered its first request: the kernel waits for the rings, not the log).
  EXPECT_NE(m.log().find("FUSE over io_uring: on (fuse.io_uring = on)"), std::string::npos)
      << m.log();
  EXPECT_EQ(m.stop(), "");
}

// A reply made on another thread than the ring's: a waiting lock is granted
// when another process releases it (its UNLOCK handled wherever that
// process's queue is served), and a waiting lock interrupted by a signal is
// answered after an INTERRUPT that came by read(2).
TEST_F(FuseUringTest, AnswersFromOtherThreads) {
  EnableUring enable(true);
  ASSERT_TRUE(enable.ok());
  Mount m;
  ASSERT_EQ(m.start_dpfs(serve_args(m, "on")), "");
  const std::string file = m.dir() + "/lock";
  ASSERT_EQ(write_file(file, "x"), 0);

  // Holder on the last CPU, waiter on CPU 0: different queues, different
  // ring threads (with two or more CPUs).
  Fd holder(::open(file.c_str(), O_RDWR));
  ASSERT_GE(holder.get(), 0);
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  on_cpu(cpus() - 1, [&] { ASSERT_EQ(::fcntl(holder.get(), F_SETLK, &lk), 0) << errname(errno); });

  Child waiter([&](Child&) -> std::string {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(0, &set);
    ::sched_setaffinity(0, sizeof(set), &set);
    const int fd = ::open(file.c_str(), O_RDWR);
    struct flock w {};
    w.l_type = F_WRLCK;
    w.l_whence = SEEK_SET;
    if (fd < 0 || ::fcntl(fd, F_SETLKW, &w) != 0) return "F_SETLKW: " + errname(errno);
    return "";
  });
  std::this_thread::sleep_for(200ms);
  lk.l_type = F_UNLCK;
  on_cpu(cpus() - 1, [&] { ASSERT_EQ(::fcntl(holder.get(), F_SETLK, &lk), 0) << errname(errno); });
  EXPECT_EQ(waiter.join(), "") << "the waiting lock was not granted after the release";

  // Held again; a waiter interrupted by a signal gets EINTR.
  lk.l_type = F_WRLCK;
  ASSERT_EQ(::fcntl(holder.get(), F_SETLK, &lk), 0);
  Child interrupted([&](Child&) -> std::string {
    interrupt_on_sigusr1();
    const int fd = ::open(file.c_str(), O_RDWR);
    struct flock w {};
    w.l_type = F_WRLCK;
    w.l_whence = SEEK_SET;
    if (fd < 0) return "open: " + errname(errno);
    if (::fcntl(fd, F_SETLKW, &w) != -1) return "F_SETLKW succeeded while the lock was held";
    if (errno != EINTR) return "F_SETLKW: expected EINTR, got " + errname(errno);
    return "";
  });
  std::this_thread::sleep_for(200ms);
  ::kill(interrupted.pid(), SIGUSR1);
  EXPECT_EQ(interrupted.join(), "") << "the interrupted lock";

  const TransportStats s = transport_stats(m);
  EXPECT_GT(s.ring, 5) << s.line;
  // The granted lock (answered where the UNLOCK was handled, another ring
  // thread with two CPUs or more) and the interrupted one (answered on the
  // worker that read the INTERRUPT).
  EXPECT_GE(s.foreign, cpus() > 1 ? 2 : 1) << s.line;
  holder = Fd();
  EXPECT_EQ(m.stop(), "");
}

TEST_F(FuseUringTest, AutoFallsBackToReadWriteAndSaysWhy) {
  EnableUring disable(false);
  ASSERT_TRUE(disable.ok());
  Mount m;
  ASSERT_EQ(m.start_dpfs(serve_args(m, "auto")), "");
  EXPECT_EQ(exercise(m.dir() + "/d"), "");
  const std::string log = m.log();
  const std::string key = "FUSE over io_uring: not used, serving by read/write: ";
  const size_t at = log.find(key);
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_NE(log.find("enable_uring", at), std::string::npos) << log;
  EXPECT_EQ(log.find(key, at + 1), std::string::npos) << "said more than once:\n" << log;
  const TransportStats s = transport_stats(m);
  EXPECT_EQ(s.ring, 0) << s.line;
  EXPECT_GT(s.read_write, 20) << s.line;
  EXPECT_EQ(m.stop(), "");
}

TEST_F(FuseUringTest, OnRefusesToStartWithoutItAndSaysWhatToFix) {
  EnableUring disable(false);
  ASSERT_TRUE(disable.ok());
  Mount m;
  const RunResult r = run({dpfs_binary(), "serve", "--backend", "memfs", "--fuse-mount", m.dir(),
                           "--fuse-io-uring", "on"});
  EXPECT_NE(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.err.find("echo 1 > /sys/module/fuse/parameters/enable_uring"), std::string::npos)
      << r.describe();
  EXPECT_FALSE(find_mount(m.dir())) << "left a mount behind";
}

}  // namespace
}  // namespace dpfs::itest
