// Tiny virtio drivers over a memfd-backed guest, for the virtqueue tests:
// the driver side of a split ring (as Linux's virtqueue_add_split lays it
// out) and of a packed ring (virtqueue_add_packed), behind one interface
// (RingDriver) for the tests both layouts share, with raw access to their
// own rings for the tests that are one layout's.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "virtio/guest_memory.h"
#include "virtio/packed_virtqueue.h"
#include "virtio/queue.h"
#include "virtio/virtqueue.h"

namespace dpfs::virtio::drivers {

constexpr uint64_t kGuestBase = 0x40000000;     // GPA of the test guest's RAM
constexpr uint64_t kUserBase = 0x7f1200000000;  // where "QEMU" has it mapped
constexpr uint64_t kRamSize = 1 << 20;
// Layout of the test guest's RAM: the three areas (split: desc table, avail
// ring, used ring; packed: descriptor ring, driver and device event
// suppression), then buffers and indirect tables.
constexpr uint64_t kDescOff = 0x0;
constexpr uint64_t kDriverOff = 0x40000;
constexpr uint64_t kDeviceOff = 0x60000;
constexpr uint64_t kDataOff = 0x80000;

// One buffer of a chain. flags: kDescFWrite, kDescFIndirect (then addr is
// an indirect table, made with RingDriver::indirect).
struct Buf {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
};

class RingDriver {
 public:
  RingDriver(uint32_t size, bool event_idx, bool indirect) : size_(size) {
    const int fd = ::memfd_create("virtqueue_test", MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, kRamSize), 0);
    EXPECT_EQ(mem.add_region(fd, kGuestBase, kRamSize, kUserBase, 0), 0);
    ram_ = static_cast<uint8_t*>(mem.translate_gpa(kGuestBase, kRamSize));
    config.queue_index = 3;
    config.size = size;
    config.desc_uva = kUserBase + kDescOff;
    config.avail_uva = kUserBase + kDriverOff;
    config.used_uva = kUserBase + kDeviceOff;
    config.event_idx = event_idx;
    config.indirect_desc = indirect;
  }
  RingDriver(const RingDriver&) = delete;
  RingDriver& operator=(const RingDriver&) = delete;
  virtual ~RingDriver() = default;

  static std::unique_ptr<RingDriver> make(RingLayout layout, uint32_t size, bool event_idx = false,
                                          bool indirect = true);

  // Host address of a guest physical address in the test RAM.
  uint8_t* host(uint64_t gpa) { return ram_ + (gpa - kGuestBase); }
  // A fresh data buffer of `len` bytes (16-aligned); returns its GPA.
  uint64_t alloc(uint64_t len) {
    const uint64_t gpa = kGuestBase + kDataOff + data_used_;
    data_used_ += (len + 15) & ~uint64_t(15);
    EXPECT_LE(kDataOff + data_used_, kRamSize);
    return gpa;
  }

  // Makes `bufs` available as one chain (NEXT between them); returns what
  // the device will call it (DescriptorChain::head): the split head
  // descriptor, the packed buffer id, taken from the driver's free ones.
  virtual uint16_t add(const std::vector<Buf>& bufs) = 0;
  // The same with `id` chosen by the caller, whether the driver thinks it
  // free or not (or even in range).
  virtual void add_as(uint16_t id, const std::vector<Buf>& bufs) = 0;
  // An indirect table of `entries` in this layout's format (split: linked by
  // NEXT, in a scrambled order); returns its GPA. Flags are written as given.
  virtual uint64_t indirect(const std::vector<Buf>& entries) = 0;
  // The next used entry, if the device published one.
  virtual bool take_used(uint16_t* id, uint32_t* len) = 0;
  // Where the driver will make its next entry available and read its next
  // used one, in the device's terms (last_avail_idx(), used_idx() after a
  // publish), and what GET_VRING_BASE should say.
  virtual uint16_t avail_position() const = 0;
  virtual uint16_t used_position() const = 0;
  virtual uint32_t vring_base() const = 0;
  // A new ring: the areas zeroed, the driver and `config` as for a fresh
  // queue (a restart after the driver reset).
  virtual void reset_ring() = 0;

  GuestMemory mem;
  VringConfig config;

 protected:
  void zero_areas() { std::memset(host(kGuestBase + kDescOff), 0, kDataOff - kDescOff); }
  static void write16(uint8_t* at, uint16_t v) { std::memcpy(at, &v, 2); }

  uint32_t size_;

 private:
  uint8_t* ram_ = nullptr;
  uint64_t data_used_ = 0;
};

// A split ring, as the Linux driver lays it out: it writes descriptors and
// the avail ring, and reads the used ring. Descriptors come from a free
// list in a scrambled order (for a ring of 8: 5, 2, 7, 4, ...), so chains
// follow NEXT across the table.
class SplitDriver final : public RingDriver {
 public:
  explicit SplitDriver(uint32_t size, bool event_idx = false, bool indirect = true)
      : RingDriver(size, event_idx, indirect) {
    reset_free();
  }

