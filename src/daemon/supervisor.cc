#include "daemon/supervisor.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <system_error>

#include "daemon/signals.h"
#include "daemon/stats_socket.h"
#include "util/unique_fd.h"
#include "virtio/queue.h"

namespace dpfs::daemon {
namespace {

using Clock = std::chrono::steady_clock;
using util::UniqueFd;

// A part that crashes this often within kRestartWindow is given up.
constexpr size_t kMaxRestarts = 5;
constexpr auto kRestartWindow = std::chrono::seconds(60);
// How long a process may take to answer a statistics request.
constexpr int kStatsTimeoutMs = 2000;
// How long the processes get to stop after SIGTERM before SIGKILL.
constexpr auto kStopTimeout = std::chrono::seconds(30);

// One serving process's part of the configuration, and how it is doing.
struct Part {
  std::string name;
  Config cfg;
  int device = -1;                        // the index of its socket; -1: none
  bool restart = true;                    // started again after a crash (not a FUSE mount)
  pid_t pid = -1;                         // -1: not running
  UniqueFd control;                       // the supervisor's end of its control socket
  bool ready = false;                     // said it serves
  bool done = false;                      // ended for good
  std::deque<Clock::time_point> crashes;  // within kRestartWindow
  // A device's: the supervisor's end of its keeper socket, what it kept
  // of the front-end connection, the memfd of its rings' records.
  UniqueFd keeper;
  Kept kept;
  UniqueFd records;
};

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) {
    return fmt::format("died of SIG{}{}", sigabbrev_np(WTERMSIG(status)),
                       WCOREDUMP(status) ? " (core dumped)" : "");
  }
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

std::vector<Part> split(const Config& cfg) {
  Config base = cfg;
  base.devices.clear();
  base.fuse.mount.clear();
  base.remote.listen.clear();
  base.stats_socket.clear();
  std::vector<Part> parts;
  for (size_t i = 0; i < cfg.devices.size(); ++i) {
    Part& p = parts.emplace_back();
    p.cfg = base;
    p.cfg.devices = {cfg.devices[i]};
    p.device = int(i);
    p.name = cfg.devices[i].name();
  }
  if (!cfg.fuse.mount.empty()) {
    Part& p = parts.emplace_back();
    p.cfg = base;
    p.cfg.fuse.mount = cfg.fuse.mount;
    p.restart = false;
    p.name = "FUSE mount " + cfg.fuse.mount;
  }
  if (!cfg.remote.listen.empty()) {
    Part& p = parts.emplace_back();
    p.cfg = base;
    p.cfg.remote.listen = cfg.remote.listen;
    p.name = "remote listener " + cfg.remote.listen;
  }
  return parts;
}

class Supervisor {
 public:
  Supervisor(const Config& cfg, const ServePart& serve_part)
      : serve_part_(serve_part), parts_(split(cfg)) {
    // Bound once, here, for every process that will serve them: a
    // restarted device process takes the next front-end on the same socket.
    if (!cfg.stats_socket.empty()) {
      stats_socket_ = std::make_unique<StatsSocket>(cfg.stats_socket);
      spdlog::info("statistics: dpfs stats {}", stats_socket_->path());
    }
    for (const DeviceConfig& d : cfg.devices) {
      sockets_.push_back(std::make_unique<util::Listener>(d.socket, "vhost-user socket",
                                                          util::SocketAccess{d.socket_gid}));
    }
    for (Part& p : parts_) {
      if (p.device < 0) continue;
      const size_t queues = size_t(cfg.devices[size_t(p.device)].request_queues) + 1;
      p.records.reset(::memfd_create("dpfs-ring-records", MFD_CLOEXEC));
      if (!p.records ||
          ::ftruncate(p.records.get(), off_t(queues * sizeof(virtio::RingRecord))) != 0) {
        throw std::system_error(errno, std::generic_category(), p.name + ": its ring records");
      }
    }
  }

