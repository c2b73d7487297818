// One vhost-user device served by the daemon: a tenant's socket, with the
// backend, FUSE session and virtio-fs device behind it, and the control
// thread that accepts front-ends (QEMU) one after another.
//
//   VhostUserEndpoint server(device_cfg, cfg, listener, credentials, on_done);
//   server.start();                                     // control thread
//   ...
//   server.stop();                                      // or the destructor
//
// The control thread: accept a front-end, serve its vhost-user messages
// (Connection) until it goes away, log the disconnect, then accept the next
// one (OnDisconnect::kWait) or end (kExit). The backend outlives connections:
// a guest that reconnects (a new QEMU, the same socket) finds its files.
// A broken connection or queue ends only this device's connection; other
// devices and the FUSE mount carry on.
//
// Not thread-safe: constructed, started and stopped by the main thread.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "daemon/config.h"
#include "daemon/keeper.h"
#include "daemon/tenant_handler.h"
#include "fuse/session.h"
#include "util/unique_fd.h"
#include "util/unix_listener.h"
#include "vhost_user/connection.h"
#include "vhost_user/virtio_fs_device.h"

namespace dpfs::daemon {

// What a supervisor hands a device process so that the front-end
// connection outlives the process (docs/restart.md, keeper.h).
struct DeviceKeep {
  int keeper = -1;             // the keeper socket; -1: nothing is kept (a single process)
  int records = -1;            // memfd: a virtio::RingRecord per queue
  std::optional<Kept> resume;  // a predecessor's connection, to take over
};

class VhostUserEndpoint {
 public:
  // Builds the backend (throws std::invalid_argument and whatever the
  // backend throws), the session and the device, to serve on `listener`
  // (device.socket, bound by the caller before entering the sandbox). `cfg`
  // gives what every
  // transport shares (threads, the FUSE session options, on_disconnect).
  // `on_done` is called on the control thread when it ends by itself
  // (kExit after a disconnect, or an unrecoverable accept error).
  VhostUserEndpoint(const DeviceConfig& device, const Config& cfg,
                    std::unique_ptr<util::Listener> listener, const RemoteCredentials& credentials,
                    std::function<void()> on_done, DeviceKeep keep = {});
  VhostUserEndpoint(const VhostUserEndpoint&) = delete;
  VhostUserEndpoint& operator=(const VhostUserEndpoint&) = delete;
  ~VhostUserEndpoint();

  void start();
  // Closes the connection (if any), ends the control thread, destroys the
  // device (joining its workers) and unlinks the socket. Idempotent.
  void stop();

  // True once the control thread has ended by itself (see on_done).
  bool done() const { return done_.load(std::memory_order_acquire); }
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // The session behind the device, and its statistics.
  const TenantHandler& tenant() const { return *tenant_; }
  // One line per queue of the device ("queue 1 (requests): 120 requests,
  // 30 kicks, 41 notifications"), or nothing once stopped.
  std::vector<std::string> queue_stats() const;
  // "vhost-user dpfs (/tmp/dpfs.sock)", for logs.
  const std::string& name() const { return name_; }
  const std::string& tag() const { return config_.tag; }

  // The QEMU options that attach a guest to this device, for the operator.
  std::string qemu_options() const;

 private:
  void run();                  // the control thread
  bool wait_readable(int fd);  // false: stop was requested
  // Serves one front-end. With `resume`, a predecessor's: its journal is
  // replayed first and the rings resumed.
  void serve_connection(util::UniqueFd socket, unsigned number, Kept* resume = nullptr);
  // Replays `kept`'s journal on `conn` and restores its session; false
  // (logged) if it cannot be.
  bool take_over(vhost_user::Connection& conn, Kept& kept);

  DeviceConfig config_;
  OnDisconnect on_disconnect_;
  std::function<void()> on_done_;
  std::string name_;
  std::unique_ptr<TenantHandler> tenant_;
  std::unique_ptr<vhost_user::VirtioFsDevice> device_;
  std::unique_ptr<util::Listener> listener_;
  KeeperLink keeper_;
  util::UniqueFd records_fd_;
  virtio::RingRecord* records_ = nullptr;  // mapped from records_fd_
  size_t records_bytes_ = 0;
  std::optional<Kept> resume_;
  util::UniqueFd stop_fd_;  // eventfd: readable once stop() is called
  std::thread thread_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> done_{false};
  std::atomic<bool> failed_{false};
};

}  // namespace dpfs::daemon
