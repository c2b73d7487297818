#include "daemon/serve.h"

#include <fmt/format.h>
#include <linux/capability.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <system_error>
#include <vector>

#include "backend/factory.h"
#include "daemon/fd_limits.h"
#include "daemon/signals.h"
#include "daemon/stats_socket.h"
#include "daemon/supervisor.h"
#include "daemon/tenant_handler.h"
#include "daemon/version.h"
#include "daemon/vhost_user_endpoint.h"
#include "fuse/session.h"
#include "fuse/session_stats.h"
#include "remote/server.h"
#include "sandbox/capabilities.h"
#include "sandbox/outside.h"
#include "sandbox/sandbox.h"
#include "transport/fuse_backing.h"
#include "transport/fuse_dev.h"
#include "util/unix_listener.h"

namespace dpfs::daemon {
namespace {

std::string read_secret(const Config& cfg) {
  return cfg.remote.secret_file.empty() ? std::string()
                                        : remote::read_secret_file(cfg.remote.secret_file);
}

// `dpfs serve --listen`: remote devices served from this daemon's backend,
// which is given later (set_backend), once inside the sandbox.
std::unique_ptr<remote::Server> make_remote_server(const Config& cfg) {
  remote::ServerOptions options;
  options.listen = remote::parse_endpoint(cfg.remote.listen, "tcp://", true);
  options.secret = read_secret(cfg);
  options.tls = {cfg.remote.tls_cert, cfg.remote.tls_key, cfg.remote.tls_ca};
  options.session_grace_s = cfg.remote.session_grace;
  options.handshake_timeout_s = cfg.remote.handshake_timeout;
  options.max_handshakes = cfg.remote.max_handshakes;
  options.max_handshakes_per_address = cfg.remote.max_handshakes_per_address;
  options.session = session_options(cfg, cfg.policy);
  options.session.name = "remote";
  return std::make_unique<remote::Server>(std::move(options), nullptr);
}

// A backend this daemon serves, with the policy its tenants are held to.
struct ServedBackend {
  BackendConfig* backend;
  const HostPolicy* policy;
};

// Every backend configuration this daemon serves.
std::vector<ServedBackend> served_backends(Config& cfg) {
  std::vector<ServedBackend> out;
  if (!cfg.fuse.mount.empty() || !cfg.remote.listen.empty()) {
    out.push_back({&cfg.backend, &cfg.policy});
  }
  for (DeviceConfig& d : cfg.devices) out.push_back({&d.backend, &d.policy});
  return out;
}

// What a backend needs of the host once it serves, as root (an
// unprivileged process has none of these to keep).
void add_backend_needs(const ServedBackend& served, sandbox::SandboxOptions* s) {
  const BackendConfig& b = *served.backend;
  const HostPolicy& policy = *served.policy;
  std::vector<int>& caps = s->capabilities;
  if (b.kind == BackendKind::kPassthrough) {
    // As virtiofsd keeps (src/main.rs): ownership and modes of the tenant's
    // files (chown, fowner, fsetid, dac_override while acting as the
    // tenant), acting as the tenant (setfsuid/setfsgid: setuid, setgid),
    // open_by_handle_at (dac_read_search). Only if the host's policy lets
    // tenants have them: device nodes (mknod), trusted.* and security.*
    // xattrs (sys_admin; security.capability: setfcap).
    caps.insert(caps.end(), {CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER,
                             CAP_FSETID, CAP_SETUID, CAP_SETGID});
    if (policy.allow_device_nodes) caps.push_back(CAP_MKNOD);
    if (policy.xattr_namespaces & (HostPolicy::kXattrTrusted | HostPolicy::kXattrSecurity)) {
      caps.push_back(CAP_SYS_ADMIN);
    }
    if (policy.xattr_namespaces & HostPolicy::kXattrSecurity) caps.push_back(CAP_SETFCAP);
  } else if (b.kind == BackendKind::kNfs) {
    // libnfs, as root, connects (and reconnects) from a reserved port.
    caps.push_back(CAP_NET_BIND_SERVICE);
    s->view.network = true;
  } else if (b.kind == BackendKind::kRemote || b.kind == BackendKind::kRedis) {
    s->view.network = true;
  }
}

// The sandbox `cfg` needs: the directories its passthrough backends serve
// (canonical), the network if a backend connects to a server, the
// capabilities its backends use. `dir_of[i]`: the index in shared_dirs of
// the i-th of served_backends(), if it is a passthrough backend. Throws
// std::invalid_argument (a passthrough directory that does not exist).
sandbox::SandboxOptions sandbox_plan(Config& cfg, std::vector<size_t>* dir_of) {
  sandbox::SandboxOptions s;
  s.view.mode = cfg.sandbox.mode;
  s.seccomp = cfg.sandbox.seccomp;
  for (const ServedBackend& served : served_backends(cfg)) {
    add_backend_needs(served, &s);
    const BackendConfig* b = served.backend;
    dir_of->push_back(SIZE_MAX);
    if (b->kind != BackendKind::kPassthrough) continue;
    char* real = ::realpath(b->arg.c_str(), nullptr);
    if (real == nullptr) {
      throw std::invalid_argument("passthrough: cannot open directory " + b->arg + ": " +
                                  std::strerror(errno));
    }
    const std::string dir = real;
    std::free(real);
    const auto at = std::find(s.view.shared_dirs.begin(), s.view.shared_dirs.end(), dir);
    dir_of->back() = size_t(at - s.view.shared_dirs.begin());
    if (at == s.view.shared_dirs.end()) s.view.shared_dirs.push_back(dir);
  }
  std::sort(s.capabilities.begin(), s.capabilities.end());
  s.capabilities.erase(std::unique(s.capabilities.begin(), s.capabilities.end()),
                       s.capabilities.end());
  // Name lookups of the network backends (glibc's files and dns modules
  // are built into libc: these are all they read).
  if (s.view.network) {
    s.view.read_only_files = {"/etc/hosts", "/etc/resolv.conf", "/etc/nsswitch.conf",
                              "/etc/host.conf", "/etc/gai.conf"};
  }
  return s;
}

// Enters the sandbox of `cfg` and points each passthrough backend at its
// directory as seen from inside. Returns what it entered, for the log (once
// the backends started: an error then stays the only line).
std::string enter_sandbox(Config& cfg) {
  std::vector<size_t> dir_of;
  const sandbox::SandboxOptions plan = sandbox_plan(cfg, &dir_of);
  const std::vector<std::string> inside = sandbox::enter_sandbox(plan);
  const std::vector<ServedBackend> backends = served_backends(cfg);
  for (size_t i = 0; i < backends.size(); ++i) {
    if (dir_of[i] < inside.size()) {
      backends[i].backend->passthrough.root_inside = inside[dir_of[i]];
    }
  }
  return fmt::format(
      "sandbox: {}{}{}, capabilities {}, no_new_privs, seccomp {}",
      sandbox::sandbox_mode_name(plan.view.mode),
      plan.view.shared_dirs.size() == 1 && plan.view.mode != sandbox::SandboxMode::kNone
          ? " (root " + plan.view.shared_dirs.front() + ")"
          : "",
      plan.view.mode == sandbox::SandboxMode::kNamespace && !plan.view.network ? ", no network"
                                                                               : "",
      sandbox::capability_names(plan.capabilities), sandbox::seccomp_action_name(plan.seccomp));
}

// The objects that serve one mount. The mount is made before (outside the
// sandbox); the backend, inside it, before the workers that serve it. A
// backend that cannot start unmounts the mount again (its destructor).
// Torn down in the one order that is safe; see shutdown().
//
// Not thread-safe: the main thread's.
class Daemon {
 public:
  Daemon(const Config& cfg, std::unique_ptr<transport::FuseMount> mount,
         std::unique_ptr<transport::FuseBackingRegistrar> backing,
         std::vector<util::UniqueFd> devices, transport::FuseUringPlan uring,
         const RemoteCredentials& credentials, std::function<void()> on_stop)
      : mount_(std::move(mount)), backing_(std::move(backing)) {
    fuse::SessionOptions options = session_options(cfg, cfg.policy);
    options.name = cfg.fuse.mount;
    options.backing_files = backing_.get();
    tenant_ = std::make_unique<TenantHandler>(cfg.backend, options, credentials);
    spdlog::info(
        "dpfs {}: serving {} at {}: {} thread{}, max_write {}, entry_timeout {}s, attr_timeout "
        "{}s, writeback_cache {}",
        kVersion, tenant_->description(), mount_->mount_point(), cfg.threads,
        cfg.threads == 1 ? "" : "s", format_size(cfg.fuse.max_write), cfg.fuse.entry_timeout,
        cfg.fuse.attr_timeout, cfg.fuse.writeback_cache ? "on" : "off");
    device_ = std::make_unique<transport::DevFuseTransport>(mount_->fd(), tenant_->handler(),
                                                            cfg.threads, std::move(on_stop),
                                                            std::move(devices), std::move(uring));
    mount_->set_quiet_unmount(false);
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
    // The backend answers what it still holds through the device's request
    // slots: so it goes before the device (TenantHandler::end).
    if (tenant_) tenant_->end();
    device_.reset();
  }

