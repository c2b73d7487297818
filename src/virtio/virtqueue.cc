#include "virtio/virtqueue.h"

#include <endian.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cerrno>
#include <cstring>

namespace dpfs::virtio {

namespace {

// Ring fields are little-endian (§2.4: virtio 1.x) and written by the other
// side concurrently: single relaxed accesses, ordered by explicit fences.
uint16_t load16(const uint16_t* p) { return le16toh(__atomic_load_n(p, __ATOMIC_RELAXED)); }
void store16(uint16_t* p, uint16_t v) { __atomic_store_n(p, htole16(v), __ATOMIC_RELAXED); }
void store32(uint32_t* p, uint32_t v) { __atomic_store_n(p, htole32(v), __ATOMIC_RELAXED); }

// Copies tenant memory into a local exactly once: the barrier stops the
// compiler from re-reading the source in place of the copy (the tenant may
// have changed it since).
void read_once(void* dst, const void* src, size_t n) {
  std::memcpy(dst, src, n);
  asm volatile("" ::: "memory");
}

// vring_need_event (§2.7.7, §2.7.10; virtio_ring.h): whether moving the index from
// `old_idx` to `new_idx` passed `event`.
bool need_event(uint16_t event, uint16_t new_idx, uint16_t old_idx) {
  return uint16_t(new_idx - event - 1) < uint16_t(new_idx - old_idx);
}

bool aligned(const void* p, uintptr_t alignment) {
  return (reinterpret_cast<uintptr_t>(p) & (alignment - 1)) == 0;
}

}  // namespace

bool SplitVirtqueue::fail(std::string_view reason) {
  log_.warn("virtio queue {}: broken: {}", index_, reason);
  state_ = State::kBroken;
  return false;
}

int SplitVirtqueue::map_rings(const GuestMemory& mem) {
  void* desc = mem.translate_uva(config_.desc_uva, desc_table_bytes(size_));
  void* avail = mem.translate_uva(config_.avail_uva, avail_ring_bytes(size_, event_idx_));
  void* used = mem.translate_uva(config_.used_uva, used_ring_bytes(size_, event_idx_));
  if (desc == nullptr || avail == nullptr || used == nullptr) {
    log_.warn("virtio queue {}: ring not in guest memory (desc {:#x} avail {:#x} used {:#x})",
              index_, config_.desc_uva, config_.avail_uva, config_.used_uva);
    return EFAULT;
  }
  // §2.7 alignment requirements; our atomic accesses rely on them.
  if (!aligned(desc, 16) || !aligned(avail, 2) || !aligned(used, 4)) {
    log_.warn("virtio queue {}: misaligned ring (desc {:#x} avail {:#x} used {:#x})", index_,
              config_.desc_uva, config_.avail_uva, config_.used_uva);
    return EINVAL;
  }
  mem_ = &mem;
  desc_ = static_cast<uint8_t*>(desc);
  avail_ = static_cast<uint16_t*>(avail);
  used_ = static_cast<uint8_t*>(used);
  return 0;
}

int SplitVirtqueue::start(const GuestMemory& mem, const VringConfig& config) {
  stop();
  config_ = config;
  index_ = config.queue_index;
  if (config.size == 0 || config.size > kMaxQueueSize || (config.size & (config.size - 1)) != 0) {
    log_.warn("virtio queue {}: invalid size {}", index_, config.size);
    return EINVAL;
  }
  size_ = config.size;
  event_idx_ = config.event_idx;
  indirect_ = config.indirect_desc;
  if (int rc = map_rings(mem); rc != 0) return rc;

  last_avail_idx_ = shadow_avail_idx_ = config.last_avail_idx;
  used_idx_ = published_used_idx_ = load16(reinterpret_cast<uint16_t*>(used_ + 2));
  signalled_used_valid_ = false;
  inflight_ = 0;
  in_flight_.assign(size_, 0);
  state_ = State::kRunning;
  notification_ = true;
  // §2.7.10: with EVENT_IDX the device MUST keep used flags 0.
  store16(reinterpret_cast<uint16_t*>(used_), 0);
  if (event_idx_) store16(reinterpret_cast<uint16_t*>(used_ + 4 + 8 * size_), last_avail_idx_);
  return 0;
}

int SplitVirtqueue::remap(const GuestMemory& mem) {
  if (state_ == State::kStopped) return 0;
  if (int rc = map_rings(mem); rc != 0) {
    stop();
    return rc;
  }
  return 0;
}

void SplitVirtqueue::stop() {
  state_ = State::kStopped;
  mem_ = nullptr;
  desc_ = nullptr;
  avail_ = nullptr;
  used_ = nullptr;
  inflight_ = 0;
  in_flight_.clear();
}

uint16_t SplitVirtqueue::load_avail_idx() const { return load16(avail_ + 1); }

PopResult SplitVirtqueue::pop(DescriptorChain* chain) {
  chain->clear();
  if (state_ == State::kBroken) return PopResult::kBroken;
  if (state_ != State::kRunning) return PopResult::kEmpty;

  if (last_avail_idx_ == shadow_avail_idx_) {
    const uint16_t idx = load_avail_idx();
    // The driver can have at most `size` entries outstanding.
    if (uint16_t(idx - last_avail_idx_) > size_) {
      fail(fmt::format("avail idx {} is more than {} entries ahead of {}", idx, size_,
                       last_avail_idx_));
      return PopResult::kBroken;
    }
    shadow_avail_idx_ = idx;
    if (idx == last_avail_idx_) return PopResult::kEmpty;
    // §2.7.13.3: the driver writes ring entries and descriptors before the
    // index; read them only after reading it.
    std::atomic_thread_fence(std::memory_order_acquire);
  }

  const uint16_t head = load16(avail_ + 2 + (last_avail_idx_ & (size_ - 1)));
  if (head >= size_) {
    fail(
        fmt::format("avail entry {} holds head {} >= queue size {}", last_avail_idx_, head, size_));
    return PopResult::kBroken;
  }
  if (in_flight_[head]) {
    fail(fmt::format("avail entry {} holds head {}, already in flight", last_avail_idx_, head));
    return PopResult::kBroken;
  }
  chain->head = head;
  if (!read_chain(head, chain)) {
    chain->clear();
    return PopResult::kBroken;
  }
  in_flight_[head] = 1;
  ++inflight_;
  ++last_avail_idx_;
  // Kick us when the driver makes the next entry available (§2.7.10).
  if (event_idx_ && notification_) {
    store16(reinterpret_cast<uint16_t*>(used_ + 4 + 8 * size_), last_avail_idx_);
  }
  return PopResult::kChain;
}

bool SplitVirtqueue::read_chain(uint16_t head, DescriptorChain* chain) {
  const uint8_t* table = desc_;
  uint32_t table_size = size_;
  bool in_indirect = false;
  bool seen_writable = false;
  uint32_t count = 0;  // buffer descriptors so far, direct and indirect
  uint16_t i = head;
  while (true) {
    Desc d;
    static_assert(sizeof(Desc) == 16);
    read_once(&d, table + size_t(i) * 16, sizeof(d));
    d.addr = le64toh(d.addr);
    d.len = le32toh(d.len);
    d.flags = le16toh(d.flags);
    d.next = le16toh(d.next);

    if (d.flags & kDescFIndirect) {
      // §2.7.5.3.1: only when negotiated, one table per chain, never with
      // NEXT; the table is whole descriptors. §2.7.5.3.2: it may end a
      // chain of direct descriptors, and its WRITE flag is ignored.
      if (!indirect_) return fail(fmt::format("head {}: INDIRECT not negotiated", head));
      if (in_indirect) return fail(fmt::format("head {}: nested indirect table", head));
      if (d.flags & kDescFNext) return fail(fmt::format("head {}: INDIRECT with NEXT", head));
      // §2.7.5.3.1: no chain longer than the queue, so no table either.
      if (d.len == 0 || d.len % 16 != 0 || d.len / 16 > size_) {
        return fail(
            fmt::format("head {}: indirect table of {} bytes (queue size {})", head, d.len, size_));
      }
      const void* t = mem_->translate_gpa(d.addr, d.len);
      if (t == nullptr) {
        return fail(fmt::format("head {}: indirect table {:#x}+{} not in one memory region", head,
                                d.addr, d.len));
      }
      table = static_cast<const uint8_t*>(t);
      table_size = d.len / 16;
      in_indirect = true;
      i = 0;
      continue;
    }

    // §2.7.5.3.1: no chain longer than the queue size; this also ends loops.
    if (++count > size_) {
      return fail(fmt::format("head {}: chain longer than the queue size {}", head, size_));
    }
    if (d.flags & kDescFWrite) {
      seen_writable = true;
      if (!mem_->map_gpa(d.addr, d.len, &chain->writable)) {
        return fail(fmt::format("head {}: writable buffer {:#x}+{} not in guest memory", head,
                                d.addr, d.len));
      }
      chain->writable_len += d.len;
    } else {
      // §2.7.4.2: device-readable descriptors come before device-writable.
      if (seen_writable) {
        return fail(fmt::format("head {}: readable descriptor after a writable one", head));
      }
      if (!mem_->map_gpa(d.addr, d.len, &chain->readable)) {
        return fail(fmt::format("head {}: readable buffer {:#x}+{} not in guest memory", head,
                                d.addr, d.len));
      }
      chain->readable_len += d.len;
    }
    // §2.7.5.2: no chain longer than 2^32 bytes in total.
    if (chain->readable_len + chain->writable_len > (uint64_t(1) << 32)) {
      return fail(fmt::format("head {}: chain longer than 4 GiB", head));
    }

    if (!(d.flags & kDescFNext)) return true;
    if (d.next >= table_size) {
      return fail(fmt::format("head {}: next {} out of a table of {}", head, d.next, table_size));
    }
    i = d.next;
  }
}

bool SplitVirtqueue::push(uint16_t head, uint32_t len) {
  if (state_ != State::kRunning) return false;
  if (head >= size_ || !in_flight_[head]) {
    log_.error("virtio queue {}: push of head {}, which is not in flight", index_, head);
    return false;
  }
  in_flight_[head] = 0;
  --inflight_;
  auto* elem = reinterpret_cast<uint32_t*>(used_ + 4 + 8 * size_t(used_idx_ & (size_ - 1)));
  store32(elem, head);
  store32(elem + 1, len);
  ++used_idx_;
  return true;
}

void SplitVirtqueue::publish() {
  if (state_ != State::kRunning || published_used_idx_ == used_idx_) return;
  // §2.7.14: the used elements before the index the driver reads them by.
  __atomic_store_n(reinterpret_cast<uint16_t*>(used_ + 2), htole16(used_idx_), __ATOMIC_RELEASE);
  published_used_idx_ = used_idx_;
}

bool SplitVirtqueue::should_notify() {
  if (state_ != State::kRunning) return false;
  const uint16_t old_idx = signalled_used_;
  const uint16_t new_idx = published_used_idx_;
  const bool valid = signalled_used_valid_;
  if (valid && old_idx == new_idx) return false;  // nothing new since the last one
  // The used idx store must be visible before we read the driver's
  // suppression fields, or we could both decide the other will act.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  bool notify;
  if (event_idx_) {
    const uint16_t used_event = load16(avail_ + 2 + size_);
    notify = !valid || need_event(used_event, new_idx, old_idx);
  } else {
    notify = !(load16(avail_) & kAvailFNoInterrupt);
  }
  signalled_used_valid_ = true;
  signalled_used_ = new_idx;
  return notify;
}

bool SplitVirtqueue::set_notification(bool enable) {
  if (state_ != State::kRunning) return false;
  notification_ = enable;
  if (!event_idx_) {
    store16(reinterpret_cast<uint16_t*>(used_), enable ? 0 : kUsedFNoNotify);
  } else if (enable) {
    store16(reinterpret_cast<uint16_t*>(used_ + 4 + 8 * size_), last_avail_idx_);
  }
  // Disabling with EVENT_IDX writes nothing: avail_event stays behind and
  // the driver kicks at most once per 2^16 buffers.
  if (!enable) return false;
  // Our write must be visible before we look again, or a buffer made
  // available in between would get neither a kick nor a pop.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return load_avail_idx() != last_avail_idx_;
}

}  // namespace dpfs::virtio
