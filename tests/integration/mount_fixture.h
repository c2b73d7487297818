// The harness of the integration tests: a dpfs daemon serving a real FUSE
// mount through the kernel, and the helpers the tests use on it.
//
// The tests are black-box: they only see the mount (and the daemon's exit
// code and stderr). The conformance suites (MountTest) run on every backend
// configuration of backends.h: per suite, each configuration gets one daemon
// (started by its first test, stopped in TearDownTestSuite, checking that it
// exits 0 and that the mount is gone); each test works in a directory of its
// own.
//
// DPFS_TEST_ON_TMPFS=1 runs the same tests on a tmpfs mount instead of dpfs:
// a way to check the tests themselves against a file system the kernel owns.
// DPFS_TEST_ON_DIR=/path runs them, as on tmpfs, on a file system this
// process did not mount (the kernel's NFS client in a guest,
// tests/guest/nfs-reference.sh): wherever a tmpfs would be mounted, a fresh
// subdirectory of /path is bind-mounted instead (and left there).
// DPFS_TEST_SERVE_ARGS="--writeback-cache true" adds options to the daemon
// of every conformance configuration (to try the suites by hand with other
// settings). DPFS_TEST_BINARY=path runs another build of the daemon (say, with
// sanitizers) instead of the one the tests were compiled against.
// DPFS_TEST_RUN_MISSING=1 runs the tests a configuration would skip for a
// capability it lacks (backends.h), to see them fail for the reason given.
//
// The suites need root and /dev/fuse; without them every test FAILS (it
// does not skip): a CI that cannot mount must not report green.
//
// Code run in forked children must not use gtest assertions (they would be
// recorded in the child and lost): children report through exit codes and
// pipes (see Child and as_user).
#pragma once

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "backends.h"

#ifndef DPFS_BINARY
#error "DPFS_BINARY must name the dpfs daemon binary"
#endif

namespace dpfs::itest {

using namespace std::chrono_literals;

// ---------------------------------------------------------------------------
// errno as text

// "EACCES (Permission denied)"; "0" for no error.
inline std::string errname(int e) {
  if (e == 0) return "0";
  const char* name = strerrorname_np(e);
  return std::string(name ? name : ("errno " + std::to_string(e)).c_str()) + " (" + strerror(e) +
         ")";
}

// The outcome of one system call: its return value and the errno it left.
struct SysResult {
  long rc = 0;
  int err = 0;
};

template <typename F>
SysResult capture(F&& f) {
  errno = 0;
  auto r = f();
  int e = errno;
  if constexpr (std::is_same_v<decltype(r), SysResult>) {
    return r;
  } else {
    return SysResult{static_cast<long>(r), r == -1 ? e : 0};
  }
}

inline ::testing::AssertionResult AssertErrno(const char* expected_text, const char* expr_text,
                                              int expected, SysResult got) {
  if (got.rc == -1 && got.err == expected) return ::testing::AssertionSuccess();
  auto failure = ::testing::AssertionFailure();
  failure << expr_text << "\n  expected: -1 with " << errname(expected) << " [" << expected_text
          << "]\n  actual: ";
  if (got.rc == -1) {
    failure << "-1 with " << errname(got.err);
  } else {
    failure << "success (returned " << got.rc << ")";
  }
  return failure;
}

inline ::testing::AssertionResult AssertSuccess(const char* expr_text, SysResult got) {
  if (got.rc != -1) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << expr_text << "\n  expected: success\n  actual: -1 with " << errname(got.err);
}

}  // namespace dpfs::itest

