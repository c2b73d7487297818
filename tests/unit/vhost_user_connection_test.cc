// A vhost-user Connection driven by a fake front-end over a socketpair: real
// messages with real fds (memfds for memory, eventfds for rings), QEMU 7.2's
// start-up sequence, REPLY_ACK, partial reads, and hostile messages, which
// must close the connection without leaking a single fd. Also the Listener.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cctype>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "util/unix_listener.h"
#include "vhost_user/connection.h"
#include "vhost_user/message.h"

namespace dpfs::vhost_user {
namespace {

using util::Listener;
using util::ListenError;
using util::UniqueFd;

constexpr uint64_t kEventIdx = 1ull << 29;
constexpr uint64_t kIndirectDesc = 1ull << 28;

int count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;  // the directory's own fd
}

ino_t inode_of(int fd) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return 0;
  return st.st_ino;
}

UniqueFd make_memfd(size_t size = 4096) {
  UniqueFd fd(::memfd_create("guest-ram", MFD_CLOEXEC));
  EXPECT_TRUE(fd);
  EXPECT_EQ(::ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  return fd;
}

UniqueFd make_eventfd() {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC));
  EXPECT_TRUE(fd);
  return fd;
}

class Bytes {
 public:
  template <typename T>
  Bytes& add(const T& value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    data_.insert(data_.end(), p, p + sizeof(T));
    return *this;
  }
  operator const std::vector<uint8_t>&() const { return data_; }
  const std::vector<uint8_t>& data() const { return data_; }

 private:
  std::vector<uint8_t> data_;
};

std::vector<uint8_t> u64(uint64_t v) { return Bytes().add(v); }
std::vector<uint8_t> state(uint32_t index, uint32_t num) { return Bytes().add(index).add(num); }
std::vector<uint8_t> mem_table(const std::vector<MemoryRegion>& regions, uint32_t count) {
  Bytes b;
  b.add(count).add(uint32_t{0});
  for (const auto& r : regions) b.add(r);
  return b;
}
std::vector<uint8_t> single_region(const MemoryRegion& r) {
  return Bytes().add(uint64_t{0}).add(r);
}

struct Reply {
  Header header;
  std::vector<uint8_t> payload;
  uint64_t u64() const {
    uint64_t v = ~uint64_t{0};
    if (payload.size() == 8) std::memcpy(&v, payload.data(), 8);
    return v;
  }
};

// The QEMU side of the socket.
class FrontEnd {
 public:
  explicit FrontEnd(UniqueFd sock) : sock_(std::move(sock)) {}

  // Sends bytes with fds attached to the first byte (one sendmsg).
  void send_bytes(const uint8_t* data, size_t len, const std::vector<int>& fds = {}) {
    iovec iov{const_cast<uint8_t*>(data), len};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * fds.size()));
    if (!fds.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = control.size();
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    ASSERT_EQ(::sendmsg(sock_.get(), &msg, MSG_NOSIGNAL), static_cast<ssize_t>(len))
        << std::strerror(errno);
  }

  static std::vector<uint8_t> encode(uint32_t request, const std::vector<uint8_t>& payload,
                                     uint32_t flags = kVersion) {
    const Header h{request, flags, static_cast<uint32_t>(payload.size())};
    std::vector<uint8_t> bytes(kHeaderSize);
    std::memcpy(bytes.data(), &h, kHeaderSize);
    bytes.insert(bytes.end(), payload.begin(), payload.end());
    return bytes;
  }

  void send(Request request, const std::vector<uint8_t>& payload = {},
            const std::vector<int>& fds = {}, uint32_t flags = kVersion) {
    send_raw(static_cast<uint32_t>(request), payload, fds, flags);
  }
  void send_raw(uint32_t request, const std::vector<uint8_t>& payload,
                const std::vector<int>& fds = {}, uint32_t flags = kVersion) {
    const auto bytes = encode(request, payload, flags);
    send_bytes(bytes.data(), bytes.size(), fds);
  }

  // The next reply, if one arrives within a second.
  std::optional<Reply> reply() {
    Reply r;
    if (!read_exact(&r.header, kHeaderSize)) return std::nullopt;
    r.payload.resize(r.header.size);
    if (r.header.size > 0 && !read_exact(r.payload.data(), r.header.size)) return std::nullopt;
    return r;
  }
  bool reply_pending() {
    pollfd pfd{sock_.get(), POLLIN, 0};
    return ::poll(&pfd, 1, 0) == 1 && (pfd.revents & POLLIN);
  }
  // Whether the back-end closed its end: EOF, or ECONNRESET when it closed
  // with bytes of ours still unread.
  bool closed_by_peer() {
    char c;
    const ssize_t n = ::recv(sock_.get(), &c, 1, MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno == ECONNRESET);
  }
  void shutdown_write() { ::shutdown(sock_.get(), SHUT_WR); }
  void close() { sock_.reset(); }

 private:
  bool read_exact(void* buf, size_t len) {
    auto* p = static_cast<uint8_t*>(buf);
    while (len > 0) {
      pollfd pfd{sock_.get(), POLLIN, 0};
      if (::poll(&pfd, 1, 1000) != 1) return false;
      const ssize_t n = ::recv(sock_.get(), p, len, 0);
      if (n <= 0) return false;
      p += n;
      len -= static_cast<size_t>(n);
    }
    return true;
  }

  UniqueFd sock_;
};

