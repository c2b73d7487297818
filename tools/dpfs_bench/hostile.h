// The hostile driver: requests no well-behaved virtio-fs driver sends, to
// prove that a device survives them. Each case connects afresh, attacks one
// request queue (the last, so the first can show that the others go on),
// then checks that the device still serves a well-formed request on
// another queue of the same connection (when it has one) and on a new
// connection.
//
// What the device does with the bad request itself is its choice (dpfs
// marks the ring broken and logs it, or answers a FUSE error); the case
// reports what it saw. A case fails only when the device stops serving.
#pragma once

#include <string>
#include <vector>

namespace dpfs::bench {

struct HostileCase {
  std::string name;
  std::string description;
};

const std::vector<HostileCase>& hostile_cases();

// Runs the case `name` ("all" runs every case) against the device on
// `socket`, printing one line per case to stdout. Returns the number of
// cases that failed; throws std::invalid_argument for an unknown name.
int run_hostile(const std::string& socket, const std::string& name);

}  // namespace dpfs::bench
