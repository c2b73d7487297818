#include "virtio/packed_virtqueue.h"

#include <endian.h>
#include <fmt/format.h>

#include <atomic>
#include <cerrno>

#include "virtio/ring_access.h"

namespace dpfs::virtio {

using ring::load16;
using ring::store16;

namespace {

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
  ring::read_once(&d, at, sizeof(d));
  d.addr = le64toh(d.addr);
  d.len = le32toh(d.len);
  d.id = le16toh(d.id);
  d.flags = le16toh(d.flags);
  return d;
}

}  // namespace

int PackedVirtqueue::check(const VringConfig& config) {
  // §2.8: packed queues need not be a power of 2.
  if ((config.last_avail_idx & 0x7fff) >= config.size ||
      (config.last_used_idx & 0x7fff) >= config.size) {
    log_.warn("virtio queue {}: invalid packed size {} or base {:#x}/{:#x}", index_, config.size,
              config.last_avail_idx, config.last_used_idx);
    return EINVAL;
  }
  return 0;
}

Virtqueue::AreaSpecs PackedVirtqueue::area_specs() const {
  return {.desc = {packed_desc_ring_bytes(size_), 16},
          .driver = {kPackedEventBytes, 4},
          .device = {kPackedEventBytes, 4}};
}

void PackedVirtqueue::reset() {
  last_avail_idx_ = config_.last_avail_idx & 0x7fff;
  avail_wrap_ = config_.last_avail_idx & 0x8000;
  used_idx_ = published_used_idx_ = config_.last_used_idx & 0x7fff;
  used_wrap_ = published_used_wrap_ = config_.last_used_idx & 0x8000;
  have_pending_ = false;
  signalled_used_valid_ = false;
  inflight_descs_ = 0;
  store16(device_event() + 1, kRingEventFlagsEnable);
}

PopResult PackedVirtqueue::pop(DescriptorChain* chain) {
  chain->clear();
  if (state_ == State::kBroken) return PopResult::kBroken;
  if (state_ != State::kRunning) return PopResult::kEmpty;

  const uint16_t flags = load16(flags_at(last_avail_idx_));
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
  admit(id, ndesc);
  inflight_descs_ += ndesc;
  last_avail_idx_ += ndesc;
  if (last_avail_idx_ >= size_) {
    last_avail_idx_ -= size_;
    avail_wrap_ = !avail_wrap_;
  }
  return PopResult::kChain;
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
      // §2.8.7.1: never in a NEXT chain.
      if (n != 1 || (d.flags & kDescFNext)) {
        return fail(fmt::format("desc {}: INDIRECT in a chain", pos));
      }
      const uint8_t* table = indirect_table(pos, d.addr, d.len);
      if (table == nullptr) return false;
      for (uint32_t i = 0; i < d.len / 16; ++i) {
        const PackedDesc t = read_desc(table + 16 * size_t(i));
        // §2.8.7.1: no flags but WRITE in an indirect table.
        if (t.flags & ~kDescFWrite) {
          return fail(fmt::format("desc {}: indirect entry {} has flags {:#x}", pos, i, t.flags));
        }
        if (!add_buffer(pos, t.addr, t.len, t.flags & kDescFWrite, &seen_writable, chain)) {
          return false;
        }
      }
    } else if (!add_buffer(pos, d.addr, d.len, d.flags & kDescFWrite, &seen_writable, chain)) {
      return false;
    }

    if (!(d.flags & kDescFNext)) {
      // §2.8.6: the buffer id is in the last descriptor of the chain.
      if (d.id >= size_) {
        return fail(fmt::format("desc {}: buffer id {} >= queue size {}", pos, d.id, size_));
      }
      if (in_flight(d.id)) {
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
  const uint16_t ndesc = retire(id);
  if (ndesc == 0) return false;
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
  __atomic_store_n(flags_at(pending_idx_), htole16(pending_flags_), __ATOMIC_RELEASE);
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
  const uint16_t event_flags = load16(driver_event() + 1);
  bool notify;
  if (event_flags == kRingEventFlagsDisable) {
    notify = false;
  } else if (event_flags == kRingEventFlagsDesc && event_idx_) {
    if (!valid) {
      notify = true;
    } else {
      // vhost's vhost_vring_packed_need_event: positions on one line, the
      // wrap counters saying which lap.
      const uint16_t off_wrap = load16(driver_event());
      int new_idx = published_used_idx_;
      bool wrap = published_used_wrap_;
      const int old_idx = signalled_used_ & 0x7fff;
      if (new_idx < old_idx) {
        new_idx += int(size_);
        wrap = !wrap;
      }
      int off = off_wrap & 0x7fff;
      if (wrap != bool(off_wrap >> 15)) off -= int(size_);
      notify = ring::need_event(uint16_t(off), uint16_t(new_idx), uint16_t(old_idx));
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
  store16(device_event() + 1, enable ? kRingEventFlagsEnable : kRingEventFlagsDisable);
  if (!enable) return false;
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return is_available(load16(flags_at(last_avail_idx_)));
}

}  // namespace dpfs::virtio
