// A real NFS server for the tests: nfs-ganesha with its VFS backend,
// exporting a private directory on 127.0.0.1 (NFSv3 and v4, TCP, root not
// squashed), started, stopped and restarted by the test itself.
//
// NfsServer::shared() is the one server of this test process, started on
// first use and stopped at exit; only one ganesha can listen on port 2049,
// so tests that stop or restart it run one at a time (gtest runs tests
// sequentially). Clients mount sub-directories of the export
// (nfs://127.0.0.1/<export>/<dir>), one per mount, so tests stay apart.
// The export's NFSv4 pseudo path is its path, so that the same URL names
// a directory in both versions (?version=3 or ?version=4).
//
// Needs ganesha.nfsd (nfs-ganesha, nfs-ganesha-vfs), rpcbind and nfs-ls
// (libnfs-utils): without them start() returns what is missing, and the
// tests using it FAIL.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "mount_fixture.h"

namespace dpfs::itest {

class NfsServer {
 public:
  static constexpr const char* kGanesha = "/usr/bin/ganesha.nfsd";
  static constexpr const char* kRpcbind = "/usr/sbin/rpcbind";
  static constexpr const char* kNfsLs = "/usr/bin/nfs-ls";

  NfsServer() {
    char tmpl[] = "/tmp/dpfs-nfs.XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) {
      base_ = tmpl;
      ::chmod(base_.c_str(), 0755);
      export_ = base_ + "/export";
      ::mkdir(export_.c_str(), 0755);
    }
  }
  NfsServer(const NfsServer&) = delete;
  NfsServer& operator=(const NfsServer&) = delete;
  ~NfsServer() {
    if (pid_ > 0) stop(SIGKILL);
    std::error_code ignored;
    if (!base_.empty()) std::filesystem::remove_all(base_, ignored);
  }

  // The server of this process, started (if it is not running yet).
  // `problem` is "" or why it could not start.
  static NfsServer& shared(std::string* problem) {
    static NfsServer server;
    *problem = server.running() ? "" : server.start();
    return server;
  }

  bool running() const { return pid_ > 0; }
  const std::string& export_dir() const { return export_; }
  std::string log() const { return read_text_file(base_ + "/ganesha.log"); }

  // A fresh, empty directory in the export (mode 0777 so that tests as
  // other users behave as on any directory they are given).
  std::string fresh_dir(const std::string& hint) {
    for (int i = 0;; ++i) {
      std::string d = export_ + "/" + hint + "." + std::to_string(::getpid()) + "." +
                      std::to_string(counter_++);
      if (::mkdir(d.c_str(), 0755) == 0) return d;
      if (errno != EEXIST || i > 1000) return "";
    }
  }
  // nfs://127.0.0.1/<dir>?version=N for a directory in the export.
  static std::string url(const std::string& dir, int version = 3) {
    return "nfs://127.0.0.1" + dir + "?version=" + std::to_string(version);
  }