  void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    write_desc(host(kGuestBase + kDescOff) + 16 * size_t(i), addr, len, flags, next);
  }
  static void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &flags, 2);
    std::memcpy(at + 14, &next, 2);
  }
  // An indirect table of `n` descriptors in data memory; returns its GPA.
  uint64_t indirect_table(uint16_t n) { return alloc(16 * uint64_t(n)); }
  void set_indirect(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                    uint16_t next = 0) {
    write_desc(host(table) + 16 * size_t(i), addr, len, flags, next);
  }

  // Puts `head` in the next avail slot and publishes it.
  void make_available(uint16_t head) {
    avail16(2 + (avail_idx_ & (size_ - 1))) = head;
    ++avail_idx_;
    __atomic_store_n(&avail16(1), avail_idx_, __ATOMIC_RELEASE);
  }
  void set_avail_idx(uint16_t idx) {
    avail_idx_ = idx;
    avail16(1) = idx;
  }
  void set_avail_flags(uint16_t f) { avail16(0) = f; }
  void set_used_event(uint16_t e) { avail16(2 + size_) = e; }
  // Where the used index starts (the device continues from the ring's).
  void set_used_idx(uint16_t idx) {
    used16(1) = idx;
    used_ = idx;
  }

  uint16_t used_flags() { return used16(0); }
  uint16_t used_idx() { return used16(1); }
  uint16_t avail_event() { return used16(2 + 4 * size_); }
  std::pair<uint32_t, uint32_t> used_elem(uint16_t i) {
    uint32_t e[2];
    std::memcpy(e, host(kGuestBase + kDeviceOff) + 4 + 8 * size_t(i & (size_ - 1)), 8);
    return {e[0], e[1]};
  }

  // RingDriver.
  uint16_t add(const std::vector<Buf>& bufs) override {
    EXPECT_FALSE(free_.empty());
    const uint16_t head = free_.front();
    add_as(head, bufs);
    return head;
  }
  void add_as(uint16_t head, const std::vector<Buf>& bufs) override {
    std::vector<uint16_t> slots{uint16_t(head & (size_ - 1))};
    std::erase(free_, slots[0]);
    while (slots.size() < bufs.size()) {
      EXPECT_FALSE(free_.empty()) << "no free descriptors left";
      slots.push_back(free_.front());
      free_.pop_front();
    }
    for (size_t k = 0; k < bufs.size(); ++k) {
      const bool last = k + 1 == bufs.size();
      set_desc(slots[k], bufs[k].addr, bufs[k].len,
               uint16_t(bufs[k].flags | (last ? 0 : kDescFNext)), last ? 0 : slots[k + 1]);
    }
    held_[head] = slots;
    make_available(head);
  }
  uint64_t indirect(const std::vector<Buf>& entries) override {
    // Entry 0 first (the device starts there), the others backwards: for 3
    // entries the chain is 0 -> 2 -> 1.
    const auto n = uint16_t(entries.size());
    const uint64_t t = indirect_table(n);
    auto at = [n](uint16_t k) { return k == 0 ? uint16_t(0) : uint16_t(n - k); };
    for (uint16_t k = 0; k < n; ++k) {
      const bool last = k + 1 == n;
      set_indirect(t, at(k), entries[k].addr, entries[k].len,
                   uint16_t(entries[k].flags | (last ? 0 : kDescFNext)), last ? 0 : at(k + 1));
    }
    return t;
  }
  bool take_used(uint16_t* id, uint32_t* len) override {
    if (__atomic_load_n(&used16(1), __ATOMIC_ACQUIRE) == used_) return false;
    const auto [i, l] = used_elem(used_++);
    *id = uint16_t(i);
    *len = l;
    if (auto it = held_.find(*id); it != held_.end()) {
      for (uint16_t s : it->second) free_.push_back(s);
      held_.erase(it);
    }
    return true;
  }
  uint16_t avail_position() const override { return avail_idx_; }
  uint16_t used_position() const override { return used_; }
  uint32_t vring_base() const override { return avail_idx_; }
  void reset_ring() override {
    zero_areas();
    avail_idx_ = used_ = 0;
    config.last_avail_idx = 0;
    held_.clear();
    reset_free();
  }

 private:
  uint16_t& avail16(size_t i) {
    return reinterpret_cast<uint16_t*>(host(kGuestBase + kDriverOff))[i];
  }
  uint16_t& used16(size_t i) {
    return reinterpret_cast<uint16_t*>(host(kGuestBase + kDeviceOff))[i];
  }
  void reset_free() {
    free_.clear();
    for (uint32_t k = 1; k <= size_; ++k) free_.push_back(uint16_t((5 * k) & (size_ - 1)));
  }

  uint16_t avail_idx_ = 0;
  uint16_t used_ = 0;  // next used entry the driver reads
  std::deque<uint16_t> free_;
  std::map<uint16_t, std::vector<uint16_t>> held_;  // head -> its descriptors
};