class FakeDevice : public VhostUserDevice {
 public:
  explicit FakeDevice(uint32_t queues = 2)
      : kick(queues),
        call(queues),
        err(queues),
        enabled(queues, -1),
        num(queues),
        base(queues),
        addr(queues) {}

  uint64_t features() const override { return offered; }
  uint64_t protocol_features() const override { return offered_protocol; }
  uint32_t queue_num() const override { return static_cast<uint32_t>(kick.size()); }
  uint32_t max_mem_slots() const override { return 32; }

  int set_features(uint64_t f) override {
    acked = f;
    return refuse;
  }
  int set_protocol_features(uint64_t f) override {
    acked_protocol = f;
    return 0;
  }
  int set_owner() override {
    ++owners;
    return 0;
  }
  int set_mem_table(std::vector<MemoryRegionFd> r) override {
    if (refuse) return refuse;
    regions = std::move(r);
    return 0;
  }
  int add_mem_reg(MemoryRegionFd r) override {
    if (refuse) return refuse;
    regions.push_back(std::move(r));
    return 0;
  }
  int rem_mem_reg(const MemoryRegion& r) override {
    for (auto it = regions.begin(); it != regions.end(); ++it) {
      if (it->region.guest_phys_addr == r.guest_phys_addr) {
        regions.erase(it);
        return 0;
      }
    }
    return -ENOENT;
  }
  int set_vring_num(uint32_t i, uint32_t n) override {
    if (refuse) return refuse;
    num[i] = n;
    return 0;
  }
  int set_vring_addr(uint32_t i, const VringAddr& a) override {
    addr[i] = a;
    return refuse;
  }
  int set_vring_base(uint32_t i, uint32_t b) override {
    base[i] = b;
    return refuse;
  }
  uint32_t get_vring_base(uint32_t i) override {
    kick[i].reset();
    return base[i] + 5;  // as if five requests were processed
  }
  int set_vring_kick(uint32_t i, UniqueFd fd) override {
    kick[i] = std::move(fd);
    ++kicks;
    return refuse;
  }
  int set_vring_call(uint32_t i, UniqueFd fd) override {
    call[i] = std::move(fd);
    return refuse;
  }
  int set_vring_err(uint32_t i, UniqueFd fd) override {
    err[i] = std::move(fd);
    return refuse;
  }
  int set_vring_enable(uint32_t i, bool e) override {
    enabled[i] = e ? 1 : 0;
    return 0;
  }
  int set_backend_req_fd(UniqueFd fd) override {
    backend = std::move(fd);
    return 0;
  }
  void reset_device() override {
    ++resets;
    drop();
  }
  void disconnect() override {
    ++disconnects;
    drop();
  }

  void drop() {
    regions.clear();
    for (auto* v : {&kick, &call, &err}) {
      for (auto& fd : *v) fd.reset();
    }
    backend.reset();
  }

  uint64_t offered = kFeatureVersion1 | kIndirectDesc | kEventIdx | kFeatureLogAll;
  uint64_t offered_protocol = protocol_feature::kMq | protocol_feature::kReplyAck |
                              protocol_feature::kConfigureMemSlots | protocol_feature::kBackendReq |
                              protocol_feature::kResetDevice | protocol_feature::kLogShmfd |
                              protocol_feature::kInflightShmfd;
  int refuse = 0;

  uint64_t acked = 0;
  uint64_t acked_protocol = 0;
  int owners = 0;
  int resets = 0;
  int disconnects = 0;
  int kicks = 0;
  std::vector<MemoryRegionFd> regions;
  std::vector<UniqueFd> kick, call, err;
  std::vector<int> enabled;  // -1: never told
  std::vector<uint32_t> num, base;
  std::vector<VringAddr> addr;
  UniqueFd backend;
};

class ConnectionTest : public ::testing::Test {
 protected:
  ConnectionTest() : ConnectionTest(/*nonblocking=*/true) {}
  explicit ConnectionTest(bool nonblocking) : front(UniqueFd()) {
    int sv[2];
    const int type = SOCK_STREAM | SOCK_CLOEXEC;
    EXPECT_EQ(::socketpair(AF_UNIX, type, 0, sv), 0);
    if (nonblocking) ::fcntl(sv[1], F_SETFL, ::fcntl(sv[1], F_GETFL) | O_NONBLOCK);
    front = FrontEnd(UniqueFd(sv[0]));
    conn.emplace(UniqueFd(sv[1]), device, "test");
  }

  // Negotiates as QEMU 7.2 does for vhost-user-fs (hw/virtio/vhost-user.c
  // vhost_user_backend_init, then vhost_dev_start's SET_FEATURES).
  void negotiate(uint64_t protocol = protocol_feature::kMq | protocol_feature::kReplyAck |
                                     protocol_feature::kConfigureMemSlots |
                                     protocol_feature::kBackendReq) {
    front.send(Request::kGetFeatures);
    ASSERT_TRUE(conn->on_readable());
    auto features = front.reply();
    ASSERT_TRUE(features);
    front.send(Request::kGetProtocolFeatures);
    front.send(Request::kSetProtocolFeatures, u64(protocol));
    front.send(Request::kSetOwner);
    front.send(Request::kSetFeatures, u64(kFeatureVersion1 | kFeatureProtocolFeatures));
    ASSERT_TRUE(conn->on_readable());
    ASSERT_TRUE(front.reply());
    ASSERT_FALSE(front.reply_pending());
  }

  FakeDevice device;
  FrontEnd front;
  std::optional<Connection> conn;
};

