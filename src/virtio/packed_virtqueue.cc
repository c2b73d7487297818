#include "virtio/packed_virtqueue.h"

#include <endian.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace dpfs::virtio {

namespace {

uint16_t load16(const uint16_t* p) { return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED)); }
void store16(uint16_t* p, uint16_t v) { __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED); }

void read_once(void* dst, const void* src, size_t n) {
  std::memcpy(dst, src, n);
  asm volatile("" ::: "memory");
}

bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return uint16_t(new_idx - event - 1) < uint16_t(new_idx - old_idx);
}

bool aligned(const void* p, uintptr_t alignment) {
  return (reinterpret_cast<uintptr_t>(p) & (alignment - 1)) == 0;
}

// §2.8.13 struct pvirtq_desc.
struct PackedDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t id;
  uint16_t flags;
};
static_assert(sizeof(PackedDesc) == 16);

PackedDesc read_desc(const uint8_t* at) {
  PackedDesc d;
  read_once(&d, at, sizeof(d));
  d.addr = le64toh(d.addr);
  d.len = le32toh(d.len);
  d.id = le16toh(d.id);
  d.flags = le16toh(d.flags);
  return d;
}

}  // namespace

bool PackedVirtqueue::fail(std::string_view reason) {
  log_.warn("virtio queue {}: broken: {}", index_, reason);
  state_ = State::kBroken;
  return false;
}

int PackedVirtqueue::map_rings(const GuestMemory& mem) {
  void* desc = mem.translate_uva(config_.desc_uva, packed_desc_ring_bytes(size_));
  void* driver = mem.translate_uva(config_.avail_uva, kPackedEventBytes);
  void* device = mem.translate_uva(config_.used_uva, kPackedEventBytes);
  if (desc == nullptr || driver == nullptr || device == nullptr) {
    log_.warn(
        "virtio queue {}: packed ring not in guest memory (desc {:#x} driver {:#x} device {:#x})",
        index_, config_.desc_uva, config_.avail_uva, config_.used_uva);
    return EFAULT;
  }
  if (!aligned(desc, 16) || !aligned(driver, 4) || !aligned(device, 4)) {
    log_.warn("virtio queue {}: misaligned packed ring (desc {:#x} driver {:#x} device {:#x})",
              index_, config_.desc_uva, config_.avail_uva, config_.used_uva);
    return EINVAL;
  }
  mem_ = &mem;
  desc_ = static_cast<uint8_t*>(desc);
  driver_event_ = static_cast<uint16_t*>(driver);
  device_event_ = static_cast<uint16_t*>(device);
  return 0;
}

int PackedVirtqueue::start(const GuestMemory& mem, const VringConfig& config) {
  stop();
  config_ = config;
  index_ = config.queue_index;
  // §2.8: packed queues need not be a power of 2; at most 2^15 entries.
  const uint16_t avail = config.last_avail_idx & 0x7fff;
  const uint16_t used = config.last_used_idx & 0x7fff;
  if (config.size == 0 || config.size > kMaxQueueSize || avail >= config.size ||
      used >= config.size) {
    log_.warn("virtio queue {}: invalid packed size {} or base {:#x}/{:#x}", index_, config.size,
              config.last_avail_idx, config.last_used_idx);
    return EINVAL;
  }
  size_ = config.size;
  event_idx_ = config.event_idx;
  indirect_ = config.indirect_desc;
  if (int rc = map_rings(mem); rc != 0) return rc;

  last_avail_idx_ = avail;
  avail_wrap_ = config.last_avail_idx & 0x8000;
  used_idx_ = published_used_idx_ = used;
  used_wrap_ = published_used_wrap_ = config.last_used_idx & 0x8000;
  have_pending_ = false;
  signalled_used_valid_ = false;
  inflight_ = inflight_descs_ = 0;
  in_flight_.assign(size_, 0);
  state_ = State::kRunning;
  store16(device_event_ + 1, kRingEventFlagsEnable);
  return 0;
}

int PackedVirtqueue::remap(const GuestMemory& mem) {
  if (state_ == State::kStopped) return 0;
  if (int rc = map_rings(mem); rc != 0) {
    stop();
    return rc;
  }
  return 0;
}

void PackedVirtqueue::stop() {
  state_ = State::kStopped;
  mem_ = nullptr;
  desc_ = nullptr;
  driver_event_ = device_event_ = nullptr;
  have_pending_ = false;
  inflight_ = inflight_descs_ = 0;
  in_flight_.clear();
}