  std::vector<std::string> stats() const {
    std::vector<std::string> lines = tenant_->request_stats();
    const std::vector<std::string> more = tenant_->backend_stats();
    lines.insert(lines.end(), more.begin(), more.end());
    if (device_) {
      const std::vector<std::string> transport = device_->stats();
      lines.insert(lines.end(), transport.begin(), transport.end());
    }
    return lines;
  }
  bool failed() const { return device_ && device_->failed(); }
  const std::string& mount_point() const { return mount_->mount_point(); }

 private:
  // Destroyed last: a backend that failed to start leaves the mount to
  // unmount.
  std::unique_ptr<transport::FuseMount> mount_;
  // Outlives the session, which drops its backing ids through it.
  std::unique_ptr<transport::FuseBackingRegistrar> backing_;
  std::unique_ptr<TenantHandler> tenant_;
  std::unique_ptr<transport::DevFuseTransport> device_;
};

util::UniqueFd make_eventfd() {
  util::UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd) throw std::system_error(errno, std::generic_category(), "eventfd");
  return fd;
}

// A callback that makes `fd` readable; called from other threads.
std::function<void()> notifier(int fd) {
  return [fd] {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(fd, &one, sizeof(one));
  };
}

void drain(int fd) {
  uint64_t value;
  [[maybe_unused]] const ssize_t n = ::read(fd, &value, sizeof(value));
}

// Whether a backend holds descriptors for its tenant (and so gets a budget).
bool holds_tenant_fds(const BackendConfig& backend) {
  return backend.kind == BackendKind::kPassthrough;
}

// `configured` with each backend's share of the descriptor limit
// (daemon/fd_limits.h): the FUSE mount, every vhost-user device, and the
// remote listener (whose sessions share its one backend) are endpoints; those
// whose backend holds descriptors for the tenant get a budget each.
Config with_fd_budgets(const Config& configured) {
  Config cfg = configured;
  std::vector<BackendConfig*> budgeted;
  size_t endpoints = 0;
  auto add = [&](BackendConfig& backend) {
    ++endpoints;
    if (holds_tenant_fds(backend)) budgeted.push_back(&backend);
  };
  if (!cfg.fuse.mount.empty()) add(cfg.backend);
  if (!cfg.remote.listen.empty()) add(cfg.backend);
  for (DeviceConfig& d : cfg.devices) add(d.backend);
  const FdPlan plan = plan_fd_limit(cfg.max_fds_per_device, endpoints, budgeted.size());
  for (BackendConfig* b : budgeted) b->fd_budget = plan.per_device;
  if (!budgeted.empty()) {
    spdlog::info("descriptors: limit {}, {} kept for dpfs, {} for each of {} device{}", plan.limit,
                 plan.reserve, plan.per_device, budgeted.size(), budgeted.size() == 1 ? "" : "s");
  }
  return cfg;
}

// Serves all of `configured` in this process (a part of it, if a supervisor
// started this process: `handed` are its devices' sockets, bound by the
// supervisor, which also removes their files; `link` its control socket).
int serve_here(const Config& configured, std::vector<std::unique_ptr<util::Listener>> handed,
               const SupervisorLink& link, DeviceKeep keep = {}) {
  const Config cfg = with_fd_budgets(configured);
  SignalFd signals({SIGINT, SIGTERM, SIGHUP, SIGUSR1});
  // Written by a FUSE worker that stops by itself (unmounted from outside).
  const util::UniqueFd fuse_stopped = make_eventfd();
  // Written by a vhost-user device whose control thread ended by itself.
  const util::UniqueFd device_done = make_eventfd();

  // Outside the sandbox, while the host's files can still be named: every
  // socket is bound, every secret and TLS file read, the FUSE mount made.
  // Then the sandbox, before any thread starts and before a tenant's first
  // byte. Then, inside, the backends (a passthrough backend opens its
  // directory as the sandbox names it), the sessions and the workers. A
  // start-up failure leaves nothing behind (the destructors unbind and
  // unmount).
  std::unique_ptr<StatsSocket> stats_socket;
  if (!cfg.stats_socket.empty()) {
    stats_socket = std::make_unique<StatsSocket>(cfg.stats_socket);
    spdlog::info("statistics: dpfs stats {}", stats_socket->path());
  }
  const bool own_sockets = handed.empty();
  std::vector<std::unique_ptr<util::Listener>> sockets = std::move(handed);
  for (size_t i = sockets.size(); i < cfg.devices.size(); ++i) {
    const DeviceConfig& d = cfg.devices[i];
    sockets.push_back(std::make_unique<util::Listener>(d.socket, "vhost-user socket",
                                                       util::SocketAccess{d.socket_gid}));
  }
  // The socket files: removed from outside once the daemon is done (their
  // paths are out of the sandbox's reach), also if it dies.
  std::unique_ptr<sandbox::OutsideCleanup> socket_files;
  if (cfg.sandbox.mode != sandbox::SandboxMode::kNone &&
      (stats_socket || (own_sockets && !sockets.empty()))) {
    socket_files = std::make_unique<sandbox::OutsideCleanup>([&](bool) {
      if (stats_socket) stats_socket->listener().remove_socket_file();
      for (const auto& s : sockets) s->remove_socket_file();
    });
  }
  std::unique_ptr<remote::Server> listener;
  if (!cfg.remote.listen.empty()) listener = make_remote_server(cfg);
  const RemoteCredentials credentials = read_remote_credentials(cfg);
  std::unique_ptr<transport::FuseMount> mount;
  std::unique_ptr<transport::FuseBackingRegistrar> backing;  // null: no FUSE passthrough
  std::vector<util::UniqueFd> fuse_devices;                  // the FUSE workers' clones
  transport::FuseUringPlan fuse_uring;  // read from /sys, out of the sandbox's reach
  if (!cfg.fuse.mount.empty()) {
    fuse_uring = transport::plan_fuse_uring(cfg.fuse.io_uring);
    fuse_devices = transport::FuseMount::open_devices(cfg.threads);
    mount = std::make_unique<transport::FuseMount>(
        transport::MountOptions{cfg.fuse.mount, cfg.fuse.max_write, cfg.fuse.mount_is_default,
                                cfg.fuse.allow_suid, cfg.fuse.allow_dev});
    // The sandbox cannot unmount: the mount point is out of its reach, and
    // CAP_SYS_ADMIN is dropped (also with --sandbox none).
    mount->keep_unmounter();
    mount->set_quiet_unmount(true);  // until it serves; see Daemon
    // Registering backing files needs CAP_SYS_ADMIN, which goes too.
    if (cfg.fuse.passthrough && cfg.backend.kind == BackendKind::kPassthrough) {
      backing = transport::FuseBackingRegistrar::start(mount->fd());
    }
  }

  Config served = cfg;
  const std::string sandboxed = enter_sandbox(served);

  std::vector<std::unique_ptr<VhostUserEndpoint>> devices;
  // A supervisor's device process serves one device, and keeps it.
  std::optional<DeviceKeep> unclaimed(std::move(keep));
  for (size_t i = 0; i < served.devices.size(); ++i) {
    DeviceKeep device_keep;
    if (unclaimed) {
      device_keep = std::move(*unclaimed);
      unclaimed.reset();
    }
    devices.push_back(std::make_unique<VhostUserEndpoint>(
        served.devices[i], served, std::move(sockets[i]), credentials, notifier(device_done.get()),
        std::move(device_keep)));
  }
  if (listener) {
    // One backend behind the host's policy, shared by every remote session.
    listener->set_backend(std::make_unique<PolicyBackend>(
        make_backend(served.backend), std::make_shared<const HostPolicy>(served.policy)));
  }
  std::unique_ptr<Daemon> fuse;
  if (mount) {
    fuse = std::make_unique<Daemon>(served, std::move(mount), std::move(backing),
                                    std::move(fuse_devices), std::move(fuse_uring), credentials,
                                    notifier(fuse_stopped.get()));
  }
  spdlog::info("{}", sandboxed);
  if (listener) listener->start();
  for (auto& d : devices) {
    d->start();
    spdlog::info("{}: boot a guest with QEMU options: {}", d->name(), d->qemu_options());
    spdlog::info("{}: in the guest: mount -t virtiofs {} /mnt", d->name(), d->tag());
  }
  link.ready();

  // What SIGUSR1 logs and the stats socket answers: per transport, the
  // requests by opcode, and for each device its queues.
  auto current_stats = [&] {
    std::vector<std::string> lines;
    auto add = [&](const std::string& who, const std::vector<std::string>& more) {
      for (const std::string& line : more) lines.push_back(who + ": " + line);
    };
    if (fuse) add(fuse->mount_point(), fuse->stats());
    for (const auto& d : devices) {
      add(d->name(), d->tenant().request_stats());
      add(d->name(), d->tenant().backend_stats());
      add(d->name(), d->queue_stats());
    }
    if (listener) add("remote", listener->stats());
    return lines;
  };

  auto all_devices_done = [&] {
    return std::all_of(devices.begin(), devices.end(), [](const auto& d) { return d->done(); });
  };
  bool fuse_serving = fuse != nullptr;
  int status = 0;
  for (;;) {
    if (!fuse_serving && all_devices_done() && !listener) {
      spdlog::info("every transport is done; stopping");
      break;
    }
    pollfd fds[5] = {{signals.fd(), POLLIN, 0},
                     {fuse_stopped.get(), POLLIN, 0},
                     {device_done.get(), POLLIN, 0},
                     {stats_socket ? stats_socket->fd() : -1, POLLIN, 0},
                     {link.fd(), POLLIN, 0}};
    if (::poll(fds, 5, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("waiting for signals: {}", std::strerror(errno));
      status = 1;
      break;
    }
    if (fds[1].revents & POLLIN) {
      drain(fuse_stopped.get());
      if (fuse_serving) {
        if (fuse->failed()) {
          spdlog::error("serving {} failed", fuse->mount_point());
          status = 1;
        } else {
          spdlog::info("{} was unmounted or its connection closed", fuse->mount_point());
        }
        fuse->shutdown();
        fuse_serving = false;
        if (!all_devices_done()) spdlog::info("the vhost-user devices keep serving");
      }
    }
    if (fds[2].revents & POLLIN) {
      drain(device_done.get());
      for (const auto& d : devices) {
        if (d->done() && d->failed()) status = 1;
      }
    }
    if (fds[3].revents & POLLIN) stats_socket->answer(current_stats());
    if ((fds[4].revents & (POLLIN | POLLHUP)) && !link.handle(current_stats)) {
      spdlog::info("the supervisor is gone: shutting down");
      break;
    }
    if (fds[0].revents & POLLIN) {
      const int sig = signals.take();
      if (sig == 0) continue;
      if (sig == SIGUSR1) {
        for (const std::string& line : current_stats()) spdlog::info("stats: {}", line);
        continue;
      }
      spdlog::info("SIG{}: shutting down", sigabbrev_np(sig));
      break;
    }
  }
  if (fuse) fuse->shutdown();
  for (auto& d : devices) {
    for (const std::string& line : d->queue_stats()) spdlog::info("{}: {}", d->name(), line);
    d->stop();
  }
  if (listener) listener->stop();
  if (fuse) {
    for (const std::string& line : fuse->stats()) spdlog::info("totals: {}", line);
  }
  for (const auto& d : devices) {
    for (const std::string& line : d->tenant().request_stats()) {
      spdlog::info("{}: totals: {}", d->name(), line);
    }
    for (const std::string& line : d->tenant().backend_stats()) {
      spdlog::info("{}: totals: {}", d->name(), line);
    }
  }
  if (listener) {
    for (const std::string& line : listener->stats()) spdlog::info("remote: totals: {}", line);
  }
  if (socket_files) socket_files->run();
  return status;
}

}  // namespace

int serve(const Config& cfg) {
  if (cfg.sandbox.per_device_processes && !cfg.devices.empty()) {
    return supervise(cfg, [](ServingPart part) {
      std::vector<std::unique_ptr<util::Listener>> sockets;
      if (part.socket) sockets.push_back(std::move(part.socket));
      DeviceKeep keep;
      keep.keeper = part.keeper;
      keep.records = part.records;
      keep.resume = std::move(part.resume);
      return serve_here(part.cfg, std::move(sockets), SupervisorLink(part.control),
                        std::move(keep));
    });
  }
  return serve_here(cfg, {}, SupervisorLink(-1));
}

}  // namespace dpfs::daemon
