#include "frontend.h"

#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "util/unix_listener.h"
#include "vhost_user/message.h"

namespace dpfs::bench {

namespace vu = dpfs::vhost_user;
using vu::Request;

namespace {

uint32_t req(Request r) { return uint32_t(r); }

template <typename T>
std::span<const uint8_t> bytes_of(const T& v) {
  return {reinterpret_cast<const uint8_t*>(&v), sizeof(v)};
}

}  // namespace

Frontend::Frontend(const std::string& socket_path) : path_(socket_path) {
  socket_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket_) throw std::runtime_error(fmt::format("socket: {}", std::strerror(errno)));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof(addr.sun_path)) {
    throw std::runtime_error(fmt::format("socket path {} is too long", socket_path));
  }
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  if (::connect(socket_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    throw std::runtime_error(
        fmt::format("cannot connect to the vhost-user socket {}: {} (is the "
                    "device running?)",
                    socket_path, std::strerror(errno)));
  }
  // A device that stops answering must not hang the benchmark.
  timeval tv{.tv_sec = 5, .tv_usec = 0};
  ::setsockopt(socket_.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

void Frontend::send(uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
                    std::span<const int> fds) {
  if (!socket_) throw std::runtime_error("vhost-user: the connection is closed");
  vu::Header h{request, vu::kVersion | flags, uint32_t(payload.size())};
  const iovec iov[2] = {{&h, sizeof(h)}, {const_cast<uint8_t*>(payload.data()), payload.size()}};
  const ssize_t n =
      util::send_with_fds(socket_.get(), std::span(iov, payload.empty() ? 1 : 2), fds);
  if (n != ssize_t(sizeof(h) + payload.size())) {
    throw std::runtime_error(fmt::format("vhost-user {}: sending failed: {}",
                                         vu::request_name(request),
                                         n < 0 ? std::strerror(errno) : "short write"));
  }
}

uint64_t Frontend::receive_u64(uint32_t request) {
  // Every reply this front-end asks for carries 8 bytes: a u64, or a vring
  // state (index, num), returned as one u64 (num in the high half).
  uint8_t bytes[vu::kHeaderSize + 8];
  size_t have = 0;
  while (have < sizeof(bytes)) {
    const ssize_t n = ::recv(socket_.get(), bytes + have, sizeof(bytes) - have, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      throw std::runtime_error(
          fmt::format("vhost-user {}: no reply from the device: {}", vu::request_name(request),
                      n == 0 ? "it closed the connection" : std::strerror(errno)));
    }
    have += size_t(n);
  }
  vu::Header h;
  uint64_t value;
  std::memcpy(&h, bytes, sizeof(h));
  std::memcpy(&value, bytes + vu::kHeaderSize, sizeof(value));
  if (h.request != request || !(h.flags & vu::kFlagReply) || h.size != 8) {
    throw std::runtime_error(fmt::format("vhost-user {}: malformed reply (request {}, size {})",
                                         vu::request_name(request), h.request, h.size));
  }
  return value;
}

uint64_t Frontend::request(uint32_t request, std::span<const uint8_t> payload,
                           std::span<const int> fds, bool has_reply) {
  const bool ack = !has_reply && (protocol_features_ & vu::protocol_feature::kReplyAck);
  send(request, ack ? vu::kFlagNeedReply : 0, payload, fds);
  if (!has_reply && !ack) return 0;
  const uint64_t v = receive_u64(request);
  if (ack && v != 0) {
    throw std::runtime_error(
        fmt::format("vhost-user {}: the device refused it", vu::request_name(request)));
  }
  return v;
}

uint64_t Frontend::request_u64(uint32_t request, uint64_t value, std::span<const int> fds) {
  return this->request(request, bytes_of(value), fds);
}

void Frontend::vring_state(uint32_t request, uint32_t index, uint32_t num) {
  const vu::VringState s{index, num};
  this->request(request, bytes_of(s));
}

void Frontend::start(const SharedMemory& mem, std::span<DriverQueue* const> queues) {
  const uint64_t offered = request(req(Request::kGetFeatures), {}, {}, true);
  if (!(offered & vu::kFeatureVersion1)) {
    throw std::runtime_error("the device does not offer VIRTIO_F_VERSION_1");
  }
  // Split rings without event index or indirect descriptors: the layout
  // every device must take.
  features_ = vu::kFeatureVersion1 | (offered & vu::kFeatureProtocolFeatures);
  if (features_ & vu::kFeatureProtocolFeatures) {
    const uint64_t pf = request(req(Request::kGetProtocolFeatures), {}, {}, true);
    const uint64_t want = pf & (vu::protocol_feature::kMq | vu::protocol_feature::kReplyAck);
    request_u64(req(Request::kSetProtocolFeatures), want);
    protocol_features_ = want;  // acks from here on
    if (want & vu::protocol_feature::kMq) {
      queue_num_ = uint32_t(request(req(Request::kGetQueueNum), {}, {}, true));
    }
  }
  uint32_t highest = 0;
  for (const DriverQueue* q : queues) highest = std::max(highest, q->index());
  if (queue_num_ != 0 && highest >= queue_num_) {
    throw std::runtime_error(fmt::format(
        "the device has {} virtqueues (1 hiprio + {} request queues); {} request queues were "
        "asked for",
        queue_num_, queue_num_ - 1, highest));
  }
  request(req(Request::kSetOwner), {});
  request_u64(req(Request::kSetFeatures), features_);

  struct {
    uint32_t nregions;
    uint32_t padding;
    vu::MemoryRegion region;
  } table{1, 0, {SharedMemory::kGuestBase, mem.size(), mem.user_addr(mem.base()), 0}};
  const int memfd = mem.fd();
  request(req(Request::kSetMemTable), bytes_of(table), {&memfd, 1});

  for (DriverQueue* q : queues) {
    vring_state(req(Request::kSetVringNum), q->index(), q->size());
    vring_state(req(Request::kSetVringBase), q->index(), 0);
    const vu::VringAddr addr{q->index(),           0, q->desc_user_addr(), q->used_user_addr(),
                             q->avail_user_addr(), 0};
    request(req(Request::kSetVringAddr), bytes_of(addr));
    const int call = q->call_fd();
    request_u64(req(Request::kSetVringCall), q->index(), {&call, 1});
    const int kick = q->kick_fd();
    request_u64(req(Request::kSetVringKick), q->index(), {&kick, 1});
    if (features_ & vu::kFeatureProtocolFeatures) {
      vring_state(req(Request::kSetVringEnable), q->index(), 1);
    }
  }
}

}  // namespace dpfs::bench