PopResult PackedVirtqueue::pop(DescriptorChain* chain) {
  chain->clear();
  if (state_ == State::kBroken) return PopResult::kBroken;
  if (state_ != State::kRunning) return PopResult::kEmpty;

  const uint16_t flags =
      load16(reinterpret_cast<uint16_t*>(desc_ + 16 * size_t(last_avail_idx_) + 14));
  if (!is_available(flags)) return PopResult::kEmpty;
  // §2.8.21.3: the driver writes the descriptors before the head's flags;
  // read them only after reading those.
  std::atomic_thread_fence(std::memory_order_acquire);

  uint16_t id = 0, ndesc = 0;
  if (!read_chain(flags, chain, &id, &ndesc)) {
    chain->clear();
    return PopResult::kBroken;
  }
  chain->head = id;
  in_flight_[id] = ndesc;
  ++inflight_;
  inflight_descs_ += ndesc;
  last_avail_idx_ += ndesc;
  if (last_avail_idx_ >= size_) {
    last_avail_idx_ -= size_;
    avail_wrap_ = !avail_wrap_;
  }
  return PopResult::kChain;
}

bool PackedVirtqueue::add_buffer(uint64_t addr, uint32_t len, bool writable, bool* seen_writable,
                                 DescriptorChain* chain) {
  if (writable) {
    *seen_writable = true;
    if (!mem_->map_gpa(addr, len, &chain->writable)) {
      return fail(fmt::format("writable buffer {:#x}+{} not in guest memory", addr, len));
    }
    chain->writable_len += len;
  } else {
    // §2.8.14.1 (as §2.7.4.2): device-readable before device-writable.
    if (*seen_writable) return fail("readable descriptor after a writable one");
    if (!mem_->map_gpa(addr, len, &chain->readable)) {
      return fail(fmt::format("readable buffer {:#x}+{} not in guest memory", addr, len));
    }
    chain->readable_len += len;
  }
  if (chain->readable_len + chain->writable_len > (uint64_t(1) << 32)) {
    return fail("chain longer than 4 GiB");
  }
  return true;
}

bool PackedVirtqueue::read_chain(uint16_t head_flags, DescriptorChain* chain, uint16_t* id,
                                 uint16_t* ndesc) {
  bool seen_writable = false;
  uint32_t pos = last_avail_idx_;
  // Ring descriptors the chain can take: those no chain in flight holds.
  const uint32_t room = size_ - inflight_descs_;
  for (uint32_t n = 1;; ++n) {
    if (n > room) {
      return fail(fmt::format("chain at {} longer than the {} free descriptors of a queue of {}",
                              last_avail_idx_, room, size_));
    }
    PackedDesc d = read_desc(desc_ + 16 * size_t(pos));
    // The head's flags were read (once) to see it available; use that read.
    if (n == 1) d.flags = head_flags;

    if (d.flags & kDescFIndirect) {
      // §2.8.7.1: only when negotiated, never in a NEXT chain.
      if (!indirect_) return fail(fmt::format("desc {}: INDIRECT not negotiated", pos));
      if (n != 1 || (d.flags & kDescFNext)) {
        return fail(fmt::format("desc {}: INDIRECT in a chain", pos));
      }
      if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > size_) {
        return fail(
            fmt::format("desc {}: indirect table of {} bytes (queue size {})", pos, d.len, size_));
      }
      const auto* table = static_cast<const uint8_t*>(mem_->translate_gpa(d.addr, d.len));
      if (table == nullptr) {
        return fail(fmt::format("desc {}: indirect table {:#x}+{} not in one memory region", pos,
                                d.addr, d.len));
      }
      for (uint32_t i = 0; i < d.len / 16; ++i) {
        const PackedDesc t = read_desc(table + 16 * size_t(i));
        // §2.8.7.1: no flags but WRITE in an indirect table.
        if (t.flags & ~kDescFWrite) {
          return fail(fmt::format("desc {}: indirect entry {} has flags {:#x}", pos, i, t.flags));
        }
        if (!add_buffer(t.addr, t.len, t.flags & kDescFWrite, &seen_writable, chain)) return false;
      }
    } else if (!add_buffer(d.addr, d.len, d.flags & kDescFWrite, &seen_writable, chain)) {
      return false;
    }

    if (!(d.flags & kDescFNext)) {
      // §2.8.6: the buffer id is in the last descriptor of the chain.
      if (d.id >= size_) {
        return fail(fmt::format("desc {}: buffer id {} >= queue size {}", pos, d.id, size_));
      }
      if (in_flight_[d.id] != 0) {
        return fail(fmt::format("desc {}: buffer id {} already in flight", pos, d.id));
      }
      *id = d.id;
      *ndesc = uint16_t(n);
      return true;
    }
    if (++pos == size_) pos = 0;
  }
}

