// The racing hostile cases: requests whose bytes another thread of the
// front-end rewrites in guest memory while they are in flight, as a guest
// with a second vCPU can. A device that checks a name (or a size, or a
// node id) in guest memory and then reads the same bytes again to act on
// them acts on bytes it never checked: `../x` instead of `xx-x`.
//
// Each case builds DEPTH requests once, each in two versions that differ
// only in the raced bytes (a harmless one and a hostile one), keeps them in
// flight on the attacked queue, and lets a flipper thread swap the differing
// 8-byte words between the two versions in a tight loop until the case's
// time is up. The device sees each request either way, or torn between the
// two; a device that reads what it decides on once answers the harmless
// version or refuses the hostile one, never acts on a mixture.
//
// What a case checks:
// - every reply is consistent (its length fits the buffers, the unique is
//   the request's);
// - with --outside, nothing in that tree (the export's parent, say: what
//   `..` reaches from the export's root) appeared, vanished or changed
//   (type, mode, owner, size, times, content, xattrs), checked after every
//   completion batch so an escape is reported with the number of requests it
//   took;
// - the tree the device serves holds no name with a '/' (READDIR of the
//   root), and no xattr in a namespace the device refused before the race;
// - the device still serves (the queue itself, another queue of the same
//   connection, a new connection: hostile.cc's checks).
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "hostile.h"

namespace dpfs::bench {

class Device;

struct RaceResult {
  std::string what;  // one line for the report
  bool failed = false;
};

struct RaceCase {
  HostileCase info;
  std::function<RaceResult(Device&, const HostileOptions&)> run;
  bool ends_connection = false;  // the case closes the connection it is given
};

// The cases, all named race-*.
const std::vector<RaceCase>& race_cases();

// Requests in flight on the attacked queue during a race.
inline constexpr uint32_t kRaceDepth = 32;

}  // namespace dpfs::bench
