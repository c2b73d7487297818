#include "sandbox/outside.h"

#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

namespace dpfs::sandbox {
namespace {

[[noreturn]] void helper(int sock, const std::function<void(bool)>& cleanup) {
  // Only the socket and stdio (for its log lines).
  if (sock != 3 && ::dup2(sock, 3) != 3) ::_exit(1);
  ::close_range(4, ~0u, 0);
  ::prctl(PR_SET_NAME, "dpfs-outside");
  char ask;
  ssize_t n;
  while ((n = ::recv(3, &ask, 1, 0)) < 0 && errno == EINTR) {
  }
  cleanup(n == 1 && ask == 'q');
  if (n == 1) {
    const char done = 'd';
    ::send(3, &done, 1, MSG_NOSIGNAL);
  }
  ::_exit(0);
}

}  // namespace

OutsideCleanup::OutsideCleanup(const std::function<void(bool)>& cleanup) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    throw std::system_error(errno, std::generic_category(), "socketpair");
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    ::close(sv[0]);
    ::close(sv[1]);
    throw std::system_error(e, std::generic_category(), "fork");
  }
  if (pid == 0) {
    ::close(sv[0]);
    helper(sv[1], cleanup);
  }
  ::close(sv[1]);
  socket_.reset(sv[0]);
  pid_ = pid;
}

OutsideCleanup::~OutsideCleanup() { run(); }

void OutsideCleanup::run(bool quiet) {
  if (!socket_) return;
  // One byte asks ('q': quietly); one byte answers once it is done. EOF:
  // the helper died, which is all the waiting there is.
  const char ask = quiet ? 'q' : 'c';
  char done;
  if (::send(socket_.get(), &ask, 1, MSG_NOSIGNAL) == 1) {
    while (::recv(socket_.get(), &done, 1, 0) < 0 && errno == EINTR) {
    }
  }
  socket_.reset();
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace dpfs::sandbox