  // Writes the configuration, starts ganesha and waits until it answers.
  // Returns "" or what went wrong.
  std::string start(std::chrono::milliseconds timeout = 20s) {
    if (base_.empty()) return "mkdtemp failed";
    if (pid_ > 0) return "";
    for (const char* tool : {kGanesha, kRpcbind, kNfsLs}) {
      if (::access(tool, X_OK) != 0) {
        return std::string(tool) +
               " is missing (apt-get install nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils)";
      }
    }
    if (std::string e = ensure_rpcbind(); !e.empty()) return e;
    {
      std::ofstream conf(base_ + "/ganesha.conf");
      conf << "NFS_CORE_PARAM { Bind_addr = 127.0.0.1; Protocols = 3, 4; Enable_NLM = false;"
              " Enable_RQUOTA = false; }\n"
              // Owners as numbers both ways: there is no idmapper here,
              // and dpfs reads and sends numeric ids (docs/nfs.md).
              "NFSV4 { Graceless = true; Allow_Numeric_Owners = true;"
              " Only_Numeric_Owners = true; }\n"
              "EXPORT { Export_Id = 1; Path = "
           << export_ << "; Pseudo = " << export_
           << "; Access_Type = RW; Squash = No_Root_Squash;"
              " SecType = sys; Protocols = 3, 4; Transports = TCP; FSAL { Name = VFS; } }\n";
      if (!conf) return "cannot write " + base_ + "/ganesha.conf";
    }
    std::vector<std::string> args{kGanesha, "-F",
                                  "-f",     base_ + "/ganesha.conf",
                                  "-L",     base_ + "/ganesha.log",
                                  "-p",     base_ + "/ganesha.pid"};
    auto argv = make_argv(args);
    ::fflush(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) return "fork: " + errname(errno);
    if (pid == 0) {
      int null_fd = ::open("/dev/null", O_RDWR);
      ::dup2(null_fd, 0);
      ::dup2(null_fd, 1);
      ::dup2(null_fd, 2);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      // A test process that dies (a crash, a timeout's SIGKILL) takes its
      // server along instead of leaving port 2049 taken for the next run.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    pid_ = pid;
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      RunResult r = run({kNfsLs, url(export_)}, 5s);
      if (!r.timed_out && WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0) return "";
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "ganesha.nfsd exited at start-up; its log:\n" + log();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        std::string e = "ganesha did not answer nfs-ls within " + std::to_string(timeout.count()) +
                        " ms (" + r.err + "); its log:\n" + log();
        stop(SIGKILL);
        return e;
      }
      std::this_thread::sleep_for(50ms);
    }
  }

  // Stops ganesha with `sig` (SIGKILL: a crash) and waits for it to exit.
  std::string stop(int sig = SIGTERM, std::chrono::milliseconds timeout = 15s) {
    if (pid_ <= 0) return "ganesha is not running";
    ::kill(pid_, sig);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) != pid_) {
      if (std::chrono::steady_clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        pid_ = -1;
        return "ganesha did not exit within " + std::to_string(timeout.count()) + " ms of signal " +
               std::to_string(sig);
      }
      std::this_thread::sleep_for(10ms);
    }
    pid_ = -1;
    return "";
  }

 private:
  // rpcbind must run for ganesha to register; one already running (anyone's)
  // is used and never stopped.
  static std::string ensure_rpcbind() {
    if (!process_running("rpcbind")) {
      RunResult r = run({kRpcbind, "-w"}, 10s);
      if (r.timed_out || !WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
        return "rpcbind -w failed: " + r.err;
      }
    }
    // Ganesha registers with it at start and exits if it cannot: wait until
    // it answers on its port.
    for (int i = 0; i < 100; ++i) {
      if (port_answers(111)) return "";
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return "rpcbind runs but does not answer on 127.0.0.1:111 within 5 s";
  }

  static bool port_answers(uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  }

  static bool process_running(const std::string& comm) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator("/proc", ec)) {
      const std::string name = entry.path().filename();
      if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
      std::string c = read_text_file(entry.path() / "comm");
      if (!c.empty() && c.back() == '\n') c.pop_back();
      if (c != comm) continue;
      // A zombie (state Z, after "pid (comm) ") serves nothing.
      const std::string stat = read_text_file(entry.path() / "stat");
      const size_t paren = stat.rfind(')');
      if (paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z') continue;
      return true;
    }
    return false;
  }

  std::string base_, export_;
  pid_t pid_ = -1;
  unsigned counter_ = 0;
};

// For mount_fixture.h: a fresh directory in the shared server's export, for
// the nfs:// configurations of backends.h ("nfs://127.0.0.1{dir}").
inline std::string nfs_test_export(const std::string& hint, std::string* problem) {
  NfsServer& server = NfsServer::shared(problem);
  if (!problem->empty()) return "";
  std::string dir = server.fresh_dir(hint);
  if (dir.empty()) *problem = "cannot create a directory in " + server.export_dir();
  return dir;
}

}  // namespace dpfs::itest
