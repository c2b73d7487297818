#include "transport/fuse_backing.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <spdlog/spdlog.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "fuse/passthrough_abi.h"
#include "sandbox/capabilities.h"
#include "sandbox/error.h"

namespace dpfs::transport {
namespace {

namespace abi = fuse::passthrough_abi;

// The daemon's request: BACKING_OPEN of the one descriptor that comes with
// it, or BACKING_CLOSE of `arg`. The answer: one int32_t (an id, 0 or -errno).
enum : uint32_t { kOpen = 1, kClose = 2 };
struct Message {
  uint32_t op;
  int32_t arg;
};

constexpr int kSocket = 3;
constexpr int kConnection = 4;

int do_ioctl(const Message& m, int fd) {
  if (m.op == kOpen && fd >= 0) {
    abi::BackingMap map{fd, 0, 0};
    const int id = ::ioctl(kConnection, abi::kIocBackingOpen, &map);
    return id >= 0 ? id : -errno;
  }
  if (m.op == kClose && fd < 0 && m.arg > 0) {
    const uint32_t id = uint32_t(m.arg);
    return ::ioctl(kConnection, abi::kIocBackingClose, &id) == 0 ? 0 : -errno;
  }
  return -EINVAL;
}

// The helper: the two ioctls, for as long as the daemon's end is open.
[[noreturn]] void serve(int sock, int connection) {
  // Only the socket, the connection and stdio.
  const int s = ::fcntl(sock, F_DUPFD_CLOEXEC, kConnection + 1);
  const int c = ::fcntl(connection, F_DUPFD_CLOEXEC, kConnection + 1);
  if (s < 0 || c < 0 || ::dup2(s, kSocket) != kSocket || ::dup2(c, kConnection) != kConnection) {
    ::_exit(1);
  }
  ::close_range(kConnection + 1, ~0u, 0);
  ::prctl(PR_SET_NAME, "dpfs-backing");
  try {
    const std::array<int, 1> keep{CAP_SYS_ADMIN};
    sandbox::limit_capabilities(keep);
    sandbox::set_no_new_privs();
  } catch (const sandbox::SandboxError&) {
    ::_exit(1);
  }
  for (;;) {
    Message m{};
    alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
    iovec iov{&m, sizeof(m)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    const ssize_t n = ::recvmsg(kSocket, &msg, MSG_CMSG_CLOEXEC);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) ::_exit(0);  // the daemon is gone
    int fd = -1;
    for (cmsghdr* h = CMSG_FIRSTHDR(&msg); h != nullptr; h = CMSG_NXTHDR(&msg, h)) {
      if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS &&
          h->cmsg_len == CMSG_LEN(sizeof(int))) {
        std::memcpy(&fd, CMSG_DATA(h), sizeof(int));
      }
    }
    const bool whole = n == ssize_t(sizeof(m)) && !(msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC));
    const int32_t result = whole ? do_ioctl(m, fd) : -EINVAL;
    if (fd >= 0) ::close(fd);
    if (::send(kSocket, &result, sizeof(result), MSG_NOSIGNAL) != ssize_t(sizeof(result))) {
      ::_exit(0);
    }
  }
}

}  // namespace

std::unique_ptr<FuseBackingRegistrar> FuseBackingRegistrar::start(int connection_fd) {
  if (::geteuid() != 0) {
    spdlog::info(
        "FUSE passthrough needs root (CAP_SYS_ADMIN registers backing files); files are "
        "read and written by requests");
    return nullptr;
  }
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    spdlog::warn("FUSE passthrough off: socketpair: {}", std::strerror(errno));
    return nullptr;
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    spdlog::warn("FUSE passthrough off: fork: {}", std::strerror(errno));
    ::close(sv[0]);
    ::close(sv[1]);
    return nullptr;
  }
  if (pid == 0) {
    ::close(sv[0]);
    serve(sv[1], connection_fd);
  }
  ::close(sv[1]);
  return std::unique_ptr<FuseBackingRegistrar>(
      new FuseBackingRegistrar(util::UniqueFd(sv[0]), pid));
}

FuseBackingRegistrar::~FuseBackingRegistrar() {
  {
    util::MutexLock lock(mu_);
    socket_.reset();
  }
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

int FuseBackingRegistrar::call(uint32_t op, int32_t arg, int fd) {
  Message m{op, arg};
  iovec iov{&m, sizeof(m)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) std::array<char, CMSG_SPACE(sizeof(int))> control{};
  if (fd >= 0) {
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* h = CMSG_FIRSTHDR(&msg);
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(h), &fd, sizeof(int));
  }
  util::MutexLock lock(mu_);
  if (!socket_) return -EPIPE;
  if (::sendmsg(socket_.get(), &msg, MSG_NOSIGNAL) != ssize_t(sizeof(m))) return -errno;
  int32_t result = 0;
  ssize_t n;
  while ((n = ::recv(socket_.get(), &result, sizeof(result), 0)) < 0 && errno == EINTR) {
  }
  if (n != ssize_t(sizeof(result))) return n == 0 ? -EPIPE : -EIO;  // the helper died
  return result;
}

int FuseBackingRegistrar::open(int fd) { return call(kOpen, 0, fd); }

void FuseBackingRegistrar::close(int id) {
  if (const int e = call(kClose, id, -1); e != 0) {
    spdlog::debug("FUSE passthrough: closing backing id {}: {}", id, std::strerror(-e));
  }
}

}  // namespace dpfs::transport
