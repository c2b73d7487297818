#include "vhost_user/connection.h"

#include <fcntl.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>
#include <utility>

namespace dpfs::vhost_user {

using util::UniqueFd;

namespace {

// How long a reply may wait for room in the socket before the front-end is
// taken to be gone: QEMU reads every reply at once, a front-end that does not
// must not hold the thread.
constexpr int kSendTimeoutMs = 5000;

// Refusals logged per connection; past this, a front-end sending junk in a
// loop would only flood the log.
constexpr unsigned kMaxRefusalsLogged = 20;

Header header_of(const uint8_t* buffer) {
  Header header;
  std::memcpy(&header, buffer, kHeaderSize);
  return header;
}

}  // namespace

Connection::Connection(UniqueFd socket, VhostUserDevice& device, std::string name)
    : socket_(std::move(socket)),
      device_(device),
      name_(std::move(name)),
      queue_num_(device.queue_num()) {
  fds_.reserve(kMaxFds);
}

Connection::~Connection() { close(); }

void Connection::close() {
  if (!connected()) return;
  socket_.reset();
  fds_.clear();
  have_ = 0;
  device_.disconnect();
}

void Connection::fail(const std::string& what) {
  device_.log().warn("vhost-user {}: {}; closing the connection", name_, what);
  close();
}

uint64_t Connection::offered_features() const {
  return (device_.features() & ~kFeatureLogAll) | kFeatureProtocolFeatures;
}

uint64_t Connection::offered_protocol_features() const {
  return device_.protocol_features() & kSupportedProtocolFeatures;
}

bool Connection::on_readable() {
  while (process_one(/*block=*/false)) {
  }
  return connected();
}

void Connection::serve() {
  while (process_one(/*block=*/true)) {
  }
}

// Reads until one whole message (header, payload, fds) is in buffer_/fds_.
// Reads never go past the current message, so fds sent with the next one are
// not taken for this one's (the kernel does not merge data carrying different
// fds into one read).
Connection::ReadStatus Connection::read_message(bool block) {
  for (;;) {
    size_t want = kHeaderSize;
    if (have_ >= kHeaderSize) {
      want += header_of(buffer_).size;  // validated when the header came in
      if (have_ == want) return ReadStatus::kMessage;
    }

    iovec iov{buffer_ + have_, want - have_};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFds)];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    const ssize_t n = ::recvmsg(socket_.get(), &msg, MSG_CMSG_CLOEXEC | (block ? 0 : MSG_DONTWAIT));
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        if (!block) return ReadStatus::kWouldBlock;
        pollfd pfd{socket_.get(), POLLIN, 0};
        if (::poll(&pfd, 1, -1) < 0 && errno != EINTR) {
          fail(fmt::format("poll: {}", std::strerror(errno)));
          return ReadStatus::kClosed;
        }
        continue;
      }
      fail(fmt::format("recvmsg: {}", std::strerror(errno)));
      return ReadStatus::kClosed;
    }

    // Own every fd that came before looking at anything else, so that each
    // path below closes them.
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
        fds_.emplace_back(fd);
      }
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      fail(fmt::format("more than {} fds with one message (control data truncated)", kMaxFds));
      return ReadStatus::kClosed;
    }
    if (fds_.size() > kMaxFds) {
      fail(fmt::format("{} fds with one message, at most {}", fds_.size(), kMaxFds));
      return ReadStatus::kClosed;
    }
    if (n == 0) {
      if (have_ > 0) {
        fail(fmt::format("end of stream inside a message ({} bytes of it read)", have_));
      } else {
        device_.log().info("vhost-user {}: front-end disconnected", name_);
        close();
      }
      return ReadStatus::kClosed;
    }
    have_ += static_cast<size_t>(n);
    if (have_ == kHeaderSize) {
      const Header header = header_of(buffer_);
      std::string error;
      if (!validate_header(header, &error)) {
        fail(fmt::format("{} ({}): {}", request_name(header.request), header.request, error));
        return ReadStatus::kClosed;
      }
    }
  }
}