// A packed ring, laid out as Linux's virtqueue_add_packed does: descriptors
// of a chain in consecutive slots, each with AVAIL/USED for its slot's lap,
// the head's flags written last. Buffer ids come from a free list.
class PackedDriver final : public RingDriver {
 public:
  explicit PackedDriver(uint32_t size, bool event_idx = false, bool indirect = true)
      : RingDriver(size, event_idx, indirect) {
    config.last_avail_idx = 0x8000;
    config.last_used_idx = 0x8000;
    reset_free();
  }

  uint8_t* slot(uint16_t i) { return host(kGuestBase + kDescOff) + 16 * size_t(i); }
  static void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &id, 2);
    std::memcpy(at + 14, &flags, 2);
  }
  uint16_t* driver_event() { return reinterpret_cast<uint16_t*>(host(kGuestBase + kDriverOff)); }
  uint16_t* device_event() { return reinterpret_cast<uint16_t*>(host(kGuestBase + kDeviceOff)); }

  // RingDriver.
  uint16_t add(const std::vector<Buf>& bufs) override {
    EXPECT_FALSE(free_.empty());
    const uint16_t id = free_.front();
    add_as(id, bufs);
    return id;
  }
  void add_as(uint16_t id, const std::vector<Buf>& bufs) override {
    std::erase(free_, id);
    const uint16_t first = next_;
    uint16_t head_flags = 0;
    for (size_t k = 0; k < bufs.size(); ++k) {
      uint16_t f = bufs[k].flags;
      if (k + 1 < bufs.size()) f |= kDescFNext;
      f |= wrap_ ? kPackedDescFAvail : kPackedDescFUsed;
      if (k == 0) {
        head_flags = f;
        write_desc(slot(next_), bufs[k].addr, bufs[k].len, id, 0);
        // The head's flags must not look available yet: on a fresh lap they
        // hold last lap's value (used), which the device skips.
        write16(slot(next_) + 14, wrap_ ? 0 : (kPackedDescFAvail | kPackedDescFUsed));
      } else {
        write_desc(slot(next_), bufs[k].addr, bufs[k].len, id, f);
      }
      if (++next_ == size_) {
        next_ = 0;
        wrap_ = !wrap_;
      }
    }
    ndesc_[id] = uint16_t(bufs.size());
    __atomic_store_n(reinterpret_cast<uint16_t*>(slot(first) + 14), head_flags, __ATOMIC_RELEASE);
  }
  uint64_t indirect(const std::vector<Buf>& entries) override {
    const uint64_t t = alloc(16 * entries.size());
    for (size_t k = 0; k < entries.size(); ++k) {
      write_desc(host(t) + 16 * k, entries[k].addr, entries[k].len, 0, entries[k].flags);
    }
    return t;
  }
  // The used descriptor at the driver's next used slot, if the device
  // published one: it skips as many slots as the chain had descriptors.
  bool take_used(uint16_t* id, uint32_t* len) override {
    uint16_t f = __atomic_load_n(reinterpret_cast<uint16_t*>(slot(used_) + 14), __ATOMIC_ACQUIRE);
    const bool avail = f & kPackedDescFAvail, used = f & kPackedDescFUsed;
    if (avail != used_wrap_ || used != used_wrap_) return false;
    std::memcpy(len, slot(used_) + 8, 4);
    std::memcpy(id, slot(used_) + 12, 2);
    const auto it = ndesc_.find(*id);
    EXPECT_NE(it, ndesc_.end()) << "used id " << *id << " was never made available";
    used_ += it == ndesc_.end() ? 1 : it->second;
    if (it != ndesc_.end()) ndesc_.erase(it);
    free_.push_back(*id);
    if (used_ >= size_) {
      used_ -= size_;
      used_wrap_ = !used_wrap_;
    }
    return true;
  }
  uint16_t avail_position() const override { return uint16_t(next_ | (wrap_ ? 0x8000 : 0)); }
  uint16_t used_position() const override { return uint16_t(used_ | (used_wrap_ ? 0x8000 : 0)); }
  uint32_t vring_base() const override {
    return avail_position() | uint32_t(used_position()) << 16;
  }
  void reset_ring() override {
    zero_areas();
    next_ = used_ = 0;
    wrap_ = used_wrap_ = true;
    config.last_avail_idx = config.last_used_idx = 0x8000;
    ndesc_.clear();
    reset_free();
  }

 private:
  void reset_free() {
    free_.clear();
    for (uint16_t id = 0; id < size_; ++id) free_.push_back(id);
  }

  uint16_t next_ = 0;  // the next slot to make available
  bool wrap_ = true;
  uint16_t used_ = 0;  // the next slot to read a used descriptor from
  bool used_wrap_ = true;
  std::deque<uint16_t> free_;           // buffer ids
  std::map<uint16_t, uint16_t> ndesc_;  // id -> descriptors of its chain
};

inline std::unique_ptr<RingDriver> RingDriver::make(RingLayout layout, uint32_t size,
                                                    bool event_idx, bool indirect) {
  if (layout == RingLayout::kPacked)
    return std::make_unique<PackedDriver>(size, event_idx, indirect);
  return std::make_unique<SplitDriver>(size, event_idx, indirect);
}

}  // namespace dpfs::virtio::drivers
