// Signals delivered as file descriptor events instead of handlers.
//
// The daemon's main thread waits for SIGINT/SIGTERM/SIGHUP (shut down) and
// SIGUSR1 (log statistics) with poll(2) on a signalfd. For that the signals
// must be blocked in every thread, so a SignalFd is created before any
// thread is started: threads inherit the mask of the thread that starts them.
//
// Not thread-safe; owned by the main thread.
#pragma once

#include <signal.h>

#include <initializer_list>

#include "util/unique_fd.h"

namespace dpfs::daemon {

class SignalFd {
 public:
  // Blocks `signals` in the calling thread and opens a signalfd for them.
  // Throws std::system_error.
  explicit SignalFd(std::initializer_list<int> signals);
  SignalFd(const SignalFd&) = delete;
  SignalFd& operator=(const SignalFd&) = delete;
  // Restores the calling thread's previous signal mask.
  ~SignalFd();

  int fd() const { return fd_.get(); }
  // The next pending signal, or 0 if none is pending.
  int take();

 private:
  util::UniqueFd fd_;
  sigset_t previous_{};
};

}  // namespace dpfs::daemon
