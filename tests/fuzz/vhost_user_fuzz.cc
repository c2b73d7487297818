// libFuzzer target: fuzzer bytes as the front-end's side of a vhost-user
// socket, into a Connection and a fake device that checks what reaches it.
// The input is a list of steps: raw bytes (headers that lie, messages cut
// anywhere), well-formed headers around fuzzer payloads (so every request's
// decoder and handler is reached), each with 0-3 real fds attached (memfds,
// eventfds, pipes), memory tables with sizes and fd counts right (fields from
// the input), and device refusals switched on and off. After each step
// the connection reads what it can; at the end the stream is closed.
//
// A finding: a crash or sanitizer report; a device call that breaks the
// connection's promises (index >= queue_num, bad ring size, an empty or
// invalid fd, an empty region); disconnect() not called exactly once; or an
// fd still open after the connection and the device are gone.
#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_input.h"
#include "util/unix_listener.h"
#include "vhost_user/connection.h"
#include "vhost_user/message.h"

namespace {

using dpfs::fuzz::Input;
using dpfs::util::UniqueFd;
using namespace dpfs::vhost_user;

int count_open_fds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) std::abort();
  int n = 0;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  ::closedir(dir);
  return n - 1;
}

void check(bool ok) {
  if (!ok) std::abort();
}

void check_fd(const UniqueFd& fd) { check(fd && ::fcntl(fd.get(), F_GETFD) >= 0); }

class FuzzDevice : public VhostUserDevice {
 public:
  explicit FuzzDevice(uint32_t queues) : queues_(queues), rings_(queues) {}

  uint64_t features() const override { return ~uint64_t{0}; }  // the connection masks
  uint64_t protocol_features() const override { return ~uint64_t{0}; }
  uint32_t queue_num() const override { return queues_; }
  uint32_t max_mem_slots() const override { return 8; }

  int set_features(uint64_t f) override {
    check((f & kFeatureLogAll) == 0);
    packed_ = (f & kFeatureRingPacked) != 0;
    return refuse;
  }
  int set_mem_table(std::vector<MemoryRegionFd> regions) override {
    check(regions.size() <= kMaxMemRegions);
    for (const auto& r : regions) check_region(r);
    if (refuse) return refuse;
    regions_ = std::move(regions);
    return 0;
  }
  int add_mem_reg(MemoryRegionFd r) override {
    check_region(r);
    if (refuse || regions_.size() >= 8) return -ENOSPC;
    regions_.push_back(std::move(r));
    return 0;
  }
  int rem_mem_reg(const MemoryRegion& r) override {
    check(r.memory_size > 0);
    if (!regions_.empty() && r.guest_phys_addr == regions_.back().region.guest_phys_addr) {
      regions_.pop_back();
      return 0;
    }
    return -ENOENT;
  }
  int set_vring_num(uint32_t i, uint32_t num) override {
    check(i < queues_ && num > 0 && num <= kMaxQueueSize);
    check(packed_ || (num & (num - 1)) == 0);
    return refuse;
  }
  int set_vring_addr(uint32_t i, const VringAddr& a) override {
    check(i < queues_ && a.index == i && a.flags == 0);
    return refuse;
  }
  int set_vring_base(uint32_t i, uint32_t base) override {
    check(i < queues_ && (packed_ || base <= 0xffff));
    rings_[i].base = base;
    return refuse;
  }
  uint32_t get_vring_base(uint32_t i) override {
    check(i < queues_);
    rings_[i].kick.reset();
    return rings_[i].base;
  }
  int set_vring_kick(uint32_t i, UniqueFd fd) override { return keep(i, &Ring::kick, fd); }
  int set_vring_call(uint32_t i, UniqueFd fd) override { return keep(i, &Ring::call, fd); }
  int set_vring_err(uint32_t i, UniqueFd fd) override { return keep(i, &Ring::err, fd); }
  int set_vring_enable(uint32_t i, bool) override {
    check(i < queues_);
    return refuse;
  }
  int set_backend_req_fd(UniqueFd fd) override {
    check_fd(fd);
    backend_ = std::move(fd);
    return refuse;
  }
  int set_status(uint8_t) override { return refuse; }
  void reset_device() override { drop(); }
  void disconnect() override {
    ++disconnects;
    drop();
  }

  int refuse = 0;
  int disconnects = 0;

 private:
  struct Ring {
    UniqueFd kick, call, err;
    uint32_t base = 0;
  };

  static void check_region(const MemoryRegionFd& r) {
    check_fd(r.fd);
    check(r.region.memory_size > 0);
    check(r.region.guest_phys_addr + (r.region.memory_size - 1) >= r.region.guest_phys_addr);
  }
  int keep(uint32_t i, UniqueFd Ring::*slot, UniqueFd& fd) {
    check(i < queues_);
    if (fd) check_fd(fd);
    rings_[i].*slot = std::move(fd);
    return refuse;
  }
  void drop() {
    regions_.clear();
    for (auto& r : rings_) r = Ring{};
    backend_.reset();
  }