bool Connection::process_one(bool block) {
  if (!connected()) return false;
  if (read_message(block) != ReadStatus::kMessage) return false;

  const Header header = header_of(buffer_);
  std::vector<UniqueFd> fds = std::move(fds_);
  fds_.clear();
  fds_.reserve(kMaxFds);
  have_ = 0;
  const std::string_view name = request_name(header.request);

  Message message;
  std::string error;
  if (!parse_message(header, std::span<const uint8_t>(buffer_ + kHeaderSize, header.size),
                     fds.size(), &message, &error)) {
    fail(fmt::format("{} ({}): {}", name, header.request, error));
    return false;
  }

  // For the journal: the request as it came, and the fds before the
  // device takes them.
  std::vector<uint8_t> journaled;
  std::vector<UniqueFd> copies;
  if (journal_) {
    journaled.assign(buffer_, buffer_ + kHeaderSize + header.size);
    for (const UniqueFd& fd : fds) copies.emplace_back(::fcntl(fd.get(), F_DUPFD_CLOEXEC, 0));
  }
  const Outcome outcome = dispatch(message, fds, &error);
  fds.clear();  // whatever the device did not take
  if (journal_ && outcome == Outcome::kOk) journal_(journaled, std::move(copies));
  if (outcome == Outcome::kFatal) {
    if (connected()) fail(fmt::format("{}: {}", name, error));  // else a reply failed, logged
    return false;
  }
  if (outcome == Outcome::kRefused) {
    ++refusals_;
    if (refusals_ <= kMaxRefusalsLogged) {
      device_.log().warn("vhost-user {}: {} ({}) refused: {}{}", name_, name, header.request, error,
                         refusals_ == kMaxRefusalsLogged ? " (further refusals not logged)" : "");
    }
  }
  if (!connected()) return false;  // a reply could not be sent
  // REPLY_ACK (vhost-user.rst): with need_reply, every request without a
  // reply of its own is answered with u64 0 (success) or non-zero.
  if (message.need_reply() && reply_ack() && !has_reply_body(header.request)) {
    if (!send_reply(encode_reply_u64(header.request, outcome == Outcome::kOk ? 0 : 1))) {
      return false;
    }
  }
  return true;
}

bool Connection::replay(std::span<const uint8_t> bytes, std::vector<UniqueFd> fds) {
  std::string error;
  if (bytes.size() < kHeaderSize) {
    device_.log().warn("vhost-user {}: a journaled request of {} bytes", name_, bytes.size());
    return false;
  }
  const Header header = header_of(bytes.data());
  if (!validate_header(header, &error) || header.size != bytes.size() - kHeaderSize) {
    device_.log().warn("vhost-user {}: a journaled request does not parse: {}", name_,
                       error.empty() ? "its size" : error);
    return false;
  }
  Message message;
  if (!parse_message(header, bytes.subspan(kHeaderSize), fds.size(), &message, &error)) {
    device_.log().warn("vhost-user {}: a journaled {}: {}", name_, request_name(header.request),
                       error);
    return false;
  }
  replaying_ = true;
  const Outcome outcome = dispatch(message, fds, &error);
  replaying_ = false;
  if (outcome != Outcome::kOk) {
    device_.log().warn("vhost-user {}: the journaled {} was refused: {}", name_,
                       request_name(header.request), error);
    return false;
  }
  return true;
}

bool Connection::check_index(uint32_t index, std::string* error) const {
  if (index < queue_num_) return true;
  *error = fmt::format("vring index {}, the device has {} queues", index, queue_num_);
  return false;
}

