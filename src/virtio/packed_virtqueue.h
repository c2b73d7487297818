// The packed virtqueue (virtio 1.2 §2.8): one descriptor ring that the
// driver and the device share, plus two event suppression structures (the
// driver and device areas). The Virtqueue interface, and the rules for
// hostile rings both layouts follow, are in queue.h.
//
// Indexes with wrap counters: last_avail_idx() and used_idx() carry the
// ring position in bits 0-14 and the wrap counter in bit 15, as vhost-user's
// SET_VRING_BASE / GET_VRING_BASE do (vring_base() packs both, the used one
// in bits 16-31). config.last_avail_idx and config.last_used_idx give where
// start() begins (a fresh ring: 0x8000 both). Sizes need not be a power of
// 2; start() refuses (EINVAL) a base beyond the ring and a misaligned area
// (§2.8.10.1: desc 16, events 4 bytes).
#pragma once

#include <cstdint>

#include "virtio/queue.h"

namespace dpfs::virtio {

// virtio 1.2 §2.8.1, §2.8.10.
inline constexpr uint16_t kPackedDescFAvail = 1 << 7;
inline constexpr uint16_t kPackedDescFUsed = 1 << 15;
inline constexpr uint16_t kRingEventFlagsEnable = 0;
inline constexpr uint16_t kRingEventFlagsDisable = 1;
inline constexpr uint16_t kRingEventFlagsDesc = 2;
// Byte size of a packed descriptor ring of `size` entries and of an event
// suppression structure (§2.8.10, §2.8.21).
inline uint64_t packed_desc_ring_bytes(uint32_t size) { return 16ull * size; }
inline constexpr uint64_t kPackedEventBytes = 4;

class PackedVirtqueue final : public Virtqueue {
 public:
  PackedVirtqueue() = default;

  RingLayout layout() const override { return RingLayout::kPacked; }

  // chain->head is the buffer id. Marks the queue broken on a malformed
  // chain: a chain longer than the queue (or than the free ring space), an
  // unmapped buffer, a device-readable descriptor after a device-writable
  // one, a buffer id out of range or already in flight, an indirect
  // descriptor that is not negotiated, part of a NEXT chain, or whose table
  // is empty, not a multiple of 16 bytes, longer than the queue, not in one
  // region or holds flags other than WRITE.
  PopResult pop(DescriptorChain* chain) override;
  bool push(uint16_t id, uint32_t len) override;
  void publish() override;
  // Driver event suppression (§2.8.10).
  bool should_notify() override;
  // Device event suppression.
  bool set_notification(bool enable) override;

  uint16_t last_avail_idx() const override { return pack(last_avail_idx_, avail_wrap_); }
  // The next used descriptor published to the driver, with its wrap counter.
  uint16_t used_idx() const override { return pack(published_used_idx_, published_used_wrap_); }
  uint32_t vring_base() const override { return last_avail_idx() | uint32_t(used_idx()) << 16; }

 private:
  static uint16_t pack(uint16_t idx, bool wrap) { return uint16_t(idx | (wrap ? 0x8000 : 0)); }

  int check(const VringConfig& config) override;
  AreaSpecs area_specs() const override;
  void reset() override;

  bool is_available(uint16_t flags) const {
    return bool(flags & kPackedDescFAvail) == avail_wrap_ &&
           bool(flags & kPackedDescFUsed) != avail_wrap_;
  }
  uint16_t* flags_at(uint16_t slot) const {
    return reinterpret_cast<uint16_t*>(desc_ + 16 * size_t(slot) + 14);
  }
  // Reads the chain starting at last_avail_idx_ (whose flags are
  // `head_flags`) into *chain; false if the queue broke.
  bool read_chain(uint16_t head_flags, DescriptorChain* chain, uint16_t* id, uint16_t* ndesc);

  // The event suppression areas: off_wrap, flags.
  uint16_t* driver_event() const { return reinterpret_cast<uint16_t*>(driver_area_); }
  uint16_t* device_event() const { return reinterpret_cast<uint16_t*>(device_area_); }

  uint16_t last_avail_idx_ = 0;
  bool avail_wrap_ = true;
  uint16_t used_idx_ = 0;  // next used descriptor to write
  bool used_wrap_ = true;
  uint16_t published_used_idx_ = 0;
  bool published_used_wrap_ = true;
  // The first used descriptor pushed since the last publish: its flags are
  // written last, by publish(), so the driver sees the batch at once.
  bool have_pending_ = false;
  uint16_t pending_idx_ = 0;
  uint16_t pending_flags_ = 0;
  uint16_t signalled_used_ = 0;  // pack()ed used idx at the last notification
  bool signalled_used_valid_ = false;
  uint32_t inflight_descs_ = 0;  // ring descriptors held by chains in flight
};

}  // namespace dpfs::virtio