TEST_F(ConnectionTest, QemuStartupSequence) {
  front.send(Request::kGetFeatures);
  ASSERT_TRUE(conn->on_readable());
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, static_cast<uint32_t>(Request::kGetFeatures));
  EXPECT_EQ(r->header.flags, kVersion | kFlagReply);
  EXPECT_EQ(r->u64(), kFeatureVersion1 | kIndirectDesc | kEventIdx | kFeatureProtocolFeatures)
      << "PROTOCOL_FEATURES added, LOG_ALL removed";

  front.send(Request::kGetProtocolFeatures);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), protocol_feature::kMq | protocol_feature::kReplyAck |
                          protocol_feature::kConfigureMemSlots | protocol_feature::kBackendReq |
                          protocol_feature::kResetDevice)
      << "LOG_SHMFD and INFLIGHT_SHMFD are masked: the connection cannot carry them out";

  const uint64_t protocol = protocol_feature::kMq | protocol_feature::kReplyAck;
  front.send(Request::kSetProtocolFeatures, u64(protocol));
  front.send(Request::kGetQueueNum);
  front.send(Request::kSetOwner);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 2u);
  EXPECT_EQ(conn->acked_protocol_features(), protocol);
  EXPECT_EQ(device.acked_protocol, protocol);
  EXPECT_EQ(device.owners, 1);

  // SET_BACKEND_REQ_FD without BACKEND_REQ negotiated: refused, fd closed.
  {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    UniqueFd a(sv[0]), b(sv[1]);
    front.send(Request::kSetBackendReqFd, {}, {b.get()}, kVersion | kFlagNeedReply);
    b.reset();
    ASSERT_TRUE(conn->on_readable());
    r = front.reply();
    ASSERT_TRUE(r);
    EXPECT_NE(r->u64(), 0u);
    EXPECT_FALSE(device.backend);
    char c;
    EXPECT_EQ(::recv(a.get(), &c, 1, MSG_DONTWAIT), 0) << "the other end was closed";
  }

  front.send(Request::kSetFeatures, u64(kFeatureVersion1 | kEventIdx | kFeatureProtocolFeatures));
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.acked, kFeatureVersion1 | kEventIdx | kFeatureProtocolFeatures);
  EXPECT_EQ(device.enabled, (std::vector<int>{0, 0})) << "rings start disabled";

  // Memory table: two memfd regions, acked (QEMU sets need_reply here).
  UniqueFd ram0 = make_memfd(), ram1 = make_memfd();
  const ino_t ino0 = inode_of(ram0.get()), ino1 = inode_of(ram1.get());
  const MemoryRegion r0{0, 0xa0000, 0x7f0000000000, 0};
  const MemoryRegion r1{0x100000, 0x40000000, 0x7f0000100000, 0x100000};
  front.send(Request::kSetMemTable, mem_table({r0, r1}, 2), {ram0.get(), ram1.get()},
             kVersion | kFlagNeedReply);
  ram0.reset();
  ram1.reset();
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, static_cast<uint32_t>(Request::kSetMemTable));
  EXPECT_EQ(r->u64(), 0u);
  ASSERT_EQ(device.regions.size(), 2u);
  EXPECT_EQ(inode_of(device.regions[0].fd.get()), ino0) << "fds in the order of the regions";
  EXPECT_EQ(inode_of(device.regions[1].fd.get()), ino1);
  EXPECT_EQ(device.regions[1].region.userspace_addr, 0x7f0000100000u);
  // The fd maps the memory the front-end wrote.
  void* p = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, device.regions[0].fd.get(), 0);
  ASSERT_NE(p, MAP_FAILED);
  ::munmap(p, 4096);

  // Each ring, as vhost_virtqueue_start does it.
  for (uint32_t i = 0; i < 2; ++i) {
    front.send(Request::kSetVringNum, state(i, 128));
    front.send(Request::kSetVringBase, state(i, 0));
    const uint64_t base = 0x7f0000000000ull + uint64_t{i} * 0x10000;
    VringAddr a{i, 0, base + 0x1000, base + 0x3000, base + 0x2000, 0};
    front.send(Request::kSetVringAddr, Bytes().add(a));
    UniqueFd kick = make_eventfd(), call = make_eventfd();
    front.send(Request::kSetVringKick, u64(i), {kick.get()});
    front.send(Request::kSetVringCall, u64(i), {call.get()});
  }
  ASSERT_TRUE(conn->on_readable());
  EXPECT_FALSE(front.reply_pending()) << "no acks without need_reply";
  EXPECT_EQ(device.num, (std::vector<uint32_t>{128, 128}));
  EXPECT_EQ(device.addr[1].avail_user_addr, 0x7f0000012000u);
  ASSERT_TRUE(device.kick[1]);
  ASSERT_TRUE(device.call[1]);
  // The kick fd is the front-end's eventfd: a write on one side is seen on the other.
  EXPECT_EQ(device.enabled, (std::vector<int>{0, 0}));

  front.send(Request::kSetVringEnable, state(0, 1));
  front.send(Request::kSetVringEnable, state(1, 1));
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.enabled, (std::vector<int>{1, 1}));

  // Polling mode kick (no fd) and an error fd.
  front.send(Request::kSetVringKick, u64(kVringNoFdMask | 1));
  UniqueFd errfd = make_eventfd();
  front.send(Request::kSetVringErr, u64(0), {errfd.get()});
  ASSERT_TRUE(conn->on_readable());
  EXPECT_FALSE(device.kick[1]);
  EXPECT_TRUE(device.err[0]);

  // Stop: GET_VRING_BASE replies with the index and the next avail index.
  front.send(Request::kGetVringBase, state(1, 0));
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, static_cast<uint32_t>(Request::kGetVringBase));
  ASSERT_EQ(r->payload.size(), 8u);
  VringState s;
  std::memcpy(&s, r->payload.data(), 8);
  EXPECT_EQ(s.index, 1u);
  EXPECT_EQ(s.num, 5u);

  EXPECT_EQ(device.disconnects, 0);
  front.close();
  EXPECT_FALSE(conn->on_readable()) << "EOF";
  EXPECT_EQ(device.disconnects, 1);
  EXPECT_EQ(conn->fd(), -1);
  conn.reset();
  EXPECT_EQ(device.disconnects, 1) << "disconnect() once, not again from the destructor";
}

