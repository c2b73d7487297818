#include "daemon/signals.h"

#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace dpfs::daemon {

SignalFd::SignalFd(std::initializer_list<int> signals) {
  sigset_t set;
  sigemptyset(&set);
  for (int s : signals) sigaddset(&set, s);
  if (const int e = pthread_sigmask(SIG_BLOCK, &set, &previous_); e != 0) {
    throw std::system_error(e, std::generic_category(), "pthread_sigmask");
  }
  fd_.reset(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  if (!fd_) {
    const int e = errno;
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
    throw std::system_error(e, std::generic_category(), "signalfd");
  }
}

SignalFd::~SignalFd() { pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

int SignalFd::take() {
  signalfd_siginfo info{};
  ssize_t n;
  do {
    n = ::read(fd_.get(), &info, sizeof(info));
  } while (n < 0 && errno == EINTR);
  return n == ssize_t(sizeof(info)) ? int(info.ssi_signo) : 0;
}

}  // namespace dpfs::daemon
