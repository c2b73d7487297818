#include "util/unix_listener.h"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace dpfs::util {

using util::UniqueFd;

namespace {

std::string parent_of(const std::string& path) {
  const auto slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Why bind/connect at `path` failed, in the operator's words.
std::string describe(const std::string& path, int err) {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return fmt::format("directory {} does not exist", parent_of(path));
    case EACCES:
    case EPERM:
      return fmt::format("permission denied (directory {})", parent_of(path));
    case EROFS:
      return fmt::format("{} is on a read-only file system", parent_of(path));
    case EADDRINUSE:
      return "is in use by another process";
    default:
      return std::strerror(err);
  }
}

}  // namespace

Listener::Listener(std::string path, std::string what, SocketAccess access)
    : path_(std::move(path)), what_(std::move(what)) {
  const auto error = [&](const std::string& why) {
    return ListenError(fmt::format("{} {}: {}", what_, path_, why));
  };
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.empty()) throw ListenError(what_ + ": empty path");
  if (path_.size() >= sizeof(addr.sun_path)) {
    throw error(fmt::format("path is {} bytes, at most {} fit a unix socket address", path_.size(),
                            sizeof(addr.sun_path) - 1));
  }
  std::memcpy(addr.sun_path, path_.data(), path_.size());

  // A socket file left by a daemon that is gone is unlinked; one that a live
  // process answers on is not ours to take.
  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw error("exists and is not a socket");
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!probe) throw error(fmt::format("socket: {}", std::strerror(errno)));
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) {
      throw error("is in use by another process");
    }
    if (errno != ECONNREFUSED) throw error(describe(path_, errno));
    if (::unlink(path_.c_str()) != 0 && errno != ENOENT) throw error(describe(path_, errno));
    spdlog::info("{} {}: removed a stale socket", what_, path_);
  } else if (errno != ENOENT) {
    throw error(describe(path_, errno));
  }

  fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd_) throw error(fmt::format("socket: {}", std::strerror(errno)));
  if (::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw error(describe(path_, errno));
  }
  if (::stat(path_.c_str(), &st) == 0) {
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }
  // Before listen(): until then every connect is refused, so no one gets in
  // while the file still has the mode the umask gave it.
  const auto refuse_access = [&](const char* call) {
    const int err = errno;
    ::unlink(path_.c_str());
    return error(fmt::format("{}: {}", call, std::strerror(err)));
  };
  if (access.gid >= 0 && ::chown(path_.c_str(), uid_t(-1), gid_t(access.gid)) != 0) {
    throw refuse_access("chown");
  }
  if (::chmod(path_.c_str(), access.gid >= 0 ? 0660 : 0600) != 0) throw refuse_access("chmod");
  if (::listen(fd_.get(), 1) != 0) {
    const int err = errno;
    ::unlink(path_.c_str());
    throw error(fmt::format("listen: {}", std::strerror(err)));
  }
}

Listener::~Listener() { remove_socket_file(); }

void Listener::remove_socket_file() const {
  struct stat st;
  if (ino_ != 0 && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
    ::unlink(path_.c_str());
  }
}

UniqueFd Listener::try_accept() {
  for (;;) {
    UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn) return conn;
    switch (errno) {
      case EINTR:
      case ECONNABORTED:  // the front-end gave up before we accepted
        continue;
      case EAGAIN:
#if EWOULDBLOCK != EAGAIN
      case EWOULDBLOCK:
#endif
        return UniqueFd();
      default:
        spdlog::warn("{} {}: accept: {}", what_, path_, std::strerror(errno));
        return UniqueFd();
    }
  }
}

UniqueFd Listener::accept() {
  for (;;) {
    pollfd pfd{fd_.get(), POLLIN, 0};
    if (::poll(&pfd, 1, -1) < 0) {
      if (errno != EINTR) {
        spdlog::warn("{} {}: poll: {}", what_, path_, std::strerror(errno));
      }
      return UniqueFd();
    }
    UniqueFd conn(::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (conn) return conn;
    if (errno == EINTR) return UniqueFd();
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED) continue;
    spdlog::warn("{} {}: accept: {}", what_, path_, std::strerror(errno));
    return UniqueFd();
  }
}

bool send_all(int fd, std::string_view data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = ::send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    sent += size_t(n);
  }
  return true;
}

ssize_t send_with_fds(int socket, std::span<const iovec> iov, std::span<const int> fds, int flags) {
  if (fds.size() > kMaxPassedFds) {
    errno = EINVAL;
    return -1;
  }
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxPassedFds)];
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = ::sendmsg(socket, &msg, flags | MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n;
}

}  // namespace dpfs::util