#define DPFS_CAPTURE(expr) (::dpfs::itest::capture([&]() { return (expr); }))
// EXPECT_ERRNO(EACCES, open(p, O_RDONLY)): the call fails with exactly that errno.
#define EXPECT_ERRNO(err, expr)                                                   \
  GTEST_ASSERT_(::dpfs::itest::AssertErrno(#err, #expr, err, DPFS_CAPTURE(expr)), \
                GTEST_NONFATAL_FAILURE_)
#define ASSERT_ERRNO(err, expr)                                                   \
  GTEST_ASSERT_(::dpfs::itest::AssertErrno(#err, #expr, err, DPFS_CAPTURE(expr)), \
                GTEST_FATAL_FAILURE_)
// EXPECT_SYS(mkdir(p, 0755)): the call does not return -1 (errno printed if it does).
#define EXPECT_SYS(expr) \
  GTEST_ASSERT_(::dpfs::itest::AssertSuccess(#expr, DPFS_CAPTURE(expr)), GTEST_NONFATAL_FAILURE_)
#define ASSERT_SYS(expr) \
  GTEST_ASSERT_(::dpfs::itest::AssertSuccess(#expr, DPFS_CAPTURE(expr)), GTEST_FATAL_FAILURE_)

namespace dpfs::itest {

// ---------------------------------------------------------------------------
// Small file helpers (for the parent; they return errors rather than assert)

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    reset(o.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const { return fd_; }
  operator int() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Writes all of `data` at `offset`; returns the errno of the failure or 0.
inline int pwrite_all(int fd, const void* data, size_t size, off_t offset) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::pwrite(fd, p, size, offset);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (n == 0) return EIO;
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return 0;
}

// Reads up to `size` bytes at `offset` (stopping early only at EOF); -1 on error.
inline ssize_t pread_all(int fd, void* data, size_t size, off_t offset) {
  char* p = static_cast<char*>(data);
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::pread(fd, p + done, size - done, offset + static_cast<off_t>(done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return static_cast<ssize_t>(done);
}

// Creates (or truncates) `path` with `data`; returns errno or 0.
inline int write_file(const std::string& path, std::string_view data, mode_t mode = 0644) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode));
  if (!fd.valid()) return errno;
  int e = pwrite_all(fd, data.data(), data.size(), 0);
  if (e) return e;
  if (::close(fd.release()) != 0) return errno;
  return 0;
}

// The whole content of `path`, or std::nullopt (errno set) on error.
inline std::optional<std::string> read_file(const std::string& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::nullopt;
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

inline std::string read_text_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Names in a directory other than "." and "..", in readdir order; errno on failure.
inline std::vector<std::string> list_dir(const std::string& path, int* error = nullptr) {
  std::vector<std::string> names;
  DIR* d = ::opendir(path.c_str());
  if (!d) {
    if (error) *error = errno;
    return names;
  }
  errno = 0;
  while (dirent* de = ::readdir(d)) {
    std::string n = de->d_name;
    if (n != "." && n != "..") names.push_back(n);
  }
  if (error) *error = errno;
  ::closedir(d);
  return names;
}

// Deterministic content: byte i of a stream with `seed` depends only on
// (seed, i), so any range can be regenerated and checked.
inline uint8_t pattern_byte(uint64_t seed, uint64_t i) {
  uint64_t z = seed * 0x9E3779B97F4A7C15ull + (i >> 3) + 1;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<uint8_t>(z >> (8 * (i & 7)));
}

inline std::string pattern(uint64_t seed, uint64_t offset, size_t size) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>(pattern_byte(seed, offset + i));
  return s;
}

// "" if `data` is the pattern (seed, offset); otherwise where it first differs.
inline std::string check_pattern(std::string_view data, uint64_t seed, uint64_t offset) {
  for (size_t i = 0; i < data.size(); ++i) {
    uint8_t want = pattern_byte(seed, offset + i);
    if (static_cast<uint8_t>(data[i]) != want) {
      std::ostringstream o;
      o << "content differs at offset " << offset + i << ": expected 0x" << std::hex << int(want)
        << ", got 0x" << int(static_cast<uint8_t>(data[i]));
      return o.str();
    }
  }
  return "";
}

// "" if `data` is all zero bytes; otherwise where the first non-zero byte is.
inline std::string check_zero(std::string_view data, uint64_t offset) {
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] != 0) {
      std::ostringstream o;
      o << "expected zeros, got 0x" << std::hex << int(static_cast<uint8_t>(data[i])) << std::dec
        << " at offset " << offset + i;
      return o.str();
    }
  }
  return "";
}

inline uint64_t fnv1a(std::string_view data) {
  uint64_t h = 1469598103934665603ull;
  for (char c : data) {
    h ^= static_cast<uint8_t>(c);
    h *= 1099511628211ull;
  }
  return h;
}

// The passthrough backend's io_uring counters, from the last "io_uring: N
// operations, M submits" line of a daemon's statistics (its log after
// SIGUSR1); {-1, -1} if there is none.
struct UringCounters {
  long long ops = -1;
  long long submits = -1;
  long long done_at_once = -1;  // reads and writes that needed no wait, without the ring
};
inline UringCounters last_uring_counters(const std::string& log) {
  UringCounters c;
  const std::string key = "io_uring: ";
  const size_t at = log.rfind(key);
  if (at == std::string::npos) return c;
  if (std::sscanf(log.c_str() + at + key.size(), "%lld operations, %lld submits", &c.ops,
                  &c.submits) != 2) {
    return UringCounters{};
  }
  long long reads = 0, writes = 0;
  const size_t more = log.find("fallback rings; ", at);
  if (more != std::string::npos &&
      std::sscanf(log.c_str() + more, "fallback rings; %lld reads and %lld writes", &reads,
                  &writes) == 2) {
    c.done_at_once = reads + writes;
  }
  return c;
}

// ---------------------------------------------------------------------------
// Timestamps

inline bool ts_eq(const timespec& a, const timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}
inline bool ts_lt(const timespec& a, const timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}
inline std::string ts_str(const timespec& t) {
  char buf[64];
  snprintf(buf, sizeof buf, "%lld.%09ld", static_cast<long long>(t.tv_sec), t.tv_nsec);
  return buf;
}
inline timespec now_realtime() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}
inline double ts_diff(const timespec& a, const timespec& b) {  // a - b in seconds
  return double(a.tv_sec - b.tv_sec) + double(a.tv_nsec - b.tv_nsec) / 1e9;
}
// Long enough for the kernel's coarse clock (a jiffy) to move, so a change
// of a timestamp can be told from no change.
inline void tick() { std::this_thread::sleep_for(20ms); }

// ---------------------------------------------------------------------------
// Credentials and children

struct Cred {
  uid_t uid;
  gid_t gid;
  std::vector<gid_t> groups;  // supplementary groups
};
inline const Cred kUser1{1000, 1000, {1000}};
inline const Cred kUser2{1001, 1001, {1001}};
inline const Cred kNobody{65534, 65534, {65534}};

// In a child: take `cred` for good. Returns errno or 0.
inline int drop_to(const Cred& cred) {
  if (::setgroups(cred.groups.size(), cred.groups.data()) != 0) return errno;
  if (::setresgid(cred.gid, cred.gid, cred.gid) != 0) return errno;
  if (::setresuid(cred.uid, cred.uid, cred.uid) != 0) return errno;
  return 0;
}

constexpr int kChildSetupFailed = 250;

// Runs `fn` (one system call, or a sequence returning the result of the one
// that matters) in a child process running as `cred`. Returns its result as
// SysResult: rc 0 on success, -1 with the errno otherwise. Usable in
// EXPECT_ERRNO / EXPECT_SYS.
template <typename F>
SysResult as_user(const Cred& cred, F&& fn) {
  ::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return {-1, errno};
  if (pid == 0) {
    if (drop_to(cred) != 0) ::_exit(kChildSetupFailed);
    errno = 0;
    long rc = static_cast<long>(fn());
    ::_exit(rc == -1 ? (errno ? errno : 255) : 0);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status)) {
    ADD_FAILURE() << "as_user child died with signal " << WTERMSIG(status);
    return {-1, 0};
  }
  int code = WEXITSTATUS(status);
  if (code == kChildSetupFailed) {
    ADD_FAILURE() << "as_user child could not take uid " << cred.uid;
    return {-1, 0};
  }
  return code == 0 ? SysResult{0, 0} : SysResult{-1, code};
}

// A forked child running `body`. The body returns "" on success or a
// description of what went wrong, which join() hands to the parent. The
// parent and child can wait for each other with signal()/wait(), over a
// socket pair: a signal() to a side that is gone fails (EPIPE) rather than
// killing the caller with SIGPIPE -- a test binary killed so would leave its
// suite's daemons running, and the fuse module's enable_uring on.
class Child {
 public:
  using Body = std::function<std::string(Child&)>;

  explicit Child(Body body, std::optional<Cred> cred = std::nullopt) {
    int sv[2], r[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) || ::pipe2(r, O_CLOEXEC)) {
      ADD_FAILURE() << "socketpair or pipe: " << errname(errno);
      return;
    }
    ::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ < 0) {
      ADD_FAILURE() << "fork: " << errname(errno);
      return;
    }
    if (pid_ == 0) {
      ::close(sv[0]);
      ::close(r[0]);
      sock_ = sv[1];
      std::string result;
      if (cred) {
        int e = drop_to(*cred);
        if (e) result = "cannot take uid " + std::to_string(cred->uid) + ": " + errname(e);
      }
      if (result.empty()) result = body(*this);
      if (!result.empty()) {
        size_t off = 0;
        while (off < result.size()) {
          ssize_t n = ::write(r[1], result.data() + off, result.size() - off);
          if (n <= 0) break;
          off += static_cast<size_t>(n);
        }
      }
      ::_exit(result.empty() ? 0 : 1);
    }
    ::close(sv[1]);
    ::close(r[1]);
    sock_ = sv[0];
    report_ = r[0];
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !joined_) {
      ::kill(pid_, SIGKILL);
      join();
    }
    if (sock_ >= 0) ::close(sock_);
    if (report_ >= 0) ::close(report_);
  }

  pid_t pid() const { return pid_; }

  // Either side: tell the other side to go on.
  void signal(char c = '.') {
    while (::send(sock_, &c, 1, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
  }
  // Either side: wait for the other side's signal(). False on timeout or if
  // the other side is gone.
  bool wait(std::chrono::milliseconds timeout = 10s, char* got = nullptr) {
    pollfd p{sock_, POLLIN, 0};
    int n;
    while ((n = ::poll(&p, 1, static_cast<int>(timeout.count()))) < 0 && errno == EINTR) {
    }
    if (n <= 0) return false;
    char c;
    if (::read(sock_, &c, 1) != 1) return false;
    if (got) *got = c;
    return true;
  }

  // Parent: waits for the child to exit; returns "" if the body succeeded,
  // otherwise what went wrong.
  std::string join() {
    if (joined_) return result_;
    joined_ = true;
    if (pid_ <= 0) return result_ = "child was never started";
    std::string report;
    char buf[4096];
    for (;;) {
      ssize_t n = ::read(report_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      report.append(buf, static_cast<size_t>(n));
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) {
      return result_ = "child " + std::to_string(pid_) + " killed by signal " +
                       std::to_string(WTERMSIG(status)) + (report.empty() ? "" : ": " + report);
    }
    if (WEXITSTATUS(status) != 0) {
      return result_ =
                 report.empty() ? "child exited " + std::to_string(WEXITSTATUS(status)) : report;
    }
    return result_ = "";
  }

 private:
  pid_t pid_ = -1;
  int sock_ = -1, report_ = -1;
  bool joined_ = false;
  std::string result_;
};

// ---------------------------------------------------------------------------
// Mount table

struct MountInfo {
  std::string mount_point;
  std::string fstype;
  std::string source;
  std::string options;  // per-mount and super block options, comma separated
  unsigned major = 0, minor = 0;
};

inline std::string unescape_mountinfo(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size()) {
      int v = 0;
      bool ok = true;
      for (int k = 1; k <= 3; ++k) {
        char c = s[i + k];
        if (c < '0' || c > '7') ok = false;
        v = v * 8 + (c - '0');
      }
      if (ok) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(s[i]);
  }
  return out;
}

// The topmost mount at `path` in /proc/self/mountinfo, if any.
inline std::optional<MountInfo> find_mount(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  std::optional<MountInfo> found;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string id, parent, devno, root, mnt, opts;
    ls >> id >> parent >> devno >> root >> mnt >> opts;
    std::string field;
    while (ls >> field && field != "-") {
    }
    MountInfo info;
    ls >> info.fstype >> info.source;
    std::string super_opts;
    ls >> super_opts;
    info.mount_point = unescape_mountinfo(mnt);
    info.options = opts + "," + super_opts;
    sscanf(devno.c_str(), "%u:%u", &info.major, &info.minor);
    if (info.mount_point == path) found = info;  // later lines are mounted on top
  }
  return found;
}

