// The vhost-user socket a front-end (QEMU, -chardev socket,path=...)
// connects to: a listening AF_UNIX stream socket at a path. (The daemon's
// stats socket is one too.)
//
// One front-end at a time: the backlog is 1, and the caller accepts the next
// front-end only once the current Connection has ended. A front-end that
// connects meanwhile waits (QEMU blocks on its first request's reply).
//
// Not thread-safe: created, used and destroyed by one thread.
#pragma once

#include <sys/uio.h>

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>

#include "util/unique_fd.h"

namespace dpfs::util {

// Start-up failures, as one line for the operator ("vhost-user socket
// /run/x.sock: directory /run/x does not exist").
class ListenError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Who may connect: the socket file's mode is 0600 (the daemon's user only)
// or, with a group, 0660 and owned by that group -- never left to the
// umask. A front-end that can connect drives guest memory and the backend.
struct SocketAccess {
  int64_t gid = -1;  // -1: no group
};

class Listener {
 public:
  // Binds and listens at `path`. A socket left at the path by a daemon that
  // is gone (connect is refused) is unlinked first; a path that is served by
  // a live process, is not a socket, is too long for sockaddr_un or is in a
  // directory that does not exist or cannot be written throws ListenError.
  // `what` names the socket in messages ("vhost-user socket", "stats socket").
  explicit Listener(std::string path, std::string what = "vhost-user socket",
                    SocketAccess access = {});
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  // Closes the socket and unlinks the path if it is still this socket.
  ~Listener();

  // Unlinks the path if it is still the socket this listener bound: what
  // the destructor does, for a process that closes nothing (a sandbox's
  // outside helper, sandbox/outside.h).
  void remove_socket_file() const;
  // From now on the socket file is someone else's to remove (a supervisor
  // that binds it once for each process it starts): the destructor only
  // closes this process's descriptor.
  void forget_socket_file() { ino_ = 0; }

  // The listening socket (nonblocking, close-on-exec): readable when a
  // front-end waits to be accepted.
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

  // Waits for a front-end and returns its connected socket (blocking,
  // close-on-exec). Returns an empty fd if a signal interrupted the wait (the
  // caller checks whether it should stop) or on an error (logged).
  util::UniqueFd accept();
  // The connected socket of a waiting front-end, or an empty fd if none is
  // waiting (or on an error, logged). Never blocks.
  util::UniqueFd try_accept();

 private:
  std::string path_;
  std::string what_;
  util::UniqueFd fd_;
  dev_t dev_ = 0;  // identity of the socket file we bound, for the unlink
  ino_t ino_ = 0;
};

// Sends all of `data` on the stream socket `fd` (MSG_NOSIGNAL, retrying
// EINTR). False if the peer went away, the socket's send timeout passed or
// another error ended it first.
bool send_all(int fd, std::string_view data);

// One sendmsg of `iov` with `fds` passed along (SCM_RIGHTS, at most
// kMaxPassedFds), with `flags` and MSG_NOSIGNAL, retrying EINTR: sendmsg's
// result (-1 and EINVAL for too many fds).
inline constexpr size_t kMaxPassedFds = 16;
ssize_t send_with_fds(int socket, std::span<const iovec> iov, std::span<const int> fds,
                      int flags = 0);

}  // namespace dpfs::util
