// The daemon's main job: serve the configured file systems -- a FUSE mount,
// vhost-user (virtio-fs) devices, or both -- until told to stop.
#pragma once

#include "daemon/config.h"

namespace dpfs::daemon {

// Binds a socket for each of cfg.devices (each with its own backend and
// session), mounts cfg.fuse.mount if set, serves cfg.backend there with
// cfg.threads workers, and returns the exit status once SIGINT, SIGTERM or
// SIGHUP arrives, or once every transport is done by itself: the FUSE mount
// unmounted from outside, every device ended (on_disconnect = exit). 0 when
// it stopped cleanly. SIGUSR1 logs request statistics; totals are logged on
// the way out.
//
// Start-up failures throw with one line for the operator:
// transport::MountError (the mount point, /dev/fuse, mount(2)),
// util::ListenError (a socket path) or std::invalid_argument (a
// backend).
//
// REQUIRES: called from the main thread with no other thread running: the
// signals it waits for are blocked before it starts the workers, which
// inherit that mask. Logging is initialized (init_logging).
int serve(const Config& cfg);

}  // namespace dpfs::daemon