  int run() {
    for (Part& p : parts_) {
      if (!start(p)) {
        stop_all();
        return 1;
      }
    }
    while (!stopping_) {
      if (std::all_of(parts_.begin(), parts_.end(), [](const Part& p) { return p.done; })) {
        spdlog::info("every transport is done; stopping");
        break;
      }
      std::vector<pollfd> fds{{signals_.fd(), POLLIN, 0},
                              {stats_socket_ ? stats_socket_->fd() : -1, POLLIN, 0}};
      std::vector<Part*> waiting;  // for their 'R'
      for (Part& p : parts_) {
        if (p.pid > 0 && !p.ready) {
          fds.push_back({p.control.get(), POLLIN, 0});
          waiting.push_back(&p);
        }
      }
      std::vector<Part*> keeping;  // their records
      for (Part& p : parts_) {
        if (p.pid > 0 && p.keeper) {
          fds.push_back({p.keeper.get(), POLLIN, 0});
          keeping.push_back(&p);
        }
      }
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        spdlog::error("supervisor: waiting for signals: {}", std::strerror(errno));
        status_ = 1;
        break;
      }
      for (size_t i = 0; i < waiting.size(); ++i) {
        if (fds[2 + i].revents & POLLIN) take_ready(*waiting[i]);
      }
      for (size_t i = 0; i < keeping.size(); ++i) {
        if (fds[2 + waiting.size() + i].revents & (POLLIN | POLLHUP)) keep(*keeping[i]);
      }
      if (fds[1].revents & POLLIN) stats_socket_->answer(stats());
      if (fds[0].revents & POLLIN) take_signals();
    }
    stop_all();
    return status_;
  }