// ---------------------------------------------------------------------------
// Processes

// Result of running a program to completion.
struct RunResult {
  int status = -1;  // as waitpid gives it
  std::string out;
  std::string err;
  bool timed_out = false;

  bool exited() const { return WIFEXITED(status); }
  int exit_code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
  std::string describe() const {
    std::ostringstream o;
    if (timed_out) o << "timed out; ";
    if (WIFEXITED(status)) {
      o << "exit code " << WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      o << "killed by signal " << WTERMSIG(status);
    } else {
      o << "status " << status;
    }
    o << "\n--- stdout ---\n" << out << "\n--- stderr ---\n" << err;
    return o.str();
  }
};

// Lines of `s` (a trailing newline does not make an empty last line).
inline std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream in(s);
  std::string l;
  while (std::getline(in, l)) lines.push_back(l);
  return lines;
}

// Whether thread or process `id` is, within `timeout`, blocked in system
// call `nr` (/proc/ID/syscall starts with the number while it is in it).
// SIGUSR1 interrupts a blocking system call of this process (a handler
// without SA_RESTART): it then fails with EINTR.
inline void interrupt_on_sigusr1() {
  struct sigaction sa {};
  sa.sa_handler = [](int) {};
  ::sigaction(SIGUSR1, &sa, nullptr);
}

inline bool in_system_call(pid_t id, long nr, std::chrono::milliseconds timeout) {
  const std::string file = "/proc/" + std::to_string(id) + "/syscall";
  const std::string want = std::to_string(nr) + " ";
  for (auto deadline = std::chrono::steady_clock::now() + timeout;
       std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(1ms)) {
    if (read_text_file(file).rfind(want, 0) == 0) return true;
  }
  return false;
}

