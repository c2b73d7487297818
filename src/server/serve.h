// The daemon's main job: serve one configured file system on a FUSE mount
// until told to stop.
#pragma once

#include "server/config.h"

namespace dpfs::server {

// Mounts cfg.fuse.mount, serves cfg.backend there with cfg.threads workers,
// and returns the exit status once SIGINT, SIGTERM or SIGHUP arrives or the
// file system is unmounted from outside (0 when it stopped cleanly).
// SIGUSR1 logs request statistics; totals are logged on the way out.
//
// Start-up failures throw with one line for the operator:
// transport::MountError (the mount point, /dev/fuse, mount(2)) or
// std::invalid_argument (the backend).
//
// REQUIRES: called from the main thread with no other thread running: the
// signals it waits for are blocked before it starts the workers, which
// inherit that mask. Logging is initialized (init_logging).
int serve(const Config& cfg);

}  // namespace dpfs::server
