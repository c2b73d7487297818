#include "server/serve.h"

#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <memory>
#include <system_error>

#include "backend/factory.h"
#include "fuse/session.h"
#include "server/signals.h"
#include "server/stats.h"
#include "server/version.h"
#include "transport/fuse_dev.h"

namespace dpfs::server {
namespace {

std::string describe_backend(const BackendConfig& b) {
  if (b.type == "memfs") {
    return fmt::format("memfs (capacity {}, max_inodes {})", format_size(b.memfs.capacity_bytes),
                       b.memfs.max_inodes);
  }
  if (b.type == "null") {
    return fmt::format("null (file_size {}{})", format_size(b.null.file_size),
                       b.null.direct_io ? ", direct_io" : "");
  }
  return b.arg.empty() ? b.type : b.type + ":" + b.arg;
}

// The objects that serve one mount. The backend is built first, so that
// a backend that cannot start fails before anything is mounted; the mount
// comes before the workers that serve it. Torn down in the one order that
// is safe; see shutdown().
//
// Not thread-safe: the main thread's.
class Daemon {
 public:
  Daemon(const Config& cfg, std::function<void()> on_stop) : backend_(make_backend(cfg.backend)) {
    fuse::SessionOptions options;
    options.max_write = cfg.fuse.max_write;
    options.entry_timeout = cfg.fuse.entry_timeout;
    options.attr_timeout = cfg.fuse.attr_timeout;
    options.writeback_cache = cfg.fuse.writeback_cache;
    options.name = cfg.fuse.mount;
    session_ = std::make_unique<fuse::FuseSession>(*backend_, options);
    mount_ = std::make_unique<transport::FuseMount>(
        transport::MountOptions{cfg.fuse.mount, cfg.fuse.max_write, cfg.fuse.mount_is_default});
    spdlog::info(
        "dpfs {}: serving {} at {}: {} thread{}, max_write {}, entry_timeout {}s, attr_timeout "
        "{}s, writeback_cache {}",
        kVersion, describe_backend(cfg.backend), mount_->mount_point(), cfg.threads,
        cfg.threads == 1 ? "" : "s", format_size(cfg.fuse.max_write), cfg.fuse.entry_timeout,
        cfg.fuse.attr_timeout, cfg.fuse.writeback_cache ? "on" : "off");
    device_ = std::make_unique<transport::FuseDevice>(mount_->fd(), *session_, cfg.threads,
                                                      std::move(on_stop));
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;
  ~Daemon() { shutdown(); }

  // Idempotent. The session stays, for its statistics.
  void shutdown() {
    // Unmount first, while the workers still serve: an unmount may flush
    // cached writes (writeback_cache) through them. Then the connection
    // ends and the workers stop.
    if (mount_) mount_->unmount();
    if (device_) device_->stop();
    // A backend may still hold replies (a SETLKW waiting for its lock); its
    // destructor answers them, into the device's request slots: so the
    // backend goes before the device. The session only keeps a dangling
    // reference to it, which nothing uses any more.
    backend_.reset();
    device_.reset();
  }

  const fuse::FuseSession& session() const { return *session_; }
  bool failed() const { return device_ && device_->failed(); }
  const std::string& mount_point() const { return mount_->mount_point(); }

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<fuse::FuseSession> session_;
  std::unique_ptr<transport::FuseMount> mount_;
  std::unique_ptr<transport::FuseDevice> device_;
};

}  // namespace

int serve(const Config& cfg) {
  SignalFd signals({SIGINT, SIGTERM, SIGHUP, SIGUSR1});
  // Written by a worker that stops by itself (unmounted from outside).
  transport::UniqueFd stopped(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stopped) throw std::system_error(errno, std::generic_category(), "eventfd");
  const int stopped_fd = stopped.get();

  Daemon daemon(cfg, [stopped_fd] {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(stopped_fd, &one, sizeof(one));
  });

  int status = 0;
  for (;;) {
    pollfd fds[2] = {{signals.fd(), POLLIN, 0}, {stopped_fd, POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("waiting for signals: {}", std::strerror(errno));
      status = 1;
      break;
    }
    if (fds[1].revents & POLLIN) {
      if (daemon.failed()) {
        spdlog::error("serving {} failed; stopping", daemon.mount_point());
        status = 1;
      } else {
        spdlog::info("{} was unmounted or its connection closed; stopping", daemon.mount_point());
      }
      break;
    }
    if (fds[0].revents & POLLIN) {
      const int sig = signals.take();
      if (sig == 0) continue;
      if (sig == SIGUSR1) {
        log_stats(daemon.session(), "stats");
        continue;
      }
      spdlog::info("SIG{}: shutting down", sigabbrev_np(sig));
      break;
    }
  }
  daemon.shutdown();
  log_stats(daemon.session(), "totals");
  return status;
}

}  // namespace dpfs::server