// The state of thread or process `id` as /proc/ID/stat gives it (R, S, D,
// T, Z...), or '\0' once it is gone.
inline char process_state(pid_t id) {
  const std::string stat = read_text_file("/proc/" + std::to_string(id) + "/stat");
  const size_t end = stat.rfind(')');  // after the command name, which may hold anything
  return end == std::string::npos || end + 2 >= stat.size() ? '\0' : stat[end + 2];
}

// Process `pid` stopped (SIGSTOP) for the scope: the constructor returns
// once every thread of it is stopped (problem() says if they were not
// within `timeout`); SIGCONT at the end. For a daemon, requests then wait in
// the kernel's queue, as when every one of its threads is busy. pid <= 0:
// nothing to stop (a mount no daemon serves).
class StoppedProcess {
 public:
  explicit StoppedProcess(pid_t pid, std::chrono::milliseconds timeout = 10s) : pid_(pid) {
    if (pid_ <= 0) return;
    if (::kill(pid_, SIGSTOP) != 0) {
      problem_ = "SIGSTOP to " + std::to_string(pid_) + ": " + errname(errno);
      return;
    }
    const std::string tasks = "/proc/" + std::to_string(pid_) + "/task";
    for (auto deadline = std::chrono::steady_clock::now() + timeout;;
         std::this_thread::sleep_for(1ms)) {
      std::string running;
      for (const std::string& tid : list_dir(tasks)) {
        const char state = process_state(pid_t(std::stol(tid)));
        if (state != 'T' && state != 't' && state != '\0') running += " " + tid;
      }
      if (running.empty()) return;
      if (std::chrono::steady_clock::now() >= deadline) {
        problem_ = "threads of " + std::to_string(pid_) + " not stopped:" + running;
        return;
      }
    }
  }
  StoppedProcess(const StoppedProcess&) = delete;
  StoppedProcess& operator=(const StoppedProcess&) = delete;
  ~StoppedProcess() {
    if (pid_ > 0) ::kill(pid_, SIGCONT);
  }
  const std::string& problem() const { return problem_; }

 private:
  pid_t pid_;
  std::string problem_;
};

// utime + stime of `pid`, in clock ticks; -1 if it is gone.
inline long cpu_ticks(pid_t pid) {
  const std::string stat = read_text_file("/proc/" + std::to_string(pid) + "/stat");
  const size_t paren = stat.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream fields(stat.substr(paren + 2));
  std::string f;
  long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> f; ++i) {
    if (i == 14) utime = std::stol(f);
    if (i == 15) stime = std::stol(f);
  }
  return utime + stime;
}

// The process the supervisor last named in `log` as serving the part whose
// name contains `what` ("vhost-user a (", "FUSE mount "); -1 if none.
inline pid_t served_by(const std::string& log, const std::string& what) {
  pid_t pid = -1;
  static const std::string kServedBy = ": served by process ";
  for (const std::string& line : lines_of(log)) {
    const size_t at = line.find(kServedBy);
    if (at != std::string::npos && line.find(what) != std::string::npos) {
      pid = pid_t(std::stol(line.substr(at + kServedBy.size())));
    }
  }
  return pid;
}

// The supervisor's line for a serving process that crashed, or "". Such a
// process is started again, so the daemon's own pid does not show it.
inline std::string crash_line(const std::string& log) {
  for (const std::string& line : lines_of(log)) {
    if (line.find(": serving process ") != std::string::npos &&
        line.find(" died of ") != std::string::npos) {
      return line;
    }
  }
  return "";
}

inline std::vector<char*> make_argv(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

// Runs argv[0] (a path) with `args`, collecting stdout and stderr; kills it
// after `timeout`. `before_exec` runs in the child first (e.g. to unshare).
inline RunResult run(const std::vector<std::string>& args, std::chrono::milliseconds timeout = 20s,
                     std::function<void()> before_exec = nullptr) {
  RunResult res;
  char out_path[] = "/tmp/dpfs-itest-run-out.XXXXXX";
  char err_path[] = "/tmp/dpfs-itest-run-err.XXXXXX";
  int out_fd = ::mkstemp(out_path);
  int err_fd = ::mkstemp(err_path);
  auto argv = make_argv(args);
  ::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    if (before_exec) before_exec();
    ::execv(argv[0], argv.data());
    dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
    ::_exit(127);
  }
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    pid_t r = ::waitpid(pid, &res.status, WNOHANG);
    if (r == pid) break;
    if (std::chrono::steady_clock::now() > deadline) {
      res.timed_out = true;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &res.status, 0);
      break;
    }
    std::this_thread::sleep_for(5ms);
  }
  ::close(out_fd);
  ::close(err_fd);
  res.out = read_text_file(out_path);
  res.err = read_text_file(err_path);
  ::unlink(out_path);
  ::unlink(err_path);
  return res;
}

// ---------------------------------------------------------------------------
// A mount served by a dpfs daemon (or, for checking the tests, by tmpfs).

// The daemon under test: DPFS_BINARY, or $DPFS_TEST_BINARY (e.g. a
// sanitizer build of the same sources).
inline std::string dpfs_binary() {
  const char* v = std::getenv("DPFS_TEST_BINARY");
  return v && *v ? v : DPFS_BINARY;
}

// "" if this process can mount FUSE file systems; otherwise why not.
inline std::string environment_problem() {
  if (::geteuid() != 0) {
    return "the integration tests must run as root (euid is " + std::to_string(::geteuid()) +
           "): they mount file systems and switch users";
  }
  if (!on_tmpfs() && ::access("/dev/fuse", R_OK | W_OK) != 0) {
    return std::string("/dev/fuse is not usable: ") + errname(errno);
  }
  return "";
}

// Starts `args` (args[0] a path) with stdout and stderr to `log_path` and
// default signal handling; returns its pid, or -1 and *error.
inline pid_t spawn_logged(const std::vector<std::string>& args, const std::string& log_path,
                          std::string* error) {
  auto argv = make_argv(args);
  int log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (log_fd < 0) {
    *error = "cannot create " + log_path + ": " + errname(errno);
    return -1;
  }
  ::fflush(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) {
    *error = "fork: " + errname(errno);
    ::close(log_fd);
    return -1;
  }
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, 0);
    ::dup2(log_fd, 1);
    ::dup2(log_fd, 2);
    // The daemon must not inherit a blocked or ignored SIGTERM/SIGINT.
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::signal(SIGTERM, SIG_DFL);
    ::signal(SIGINT, SIG_DFL);
    ::execv(argv[0], argv.data());
    dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
    ::_exit(127);
  }
  ::close(log_fd);
  return pid;
}