// A successor's replay (docs/restart.md): what the journal kept of one
// connection, taken by a fresh device on another connection, leaves it in
// the same state -- features, memory table (the same memory), rings and
// their eventfds -- and answers nothing. Refused requests are not kept.
TEST_F(ConnectionTest, AJournalReplayedRebuildsTheDevice) {
  std::vector<std::pair<std::vector<uint8_t>, std::vector<UniqueFd>>> journal;
  conn->set_journal([&](std::span<const uint8_t> bytes, std::vector<UniqueFd> fds) {
    journal.emplace_back(std::vector<uint8_t>(bytes.begin(), bytes.end()), std::move(fds));
  });
  negotiate();
  UniqueFd ram = make_memfd();
  const ino_t ino = inode_of(ram.get());
  front.send(Request::kSetMemTable, mem_table({{0, 0x100000, 0x7f0000000000, 0}}, 1), {ram.get()},
             kVersion | kFlagNeedReply);
  ram.reset();
  front.send(Request::kSetVringNum, state(1, 64));
  front.send(Request::kSetVringBase, state(1, 7));
  VringAddr a{1, 0, 0x7f0000001000, 0x7f0000003000, 0x7f0000002000, 0};
  front.send(Request::kSetVringAddr, Bytes().add(a));
  UniqueFd kick = make_eventfd();
  front.send(Request::kSetVringKick, u64(1), {kick.get()});
  front.send(Request::kSetVringEnable, state(1, 1));
  ASSERT_TRUE(conn->on_readable());
  device.refuse = -EINVAL;
  front.send(Request::kSetVringNum, state(0, 32));  // refused: not journaled
  ASSERT_TRUE(conn->on_readable());
  device.refuse = 0;
  while (front.reply_pending()) front.reply();

  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd their_end(sv[0]);
  FakeDevice next;
  Connection successor(UniqueFd(sv[1]), next, "successor");
  for (auto& [bytes, fds] : journal) ASSERT_TRUE(successor.replay(bytes, std::move(fds)));
  EXPECT_EQ(next.acked, device.acked);
  EXPECT_EQ(successor.acked_features(), conn->acked_features());
  EXPECT_EQ(successor.acked_protocol_features(), conn->acked_protocol_features());
  ASSERT_EQ(next.regions.size(), 1u);
  EXPECT_EQ(inode_of(next.regions[0].fd.get()), ino) << "the same guest memory";
  EXPECT_EQ(next.num[1], 64u);
  EXPECT_EQ(next.num[0], 0u) << "the refused request was not journaled";
  EXPECT_EQ(next.base[1], 7u);
  EXPECT_EQ(next.addr[1].avail_user_addr, a.avail_user_addr);
  EXPECT_EQ(next.enabled[1], 1);
  ASSERT_TRUE(next.kick[1]);
  const uint64_t one = 1;
  ASSERT_EQ(::write(kick.get(), &one, 8), 8);
  uint64_t got = 0;
  EXPECT_EQ(::read(next.kick[1].get(), &got, 8), 8) << "the front-end's own kick eventfd";
  char c;
  EXPECT_EQ(::recv(their_end.get(), &c, 1, MSG_DONTWAIT), -1) << "the replay answered nothing";

  // A journaled request cut short or garbled is refused, not taken.
  std::vector<uint8_t> cut = journal.front().first;
  cut.pop_back();
  EXPECT_FALSE(successor.replay(cut, {}));
  EXPECT_FALSE(successor.replay(std::span<const uint8_t>(cut.data(), 3), {}));
}

TEST_F(ConnectionTest, KickFdIsTheFrontEndsEventfd) {
  negotiate();
  UniqueFd kick = make_eventfd();
  front.send(Request::kSetVringKick, u64(0), {kick.get()});
  ASSERT_TRUE(conn->on_readable());
  ASSERT_TRUE(device.kick[0]);
  const uint64_t one = 1;
  ASSERT_EQ(::write(kick.get(), &one, 8), 8);
  uint64_t got = 0;
  ASSERT_EQ(::read(device.kick[0].get(), &got, 8), 8);
  EXPECT_EQ(got, 1u);
}