 private:
  // Starts `p`'s process; false if it cannot be (fork failed, logged).
  bool start(Part& p) {
    int pair[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
      spdlog::error("{}: socketpair: {}", p.name, std::strerror(errno));
      return false;
    }
    UniqueFd ours(pair[0]), theirs(pair[1]);
    UniqueFd keeper_ours, keeper_theirs;
    if (p.device >= 0) {
      if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, pair) != 0) {
        spdlog::error("{}: socketpair: {}", p.name, std::strerror(errno));
        return false;
      }
      keeper_ours.reset(pair[0]);
      keeper_theirs.reset(pair[1]);
    }
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) {
      spdlog::error("{}: fork: {}", p.name, std::strerror(errno));
      return false;
    }
    if (pid == 0) {
      ours.reset();
      keeper_ours.reset();
      serve_in_child(p, std::move(theirs), std::move(keeper_theirs));
    }
    p.pid = pid;
    p.control = std::move(ours);
    p.keeper = std::move(keeper_ours);
    p.ready = false;
    spdlog::info("{}: served by process {}", p.name, pid);
    return true;
  }

  [[noreturn]] void serve_in_child(Part& p, UniqueFd control, UniqueFd keeper) {
    // A serving process outlives its supervisor by no more than a shutdown.
    ::prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (::getppid() != supervisor_) std::_Exit(1);
    // It holds nothing of the other parts: their sockets (a process that
    // could accept another tenant's front-end would serve it), their
    // control sockets, the stats socket. The socket files are the
    // supervisor's to remove. (The supervisor's signalfd stays open: it
    // reads this process's own signals, and none it waits for.)
    for (size_t i = 0; i < sockets_.size(); ++i) {
      if (int(i) == p.device) continue;
      sockets_[i]->forget_socket_file();
      sockets_[i].reset();
    }
    if (stats_socket_) {
      stats_socket_->listener().forget_socket_file();
      stats_socket_.reset();
    }
    for (Part& other : parts_) {
      other.control.reset();
      other.keeper.reset();
      if (&other == &p) continue;
      other.kept.clear();
      other.records.reset();
    }
    ServingPart part;
    part.cfg = p.cfg;
    part.keeper = keeper.release();
    part.records = p.records.release();
    if (p.kept.resumable()) part.resume = std::move(p.kept);
    p.kept.clear();
    if (p.device >= 0) {
      part.socket = std::move(sockets_[size_t(p.device)]);
      part.socket->forget_socket_file();
    }
    part.control = control.get();
    int status;
    try {
      status = serve_part_(std::move(part));
    } catch (const std::exception& e) {
      // As main() reports start-up failures: one line, no decoration.
      std::string line = e.what();
      std::replace(line.begin(), line.end(), '\n', ' ');
      std::fprintf(stderr, "dpfs: %s\n", line.c_str());
      status = 1;
    }
    spdlog::default_logger()->flush();
    // exit, not _exit: the sanitizers' checks run at exit.
    std::exit(status);
  }

  void take_ready(Part& p) {
    char c = 0;
    const ssize_t n = ::recv(p.control.get(), &c, 1, MSG_DONTWAIT);
    if (n == 1 && c == 'R') {
      p.ready = true;
      started_ = started_ || std::all_of(parts_.begin(), parts_.end(),
                                         [](const Part& q) { return q.ready || q.done; });
      return;
    }
    // EOF: it is ending; SIGCHLD says how.
    if (n == 0) p.control.reset();
  }

  // Takes what `p`'s process sent to be kept.
  void keep(Part& p) {
    if (!take_records(p.keeper.get(), p.kept, p.name)) p.keeper.reset();
  }

  void take_signals() {
    while (const int sig = signals_.take()) {
      if (sig == SIGCHLD) {
        reap();
      } else if (sig == SIGUSR1) {
        for (const Part& p : parts_) {
          if (p.pid > 0) ::kill(p.pid, SIGUSR1);
        }
      } else {
        spdlog::info("SIG{}: shutting down", sigabbrev_np(sig));
        stopping_ = true;
      }
    }
  }

  void reap() {
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      const auto it =
          std::find_if(parts_.begin(), parts_.end(), [&](const Part& p) { return p.pid == pid; });
      if (it == parts_.end()) continue;
      ended(*it, status);
    }
  }

  void ended(Part& p, int status) {
    const pid_t pid = p.pid;
    const bool served = p.ready;
    p.pid = -1;
    p.ready = false;
    p.control.reset();
    // What it sent last, before it ended.
    if (p.keeper) keep(p);
    p.keeper.reset();
    const bool clean = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    if (stopping_) {
      if (!clean) {
        spdlog::error("{}: serving process {} {} while stopping", p.name, pid,
                      describe_exit(status));
        status_ = 1;
      }
      p.done = true;
      return;
    }
    if (clean) {
      spdlog::info("{}: serving process {} is done", p.name, pid);
      p.done = true;
      p.kept.clear();
      return;
    }
    status_ = 1;
    if (!served) {
      // It said why (one line). At start-up the daemon stops with it, as
      // a single process would; later it is given up.
      spdlog::error("{}: serving process {} {} before it served{}", p.name, pid,
                    describe_exit(status), starting() ? "; stopping" : "");
      if (starting()) stopping_ = true;
      p.done = true;
      return;
    }
    if (p.kept.resumable()) {
      spdlog::error("{}: serving process {} {}; a new one takes its front-end connection over",
                    p.name, pid, describe_exit(status));
    } else {
      spdlog::error("{}: serving process {} {}; its tenant lost its connection", p.name, pid,
                    describe_exit(status));
      p.kept.clear();
    }
    const Clock::time_point now = Clock::now();
    while (!p.crashes.empty() && now - p.crashes.front() > kRestartWindow) p.crashes.pop_front();
    if (!p.restart || p.crashes.size() >= kMaxRestarts) {
      p.kept.clear();
      spdlog::error(
          "{}: not started again{}", p.name,
          p.restart ? fmt::format(" ({} crashes within a minute)", p.crashes.size()) : "");
      p.done = true;
      return;
    }
    p.crashes.push_back(now);
    if (!start(p)) p.done = true;
  }

  // Until every process said once that it serves.
  bool starting() const { return !started_; }

  std::vector<std::string> stats() {
    std::vector<std::string> lines;
    for (Part& p : parts_) {
      if (p.device >= 0) {
        if (p.keeper) keep(p);
        lines.push_back(
            p.name + ": " +
            (p.kept.resumable()
                 ? fmt::format("front-end connection kept for a successor ({} set-up requests)",
                               p.kept.journal.size())
             : p.kept.overflow ? std::string("front-end connection not kept (journal too long)")
                               : std::string("no front-end connection to keep")));
      }
      if (p.pid <= 0 || !p.ready) {
        lines.push_back(p.name + ": " + (p.done ? "done" : "not serving"));
        continue;
      }
      if (!util::send_all(p.control.get(), "S")) continue;
      std::string text;
      const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(kStatsTimeoutMs);
      while (text.find('\0') == std::string::npos) {
        const auto left =
            std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
        pollfd pfd{p.control.get(), POLLIN, 0};
        if (left.count() <= 0 || ::poll(&pfd, 1, int(left.count())) <= 0) break;
        char buf[4096];
        const ssize_t n = ::recv(p.control.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (n <= 0) break;
        text.append(buf, size_t(n));
      }
      const size_t end = text.find('\0');
      if (end == std::string::npos) {
        lines.push_back(p.name + ": no answer");
        continue;
      }
      size_t at = 0;
      while (at < end) {
        const size_t nl = std::min(text.find('\n', at), end);
        if (nl > at) lines.push_back(text.substr(at, nl - at));
        at = nl + 1;
      }
    }
    return lines;
  }

  void stop_all() {
    stopping_ = true;
    for (const Part& p : parts_) {
      if (p.pid > 0) ::kill(p.pid, SIGTERM);
    }
    const Clock::time_point deadline = Clock::now() + kStopTimeout;
    auto running = [&] {
      return std::any_of(parts_.begin(), parts_.end(), [](const Part& p) { return p.pid > 0; });
    };
    reap();
    while (running()) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd pfd{signals_.fd(), POLLIN, 0};
      if (left.count() <= 0 || ::poll(&pfd, 1, int(left.count())) == 0) {
        for (const Part& p : parts_) {
          if (p.pid <= 0) continue;
          spdlog::error("{}: serving process {} did not stop within {} s; killing it", p.name,
                        p.pid, kStopTimeout.count());
          ::kill(p.pid, SIGKILL);
        }
        for (Part& p : parts_) {
          int status = 0;
          if (p.pid > 0 && ::waitpid(p.pid, &status, 0) == p.pid) ended(p, status);
        }
        break;
      }
      while (const int sig = signals_.take()) {
        if (sig == SIGCHLD) reap();
      }
    }
  }

  const ServePart& serve_part_;
  const pid_t supervisor_ = ::getpid();
  // SIGCHLD too: a serving process that ends.
  SignalFd signals_{SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGCHLD};
  std::unique_ptr<StatsSocket> stats_socket_;
  std::vector<std::unique_ptr<util::Listener>> sockets_;
  std::vector<Part> parts_;
  bool stopping_ = false;
  bool started_ = false;  // every process said once that it serves
  int status_ = 0;
};

}  // namespace

int supervise(const Config& cfg, const ServePart& serve_part) {
  Supervisor supervisor(cfg, serve_part);
  return supervisor.run();
}

void SupervisorLink::ready() const {
  if (control_ >= 0) util::send_all(control_, "R");
}

bool SupervisorLink::handle(const std::function<std::vector<std::string>()>& stats) const {
  char c = 0;
  const ssize_t n = ::recv(control_, &c, 1, MSG_DONTWAIT);
  if (n == 0) return false;
  if (n < 0) return errno == EAGAIN || errno == EINTR;
  if (c == 'S') {
    std::string text;
    for (const std::string& line : stats()) {
      text += line;
      text += '\n';
    }
    text.push_back('\0');
    util::send_all(control_, text);
  }
  return true;
}

}  // namespace dpfs::daemon