// A `dpfs serve --listen` daemon: the server end of the remote transport
// (the "remote" configurations of backends.h run the suites through one).
class ServerProcess {
 public:
  explicit ServerProcess(std::string log_path) : log_(std::move(log_path)) {}
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess() { kill9(); }

  // Runs `launcher` (may be empty; e.g. nsenter) + dpfs_binary() + `args`
  // and waits until its log says where it listens. "" or what went wrong.
  std::string start(const std::vector<std::string>& args,
                    const std::vector<std::string>& launcher = {}) {
    std::vector<std::string> full = launcher;
    full.push_back(dpfs_binary());
    full.insert(full.end(), args.begin(), args.end());
    std::string error;
    pid_ = spawn_logged(full, log_, &error);
    if (pid_ < 0) return error;
    const std::string marker = "remote: listening on tcp://";
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(10ms)) {
      const std::string text = log();
      if (size_t at = text.find(marker); at != std::string::npos) {
        const size_t end = text.find_first_of(" \n", at + marker.size());
        const std::string addr = text.substr(at + marker.size(), end - at - marker.size());
        port_ = std::atoi(addr.substr(addr.rfind(':') + 1).c_str());
        return port_ > 0 ? "" : "cannot read the port from: " + addr;
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "the server exited before listening; its log:\n" + log();
      }
    }
    kill9();
    return "the server did not listen within 10 s; its log:\n" + log();
  }

  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return read_text_file(log_); }

  // SIGTERM, and it must exit 0 within 10 s. "" or what went wrong.
  std::string stop() {
    if (pid_ <= 0) return "the server was not running";
    ::kill(pid_, SIGTERM);
    int status = 0;
    for (auto deadline = std::chrono::steady_clock::now() + 10s;
         std::chrono::steady_clock::now() < deadline; std::this_thread::sleep_for(10ms)) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return "";
        return "the server ended with status " + std::to_string(status) + "; its log:\n" + log();
      }
    }
    kill9();
    return "the server did not exit within 10 s of SIGTERM; its log:\n" + log();
  }

  void kill9() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::string log_;
  pid_t pid_ = -1;
  int port_ = 0;
};

// nfs_server.h: a fresh directory exported by the test NFS server.
inline std::string nfs_test_export(const std::string& hint, std::string* problem);
// redis_server.h: a fresh file system in the test Redis server.
inline std::string redis_test_fs(const std::string& hint, std::string* problem);
inline std::string redis_cluster_test_fs(const std::string& hint, std::string* problem);

// The POSIX suites hold dpfs to what tmpfs does for root, who may do
// anything: they create device nodes and set trusted.* and
// security.capability. The host policy refuses those to tenants by default
// (policy_test.cc checks the defaults), so the daemons these suites start
// allow them. The mount stays nosuid,nodev: no suite runs a set-user-ID
// program or opens a device node through it.
inline const std::vector<std::string>& conformance_policy_args() {
  static const std::vector<std::string> args{"--allow-device-nodes", "--xattr-namespaces",
                                             "user,trusted,security,system"};
  return args;
}

class Mount {
 public:
  // Creates a private directory with the mount point `dir()` and the daemon log in it.
  Mount() {
    char tmpl[] = "/tmp/dpfs-itest.XXXXXX";
    if (::mkdtemp(tmpl)) {
      base_ = tmpl;
      ::chmod(base_.c_str(), 0755);
      dir_ = base_ + "/mnt";
      log_ = base_ + "/daemon.log";
      ::mkdir(dir_.c_str(), 0755);
    }
  }
  Mount(const Mount&) = delete;
  Mount& operator=(const Mount&) = delete;
  ~Mount() {
    if (pid_ > 0 || tmpfs_) stop();
    if (!base_.empty()) {
      if (find_mount(dir_)) ::umount2(dir_.c_str(), MNT_DETACH);
      ::rmdir(dir_.c_str());
      ::unlink(log_.c_str());
      ::unlink((base_ + "/server.log").c_str());  // see ServerProcess
      std::error_code ignored;
      if (find_mount(base_ + "/export")) ::umount2((base_ + "/export").c_str(), MNT_DETACH);
      std::filesystem::remove_all(base_ + "/export", ignored);  // see expand_spec()
      ::rmdir(base_.c_str());
    }
  }

  const std::string& dir() const { return dir_; }
  const std::string& base() const { return base_; }
  pid_t pid() const { return pid_; }
  bool is_tmpfs() const { return tmpfs_; }
  std::string log() const { return read_text_file(log_); }
  // Runs the daemon through these words (e.g. nsenter --net=...).
  void set_launcher(std::vector<std::string> launcher) { launcher_ = std::move(launcher); }

