// The device side of a packed virtqueue (virtio 1.2 §2.8): the same job and
// the same public API as SplitVirtqueue (virtqueue.h), over one descriptor
// ring that the driver and the device share, plus two event suppression
// structures.
//
// The same hostile-input discipline: every descriptor is read exactly once
// into a local copy, every buffer is translated through GuestMemory, and any
// violation of the driver's rules marks the queue broken with one log line;
// a broken queue never reads or writes tenant memory again until start().
//
// Indexes with wrap counters: last_avail_idx() and used_idx() carry the
// ring position in bits 0-14 and the wrap counter in bit 15, as vhost-user's
// SET_VRING_BASE / GET_VRING_BASE do (vring_base() packs both, the used one
// in bits 16-31).
//
// Not thread-safe; the same threading rules as SplitVirtqueue.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "util/rate_limited_log.h"
#include "virtio/guest_memory.h"
#include "virtio/virtqueue.h"

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

class PackedVirtqueue {
 public:
  PackedVirtqueue() = default;
  PackedVirtqueue(const PackedVirtqueue&) = delete;
  PackedVirtqueue& operator=(const PackedVirtqueue&) = delete;

  // Starts (or restarts, clearing a broken state) the queue over `mem`.
  // config.desc_uva is the descriptor ring, avail_uva the driver event
  // suppression area, used_uva the device event suppression area;
  // config.last_avail_idx and config.last_used_idx hold position | wrap << 15
  // (a fresh ring: 0x8000 both). Returns 0, EINVAL (size not in [1, 32768],
  // a ring misaligned: §2.8.10.1 desc 16, events 4) or EFAULT (an area not
  // inside one memory region); the queue is then stopped.
  int start(const GuestMemory& mem, const VringConfig& config);

  // As SplitVirtqueue::remap.
  int remap(const GuestMemory& mem);

  // Stops the queue: no more guest memory access; the indexes stay readable.
  void stop();

  bool running() const { return state_ == State::kRunning; }
  bool broken() const { return state_ == State::kBroken; }

  // Takes the next available chain into *chain; chain->head is the buffer
  // id. Marks the queue broken on a malformed chain: a chain longer than the
  // queue (or than the free ring space), an unmapped buffer, a
  // device-readable descriptor after a device-writable one, a buffer id out
  // of range or already in flight, an indirect descriptor that is not
  // negotiated, part of a NEXT chain, or whose table is empty, not a
  // multiple of 16 bytes, longer than the queue, not in one region or holds
  // flags other than WRITE.
  PopResult pop(DescriptorChain* chain);

  // Returns buffer `id` with `len` bytes written. Not visible to the driver
  // until publish(). False (nothing written) if not running or `id` is not
  // in flight.
  bool push(uint16_t id, uint32_t len);

  // Makes every push() since the last publish visible to the driver.
  void publish();

  // Whether the driver wants a used buffer notification now (driver event
  // suppression, §2.8.10). Call after publish().
  bool should_notify();

  // Enables or disables available buffer notifications (device event
  // suppression). Enabling returns true when a buffer arrived meanwhile.
  bool set_notification(bool enable);

  uint16_t queue_index() const { return index_; }
  uint32_t size() const { return size_; }
  uint16_t last_avail_idx() const { return pack(last_avail_idx_, avail_wrap_); }
  // The next used descriptor published to the driver, with its wrap counter.
  uint16_t used_idx() const { return pack(published_used_idx_, published_used_wrap_); }
  // What GET_VRING_BASE returns for a packed ring (vhost-user.rst).
  uint32_t vring_base() const { return last_avail_idx() | uint32_t(used_idx()) << 16; }
  uint32_t inflight() const { return inflight_; }

 private:
  enum class State { kStopped, kRunning, kBroken };

  static uint16_t pack(uint16_t idx, bool wrap) { return uint16_t(idx | (wrap ? 0x8000 : 0)); }
  int map_rings(const GuestMemory& mem);
  bool is_available(uint16_t flags) const {
    return bool(flags & kPackedDescFAvail) == avail_wrap_ &&
           bool(flags & kPackedDescFUsed) != avail_wrap_;
  }
  // Reads the chain starting at last_avail_idx_ (whose flags are
  // `head_flags`) into *chain; false if the queue broke.
  bool read_chain(uint16_t head_flags, DescriptorChain* chain, uint16_t* id, uint16_t* ndesc);
  bool add_buffer(uint64_t addr, uint32_t len, bool writable, bool* seen_writable,
                  DescriptorChain* chain);
  bool fail(std::string_view reason);

  // The front-end can restart a queue it broke, and break it again: its
  // lines are limited per queue.
  util::RateLimitedLog log_{"virtio queue"};
  State state_ = State::kStopped;
  const GuestMemory* mem_ = nullptr;
  VringConfig config_;
  uint16_t index_ = 0;
  uint32_t size_ = 0;
  uint8_t* desc_ = nullptr;
  uint16_t* driver_event_ = nullptr;  // off_wrap, flags
  uint16_t* device_event_ = nullptr;  // off_wrap, flags
  bool event_idx_ = false;
  bool indirect_ = false;

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
  uint32_t inflight_ = 0;
  uint32_t inflight_descs_ = 0;      // ring descriptors held by chains in flight
  std::vector<uint16_t> in_flight_;  // per buffer id: ring descriptors, 0 if not in flight
};

}  // namespace dpfs::virtio
