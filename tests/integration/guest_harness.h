// The guest harness of the integration tests: QEMU guests booted by
// tests/guest/run-guest.sh (Debian's kernel, a busybox initramfs, TCG) on a
// dpfs vhost-user device or, with --nfs, on an NFS export mounted by the
// guest kernel's own client; the daemon under test; and the checks of what
// the guests' workloads printed. Used by guest_test.cc, guest_nfs_test.cc
// and guest_kv_test.cc.
//
// Needs qemu-system-x86_64, a guest kernel (/boot/vmlinuz-*), busybox-static
// and cpio (scripts/deps.sh installs them): GuestTest FAILS without them.
//
// DPFS_TEST_BINARY=path runs another build of the daemon (as the FUSE tests).
#pragma once

#include <fcntl.h>
#include <glob.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#ifndef DPFS_BINARY
#error "DPFS_BINARY must name the dpfs daemon binary"
#endif
#ifndef DPFS_SOURCE_DIR
#error "DPFS_SOURCE_DIR must name the source tree (for tests/guest)"
#endif

extern char** environ;

namespace dpfs::itest {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

inline const fs::path kGuestDir = fs::path(DPFS_SOURCE_DIR) / "tests" / "guest";

inline std::string daemon_binary() {
  const char* v = std::getenv("DPFS_TEST_BINARY");
  return v != nullptr && *v != '\0' ? v : DPFS_BINARY;
}

inline std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

inline std::string tail(const std::string& text, size_t lines) {
  size_t pos = text.size();
  for (size_t n = 0; n <= lines && pos > 0; ++n) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

inline size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

inline bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path != nullptr ? path : "/usr/bin:/bin");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    if (::access((fs::path(dir) / program).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// What the guest tests need and the machine lacks, or "".
inline std::string missing_prerequisites() {
  std::string missing;
  if (!on_path("qemu-system-x86_64")) missing += " qemu-system-x86_64 (qemu-system-x86)";
  glob_t g{};
  if (::glob("/boot/vmlinuz-*", 0, nullptr, &g) != 0)
    missing += " /boot/vmlinuz-* (linux-image-amd64)";
  globfree(&g);
  if (::access("/bin/busybox", X_OK) != 0) missing += " /bin/busybox (busybox-static)";
  if (!on_path("cpio")) missing += " cpio";
  if (!fs::exists(kGuestDir / "run-guest.sh"))
    missing += " " + (kGuestDir / "run-guest.sh").string();
  return missing;
}

// Starts `argv` with stdout and stderr appended to `log`; returns its pid.
inline pid_t spawn(const std::vector<std::string>& argv, const fs::path& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                   O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = -1;
  const int e = ::posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  return e == 0 ? pid : -1;
}

// Waits up to `timeout` for `pid`; its wait status, or -1 if it is still running.
inline int wait_for(pid_t pid, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    int status = 0;
    const pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0) return -1;
    if (std::chrono::steady_clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(50ms);
  }
}

inline std::string describe_status(int status) {
  if (status == -1) return "still running";
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by SIG") + sigabbrev_np(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// A temporary directory for sockets and logs, removed at the end.
class TempDir {
 public:
  TempDir() {
    char name[] = "/tmp/dpfs-guest-test.XXXXXX";
    if (::mkdtemp(name) != nullptr) path_ = name;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty() && std::getenv("DPFS_TEST_KEEP") == nullptr) fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// `dpfs serve --backend memfs --vhost-user SOCK --tag TAG ...`, its stderr in
// a log file.
class Daemon {
 public:
  Daemon(const fs::path& dir, const std::string& tag, std::vector<std::string> extra)
      : Daemon(kArgs, dir / (tag + ".sock"), dir / (tag + ".dpfs.log"),
               {"--backend", "memfs", "--vhost-user", (dir / (tag + ".sock")).string(), "--tag",
                tag}) {
    start(extra);
  }
  // `dpfs serve ARGS...`, started by start(); `socket` is the one ready()
  // waits for.
  struct Args {};
  static constexpr Args kArgs{};
  Daemon(Args, const fs::path& socket, const fs::path& log, std::vector<std::string> args)
      : socket_(socket), log_(log), args_(std::move(args)) {}
  void start(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {daemon_binary(), "serve"};
    argv.insert(argv.end(), args_.begin(), args_.end());
    argv.insert(argv.end(), extra.begin(), extra.end());
    pid_ = spawn(argv, log_);
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }

  // Whether the socket appeared within 10 s (and the daemon is alive).
  ::testing::AssertionResult ready() {
    if (pid_ <= 0) return ::testing::AssertionFailure() << "could not start " << daemon_binary();
    for (int i = 0; i < 200; ++i) {
      struct stat st {};
      if (::stat(socket_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
        return ::testing::AssertionSuccess();
      }
      const int status = wait_for(pid_, 0ms);
      if (status != -1) {
        pid_ = -1;
        return ::testing::AssertionFailure() << "dpfs exited (" << describe_status(status)
                                             << ") before creating " << socket_ << ":\n"
                                             << log();
      }
      std::this_thread::sleep_for(50ms);
    }
    return ::testing::AssertionFailure() << "no socket at " << socket_ << " after 10 s:\n" << log();
  }

  // SIGTERM, then the wait status (-1: still running after `timeout`).
  int terminate(std::chrono::milliseconds timeout = 15s) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, SIGTERM);
    return reap(timeout);
  }
  // The wait status once it exits by itself within `timeout`; -1 if not.
  int reap(std::chrono::milliseconds timeout) {
    const int status = wait_for(pid_, timeout);
    if (status != -1) pid_ = -1;
    return status;
  }

  std::string log() const { return read_text(log_); }
  const std::string& socket() const { return socket_; }

 private:
  std::string socket_;
  fs::path log_;
  std::vector<std::string> args_;
  pid_t pid_ = -1;
};

struct GuestRun {
  int status = -1;      // run-guest.sh's wait status
  std::string console;  // the guest's console
  std::string output;   // run-guest.sh's own output
  double seconds = 0;

  bool ok() const { return WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string describe() const {
    return "run-guest.sh: " + describe_status(status) + " after " + std::to_string(seconds) +
           " s\n----- run-guest.sh output -----\n" + tail(output, 40) +
           "\n----- guest console (tail) -----\n" + tail(console, 60);
  }
};

// Where a guest's console and run-guest.sh's output go.
inline fs::path console_of(const fs::path& dir, const char* name) {
  return dir / (std::string(name) + ".console.log");
}
inline fs::path output_of(const fs::path& dir, const char* name) {
  return dir / (std::string(name) + ".run-guest.log");
}

// Starts run-guest.sh: one guest that mounts what `target` names (its
// run-guest.sh options: --socket SOCK --tag TAG, or --nfs SERVER:/PATH ...)
// and runs `workload` (a file in tests/guest/workloads, or "" for
// mount/unmount only). Its pid.
inline pid_t start_guest(const fs::path& dir, const std::vector<std::string>& target,
                         const std::string& workload, std::vector<std::string> extra,
                         const char* name) {
  std::vector<std::string> argv = {(kGuestDir / "run-guest.sh").string()};
  argv.insert(argv.end(), target.begin(), target.end());
  for (const char* a : {"--quiet", "--no-fio", "--timeout", "150", "--log"}) argv.push_back(a);
  argv.push_back(console_of(dir, name).string());
  if (!workload.empty()) {
    argv.push_back("--workload");
    argv.push_back((kGuestDir / "workloads" / workload).string());
  }
  argv.insert(argv.end(), extra.begin(), extra.end());
  return spawn(argv, output_of(dir, name));
}
// One guest against the vhost-user-fs device on `socket`.
inline pid_t start_guest(const fs::path& dir, const std::string& socket, const std::string& tag,
                         const std::string& workload, std::vector<std::string> extra,
                         const char* name) {
  return start_guest(dir, {"--socket", socket, "--tag", tag}, workload, std::move(extra), name);
}

// Boots one guest (start_guest) and waits for it; `meanwhile`, if any,
// runs once it is started (given run-guest.sh's pid).
inline GuestRun run_guest(const fs::path& dir, const std::vector<std::string>& target,
                          const std::string& workload, std::vector<std::string> extra,
                          const char* name, const std::function<void(pid_t)>& meanwhile = {}) {
  GuestRun run;
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = start_guest(dir, target, workload, std::move(extra), name);
  if (pid > 0 && meanwhile) meanwhile(pid);
  if (pid > 0) run.status = wait_for(pid, 400s);
  if (run.status == -1 && pid > 0) {
    ::kill(pid, SIGTERM);  // run-guest.sh kills its QEMU on the way out
    ::waitpid(pid, nullptr, 0);
  }
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  run.console = read_text(console_of(dir, name));
  run.output = read_text(output_of(dir, name));
  std::printf("[ guest    ] %s: %s in %.1f s\n", name, describe_status(run.status).c_str(),
              run.seconds);
  std::fflush(stdout);
  return run;
}
inline GuestRun run_guest(const fs::path& dir, const std::string& socket, const std::string& tag,
                          const std::string& workload, std::vector<std::string> extra,
                          const char* name) {
  return run_guest(dir, {"--socket", socket, "--tag", tag}, workload, std::move(extra), name);
}

// basic.sh's summary must say 0 failed, `boots` times.
inline void expect_basic_passed(const GuestRun& run, size_t boots) {
  static const std::regex summary(R"(basic: (\d+) checks, (\d+) failed; (\d+) files)");
  size_t found = 0;
  for (std::sregex_iterator it(run.console.begin(), run.console.end(), summary), end; it != end;
       ++it) {
    ++found;
    EXPECT_EQ((*it)[2].str(), "0") << "basic.sh failed checks:\n" << run.describe();
    EXPECT_GT(std::stoi((*it)[1].str()), 100) << run.describe();
  }
  EXPECT_EQ(found, boots) << "basic.sh summaries in the console\n" << run.describe();
}

// The md5 of what `command` prints, computed on the host.
inline std::string host_md5(const std::string& command) {
  const std::string line = "(" + command + ") | md5sum";
  FILE* p = ::popen(line.c_str(), "r");
  if (p == nullptr) return "popen failed";
  char buf[128] = {};
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, p);
  ::pclose(p);
  return std::string(buf, n).substr(0, 32);
}

// readback.sh's pattern files, as the host produces them.
inline const std::map<std::string, std::string>& expected_patterns() {
  static const std::map<std::string, std::string> md5s = {
      {"seq", host_md5("seq 1 250000")},
      {"yes", host_md5("yes dpfs-readback-0123456789 | head -c 3000017")},
      {"small", host_md5("seq 7 13")},
      {"empty", host_md5("head -c 0 /dev/zero")},
  };
  return md5s;
}

// Every pattern file printed by readback.sh in `phase` has the host's md5.
inline void expect_patterns(const GuestRun& run, const std::string& phase) {
  for (const auto& [name, md5] : expected_patterns()) {
    EXPECT_NE(run.console.find("READBACK " + phase + " " + name + " " + md5), std::string::npos)
        << "pattern file " << name << " (" << phase << "): the guest did not read back md5 " << md5
        << "\n"
        << run.describe();
  }
}

// One test's result in a gtest run (workloads/gtest.sh prints gtest's
// output to the console): "OK", "FAILED" or "SKIPPED", and what it printed
// (the failure's text, or the reason it skipped).
struct TestResult {
  std::string result;
  std::string text;
};

// The results in a gtest console output, by test name.
inline std::map<std::string, TestResult> gtest_results(const std::string& console) {
  static const std::regex run(R"(^\[ RUN      \] (\S+)$)");
  static const std::regex end(R"(^\[ +(OK|FAILED|SKIPPED) +\] ([^ ,]+)(, where .*)? \(\d+ ms\)$)");
  std::map<std::string, TestResult> results;
  std::istringstream lines(console);
  std::string current, text;
  for (std::string line; std::getline(lines, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    std::smatch m;
    if (std::regex_match(line, m, run)) {
      current = m[1];
      text.clear();
    } else if (std::regex_match(line, m, end) && m[2] == current) {
      results[current] = {m[1], text};
      current.clear();
    } else if (!current.empty()) {
      text += line + "\n";
    }
  }
  return results;
}

// This test binary (dpfs_integration_tests), for a guest to run the suites
// with (run-guest.sh --bin, workloads/gtest.sh); "" if it cannot be named.
inline std::string dpfs_integration_tests() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "";
}

class GuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string missing = missing_prerequisites();
    ASSERT_EQ(missing, "") << "guest tests need:" << missing
                           << " -- install with scripts/deps.sh (as CI does)";
    ASSERT_FALSE(dir_.path().empty()) << "mkdtemp failed";
  }

  // The daemon's clean exit on SIGTERM: status 0, socket removed.
  void expect_clean_exit(Daemon& daemon) {
    const int status = daemon.terminate();
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "dpfs on SIGTERM: " << describe_status(status) << "\n"
        << tail(daemon.log(), 40);
    EXPECT_FALSE(fs::exists(daemon.socket())) << "socket left behind: " << daemon.socket();
  }

  TempDir dir_;
};

}  // namespace dpfs::itest