  // Starts dpfs_binary() with `args` (after the program name), stdout and
  // stderr to the log, and waits until dir() is a fuse.dpfs mount. Returns
  // "" or what went wrong (with the daemon's log).
  std::string start_dpfs(const std::vector<std::string>& args,
                         std::chrono::milliseconds timeout = 10s) {
    if (base_.empty()) return "mkdtemp failed";
    std::vector<std::string> full = launcher_;
    full.push_back(dpfs_binary());
    full.insert(full.end(), args.begin(), args.end());
    command_ = "";
    for (const auto& a : full) command_ += (command_.empty() ? "" : " ") + a;
    std::string error;
    const pid_t pid = spawn_logged(full, log_, &error);
    if (pid < 0) return error;
    pid_ = pid;
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto m = find_mount(dir_);
      if (m && m->fstype == "fuse.dpfs") {
        struct stat st {};
        if (::stat(dir_.c_str(), &st) == 0) return "";
      }
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        std::ostringstream o;
        o << "`" << command_ << "` exited before mounting " << dir_ << " ("
          << (WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status))
                                : "signal " + std::to_string(WTERMSIG(status)))
          << "); its log:\n"
          << log();
        return o.str();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        std::ostringstream o;
        o << "`" << command_ << "` did not mount " << dir_ << " as fuse.dpfs within "
          << timeout.count() << " ms";
        if (m) o << " (found a mount of type " << m->fstype << ")";
        o << "; its log:\n" << log();
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        pid_ = -1;
        if (find_mount(dir_)) ::umount2(dir_.c_str(), MNT_DETACH);
        return o.str();
      }
      std::this_thread::sleep_for(10ms);
    }
  }

  // `spec` with "{dir}" in it replaced by a fresh empty directory: one of
  // the test NFS server's export for an nfs:// spec (nfs_server.h), else
  // base()/export, on a tmpfs of its own if `export_tmpfs` (so that a
  // passthrough backend has tmpfs's limits, xattr sizes and file sizes,
  // rather than those of the file system holding /tmp). "" and *problem if
  // the directory cannot be had.
  std::string expand_spec(std::string spec, bool export_tmpfs, std::string* problem) const {
    if (spec == "redis") return redis_test_fs("mount", problem);
    if (spec == "redis_cluster") return redis_cluster_test_fs("mount", problem);
    const size_t at = spec.find("{dir}");
    if (at == std::string::npos) return spec;
    std::string exported = base_ + "/export";
    if (spec.starts_with("nfs://")) {
      exported = nfs_test_export("mount", problem);
      if (!problem->empty()) return "";
    }
    ::mkdir(exported.c_str(), 0755);
    if (export_tmpfs && !find_mount(exported) &&
        ::mount("tmpfs", exported.c_str(), "tmpfs", 0, "mode=0755") != 0) {
      *problem = "mount tmpfs on " + exported + ": " + errname(errno);
      return "";
    }
    spec.replace(at, 5, exported);
    return spec;
  }

  // The serve command line for `backend` (a --backend spec) on dir(), with
  // the conformance policy and the words of $DPFS_TEST_SERVE_ARGS appended
  // (to try the suites with, say, "--writeback-cache true" or
  // "--attr-timeout 0 --entry-timeout 0").
  std::vector<std::string> serve_args(const std::string& backend, int threads = 2) const {
    std::vector<std::string> args{
        "serve", "--backend", backend, "--fuse-mount", dir_, "--threads", std::to_string(threads)};
    const std::vector<std::string>& policy = conformance_policy_args();
    args.insert(args.end(), policy.begin(), policy.end());
    if (const char* extra = std::getenv("DPFS_TEST_SERVE_ARGS")) {
      std::istringstream words(extra);
      std::string w;
      while (words >> w) args.push_back(w);
    }
    return args;
  }

  // A memfs on dir().
  std::vector<std::string> memfs_args(int threads = 2) const {
    return serve_args("memfs", threads);
  }

  // Mounts a tmpfs on dir() instead (for checking the tests themselves),
  // or binds a fresh directory of $DPFS_TEST_ON_DIR there.
  std::string start_tmpfs(const std::string& options = "mode=0755") {
    if (base_.empty()) return "mkdtemp failed";
    if (const char* root = on_dir()) return start_bind(root);
    if (::mount("tmpfs", dir_.c_str(), "tmpfs", 0, options.c_str()) != 0) {
      return "mount tmpfs on " + dir_ + ": " + errname(errno);
    }
    tmpfs_ = true;
    return "";
  }

  // Bind-mounts a fresh directory of `root` on dir().
  std::string start_bind(const std::string& root) {
    std::string fresh = root + "/dpfs-itest.XXXXXX";
    if (::mkdtemp(fresh.data()) == nullptr) return "mkdtemp in " + root + ": " + errname(errno);
    ::chmod(fresh.c_str(), 0755);
    if (::mount(fresh.c_str(), dir_.c_str(), nullptr, MS_BIND, nullptr) != 0) {
      return "bind-mount " + fresh + " on " + dir_ + ": " + errname(errno);
    }
    tmpfs_ = true;
    return "";
  }

  // "" while the daemon runs; otherwise how it ended.
  std::string check_alive() {
    if (tmpfs_) return "";
    if (pid_ <= 0) return "the daemon is not running";
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ostringstream o;
      o << "the daemon died ("
        << (WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status))
                              : "signal " + std::to_string(WTERMSIG(status)))
        << "); its log:\n"
        << log();
      ::umount2(dir_.c_str(), MNT_DETACH);
      return o.str();
    }
    if (const std::string crash = crash_line(log()); !crash.empty()) {
      return "a serving process crashed: " + crash + "\nits log:\n" + log();
    }
    return "";
  }

  // Sends `sig` to the daemon, waits (up to `timeout`) for it to exit, and
  // checks that it exited 0 and that the mount is gone. Returns "" or what
  // went wrong (with the log). Cleans up in any case.
  std::string stop(int sig = SIGTERM, std::chrono::milliseconds timeout = 10s) {
    if (tmpfs_) {
      tmpfs_ = false;
      if (::umount2(dir_.c_str(), 0) != 0) {
        std::string e = "umount tmpfs: " + errname(errno);
        ::umount2(dir_.c_str(), MNT_DETACH);
        return e;
      }
      return "";
    }
    if (pid_ <= 0) return "the daemon was not running";
    std::ostringstream problems;
    ::kill(pid_, sig);
    auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    bool exited = false;
    while (std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        exited = true;
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    if (!exited) {
      problems << "the daemon did not exit within " << timeout.count() << " ms of signal " << sig
               << " (killed it)\n";
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, &status, 0);
    } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      problems << "the daemon ended with "
               << (WIFEXITED(status) ? "exit code " + std::to_string(WEXITSTATUS(status))
                                     : "signal " + std::to_string(WTERMSIG(status)))
               << " after signal " << sig << ", expected exit code 0\n";
    }
    pid_ = -1;
    if (auto m = find_mount(dir_)) {
      problems << dir_ << " is still mounted (" << m->fstype << ") after the daemon exited\n";
      ::umount2(dir_.c_str(), MNT_DETACH);
    }
    std::string p = problems.str();
    if (!p.empty()) p += "daemon log:\n" + log();
    return p;
  }

 private:
  std::string base_, dir_, log_, command_;
  std::vector<std::string> launcher_;
  pid_t pid_ = -1;
  bool tmpfs_ = false;
};

