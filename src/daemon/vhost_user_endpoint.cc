#include "daemon/vhost_user_endpoint.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <system_error>

#include "backend/factory.h"
#include "remote/channel.h"
#include "vhost_user/connection.h"

namespace dpfs::daemon {

VhostUserEndpoint::VhostUserEndpoint(const DeviceConfig& device, const Config& cfg,
                                     std::unique_ptr<util::Listener> listener,
                                     const RemoteCredentials& credentials,
                                     std::function<void()> on_done, DeviceKeep keep)
    : config_(device),
      on_disconnect_(cfg.vhost_user.on_disconnect),
      on_done_(std::move(on_done)),
      name_(device.name()),
      listener_(std::move(listener)),
      keeper_(keep.keeper),
      records_fd_(keep.records),
      resume_(std::move(keep.resume)) {
  fuse::SessionOptions options = session_options(cfg, device.policy);
  options.name = "virtio-fs " + device.tag;
  if (keeper_.active()) {
    options.on_init = [this](const fuse::InitState& state) { keeper_.init(state); };
  }
  if (records_fd_) {
    records_bytes_ = (size_t(device.request_queues) + 1) * sizeof(virtio::RingRecord);
    void* p =
        ::mmap(nullptr, records_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED, records_fd_.get(), 0);
    if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "ring records");
    records_ = static_cast<virtio::RingRecord*>(p);
  }
  tenant_ = std::make_unique<TenantHandler>(device.backend, options, credentials);

  stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd_) throw std::system_error(errno, std::generic_category(), "eventfd");

  vhost_user::VirtioFsDeviceOptions dev;
  dev.name = "virtio-fs " + device.tag;
  dev.request_queues = device.request_queues;
  // One worker per request queue at most: more would idle (the hiprio
  // queue, FORGETs and INTERRUPTs, rides on the first worker).
  dev.threads = std::min<unsigned>(cfg.threads, device.request_queues);
  dev.poll = device.poll;
  dev.poll_budget_us = device.poll_budget_us;
  dev.records = records_;
  device_ = std::make_unique<vhost_user::VirtioFsDevice>(tenant_->handler(), dev);

  spdlog::info("{}: serving {}: {} request queue{}, {} worker{}{}, on disconnect: {}", name_,
               tenant_->description(), device.request_queues, device.request_queues == 1 ? "" : "s",
               dev.threads, dev.threads == 1 ? "" : "s", device.poll ? ", busy-polling" : "",
               on_disconnect_ == OnDisconnect::kWait ? "wait for the next front-end" : "exit");
}

VhostUserEndpoint::~VhostUserEndpoint() { stop(); }

std::string VhostUserEndpoint::qemu_options() const {
  std::string dev = fmt::format("vhost-user-fs-pci,chardev=vfs,tag={}", config_.tag);
  if (config_.request_queues != 1) {
    dev += fmt::format(",num-request-queues={}", config_.request_queues);
  }
  // vhost-user needs the guest's memory shared with dpfs (a memfd).
  return fmt::format(
      "-object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem "
      "-chardev socket,id=vfs,path={} -device {}",
      config_.socket, dev);
}

void VhostUserEndpoint::start() {
  thread_ = std::thread([this] { run(); });
}

void VhostUserEndpoint::stop() {
  if (!stopping_.exchange(true) && stop_fd_) {
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(stop_fd_.get(), &one, sizeof(one));
  }
  if (thread_.joinable()) thread_.join();
  // The connection is closed (device.disconnect() stopped its queues). The
  // workers end first, each giving up the state the backend keeps on it (an
  // NFS connection it drives). A backend may still hold replies (a SETLKW
  // waiter); its destructor answers them through the device: so the backend
  // goes next, then the device, then the socket.
  if (device_) device_->stop_workers();
  tenant_->end();
  device_.reset();
  listener_.reset();
  if (records_ != nullptr) ::munmap(records_, records_bytes_);
  records_ = nullptr;
}

std::vector<std::string> VhostUserEndpoint::queue_stats() const {
  std::vector<std::string> lines;
  if (!device_) return lines;
  for (uint32_t i = 0; i < device_->queue_num(); ++i) {
    const vhost_user::QueueStats& q = device_->queue_stats(i);
    const uint64_t requests = q.requests.load();
    std::string latency;
    if (const uint64_t timed = q.latency.count(); timed > 0) {
      latency = fmt::format(", latency mean {:.1f} µs p50 {:.1f} µs p99 {:.1f} µs",
                            double(q.latency.total_ns()) / double(timed) / 1e3,
                            double(q.latency.quantile_ns(0.5)) / 1e3,
                            double(q.latency.quantile_ns(0.99)) / 1e3);
    }
    lines.push_back(
        fmt::format("queue {} ({}): {} requests, {} errors{}, {} kicks, {} "
                    "notifications{}",
                    i, i == 0 ? "hiprio" : "requests", requests, q.errors.load(), latency,
                    q.kicks.load(), q.notifications.load(), q.broken.load() ? ", BROKEN" : ""));
  }
  return lines;
}