// eventfd(2): a write that would take the counter past 0xfffffffffffffffe
// blocks on a blocking eventfd. A front-end that hands such an fd must not
// be able to stop the worker that signals it: every ring fd is made
// non-blocking on receipt, and a full counter then answers EAGAIN.
TEST_F(ConnectionTest, RingEventfdsAreMadeNonBlocking) {
  negotiate();
  UniqueFd call = make_eventfd();
  UniqueFd err = make_eventfd();
  UniqueFd kick = make_eventfd();
  const uint64_t almost_full = 0xfffffffffffffffeull;
  ASSERT_EQ(::write(call.get(), &almost_full, 8), 8);
  ASSERT_EQ(::fcntl(call.get(), F_GETFL) & O_NONBLOCK, 0) << "the front-end's fd starts blocking";
  front.send(Request::kSetVringCall, u64(0), {call.get()});
  front.send(Request::kSetVringErr, u64(1), {err.get()});
  front.send(Request::kSetVringKick, u64(1), {kick.get()});
  ASSERT_TRUE(conn->on_readable());
  ASSERT_TRUE(device.call[0]);
  ASSERT_TRUE(device.err[1]);
  ASSERT_TRUE(device.kick[1]);
  for (const UniqueFd* fd : {&device.call[0], &device.err[1], &device.kick[1]}) {
    // Checked before writing so that a regression fails here instead of hanging.
    ASSERT_NE(::fcntl(fd->get(), F_GETFL) & O_NONBLOCK, 0) << "a ring fd was left blocking";
  }
  const uint64_t one = 1;
  errno = 0;
  EXPECT_EQ(::write(device.call[0].get(), &one, 8), -1);
  EXPECT_EQ(errno, EAGAIN) << "a full counter means already signalled";
}

TEST_F(ConnectionTest, RingsEnabledAtOnceWithoutProtocolFeatures) {
  front.send(Request::kSetFeatures, u64(kFeatureVersion1));
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.enabled, (std::vector<int>{1, 1}));
  // Again with the same bit: no change is pushed.
  device.enabled = {-1, -1};
  front.send(Request::kSetFeatures, u64(kFeatureVersion1 | kEventIdx));
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.enabled, (std::vector<int>{-1, -1}));
  // Now with it: disabled.
  front.send(Request::kSetFeatures, u64(kFeatureVersion1 | kFeatureProtocolFeatures));
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.enabled, (std::vector<int>{0, 0}));
}

TEST_F(ConnectionTest, MemSlotsAddAndRemove) {
  negotiate();
  front.send(Request::kGetMaxMemSlots);
  ASSERT_TRUE(conn->on_readable());
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 32u);

  const int before = count_open_fds();
  UniqueFd ram = make_memfd();
  const MemoryRegion region{0x100000, 0x1000, 0x7f0000000000, 0};
  front.send(Request::kAddMemReg, single_region(region), {ram.get()}, kVersion | kFlagNeedReply);
  ram.reset();
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 0u);
  ASSERT_EQ(device.regions.size(), 1u);
  EXPECT_EQ(count_open_fds(), before + 1) << "the device holds the one fd";

  // REM_MEM_REG with a (wrong but tolerated) fd: the fd is closed unused.
  UniqueFd stray = make_memfd();
  front.send(Request::kRemMemReg, single_region(region), {stray.get()}, kVersion | kFlagNeedReply);
  stray.reset();
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 0u);
  EXPECT_TRUE(device.regions.empty());
  EXPECT_EQ(count_open_fds(), before);

  // Removing it again: the device refuses, the ack says so, the connection stays.
  front.send(Request::kRemMemReg, single_region(region), {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_NE(r->u64(), 0u);
}

TEST_F(ConnectionTest, AddMemRegNeedsConfigureMemSlots) {
  negotiate(protocol_feature::kReplyAck);
  const int before = count_open_fds();
  UniqueFd ram = make_memfd();
  front.send(Request::kAddMemReg, single_region({0, 0x1000, 0x1000, 0}), {ram.get()},
             kVersion | kFlagNeedReply);
  ram.reset();
  ASSERT_TRUE(conn->on_readable());
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_NE(r->u64(), 0u);
  EXPECT_TRUE(device.regions.empty());
  EXPECT_EQ(count_open_fds(), before);
}

TEST_F(ConnectionTest, RefusalsAreAckedAndTheConnectionStays) {
  negotiate();
  const int before = count_open_fds();

  // An unknown request with fds and need_reply: failure ack, fds closed.
  {
    UniqueFd a = make_eventfd(), b = make_memfd();
    front.send_raw(99, std::vector<uint8_t>(24, 0xab), {a.get(), b.get()},
                   kVersion | kFlagNeedReply);
  }
  ASSERT_TRUE(conn->on_readable());
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, 99u);
  EXPECT_EQ(r->header.flags, kVersion | kFlagReply);
  EXPECT_NE(r->u64(), 0u);
  EXPECT_EQ(count_open_fds(), before);

  // Without need_reply: skipped silently.
  front.send_raw(1000, {});
  ASSERT_TRUE(conn->on_readable());
  EXPECT_FALSE(front.reply_pending());

  // The device refuses a valid request.
  device.refuse = -EINVAL;
  front.send(Request::kSetVringNum, state(0, 256), {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_NE(r->u64(), 0u);
  device.refuse = 0;
  front.send(Request::kSetVringNum, state(0, 256), {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 0u);

  // Dirty logging is refused; its fd closed.
  {
    UniqueFd log = make_memfd();
    front.send(Request::kSetLogBase, Bytes().add(LogArea{4096, 0}), {log.get()},
               kVersion | kFlagNeedReply);
  }
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_NE(r->u64(), 0u);
  EXPECT_EQ(count_open_fds(), before);

  // GET_CONFIG: a zero-length reply is the error (vhost-user.rst).
  front.send(Request::kGetConfig, Bytes().add(ConfigHeader{0, 4, 0}).add(uint32_t{0}));
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, static_cast<uint32_t>(Request::kGetConfig));
  EXPECT_EQ(r->header.size, 0u);

  // Requests with a reply of their own get no extra ack.
  front.send(Request::kGetQueueNum, {}, {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 2u);
  EXPECT_FALSE(front.reply_pending());
  EXPECT_EQ(device.disconnects, 0);
}

TEST_F(ConnectionTest, NoAckWithoutReplyAckNegotiated) {
  negotiate(protocol_feature::kMq);
  front.send(Request::kSetVringNum, state(0, 256), {}, kVersion | kFlagNeedReply);
  ASSERT_TRUE(conn->on_readable());
  EXPECT_FALSE(front.reply_pending());
  EXPECT_EQ(device.num[0], 256u);
}

TEST_F(ConnectionTest, BackendReqFdAndResets) {
  negotiate();
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd ours(sv[0]);
  const ino_t ino = inode_of(sv[1]);
  front.send(Request::kSetBackendReqFd, {}, {sv[1]}, kVersion | kFlagNeedReply);
  ::close(sv[1]);
  ASSERT_TRUE(conn->on_readable());
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 0u);
  ASSERT_TRUE(device.backend);
  EXPECT_EQ(inode_of(device.backend.get()), ino);

  front.send(Request::kResetOwner);
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.resets, 1);
  EXPECT_EQ(conn->acked_features(), 0u);
  // RESET_DEVICE was not negotiated, but the request is harmless.
  front.send(Request::kResetDevice);
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.resets, 2);
  // Features again after a reset: the enable rule applies again.
  device.enabled = {-1, -1};
  front.send(Request::kSetFeatures, u64(kFeatureVersion1 | kFeatureProtocolFeatures));
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.enabled, (std::vector<int>{0, 0}));
}