  uint32_t queues_;
  bool packed_ = false;
  std::vector<Ring> rings_;
  std::vector<MemoryRegionFd> regions_;
  UniqueFd backend_;
};

UniqueFd make_fd(uint8_t kind) {
  switch (kind % 3) {
    case 0: {
      UniqueFd fd(::memfd_create("fuzz", MFD_CLOEXEC));
      if (fd && ::ftruncate(fd.get(), 4096) != 0) std::abort();
      return fd;
    }
    case 1:
      return UniqueFd(::eventfd(0, EFD_CLOEXEC));
    default: {
      int p[2];
      if (::pipe2(p, O_CLOEXEC) != 0) std::abort();
      ::close(p[1]);
      return UniqueFd(p[0]);
    }
  }
}

// Sends bytes with `nfds` fresh fds on the first byte; our copies are closed
// at once, so only the connection (or the device) can hold them after.
void send_chunk(int sock, const std::vector<uint8_t>& bytes, uint8_t nfds, uint8_t kinds) {
  if (bytes.empty()) return;
  std::vector<UniqueFd> owned;
  std::vector<int> fds;
  for (uint8_t i = 0; i < nfds; ++i) {
    owned.push_back(make_fd(static_cast<uint8_t>(kinds >> (2 * i))));
    fds.push_back(owned.back().get());
  }
  const iovec iov{const_cast<uint8_t*>(bytes.data()), bytes.size()};
  // The connection reads after every step, so there is always room; a
  // closed connection gives EPIPE, which is fine.
  (void)dpfs::util::send_with_fds(sock, std::span(&iov, 1), fds, MSG_DONTWAIT);
}

void drain_replies(int sock) {
  uint8_t buf[4096];
  while (::recv(sock, buf, sizeof(buf), MSG_DONTWAIT) > 0) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Input in{data, size};
  const int fds_before = count_open_fds();
  {
    FuzzDevice device(1 + in.byte() % 4);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) != 0) {
      std::abort();
    }
    UniqueFd front(sv[0]);
    {
      Connection conn(UniqueFd(sv[1]), device, "fuzz");
      while (in.n > 0 && conn.connected()) {
        const uint8_t op = in.byte();
        const uint8_t nfds = (op >> 2) % 4;
        switch (op & 3) {
          case 0: {  // raw bytes
            const size_t len = 1 + size_t{in.byte()};
            const auto bytes = in.bytes(len);
            send_chunk(front.get(), bytes, nfds, in.byte());
            break;
          }
          case 1:
          case 2: {  // a well-formed header around a fuzzer payload
            const uint32_t request = in.byte() % 42;
            const uint32_t flags = kVersion | ((op & 0x40) ? kFlagNeedReply : 0);
            const size_t len = (size_t{in.byte()} << 1) % 300;
            const auto payload = in.bytes(len);
            const Header h{request, flags, static_cast<uint32_t>(payload.size())};
            std::vector<uint8_t> bytes(kHeaderSize);
            std::memcpy(bytes.data(), &h, kHeaderSize);
            bytes.insert(bytes.end(), payload.begin(), payload.end());
            send_chunk(front.get(), bytes, nfds, in.byte());
            break;
          }
          default:
            if (op & 0x20) {
              // SET_MEM_TABLE with one region per fd, or ADD_MEM_REG: region
              // fields from the input, sizes right, so the device is reached.
              const bool add = (op & 0x80) != 0;
              const uint32_t n = add ? 1 : nfds;
              const auto regions = in.bytes(n * sizeof(MemoryRegion));
              std::vector<uint8_t> payload(8 + n * sizeof(MemoryRegion));
              if (!add) std::memcpy(payload.data(), &n, sizeof(n));
              if (!regions.empty()) {
                std::memcpy(payload.data() + 8, regions.data(), regions.size());
              }
              const Header h{
                  static_cast<uint32_t>(add ? Request::kAddMemReg : Request::kSetMemTable),
                  kVersion | ((op & 0x40) ? kFlagNeedReply : 0),
                  static_cast<uint32_t>(payload.size())};
              std::vector<uint8_t> bytes(kHeaderSize);
              std::memcpy(bytes.data(), &h, kHeaderSize);
              bytes.insert(bytes.end(), payload.begin(), payload.end());
              send_chunk(front.get(), bytes, add ? 1 : nfds, in.byte());
            } else {
              device.refuse = (op & 0x80) ? -EINVAL : 0;
            }
            break;
        }
        const bool up = conn.on_readable();
        check(up == conn.connected());
        drain_replies(front.get());
      }
      if (conn.connected()) {
        ::shutdown(front.get(), SHUT_WR);
        while (conn.on_readable()) {
        }
        check(!conn.connected());
      }
      check(device.disconnects == 1);
    }
    check(device.disconnects == 1);
  }
  check(count_open_fds() == fds_before);
  return 0;
}
