#include "daemon/stats_socket.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace dpfs::daemon {

using util::UniqueFd;

StatsSocket::StatsSocket(std::string path) : listener_(std::move(path), "stats socket") {
  if (::chmod(listener_.path().c_str(), 0600) != 0) {
    throw std::runtime_error(
        fmt::format("stats socket {}: chmod: {}", listener_.path(), std::strerror(errno)));
  }
}

void StatsSocket::answer(const std::vector<std::string>& lines) {
  std::string text;
  for (const std::string& line : lines) {
    text += line;
    text += '\n';
  }
  while (UniqueFd client = listener_.try_accept()) {
    // A client that does not read gets what fits in the socket buffer
    // within a second; the main loop does not wait longer than that.
    const timeval limit{1, 0};
    ::setsockopt(client.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    util::send_all(client.get(), text);
  }
}

std::string query_stats(const std::string& path) {
  const auto error = [&](const std::string& why) {
    return std::runtime_error(fmt::format("stats socket {}: {}", path, why));
  };
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    throw error(fmt::format("not a unix socket path ({} bytes)", path.size()));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) throw error(fmt::format("socket: {}", std::strerror(errno)));
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    switch (errno) {
      case ENOENT:
        throw error("does not exist (is dpfs serve running with --stats-socket?)");
      case ECONNREFUSED:
        throw error("nobody answers (the daemon that made it is gone)");
      case EACCES:
        throw error("permission denied (the socket is the daemon user's only)");
      default:
        throw error(std::strerror(errno));
    }
  }
  const timeval limit{5, 0};
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  std::string text;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      throw error(errno == EAGAIN ? "no answer within 5 s" : std::strerror(errno));
    }
    if (n == 0) break;
    text.append(buf, size_t(n));
  }
  return text;
}

}  // namespace dpfs::daemon
