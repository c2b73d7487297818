#include "virtio/virtqueue.h"

#include <endian.h>
#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "virtio/ring_access.h"

namespace dpfs::virtio {

using ring::load16;
using ring::store16;
using ring::store32;

namespace {

// §2.7.5 struct virtq_desc.
struct Desc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
static_assert(sizeof(Desc) == 16);

Desc read_desc(const uint8_t* at) {
  Desc d;
  ring::read_once(&d, at, sizeof(d));
  d.addr = le64toh(d.addr);
  d.len = le32toh(d.len);
  d.flags = le16toh(d.flags);
  d.next = le16toh(d.next);
  return d;
}

}  // namespace

int SplitVirtqueue::check(const VringConfig& config) {
  if ((config.size & (config.size - 1)) != 0) {
    log_.warn("virtio queue {}: invalid size {}", index_, config.size);
    return EINVAL;
  }
  return 0;
}

Virtqueue::AreaSpecs SplitVirtqueue::area_specs() const {
  return {.desc = {desc_table_bytes(size_), 16},
          .driver = {avail_ring_bytes(size_, event_idx_), 2},
          .device = {used_ring_bytes(size_, event_idx_), 4}};
}

void SplitVirtqueue::reset() {
  last_avail_idx_ = shadow_avail_idx_ = config_.last_avail_idx;
  used_idx_ = published_used_idx_ = load16(reinterpret_cast<uint16_t*>(used() + 2));
  signalled_used_valid_ = false;
  notification_ = true;
  record_ = config_.record;
  resumed_.clear();
  unpublished_.clear();
  if (record_ != nullptr) {
    if (config_.resume && __atomic_load_n(&record_->size, __ATOMIC_ACQUIRE) == size_) {
      recover();
    } else {
      record_new();
    }
  }
  // §2.7.10: with EVENT_IDX the device MUST keep used flags 0.
  store16(reinterpret_cast<uint16_t*>(used()), 0);
  if (event_idx_) store16(avail_event(), last_avail_idx_);
}

void SplitVirtqueue::record_flight(uint16_t head, uint8_t on) const {
  __atomic_store_n(&record_->flight[head], on, __ATOMIC_RELEASE);
}

void SplitVirtqueue::record_new() {
  __atomic_store_n(&record_->size, 0, __ATOMIC_RELEASE);
  std::memset(record_->flight, 0, sizeof(record_->flight));
  __atomic_store_n(&record_->last_avail, last_avail_idx_, __ATOMIC_RELEASE);
  __atomic_store_n(&record_->used_idx, used_idx_, __ATOMIC_RELEASE);
  __atomic_store_n(&record_->size, size_, __ATOMIC_RELEASE);
}

void SplitVirtqueue::recover() {
  // The order the last process wrote in: a taken head's flight, then
  // last_avail (pop); the used entries, used->idx, then the flights off
  // and used_idx (publish). Whatever it had done when it stopped, that
  // order says which requests have a published answer.
  const uint16_t guest_used = used_idx_;
  const uint16_t recorded_used = __atomic_load_n(&record_->used_idx, __ATOMIC_ACQUIRE);
  last_avail_idx_ = shadow_avail_idx_ = __atomic_load_n(&record_->last_avail, __ATOMIC_ACQUIRE);
  if (uint16_t(guest_used - recorded_used) > size_) {
    fail(fmt::format("resuming: used idx {} is more than {} past the recorded {}", guest_used,
                     size_, recorded_used));
    return;
  }
  // Published after the last record: answered, whatever the record says.
  for (uint16_t u = recorded_used; u != guest_used; ++u) {
    const uint32_t head =
        le32toh(*reinterpret_cast<const uint32_t*>(used() + 4 + 8 * size_t(u & (size_ - 1))));
    if (head < size_) record_flight(uint16_t(head), 0);
  }
  __atomic_store_n(&record_->used_idx, guest_used, __ATOMIC_RELEASE);
  for (uint32_t head = 0; head < size_; ++head) {
    if (__atomic_load_n(&record_->flight[head], __ATOMIC_ACQUIRE) == 0) continue;
    admit(uint16_t(head), 1);
    resumed_.push_back(uint16_t(head));
  }
  // Taken but last_avail not yet moved past it: the entry at last_avail
  // holds that head (a driver makes no head available twice in flight).
  if (load_avail_idx() != last_avail_idx_) {
    const uint16_t head = load16(avail() + 2 + (last_avail_idx_ & (size_ - 1)));
    if (head < size_ && in_flight(head)) {
      ++last_avail_idx_;
      shadow_avail_idx_ = last_avail_idx_;
      __atomic_store_n(&record_->last_avail, last_avail_idx_, __ATOMIC_RELEASE);
    }
  }
  if (event_idx_) store16(avail_event(), last_avail_idx_);
}

uint16_t SplitVirtqueue::load_avail_idx() const { return load16(avail() + 1); }

PopResult SplitVirtqueue::pop(DescriptorChain* chain) {
  chain->clear();
  if (state_ == State::kBroken) return PopResult::kBroken;
  if (state_ != State::kRunning) return PopResult::kEmpty;

  // What a predecessor took and did not answer comes first.
  if (!resumed_.empty()) {
    const uint16_t head = resumed_.back();
    resumed_.pop_back();
    chain->head = head;
    if (!read_chain(head, chain)) {
      chain->clear();
      return PopResult::kBroken;
    }
    return PopResult::kChain;
  }

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

  const uint16_t head = load16(avail() + 2 + (last_avail_idx_ & (size_ - 1)));
  if (head >= size_) {
    fail(
        fmt::format("avail entry {} holds head {} >= queue size {}", last_avail_idx_, head, size_));
    return PopResult::kBroken;
  }
  if (in_flight(head)) {
    fail(fmt::format("avail entry {} holds head {}, already in flight", last_avail_idx_, head));
    return PopResult::kBroken;
  }
  chain->head = head;
  if (!read_chain(head, chain)) {
    chain->clear();
    return PopResult::kBroken;
  }
  admit(head, 1);
  if (record_ != nullptr) record_flight(head, 1);
  ++last_avail_idx_;
  if (record_ != nullptr) __atomic_store_n(&record_->last_avail, last_avail_idx_, __ATOMIC_RELEASE);
  // Kick us when the driver makes the next entry available (§2.7.10).
  if (event_idx_ && notification_) store16(avail_event(), last_avail_idx_);
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
    const Desc d = read_desc(table + size_t(i) * 16);

    if (d.flags & kDescFIndirect) {
      // §2.7.5.3.1: one table per chain, never with NEXT. §2.7.5.3.2: it may
      // end a chain of direct descriptors, and its WRITE flag is ignored.
      if (in_indirect) return fail(fmt::format("head {}: nested indirect table", head));
      if (d.flags & kDescFNext) return fail(fmt::format("head {}: INDIRECT with NEXT", head));
      table = indirect_table(head, d.addr, d.len);
      if (table == nullptr) return false;
      table_size = d.len / 16;
      in_indirect = true;
      i = 0;
      continue;
    }

    // §2.7.5.3.1: no chain longer than the queue size; this also ends loops.
    if (++count > size_) {
      return fail(fmt::format("head {}: chain longer than the queue size {}", head, size_));
    }
    if (!add_buffer(head, d.addr, d.len, d.flags & kDescFWrite, &seen_writable, chain)) {
      return false;
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
  if (retire(head) == 0) return false;
  auto* elem = reinterpret_cast<uint32_t*>(used() + 4 + 8 * size_t(used_idx_ & (size_ - 1)));
  store32(elem, head);
  store32(elem + 1, len);
  ++used_idx_;
  if (record_ != nullptr) unpublished_.push_back(head);
  return true;
}

void SplitVirtqueue::publish() {
  if (state_ != State::kRunning || published_used_idx_ == used_idx_) return;
  // §2.7.14: the used elements before the index the driver reads them by.
  __atomic_store_n(reinterpret_cast<uint16_t*>(used() + 2), htole16(used_idx_), __ATOMIC_RELEASE);
  published_used_idx_ = used_idx_;
  if (record_ != nullptr) {
    for (const uint16_t head : unpublished_) record_flight(head, 0);
    unpublished_.clear();
    __atomic_store_n(&record_->used_idx, used_idx_, __ATOMIC_RELEASE);
  }
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
    const uint16_t used_event = load16(avail() + 2 + size_);
    notify = !valid || ring::need_event(used_event, new_idx, old_idx);
  } else {
    notify = !(load16(avail()) & kAvailFNoInterrupt);
  }
  signalled_used_valid_ = true;
  signalled_used_ = new_idx;
  return notify;
}

bool SplitVirtqueue::set_notification(bool enable) {
  if (state_ != State::kRunning) return false;
  notification_ = enable;
  if (!event_idx_) {
    store16(reinterpret_cast<uint16_t*>(used()), enable ? 0 : kUsedFNoNotify);
  } else if (enable) {
    store16(avail_event(), last_avail_idx_);
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
