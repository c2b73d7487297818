// The split virtqueue (virtio 1.2 §2.7): a descriptor table, an avail ring
// the driver fills with chain heads, and a used ring we return them by.
// The Virtqueue interface, and the rules for hostile rings both layouts
// follow, are in queue.h.
//
// Indexes are free-running 16-bit counters: last_avail_idx() is the next
// avail ring entry to take (SET_VRING_BASE / GET_VRING_BASE); the used index
// continues from what the used ring holds at start(). start() refuses
// (EINVAL) a size that is not a power of 2 and a misaligned ring (§2.7: desc
// 16, avail 2, used 4 bytes).
#pragma once

#include <cstdint>
#include <vector>

#include "virtio/queue.h"

namespace dpfs::virtio {

// virtio 1.2 §2.7.6, §2.7.8.
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr uint16_t kUsedFNoNotify = 1;

// Byte sizes of the three areas of a split ring of `size` entries, including
// used_event / avail_event when VIRTIO_F_EVENT_IDX is negotiated (§2.7).
inline uint64_t desc_table_bytes(uint32_t size) { return 16ull * size; }
inline uint64_t avail_ring_bytes(uint32_t size, bool event_idx) {
  return 4 + 2ull * size + (event_idx ? 2 : 0);
}
inline uint64_t used_ring_bytes(uint32_t size, bool event_idx) {
  return 4 + 8ull * size + (event_idx ? 2 : 0);
}

class SplitVirtqueue final : public Virtqueue {
 public:
  SplitVirtqueue() = default;

  RingLayout layout() const override { return RingLayout::kSplit; }

  // Marks the queue broken on a malformed chain: head or next index out of
  // range, a chain longer than the queue, an unmapped buffer, a
  // device-readable descriptor after a device-writable one, an indirect
  // descriptor that is not negotiated, nested, chained with NEXT, or whose
  // table is empty, not a multiple of 16 bytes, longer than the queue or not
  // in one region, a head already in flight, or an avail index more than the
  // queue size ahead.
  PopResult pop(DescriptorChain* chain) override;
  bool push(uint16_t head, uint32_t len) override;
  // One release store of used->idx.
  void publish() override;
  // Per VIRTIO_F_EVENT_IDX (used_event, §2.7.7) or VRING_AVAIL_F_NO_INTERRUPT.
  bool should_notify() override;
  // VRING_USED_F_NO_NOTIFY, or avail_event with VIRTIO_F_EVENT_IDX (§2.7.10).
  bool set_notification(bool enable) override;

  uint16_t last_avail_idx() const override { return last_avail_idx_; }
  // The next used ring entry to fill (published or not).
  uint16_t used_idx() const override { return used_idx_; }
  // last_avail_idx().
  uint32_t vring_base() const override { return last_avail_idx_; }

 private:
  int check(const VringConfig& config) override;
  AreaSpecs area_specs() const override;
  void reset() override;

  // Walks the chain at `head` into *chain; false if the queue broke.
  bool read_chain(uint16_t head, DescriptorChain* chain);
  uint16_t load_avail_idx() const;

  // The areas as this layout sees them. avail: flags, idx, ring[size],
  // used_event; used: flags, idx, ring[size] of {id, len}, avail_event.
  uint16_t* avail() const { return reinterpret_cast<uint16_t*>(driver_area_); }
  uint8_t* used() const { return device_area_; }
  uint16_t* avail_event() const { return reinterpret_cast<uint16_t*>(used() + 4 + 8 * size_); }

  uint16_t last_avail_idx_ = 0;
  uint16_t shadow_avail_idx_ = 0;  // the last avail->idx read
  uint16_t used_idx_ = 0;          // next used entry to fill
  uint16_t published_used_idx_ = 0;
  // With a RingRecord (VringConfig::record): takes the ring over from the
  // record at start() (resume), or starts a new one.
  void recover();
  void record_new();
  void record_flight(uint16_t head, uint8_t on) const;

  RingRecord* record_ = nullptr;
  std::vector<uint16_t> resumed_;      // taken before a restart, to take again first
  std::vector<uint16_t> unpublished_;  // pushed since the last publish (with a record)
  uint16_t signalled_used_ = 0;        // used idx at the last notification
  bool signalled_used_valid_ = false;
  bool notification_ = true;
};

}  // namespace dpfs::virtio
