// One process per tenant (DESIGN.md, "Processes"): a supervisor binds every
// vhost-user socket and the stats socket, then starts one serving process
// for each vhost-user device, one for the FUSE mount and one for the remote
// listener. Each enters a sandbox of its own (only its backend's directory,
// capabilities and network) before the first tenant byte, so a crash or a
// memory bug costs the one tenant it serves; the others keep serving.
//
//   supervisor (not sandboxed, reads no tenant byte)
//     |-- vhost-user a.sock  -> process: sandbox, backend, session, device
//     |-- vhost-user b.sock  -> process: ...
//     `-- FUSE /mnt          -> process: ...
//
// A process that dies of a signal (or exits non-zero after it served) is
// logged in one line and started again on the same listening socket, so the
// tenant's next front-end connection is served; one that crashes more than
// kMaxRestarts times a minute is given up. A FUSE mount is not restarted:
// the kernel's node ids died with the process (its mount is unmounted from
// outside by its own helper, sandbox/outside.h).
//
// A device process's front-end connection outlives it (docs/restart.md):
// the supervisor keeps the connected socket, the journal of the set-up
// requests and what INIT negotiated (keeper.h), and the memfd where each
// ring records its progress; a successor replays the journal and resumes
// the rings, and the front-end never sees the connection close.
//
// The supervisor talks to each process over a socket pair (its "control"):
//   process -> supervisor: 'R' once it serves (its sandbox entered, its
//                          workers started); a process that exits before
//                          failed to start, and the daemon stops with it.
//   supervisor -> process: 'S'; the process answers its statistics lines,
//                          each ending in '\n', then one '\0'.
// EOF on either side means the other is gone: a process whose supervisor is
// gone shuts down (also PR_SET_PDEATHSIG).
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "daemon/config.h"
#include "daemon/keeper.h"
#include "util/unix_listener.h"

namespace dpfs::daemon {

// What one serving process is handed.
struct ServingPart {
  // Its share of the configuration: one device (devices has one entry and
  // fuse.mount, remote.listen and stats_socket are empty), the FUSE mount
  // (no devices, no remote.listen) or the remote listener (no devices, no
  // fuse.mount).
  Config cfg;
  // The device's socket, bound by the supervisor (its file is the
  // supervisor's to remove); null for the FUSE mount and the listener.
  std::unique_ptr<util::Listener> socket;
  int control = -1;  // this process's end of the control socket pair
  // A device's: its end of the keeper socket pair (keeper.h), the memfd of
  // its rings' records (virtio::RingRecord, one per queue), and what the
  // supervisor kept of the connection a predecessor served, to take over.
  int keeper = -1;
  int records = -1;
  std::optional<Kept> resume;
};

// Serves `part` in the calling (forked) process and returns its exit
// status; start-up failures throw with one line, as serve() does.
using ServePart = std::function<int(ServingPart part)>;

// Serves `cfg` as above until SIGINT, SIGTERM or SIGHUP (passed on to every
// process, which are waited for), or until every process ended by itself
// (the FUSE mount unmounted, every device done after on_disconnect = exit).
// SIGUSR1 is passed on (each process logs its statistics). Returns 0 if
// every process stopped cleanly, 1 otherwise; a process that fails to start
// stops the others and returns 1. Throws what binding a socket throws.
//
// REQUIRES: the main thread, with no other thread running (fork).
int supervise(const Config& cfg, const ServePart& serve_part);

// The serving process's side of the control socket. Not thread-safe: the
// serving process's main thread.
class SupervisorLink {
 public:
  explicit SupervisorLink(int control) : control_(control) {}
  // -1 if there is no supervisor: then nothing here does anything.
  int fd() const { return control_; }
  // Tells the supervisor this process serves.
  void ready() const;
  // Handles what the supervisor sent (call when fd() is readable): answers
  // a statistics request with `stats()`. false: the supervisor is gone.
  bool handle(const std::function<std::vector<std::string>()>& stats) const;

 private:
  int control_;
};

}  // namespace dpfs::daemon