TEST_F(ConnectionTest, PartialMessagesByteByByte) {
  negotiate();
  UniqueFd ram = make_memfd();
  const auto bytes =
      FrontEnd::encode(static_cast<uint32_t>(Request::kSetMemTable),
                       mem_table({{0, 0x1000, 0x7f0000000000, 0}}, 1), kVersion | kFlagNeedReply);
  for (size_t i = 0; i < bytes.size(); ++i) {
    // The fd travels with the first byte, as with QEMU's single sendmsg.
    front.send_bytes(&bytes[i], 1, i == 0 ? std::vector<int>{ram.get()} : std::vector<int>{});
    ASSERT_TRUE(conn->on_readable()) << "byte " << i;
    if (i + 1 < bytes.size()) {
      ASSERT_TRUE(device.regions.empty()) << "byte " << i;
      ASSERT_FALSE(front.reply_pending());
    }
  }
  ASSERT_EQ(device.regions.size(), 1u);
  EXPECT_EQ(inode_of(device.regions[0].fd.get()), inode_of(ram.get()));
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 0u);

  // Two messages in one write, then a third split across writes.
  auto two = FrontEnd::encode(static_cast<uint32_t>(Request::kSetVringNum), state(0, 64));
  const auto second = FrontEnd::encode(static_cast<uint32_t>(Request::kSetVringNum), state(1, 32));
  two.insert(two.end(), second.begin(), second.end());
  const auto third = FrontEnd::encode(static_cast<uint32_t>(Request::kGetQueueNum), {});
  two.insert(two.end(), third.begin(), third.begin() + 5);
  front.send_bytes(two.data(), two.size());
  ASSERT_TRUE(conn->on_readable());
  EXPECT_EQ(device.num, (std::vector<uint32_t>{64, 32}));
  EXPECT_FALSE(front.reply_pending());
  front.send_bytes(third.data() + 5, third.size() - 5);
  ASSERT_TRUE(conn->on_readable());
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 2u);
}

TEST_F(ConnectionTest, CloseFromOurSide) {
  negotiate();
  UniqueFd call = make_eventfd();
  front.send(Request::kSetVringCall, u64(0), {call.get()});
  ASSERT_TRUE(conn->on_readable());
  conn->close();
  EXPECT_EQ(device.disconnects, 1);
  EXPECT_FALSE(device.call[0]) << "the fake drops its fds on disconnect";
  EXPECT_FALSE(conn->on_readable());
  conn->close();
  EXPECT_EQ(device.disconnects, 1);
  EXPECT_TRUE(front.closed_by_peer());
}

// Each case sends something hostile (with fds where it can); the connection
// must close, tell the device once, and leave no fd behind.
struct BadCase {
  const char* name;
  std::function<void(FrontEnd&)> send;
};

void send_with_fds(FrontEnd& f, Request request, const std::vector<uint8_t>& payload, size_t memfds,
                   size_t eventfds, uint32_t flags = kVersion) {
  std::vector<UniqueFd> owned;
  std::vector<int> fds;
  for (size_t i = 0; i < memfds; ++i) owned.push_back(make_memfd());
  for (size_t i = 0; i < eventfds; ++i) owned.push_back(make_eventfd());
  for (const auto& fd : owned) fds.push_back(fd.get());
  f.send(request, payload, fds, flags);
}

const MemoryRegion kRegion{0, 0x1000, 0x7f0000000000, 0};

