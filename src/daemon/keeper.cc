#include "daemon/keeper.h"

#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "util/unix_listener.h"
#include "vhost_user/message.h"

namespace dpfs::daemon {
namespace {

// A record's largest: its kind and a whole vhost-user request.
constexpr size_t kMaxRecord = 1 + vhost_user::kHeaderSize + vhost_user::kMaxPayloadSize;
constexpr size_t kMaxRecordFds = vhost_user::kMaxFds;

}  // namespace

bool take_records(int fd, Kept& kept, const std::string& who) {
  for (;;) {
    uint8_t buf[kMaxRecord];
    iovec iov{buf, sizeof buf};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxRecordFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    std::vector<util::UniqueFd> fds;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int f;
        std::memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
        fds.emplace_back(f);
      }
    }
    if (n == 0) return false;
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
      spdlog::warn("{}: a kept record was cut short; the connection cannot be resumed", who);
      kept.overflow = true;
      continue;
    }
    const std::span<const uint8_t> payload(buf + 1, size_t(n) - 1);
    switch (buf[0]) {
      case 'C':
        if (fds.size() != 1) break;
        kept.clear();
        kept.connection = std::move(fds[0]);
        continue;
      case 'X':
        kept.clear();
        continue;
      case 'I':
        if (payload.size() != sizeof(fuse::InitState)) break;
        kept.init.emplace();
        std::memcpy(&*kept.init, payload.data(), sizeof(fuse::InitState));
        continue;
      case 'M':
        if (!kept.connection || kept.overflow) continue;
        if (kept.journal.size() >= kMaxKeptRequests ||
            kept.bytes + payload.size() > kMaxKeptBytes || kept.fds + fds.size() > kMaxKeptFds) {
          spdlog::warn(
              "{}: its front-end's set-up journal is over {} requests, {} bytes or {} "
              "descriptors; the connection will not survive the device process",
              who, kMaxKeptRequests, kMaxKeptBytes, kMaxKeptFds);
          kept.overflow = true;
          kept.journal.clear();
          continue;
        }
        kept.bytes += payload.size();
        kept.fds += fds.size();
        kept.journal.push_back({{payload.begin(), payload.end()}, std::move(fds)});
        continue;
      default:
        break;
    }
    spdlog::warn("{}: a malformed kept record ('{}', {} bytes, {} fds) dropped", who,
                 buf[0] >= 0x20 && buf[0] < 0x7f ? char(buf[0]) : '?', n, fds.size());
  }
}

void KeeperLink::send(char kind, std::span<const uint8_t> payload, const std::vector<int>& fds) {
  if (fd_ < 0) return;
  const char k = kind;
  const iovec iov[2] = {{const_cast<char*>(&k), 1},
                        {const_cast<uint8_t*>(payload.data()), payload.size()}};
  if (payload.size() + 1 > kMaxRecord || fds.size() > kMaxRecordFds) return;
  std::lock_guard lock(mu_);
  if (util::send_with_fds(fd_, std::span(iov, payload.empty() ? 1 : 2), fds) < 0) {
    // The supervisor is gone (the process ends soon) or its socket full:
    // what is not kept cannot be resumed.
    spdlog::warn("keeping the connection's state for a successor failed: {}", std::strerror(errno));
  }
}

void KeeperLink::connection(int socket) { send('C', {}, {socket}); }

void KeeperLink::request(std::span<const uint8_t> bytes, std::vector<util::UniqueFd> fds) {
  std::vector<int> raw;
  for (const util::UniqueFd& f : fds) raw.push_back(f.get());
  send('M', bytes, raw);
  // Ours close here; the supervisor has its own.
}

void KeeperLink::init(const fuse::InitState& state) {
  send('I', std::span(reinterpret_cast<const uint8_t*>(&state), sizeof state), {});
}

void KeeperLink::ended() { send('X', {}, {}); }

}  // namespace dpfs::daemon
