// The hostile driver: requests no well-behaved virtio-fs driver sends, to
// prove that a device survives them. Each case connects afresh, attacks one
// request queue (the last, so the first can show that the others go on),
// then checks that the device still serves a well-formed request on
// another queue of the same connection (when it has one) and on a new
// connection.
//
// What the device does with the bad request itself is its choice (dpfs
// marks the ring broken and logs it, or answers a FUSE error); the case
// reports what it saw. A case fails only when the device stops serving --
// or, for the race-* cases (race.h), when the race got the device to act on
// bytes it did not check: a change outside the export, a name with a '/'.
#pragma once

#include <string>
#include <vector>

namespace dpfs::bench {

struct HostileCase {
  std::string name;
  std::string description;
};

// What the race cases need to know about the device's surroundings.
struct HostileOptions {
  // The directory a passthrough device exports ("" for memfs and others):
  // names like `../x` are made relative to it so that they reach --outside.
  std::string export_dir;
  // A tree that must not change while the device is attacked ("": no such
  // check); canary files are created in it. The export's parent, or any
  // directory `..` from the export's root leads into.
  std::string outside;
  double race_seconds = 1.0;  // longest time a race case runs
};

const std::vector<HostileCase>& hostile_cases();

// Runs the case `name` ("all" runs every case, "race" the race-* cases)
// against the device on `socket`, printing one line per case to stdout.
// Returns the number of cases that failed; throws std::invalid_argument for
// an unknown name.
int run_hostile(const std::string& socket, const std::string& name,
                const HostileOptions& options = {});

}  // namespace dpfs::bench