// Closes this process's descriptors of files under `dir` (a test that fails
// an ASSERT leaves its descriptors open; they would keep the mount busy).
inline void close_fds_under(const std::string& dir) {
  std::vector<int> fds;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (dirent* de = ::readdir(d)) {
      if (de->d_name[0] != '.') fds.push_back(atoi(de->d_name));
    }
    ::closedir(d);
  }
  for (int fd : fds) {
    char target[PATH_MAX + 1];
    std::string link = "/proc/self/fd/" + std::to_string(fd);
    ssize_t n = ::readlink(link.c_str(), target, PATH_MAX);
    if (n <= 0) continue;
    std::string t(target, static_cast<size_t>(n));
    if (t == dir || t.starts_with(dir + "/")) ::close(fd);
  }
}

// ---------------------------------------------------------------------------
// A watchdog: a test that hangs (a request the daemon never answers) is
// turned into a failure by killing the daemon, which aborts the connection
// so every waiting system call returns ENOTCONN.

class Watchdog {
 public:
  Watchdog() : thread_([this] { loop(); }) {}
  ~Watchdog() {
    {
      std::lock_guard lk(mu_);
      quit_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void arm(pid_t pid, std::chrono::seconds timeout, std::string what) {
    std::lock_guard lk(mu_);
    pid_ = pid;
    what_ = std::move(what);
    deadline_ = std::chrono::steady_clock::now() + timeout;
    armed_ = true;
    fired_ = false;
    cv_.notify_all();
  }
  // True if it fired since arm().
  bool disarm() {
    std::lock_guard lk(mu_);
    armed_ = false;
    return fired_;
  }

 private:
  void loop() {
    std::unique_lock lk(mu_);
    while (!quit_) {
      if (!armed_) {
        cv_.wait(lk);
        continue;
      }
      if (cv_.wait_until(lk, deadline_) == std::cv_status::timeout && armed_ &&
          std::chrono::steady_clock::now() >= deadline_) {
        fprintf(stderr, "\n*** watchdog: %s still running; killing the daemon (pid %d)\n",
                what_.c_str(), pid_);
        if (pid_ > 0) ::kill(pid_, SIGKILL);
        fired_ = true;
        armed_ = false;
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  bool quit_ = false, armed_ = false, fired_ = false;
  pid_t pid_ = -1;
  std::string what_;
  std::chrono::steady_clock::time_point deadline_;
  std::thread thread_;
};

// ---------------------------------------------------------------------------
// The fixture of the conformance suites: a TEST_P runs on one configuration
// of backends.h (its parameter). Per suite, each configuration gets one
// mount, started by its first test and stopped in TearDownTestSuite; each
// test works in a directory of its own.

// A configuration's daemons while a suite runs.
// The fuse module's enable_uring, switched on for a configuration served
// through FUSE over io_uring and put back as it was when that goes.
class EnableUring {
 public:
  static constexpr const char* kParameter = "/sys/module/fuse/parameters/enable_uring";
  EnableUring() = default;
  EnableUring(const EnableUring&) = delete;
  EnableUring& operator=(const EnableUring&) = delete;
  ~EnableUring() {
    if (!saved_.empty() && saved_ != "Y") write_file(kParameter, "0");
  }
  // "" or why it cannot be switched on (a kernel without FUSE over io_uring).
  std::string enable() {
    const std::optional<std::string> now = read_file(kParameter);
    if (!now) return std::string(kParameter) + " is missing: this kernel has no FUSE over io_uring";
    saved_ = now->substr(0, 1);
    if (!write_file(kParameter, "1")) return std::string("cannot write ") + kParameter;
    return "";
  }

 private:
  static bool write_file(const char* path, const char* text) {
    std::ofstream f(path);
    return bool(f << text << "\n");
  }
  std::string saved_;  // "Y" or "N" as found; empty: untouched
};

struct Served {
  EnableUring uring;  // declared first: put back after the mount is gone
  std::unique_ptr<Mount> mount;
  std::unique_ptr<ServerProcess> server;  // a remote configuration's server end
  // Why the configuration cannot be used; every test on it fails with it.
  std::string problem;
};

class MountTest : public ::testing::TestWithParam<const BackendConfig*> {
 public:
  static void SetUpTestSuite() { umask(0); }

  static void TearDownTestSuite() {
    watchdog_.reset();
    for (auto& [name, served] : served_) stop(name, *served);
    served_.clear();
  }

 protected:
  // What every test of the suite needs. A test that needs more says so
  // with REQUIRE_CAPABILITY.
  virtual std::vector<Capability> suite_needs() const { return {Capability::kChangeTree}; }

  void SetUp() override {
    umask(0);
    const BackendConfig& b = backend();
    auto it = served_.find(b.name);
    if (it == served_.end()) it = served_.emplace(b.name, start(b)).first;
    served_now_ = it->second.get();
    ASSERT_TRUE(served_now_->problem.empty()) << b.name << ": " << served_now_->problem;
    std::string alive = mount().check_alive();
    if (!alive.empty()) served_now_->problem = "an earlier test killed the daemon: " + alive;
    ASSERT_TRUE(alive.empty()) << alive;
    for (Capability c : suite_needs()) {
      if (const char* why = skip_reason(b, c)) {
        GTEST_SKIP() << b.name << " lacks " << capability_name(c) << ": " << why;
      }
    }
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    if (!b.has(Capability::kChangeTree)) {
      dir_ = mount().dir();  // nothing can be made: the tests work in the root
    } else {
      // "Test/nfs3": each configuration has a mount of its own.
      const std::string name = info->name();
      dir_ = mount().dir() + "/" + info->test_suite_name() + "." + name.substr(0, name.find('/'));
      ASSERT_SYS(::mkdir(dir_.c_str(), 0755)) << "creating the test's directory " << dir_;
    }
    if (!watchdog_) watchdog_ = std::make_unique<Watchdog>();
    watchdog_->arm(mount().pid(), std::chrono::seconds(timeout_seconds()),
                   std::string(info->test_suite_name()) + "." + info->name());
  }

  void TearDown() override {
    if (!watchdog_ || !served_now_ || !served_now_->mount) return;
    close_fds_under(mount().dir());
    bool fired = watchdog_->disarm();
    std::string alive = mount().check_alive();
    EXPECT_FALSE(fired) << "the test hung for " << timeout_seconds()
                        << " s; the watchdog killed the daemon";
    EXPECT_TRUE(alive.empty()) << alive;
    if (!alive.empty()) served_now_->problem = "an earlier test killed the daemon: " + alive;
  }

  // A test may take longer than this only by hanging.
  virtual int timeout_seconds() const { return 120; }

  // The configuration this test runs on, and whether it has `c`.
  const BackendConfig& backend() const { return *GetParam(); }
  bool has(Capability c) const { return backend().has(c); }

  // Path of `name` in this test's directory.
  std::string path(const std::string& name = "") const {
    return name.empty() ? dir_ : dir_ + "/" + name;
  }
  const char* cpath(const std::string& name) {
    scratch_.push_back(path(name));
    return scratch_.back().c_str();
  }
  static bool tmpfs() { return on_tmpfs(); }
  Mount& mount() const { return *served_now_->mount; }

  // lstat that must succeed.
  struct stat lst(const std::string& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) ADD_FAILURE() << "lstat " << p << ": " << errname(errno);
    return st;
  }

  std::string dir_;

 private:
  // Mounts `b` (on a tmpfs, a directory, or a dpfs with its server end).
  static std::unique_ptr<Served> start(const BackendConfig& b) {
    auto s = std::make_unique<Served>();
    s->problem = environment_problem();
    if (!s->problem.empty()) return s;
    s->mount = std::make_unique<Mount>();
    Mount& m = *s->mount;
    if (b.not_dpfs) {
      s->problem = m.start_tmpfs();
      return s;
    }
    std::string spec = m.expand_spec(b.spec, b.export_tmpfs, &s->problem);
    if (!s->problem.empty()) return s;
    if (b.fuse_io_uring) {
      s->problem = s->uring.enable();
      if (!s->problem.empty()) return s;
    }
    std::vector<std::string> device_args;
    if (b.remote) {
      // The server runs the session and the backend: the policy is its.
      std::vector<std::string> args{"serve", "--listen", "tcp://127.0.0.1:0", "--backend", spec};
      const std::vector<std::string>& policy = conformance_policy_args();
      args.insert(args.end(), policy.begin(), policy.end());
      if (b.tls) {
        const std::string pki = m.base() + "/pki";
        const RunResult r =
            run({"/bin/bash", std::string(DPFS_SOURCE_DIR) + "/scripts/test-certs.sh", pki, "ca",
                 "server", "device"});
        if (r.exit_code() != 0) {
          s->problem = "scripts/test-certs.sh: " + r.describe();
          return s;
        }
        auto tls = [&](const std::string& who) {
          return std::vector<std::string>{"--remote-tls-cert", pki + "/" + who + ".pem",
                                          "--remote-tls-key",  pki + "/" + who + ".key",
                                          "--remote-tls-ca",   pki + "/ca.pem"};
        };
        const std::vector<std::string> server_tls = tls("server");
        args.insert(args.end(), server_tls.begin(), server_tls.end());
        device_args = tls("device");
      }
      s->server = std::make_unique<ServerProcess>(m.base() + "/server.log");
      s->problem = s->server->start(args);
      if (!s->problem.empty()) return s;
      spec = "remote://127.0.0.1:" + std::to_string(s->server->port());
    }
    std::vector<std::string> args = m.serve_args(spec);
    // The row's transport, whatever the fuse module's enable_uring says: a
    // memfs_uring row switches it on until the suite ends (and a test binary
    // that dies leaves it on), and with auto every row mounted meanwhile
    // would be served through FUSE over io_uring, which loses interrupts
    // read/write keeps (backends.h, kInterruptBeforeDelivery). After "serve",
    // so that $DPFS_TEST_SERVE_ARGS and the row's own arguments override it.
    if (!b.fuse_io_uring) args.insert(args.begin() + 1, {"--fuse-io-uring", "off"});
    args.insert(args.end(), b.serve_args.begin(), b.serve_args.end());
    args.insert(args.end(), device_args.begin(), device_args.end());
    s->problem = m.start_dpfs(args);
    return s;
  }

  static void stop(const std::string& name, Served& s) {
    if (!s.mount) return;
    close_fds_under(s.mount->dir());
    std::string p = s.mount->stop(SIGTERM);
    if (s.problem.empty() && !p.empty()) ADD_FAILURE() << name << ": stopping the daemon: " << p;
    if (s.server) {
      p = s.server->stop();
      if (s.problem.empty() && !p.empty()) {
        ADD_FAILURE() << name << ": stopping the remote server: " << p;
      }
      s.server.reset();
    }
    std::error_code ignored;
    std::filesystem::remove_all(s.mount->base() + "/pki", ignored);
    s.mount.reset();
  }

  std::deque<std::string> scratch_;
  Served* served_now_ = nullptr;
  // The suite's mounts, by configuration name.
  static inline std::map<std::string, std::unique_ptr<Served>> served_;
  static inline std::unique_ptr<Watchdog> watchdog_;
};

// Skips the rest of the test, with the reason printed, unless its
// configuration has Capability::`cap`.
#define REQUIRE_CAPABILITY(cap)                                                              \
  do {                                                                                       \
    if (const char* why_not =                                                                \
            ::dpfs::itest::skip_reason(backend(), ::dpfs::itest::Capability::cap)) {         \
      GTEST_SKIP() << backend().name << " lacks "                                            \
                   << ::dpfs::itest::capability_name(::dpfs::itest::Capability::cap) << ": " \
                   << why_not;                                                               \
    }                                                                                        \
  } while (0)

// The names of `pid`'s threads that start with `prefix`, sorted.
inline std::vector<std::string> threads_named(pid_t pid, const std::string& prefix) {
  std::vector<std::string> names;
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  for (const std::string& tid : list_dir(task)) {
    std::string comm = read_file(task + "/" + tid + "/comm").value_or("");
    if (!comm.empty() && comm.back() == '\n') comm.pop_back();
    if (comm.rfind(prefix, 0) == 0) names.push_back(comm);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace dpfs::itest

#include "nfs_server.h"
#include "redis_server.h"