const BadCase kBadCases[] = {
    {"mem table with 9 regions",
     [](FrontEnd& f) {
       send_with_fds(f, Request::kSetMemTable, mem_table(std::vector<MemoryRegion>(9, kRegion), 9),
                     8, 0);
     }},
    {"mem table, 2 regions, 1 fd",
     [](FrontEnd& f) {
       send_with_fds(f, Request::kSetMemTable, mem_table({kRegion, kRegion}, 2), 1, 0);
     }},
    {"mem table, 1 region, 2 fds",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetMemTable, mem_table({kRegion}, 1), 2, 0); }},
    {"mem table, count says 3, size says 2",
     [](FrontEnd& f) {
       send_with_fds(f, Request::kSetMemTable, mem_table({kRegion, kRegion}, 3), 3, 0);
     }},
    {"mem table, empty region",
     [](FrontEnd& f) {
       send_with_fds(f, Request::kSetMemTable, mem_table({{0, 0, 0, 0}}, 1), 1, 0);
     }},
    {"kick on ring 2 of 2",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetVringKick, u64(2), 0, 1); }},
    {"call on ring 255 of 2",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetVringCall, u64(255), 0, 1); }},
    {"kick with the no-fd bit and an fd",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetVringKick, u64(kVringNoFdMask), 0, 1); }},
    {"kick with reserved bits",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetVringKick, u64(1ull << 40), 0, 1); }},
    {"ring size not a power of two",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetVringNum, state(0, 100), 0, 0); }},
    {"ring size 65536",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetVringNum, state(0, 65536), 0, 0); }},
    {"ring size 0", [](FrontEnd& f) { f.send(Request::kSetVringNum, state(0, 0)); }},
    {"ring size on ring 7 of 2", [](FrontEnd& f) { f.send(Request::kSetVringNum, state(7, 64)); }},
    {"split ring base over 16 bits",
     [](FrontEnd& f) { f.send(Request::kSetVringBase, state(0, 0x10000)); }},
    {"GET_VRING_BASE of ring 2", [](FrontEnd& f) { f.send(Request::kGetVringBase, state(2, 0)); }},
    {"enable value 2", [](FrontEnd& f) { f.send(Request::kSetVringEnable, state(0, 2)); }},
    {"vring address with reserved flags",
     [](FrontEnd& f) {
       f.send(Request::kSetVringAddr, Bytes().add(VringAddr{0, 2, 0, 0, 0, 0}));
     }},
    {"features not offered",
     [](FrontEnd& f) { f.send(Request::kSetFeatures, u64(kFeatureVersion1 | (1ull << 63))); }},
    {"dirty logging feature",
     [](FrontEnd& f) { f.send(Request::kSetFeatures, u64(kFeatureLogAll)); }},
    {"protocol features not offered",
     [](FrontEnd& f) { f.send(Request::kSetProtocolFeatures, u64(protocol_feature::kLogShmfd)); }},
    {"header size over the maximum, with fds",
     [](FrontEnd& f) {
       UniqueFd a = make_memfd();
       const Header h{static_cast<uint32_t>(Request::kSetMemTable), kVersion, 1u << 20};
       int fd = a.get();
       f.send_bytes(reinterpret_cast<const uint8_t*>(&h), sizeof(h), {fd});
     }},
    {"version 2 with fds",
     [](FrontEnd& f) {
       send_with_fds(f, Request::kSetMemTable, mem_table({kRegion}, 1), 1, 0, 2);
     }},
    {"reply flag on a request",
     [](FrontEnd& f) { f.send(Request::kGetFeatures, {}, {}, kVersion | kFlagReply); }},
    {"10 fds: control data truncated",
     [](FrontEnd& f) { send_with_fds(f, Request::kSetMemTable, mem_table({kRegion}, 1), 5, 5); }},
    {"GET_FEATURES with a payload", [](FrontEnd& f) { f.send(Request::kGetFeatures, u64(0)); }},
    {"SET_FEATURES with 4 bytes",
     [](FrontEnd& f) { f.send(Request::kSetFeatures, Bytes().add(uint32_t{1})); }},
    {"GET_INFLIGHT_FD (reply cannot be given)",
     [](FrontEnd& f) { f.send(Request::kGetInflightFd, std::vector<uint8_t>(24)); }},
    {"eof inside a header, with fds",
     [](FrontEnd& f) {
       UniqueFd a = make_memfd(), b = make_eventfd();
       const uint8_t half[6] = {5, 0, 0, 0, 1, 0};
       f.send_bytes(half, sizeof(half), {a.get(), b.get()});
       f.shutdown_write();
     }},
    {"eof inside a payload, with fds",
     [](FrontEnd& f) {
       UniqueFd a = make_memfd();
       auto bytes = FrontEnd::encode(5, mem_table({kRegion}, 1));
       bytes.resize(bytes.size() - 3);
       f.send_bytes(bytes.data(), bytes.size(), {a.get()});
       f.shutdown_write();
     }},
    {"fds with the payload's bytes too",
     [](FrontEnd& f) {
       UniqueFd a = make_memfd(), b = make_memfd();
       const auto bytes = FrontEnd::encode(5, mem_table({kRegion}, 1));
       f.send_bytes(bytes.data(), kHeaderSize + 4, {a.get()});
       f.send_bytes(bytes.data() + kHeaderSize + 4, bytes.size() - kHeaderSize - 4, {b.get()});
     }},
};

void PrintTo(const BadCase& c, std::ostream* os) { *os << c.name; }

class BadMessageTest : public ConnectionTest, public ::testing::WithParamInterface<BadCase> {};