bool PackedVirtqueue::push(uint16_t id, uint32_t len) {
  if (state_ != State::kRunning) return false;
  if (id >= size_ || in_flight_[id] == 0) {
    log_.error("virtio queue {}: push of buffer id {}, which is not in flight", index_, id);
    return false;
  }
  const uint16_t ndesc = in_flight_[id];
  in_flight_[id] = 0;
  --inflight_;
  inflight_descs_ -= ndesc;

  // §2.8.9: the used descriptor goes where the chain's first one was; the
  // driver tells it is used when AVAIL and USED both equal our wrap counter.
  uint8_t* at = desc_ + 16 * size_t(used_idx_);
  __atomic_store_n(reinterpret_cast<uint32_t*>(at + 8), htole32(len), __ATOMIC_RELAXED);
  store16(reinterpret_cast<uint16_t*>(at + 12), id);
  const uint16_t flags = used_wrap_ ? (kPackedDescFAvail | kPackedDescFUsed) : 0;
  if (!have_pending_) {
    have_pending_ = true;
    pending_idx_ = used_idx_;
    pending_flags_ = flags;
  } else {
    // The driver reads in order and stops at pending_idx_ until publish().
    __atomic_store_n(reinterpret_cast<uint16_t*>(at + 14), htole16(flags), __ATOMIC_RELEASE);
  }
  used_idx_ += ndesc;
  if (used_idx_ >= size_) {
    used_idx_ -= size_;
    used_wrap_ = !used_wrap_;
  }
  return true;
}

void PackedVirtqueue::publish() {
  if (state_ != State::kRunning || !have_pending_) return;
  // §2.8.21.2: id and len (and the later flags) before the first flags.
  __atomic_store_n(reinterpret_cast<uint16_t*>(desc_ + 16 * size_t(pending_idx_) + 14),
                   htole16(pending_flags_), __ATOMIC_RELEASE);
  have_pending_ = false;
  published_used_idx_ = used_idx_;
  published_used_wrap_ = used_wrap_;
}

bool PackedVirtqueue::should_notify() {
  if (state_ != State::kRunning) return false;
  const uint16_t new_packed = used_idx();
  const bool valid = signalled_used_valid_;
  if (valid && signalled_used_ == new_packed) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const uint16_t event_flags = load16(driver_event_ + 1);
  bool notify;
  if (event_flags == kRingEventFlagsDisable) {
    notify = false;
  } else if (event_flags == kRingEventFlagsDesc && event_idx_) {
    if (!valid) {
      notify = true;
    } else {
      // vhost's vhost_vring_packed_need_event: positions on one line, the
      // wrap counters saying which lap.
      const uint16_t off_wrap = load16(driver_event_);
      int new_idx = published_used_idx_;
      bool wrap = published_used_wrap_;
      const int old_idx = signalled_used_ & 0x7fff;
      if (new_idx < old_idx) {
        new_idx += int(size_);
        wrap = !wrap;
      }
      int off = off_wrap & 0x7fff;
      if (wrap != bool(off_wrap >> 15)) off -= int(size_);
      notify = need_event(uint16_t(off), uint16_t(new_idx), uint16_t(old_idx));
    }
  } else {
    notify = true;  // ENABLE, or an undefined value: notifying is always safe
  }
  signalled_used_valid_ = true;
  signalled_used_ = new_packed;
  return notify;
}

bool PackedVirtqueue::set_notification(bool enable) {
  if (state_ != State::kRunning) return false;
  store16(device_event_ + 1, enable ? kRingEventFlagsEnable : kRingEventFlagsDisable);
  if (!enable) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return is_available(
      load16(reinterpret_cast<uint16_t*>(desc_ + 16 * size_t(last_avail_idx_) + 14)));
}

}  // namespace dpfs::virtio