void Connection::apply_initial_enable(uint64_t previous, bool first) {
  // vhost-user.rst "Ring states": without VHOST_USER_F_PROTOCOL_FEATURES a
  // ring starts enabled; with it, disabled until SET_VRING_ENABLE.
  const bool with_protocol = (acked_features_ & kFeatureProtocolFeatures) != 0;
  if (!first && with_protocol == ((previous & kFeatureProtocolFeatures) != 0)) return;
  for (uint32_t i = 0; i < queue_num_; ++i) {
    const int r = device_.set_vring_enable(i, !with_protocol);
    if (r < 0) {
      device_.log().warn("vhost-user {}: the device could not {} ring {}: {}", name_,
                         with_protocol ? "disable" : "enable", i, std::strerror(-r));
    }
  }
}

Connection::Outcome Connection::handle_vring_file(const Message& message, UniqueFd fd,
                                                  std::string* error) {
  const auto& file = std::get<VringFilePayload>(message.payload);
  if (!check_index(file.index, error)) return Outcome::kFatal;
  // The back-end writes the call and err eventfds and reads the kick one. A
  // front-end may hand them blocking; a blocking eventfd whose counter it let
  // reach 0xfffffffffffffffe would block the worker on write() for good
  // (eventfd(2)). Non-blocking, a full counter is EAGAIN: already signalled.
  // The flag is on the open file description, shared with the front-end's
  // copy, which only reads or writes it through poll-driven event loops.
  if (fd) {
    const int flags = ::fcntl(fd.get(), F_GETFL);
    if (flags < 0 || ::fcntl(fd.get(), F_SETFL, flags | O_NONBLOCK) < 0) {
      *error = fmt::format("ring {}: cannot make its eventfd non-blocking: {}", file.index,
                           std::strerror(errno));
      return Outcome::kRefused;
    }
  }
  int r = 0;
  switch (static_cast<Request>(message.request)) {
    case Request::kSetVringKick:
      r = device_.set_vring_kick(file.index, std::move(fd));
      break;
    case Request::kSetVringCall:
      r = device_.set_vring_call(file.index, std::move(fd));
      break;
    default:
      r = device_.set_vring_err(file.index, std::move(fd));
      break;
  }
  if (r < 0) {
    *error = fmt::format("ring {}: {}", file.index, std::strerror(-r));
    return Outcome::kRefused;
  }
  return Outcome::kOk;
}