TEST_P(BadMessageTest, ClosesTheConnectionAndLeaksNoFd) {
  // Some state first, so that the device holds fds when the bad message comes.
  negotiate();
  UniqueFd call = make_eventfd();
  front.send(Request::kSetVringCall, u64(0), {call.get()});
  call.reset();
  ASSERT_TRUE(conn->on_readable());
  ASSERT_TRUE(device.call[0]);

  const int before = count_open_fds();
  GetParam().send(front);
  EXPECT_FALSE(conn->on_readable()) << GetParam().name;
  EXPECT_EQ(device.disconnects, 1);
  EXPECT_FALSE(conn->connected());
  EXPECT_FALSE(device.call[0]);
  // Gone: the connection's socket and the fd the device held; nothing else.
  EXPECT_EQ(count_open_fds(), before - 2) << GetParam().name;
  EXPECT_TRUE(front.closed_by_peer());
}

INSTANTIATE_TEST_SUITE_P(Hostile, BadMessageTest, ::testing::ValuesIn(kBadCases),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           std::string name;
                           for (const char* p = info.param.name; *p; ++p) {
                             name += std::isalnum(static_cast<unsigned char>(*p)) ? *p : '_';
                           }
                           return name;
                         });

class BlockingConnectionTest : public ConnectionTest {
 protected:
  BlockingConnectionTest() : ConnectionTest(/*nonblocking=*/false) {}
};

TEST_F(BlockingConnectionTest, ServeUntilEof) {
  UniqueFd ram = make_memfd();
  front.send(Request::kGetFeatures);
  front.send(Request::kSetProtocolFeatures, u64(protocol_feature::kReplyAck));
  front.send(Request::kSetMemTable, mem_table({kRegion}, 1), {ram.get()},
             kVersion | kFlagNeedReply);
  front.send(Request::kGetQueueNum);
  front.shutdown_write();
  conn->serve();
  EXPECT_FALSE(conn->connected());
  EXPECT_EQ(device.disconnects, 1);
  EXPECT_TRUE(device.regions.empty()) << "dropped on disconnect";
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, 1u);
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->header.request, 5u);
  EXPECT_EQ(r->u64(), 0u);
  r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 2u);
}

TEST_F(BlockingConnectionTest, OnReadableDoesNotBlockOnABlockingSocket) {
  front.send(Request::kGetQueueNum);
  const auto bytes = FrontEnd::encode(static_cast<uint32_t>(Request::kGetQueueNum), {});
  front.send_bytes(bytes.data(), 3);
  EXPECT_TRUE(conn->on_readable());
  auto r = front.reply();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->u64(), 2u);
}

// The Listener, on sockets in a temporary directory.
class ListenerTest : public ::testing::Test {
 protected:
  ListenerTest() {
    char tmpl[] = "/tmp/dpfs-vhost-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
    path = dir + "/fs.sock";
  }
  ~ListenerTest() override {
    ::unlink(path.c_str());
    ::rmdir(dir.c_str());
  }

  static UniqueFd connect_to(const std::string& p) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, p.c_str(), sizeof(addr.sun_path) - 1);
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
      return UniqueFd();
    }
    return fd;
  }

  std::string error_of(const std::string& p) {
    try {
      Listener l(p);
    } catch (const ListenError& e) {
      return e.what();
    }
    return "";
  }

  std::string dir;
  std::string path;
};

TEST_F(ListenerTest, AcceptsAFrontEndAndUnlinksOnDestruction) {
  {
    Listener listener(path);
    EXPECT_FALSE(listener.try_accept()) << "nobody waiting";
    UniqueFd client = connect_to(path);
    ASSERT_TRUE(client);
    UniqueFd server = listener.accept();
    ASSERT_TRUE(server);
    EXPECT_EQ(::fcntl(server.get(), F_GETFL) & O_NONBLOCK, 0) << "accepted sockets block";
    EXPECT_NE(::fcntl(server.get(), F_GETFD) & FD_CLOEXEC, 0);

    FakeDevice device;
    Connection conn(std::move(server), device, "listener");
    FrontEnd front(std::move(client));
    front.send(Request::kGetQueueNum);
    front.close();
    conn.serve();
    EXPECT_EQ(device.disconnects, 1);
  }
  struct stat st;
  EXPECT_NE(::lstat(path.c_str(), &st), 0) << "socket file removed";
}

TEST_F(ListenerTest, ReplacesAStaleSocket) {
  {
    // A socket file nobody listens on, as a killed daemon leaves it.
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
  }
  Listener listener(path);
  EXPECT_TRUE(connect_to(path));
}

TEST_F(ListenerTest, OneClearLineWhenThePathIsUnusable) {
  {
    Listener live(path);
    const std::string e = error_of(path);
    EXPECT_NE(e.find("in use"), std::string::npos) << e;
    EXPECT_NE(e.find(path), std::string::npos) << e;
  }
  {
    UniqueFd f(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    const std::string e = error_of(path);
    EXPECT_NE(e.find("not a socket"), std::string::npos) << e;
    ::unlink(path.c_str());
  }
  std::string e = error_of(dir + "/missing/fs.sock");
  EXPECT_NE(e.find("does not exist"), std::string::npos) << e;
  e = error_of(dir + "/" + std::string(120, 'x'));
  EXPECT_NE(e.find("at most 107"), std::string::npos) << e;
  e = error_of("");
  EXPECT_FALSE(e.empty());
  for (const std::string& m : {error_of(path + "/x"), error_of(dir + "/missing/fs.sock")}) {
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

}  // namespace
}  // namespace dpfs::vhost_user
