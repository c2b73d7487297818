#include "device.h"

#include <fmt/format.h>
#include <poll.h>

#include <algorithm>
#include <chrono>
#include <stdexcept>

namespace dpfs::bench {
namespace {

uint32_t round_up(uint64_t v, uint64_t to) { return uint32_t((v + to - 1) / to * to); }

// The smallest power of two that is at least v.
uint32_t pow2_at_least(uint32_t v) {
  uint32_t p = 1;
  while (p < v) p <<= 1;
  return p;
}

uint64_t ring_bytes(uint32_t size) { return 16ull * size + 4096 + 8ull * size + 3 * 4096; }

Slot make_slot(SharedMemory& mem, uint32_t data_size) {
  Slot s;
  s.in_cap = kSlotArgBytes;
  s.in = mem.allocate(s.in_cap, 64);
  s.out_cap = kSlotArgBytes;
  s.out = mem.allocate(s.out_cap, 64);
  s.data_cap = data_size;
  s.data = mem.allocate(data_size, 4096);
  return s;
}

}  // namespace

std::string SyncChannel::call(Reply* reply, int timeout_ms) {
  if (slot_.submit(queue_) < 0) return "no free descriptors on the queue";
  queue_.publish();
  queue_.kick();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    uint16_t head;
    uint32_t len;
    while (queue_.next_used(&head, &len)) {
      // Anything else (a reply left over from a run) is skipped.
      if (reinterpret_cast<const fuse_out_header*>(slot_.out)->unique == slot_.unique ||
          len < kOutHeader) {
        *reply = Reply{&slot_, len};
        return "";
      }
    }
    const auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
      return fmt::format("{}: no reply within {} ms", opcode_name(slot_.opcode), timeout_ms);
    }
    pollfd p{queue_.call_fd(), POLLIN, 0};
    ::poll(&p, 1, 1);
    queue_.drain_call();
  }
}

Device::Device(const DeviceOptions& options) : options_(options) {
  const uint32_t nq = options_.request_queues;
  // A WRITE takes three descriptors (header and arguments, payload, reply),
  // a READ three, everything else two; the sync slot needs three more.
  uint32_t size = options_.queue_size
                      ? options_.queue_size
                      : std::max<uint32_t>(64, pow2_at_least(3 * options_.depth + 3));
  options_.queue_size = size = std::min<uint32_t>(size, 32768);
  options_.data_size = round_up(std::max<uint32_t>(options_.data_size, 4096), 4096);
  const uint64_t slot_bytes = 2ull * kSlotArgBytes + options_.data_size + 4096;
  const uint64_t total =
      ring_bytes(64) + nq * (ring_bytes(size) + (options_.depth + 1) * slot_bytes);
  memory_ = std::make_unique<SharedMemory>(total + (1u << 20));

  hiprio_ = std::make_unique<DriverQueue>(*memory_, 0, 64);
  for (uint32_t i = 1; i <= nq; ++i) {
    queues_.push_back(std::make_unique<DriverQueue>(*memory_, i, size));
    slots_.emplace_back();
    for (uint32_t k = 0; k < options_.depth; ++k) {
      slots_.back().push_back(make_slot(*memory_, options_.data_size));
    }
  }
  sync_ = std::make_unique<SyncChannel>(*queues_[0], make_slot(*memory_, options_.data_size));

  frontend_ = std::make_unique<Frontend>(options_.socket);
  std::vector<DriverQueue*> all{hiprio_.get()};
  for (auto& q : queues_) all.push_back(q.get());
  frontend_->start(*memory_, all);
  if (options_.init) init();
}

void Device::init() {
  SyncChannel& ch = *sync_;
  build_init(ch.slot(), ch.next_unique());
  Reply r;
  if (std::string e = ch.call(&r); !e.empty()) throw std::runtime_error("FUSE_INIT: " + e);
  // An older device answers a shorter fuse_init_out (FUSE 7.23+: 64 bytes).
  const fuse_out_header& h = r.header();
  if (h.error != 0) {
    throw std::runtime_error(fmt::format("FUSE_INIT refused: {}", std::strerror(-h.error)));
  }
  if (h.len < kOutHeader + 24 || h.len != r.used_len) {
    throw std::runtime_error(fmt::format("FUSE_INIT: reply of {} bytes", h.len));
  }
  const auto& out = r.arg<fuse_init_out>();
  if (out.major != FUSE_KERNEL_VERSION) {
    throw std::runtime_error(
        fmt::format("FUSE_INIT: the device speaks FUSE {}.{}", out.major, out.minor));
  }
  minor_ = out.minor;
  max_write_ = out.max_write;
}

}  // namespace dpfs::bench