Connection::Outcome Connection::dispatch(Message& message, std::vector<UniqueFd>& fds,
                                         std::string* error) {
  const uint32_t request = message.request;
  // A device refusal, as an outcome.
  const auto device_result = [&](int r, const std::string& what = {}) {
    if (r >= 0) return Outcome::kOk;
    *error = what.empty() ? std::string(std::strerror(-r))
                          : fmt::format("{}: {}", what, std::strerror(-r));
    return Outcome::kRefused;
  };
  const auto reply = [&](const std::vector<uint8_t>& bytes, Outcome outcome) {
    if (!send_reply(bytes)) {
      *error = "could not send the reply";
      return Outcome::kFatal;
    }
    return outcome;
  };
  const auto refuse = [&](std::string why) {
    *error = std::move(why);
    return Outcome::kRefused;
  };
  const auto u64 = [&] { return std::get<U64Payload>(message.payload).value; };
  const auto state = [&] { return std::get<VringState>(message.payload); };
  const bool packed = (acked_features_ & kFeatureRingPacked) != 0;

  switch (static_cast<Request>(request)) {
    case Request::kGetFeatures:
      return reply(encode_reply_u64(request, offered_features()), Outcome::kOk);

    case Request::kSetFeatures: {
      const uint64_t features = u64();
      const uint64_t offered = offered_features();
      if (features & ~offered) {
        *error = fmt::format("features {:#x} were not offered (offered {:#x})", features & ~offered,
                             offered);
        return Outcome::kFatal;
      }
      const int r = device_.set_features(features);
      if (r < 0) return device_result(r);
      const uint64_t previous = acked_features_;
      acked_features_ = features;
      apply_initial_enable(previous, !features_set_);
      features_set_ = true;
      return Outcome::kOk;
    }

    case Request::kGetProtocolFeatures:
      return reply(encode_reply_u64(request, offered_protocol_features()), Outcome::kOk);

    case Request::kSetProtocolFeatures: {
      const uint64_t features = u64();
      const uint64_t offered = offered_protocol_features();
      if (features & ~offered) {
        *error = fmt::format("protocol features {:#x} were not offered (offered {:#x})",
                             features & ~offered, offered);
        return Outcome::kFatal;
      }
      acked_protocol_features_ = features;
      return device_result(device_.set_protocol_features(features));
    }

    case Request::kSetOwner:
      return device_result(device_.set_owner());

    case Request::kResetOwner:
    case Request::kResetDevice:
      device_.reset_device();
      // The front-end negotiates features again before it starts the device;
      // protocol features belong to the connection and stay.
      acked_features_ = 0;
      features_set_ = false;
      return Outcome::kOk;

    case Request::kSetMemTable: {
      auto& table = std::get<MemoryTablePayload>(message.payload);
      std::vector<MemoryRegionFd> regions;
      regions.reserve(table.regions.size());
      for (size_t i = 0; i < table.regions.size(); ++i) {
        regions.push_back(MemoryRegionFd{table.regions[i], std::move(fds[i])});
      }
      return device_result(device_.set_mem_table(std::move(regions)));
    }

    case Request::kGetMaxMemSlots:
      return reply(encode_reply_u64(request, device_.max_mem_slots()), Outcome::kOk);

    case Request::kAddMemReg:
    case Request::kRemMemReg: {
      if (!(acked_protocol_features_ & protocol_feature::kConfigureMemSlots)) {
        return refuse("CONFIGURE_MEM_SLOTS was not negotiated");
      }
      const MemoryRegion& region = std::get<SingleRegionPayload>(message.payload).region;
      if (static_cast<Request>(request) == Request::kAddMemReg) {
        return device_result(device_.add_mem_reg(MemoryRegionFd{region, std::move(fds[0])}));
      }
      // An fd with REM_MEM_REG is closed unused (vhost-user.rst).
      return device_result(device_.rem_mem_reg(region));
    }

    case Request::kSetVringNum: {
      const VringState s = state();
      if (!check_index(s.index, error)) return Outcome::kFatal;
      // virtio 1.2 §2.7: a split ring's size is a power of two; both layouts
      // are at most 32768 entries.
      if (s.num == 0 || s.num > kMaxQueueSize || (!packed && (s.num & (s.num - 1)) != 0)) {
        *error = fmt::format("ring {} size {} is not valid for a {} ring (at most {})", s.index,
                             s.num, packed ? "packed" : "split", kMaxQueueSize);
        return Outcome::kFatal;
      }
      return device_result(device_.set_vring_num(s.index, s.num), fmt::format("ring {}", s.index));
    }

    case Request::kSetVringAddr: {
      const VringAddr& addr = std::get<VringAddr>(message.payload);
      if (!check_index(addr.index, error)) return Outcome::kFatal;
      if (addr.flags & ~kVringFlagLog) {
        *error = fmt::format("ring {}: reserved flags {:#x}", addr.index, addr.flags);
        return Outcome::kFatal;
      }
      if (addr.flags & kVringFlagLog) return refuse("dirty logging is not supported");
      return device_result(device_.set_vring_addr(addr.index, addr),
                           fmt::format("ring {}", addr.index));
    }

    case Request::kSetVringBase: {
      const VringState s = state();
      if (!check_index(s.index, error)) return Outcome::kFatal;
      if (!packed && s.num > 0xffff) {
        *error =
            fmt::format("ring {} base {} does not fit a split ring's 16-bit index", s.index, s.num);
        return Outcome::kFatal;
      }
      return device_result(device_.set_vring_base(s.index, s.num), fmt::format("ring {}", s.index));
    }

    case Request::kGetVringBase: {
      const VringState s = state();
      if (!check_index(s.index, error)) return Outcome::kFatal;
      const uint32_t base = device_.get_vring_base(s.index);
      return reply(encode_reply_vring_state(request, VringState{s.index, base}), Outcome::kOk);
    }

    case Request::kSetVringKick:
    case Request::kSetVringCall:
    case Request::kSetVringErr:
      return handle_vring_file(message, fds.empty() ? UniqueFd() : std::move(fds[0]), error);

    case Request::kGetQueueNum:
      return reply(encode_reply_u64(request, queue_num_), Outcome::kOk);

    case Request::kSetVringEnable: {
      const VringState s = state();
      if (!check_index(s.index, error)) return Outcome::kFatal;
      if (s.num > 1) {
        *error = fmt::format("ring {}: enable value {}, expected 0 or 1", s.index, s.num);
        return Outcome::kFatal;
      }
      return device_result(device_.set_vring_enable(s.index, s.num == 1),
                           fmt::format("ring {}", s.index));
    }

    case Request::kSetBackendReqFd:
      if (!(acked_protocol_features_ & protocol_feature::kBackendReq)) {
        return refuse("BACKEND_REQ was not negotiated");
      }
      return device_result(device_.set_backend_req_fd(std::move(fds[0])));

    case Request::kSetStatus: {
      if (!(acked_protocol_features_ & protocol_feature::kStatus)) {
        return refuse("STATUS was not negotiated");
      }
      const uint64_t status = u64();
      if (status > 0xff) {
        *error = fmt::format("device status {:#x} does not fit a byte", status);
        return Outcome::kFatal;
      }
      return device_result(device_.set_status(static_cast<uint8_t>(status)));
    }

    case Request::kGetStatus:
      return reply(encode_reply_u64(request, device_.get_status()), Outcome::kOk);

    case Request::kSetLogBase:
    case Request::kSetLogFd:
      // LOG_SHMFD and VHOST_F_LOG_ALL are never offered: no migration.
      return refuse("dirty logging is not supported");

    case Request::kGetConfig:
      // vhost-user.rst: a reply with a zero-length payload is the error.
      *error = "the device has no config space";
      return reply(encode_reply(request, {}), Outcome::kRefused);

    case Request::kIotlbMsg:
    case Request::kPostcopyEnd:
      // Their reply is a u64 status: say failure.
      *error = "not supported";
      return reply(encode_reply_u64(request, 1), Outcome::kRefused);

    case Request::kCreateCryptoSession:
    case Request::kPostcopyAdvise:
    case Request::kGetInflightFd:
      // The front-end waits for a reply this back-end cannot give, for a
      // protocol feature it never offered.
      *error = "needs a protocol feature that was not offered, and a reply that cannot be given";
      return Outcome::kFatal;

    default:
      // Unknown request numbers, and requests for features never offered
      // (SET_CONFIG, SEND_RARP, NET_SET_MTU, SET_VRING_ENDIAN, ...): their
      // payload was skipped and their fds are closed.
      return refuse("not supported");
  }
}

bool Connection::send_reply(const std::vector<uint8_t>& bytes) {
  if (replaying_) return true;  // answered long ago, by the process that took it
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n = ::send(socket_.get(), bytes.data() + sent, bytes.size() - sent,
                             MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      sent += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      pollfd pfd{socket_.get(), POLLOUT, 0};
      const int r = ::poll(&pfd, 1, kSendTimeoutMs);
      if (r == 0) {
        fail("the front-end does not read its replies");
        return false;
      }
      if (r < 0 && errno != EINTR) {
        fail(fmt::format("poll: {}", std::strerror(errno)));
        return false;
      }
      continue;
    }
    fail(fmt::format("sending a reply: {}", std::strerror(errno)));
    return false;
  }
  return true;
}

}  // namespace dpfs::vhost_user