bool VhostUserEndpoint::wait_readable(int fd) {
  for (;;) {
    pollfd fds[2] = {{fd, POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      spdlog::error("{}: poll: {}", name_, std::strerror(errno));
      return false;
    }
    if (fds[1].revents != 0) return false;
    if (fds[0].revents != 0) return true;
  }
}

void VhostUserEndpoint::run() {
  unsigned connections = 0;
  if (resume_ && resume_->connection) {
    // A predecessor's front-end, still connected: take it over.
    util::UniqueFd socket(::fcntl(resume_->connection.get(), F_DUPFD_CLOEXEC, 0));
    resume_->connection.reset();
    serve_connection(std::move(socket), ++connections, &*resume_);
    resume_.reset();
    if (on_disconnect_ == OnDisconnect::kExit && !stopping_.load(std::memory_order_acquire)) {
      device_->log().info("{}: done (on_disconnect = exit)", name_);
      done_.store(true, std::memory_order_release);
      if (on_done_) on_done_();
      return;
    }
  }
  spdlog::info("{}: waiting for a front-end", name_);
  unsigned accept_errors = 0;
  while (!stopping_.load(std::memory_order_acquire)) {
    if (!wait_readable(listener_->fd())) break;
    util::UniqueFd socket = listener_->try_accept();
    if (!socket) {
      // try_accept logged it. A front-end that gave up before we accepted
      // is harmless; a listening socket that keeps failing is not.
      if (++accept_errors >= 100) {
        spdlog::error("{}: accepting keeps failing; this device stops", name_);
        failed_.store(true, std::memory_order_release);
        break;
      }
      continue;
    }
    accept_errors = 0;
    serve_connection(std::move(socket), ++connections);
    if (stopping_.load(std::memory_order_acquire)) break;
    if (on_disconnect_ == OnDisconnect::kExit) {
      device_->log().info("{}: done (on_disconnect = exit)", name_);
      break;
    }
    device_->log().info("{}: waiting for the next front-end", name_);
  }
  if (!stopping_.load(std::memory_order_acquire)) {
    done_.store(true, std::memory_order_release);
    if (on_done_) on_done_();
  }
}

void VhostUserEndpoint::serve_connection(util::UniqueFd socket, unsigned number, Kept* resume) {
  device_->log().info("{}: front-end {} (connection {})", name_,
                      resume != nullptr ? "taken over from the last process" : "connected", number);
  const auto t0 = std::chrono::steady_clock::now();
  bool by_us = false;
  {
    // Kept for a successor: the connection itself (unless it is already,
    // as the predecessor's), then each request the device takes.
    if (resume == nullptr) keeper_.connection(socket.get());
    vhost_user::Connection conn(std::move(socket), *device_,
                                fmt::format("{} ({}) #{}", config_.tag, config_.socket, number));
    if (resume != nullptr && !take_over(conn, *resume)) conn.close();
    if (keeper_.active()) {
      conn.set_journal([this](std::span<const uint8_t> bytes, std::vector<util::UniqueFd> fds) {
        keeper_.request(bytes, std::move(fds));
      });
    }
    for (;;) {
      if (!conn.connected()) break;
      if (!wait_readable(conn.fd())) {
        conn.close();  // shutdown: device.disconnect() stops its queues
        by_us = true;
        break;
      }
      if (!conn.on_readable()) break;  // the front-end went away (or broke the protocol: logged)
    }
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  device_->log().info("{}: front-end {} (connection {}, {:.1f}s)", name_,
                      by_us ? "disconnected by shutdown" : "disconnected", number, secs);
  // Nothing to keep for a successor.
  if (!by_us) keeper_.ended();
  // A guest that went away without unmounting never sent DESTROY. The
  // device's queues are stopped, so nothing else calls the backend now.
  tenant_->forget_tenant();
}

bool VhostUserEndpoint::take_over(vhost_user::Connection& conn, Kept& kept) {
  // The session first: the rings start taking requests as soon as the
  // journal starts them.
  if (kept.init && !tenant_->restore(*kept.init)) {
    device_->log().error("{}: the session INIT negotiated cannot be restored", name_);
    return false;
  }
  // The rings the journal starts resume from their records: each request
  // the last process took and did not answer is taken again.
  device_->set_resume(true);
  size_t replayed = 0;
  for (Kept::Request& r : kept.journal) {
    if (!conn.replay(r.bytes, std::move(r.fds))) break;
    ++replayed;
  }
  device_->set_resume(false);
  device_->notify_all();
  if (replayed != kept.journal.size()) {
    device_->log().error("{}: the connection could not be taken over ({} of {} requests replayed)",
                         name_, replayed, kept.journal.size());
    return false;
  }
  device_->log().info("{}: took the front-end connection over: {} requests replayed{}", name_,
                      replayed, kept.init ? ", the FUSE session restored" : "");
  return true;
}

}  // namespace dpfs::daemon
