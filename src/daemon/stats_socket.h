// Live statistics for the operator: `dpfs serve --stats-socket PATH` answers
// every connection on a unix socket with the current statistics (the lines
// SIGUSR1 logs) and closes it; `dpfs stats PATH` prints them.
//
// Operator-only: the socket is created mode 0600 (root's). Nothing is read
// from a client, so there is nothing to parse; a client that does not read
// is dropped after a second rather than holding the main loop.
#pragma once

#include <string>
#include <vector>

#include "util/unix_listener.h"

namespace dpfs::daemon {

class StatsSocket {
 public:
  // Binds and listens at `path`, replacing a stale socket left by a daemon
  // that died (but not one that answers, nor anything that is not a
  // socket). Throws std::runtime_error with a one-line reason.
  explicit StatsSocket(std::string path);

  // Readable when a client is waiting.
  int fd() const { return listener_.fd(); }
  const std::string& path() const { return listener_.path(); }
  const util::Listener& listener() const { return listener_; }
  util::Listener& listener() { return listener_; }
  // Accepts the waiting clients and sends each `lines`, one per line.
  void answer(const std::vector<std::string>& lines);

 private:
  util::Listener listener_;
};

// `dpfs stats PATH`: the statistics text, or throws std::runtime_error with
// a one-line reason (no daemon there, permission denied...).
std::string query_stats(const std::string& path);

}  // namespace dpfs::daemon
