// The device side of a split virtqueue (virtio 1.2 §2.7): takes descriptor
// chains the driver made available, turns them into host iovecs, and returns
// them through the used ring.
//
// The rings live in tenant memory and the tenant writes them concurrently
// with us: every index, address, length and flag is hostile input. Each
// descriptor and ring entry is read exactly once into a local copy (no
// double fetch), every buffer is translated through GuestMemory, and any
// violation of the driver's rules marks the queue broken with one log line;
// a broken queue never reads or writes tenant memory again until start().
//
// Not thread-safe. One worker owns a running queue and is the only caller of
// pop/push/publish/should_notify/set_notification; start/remap/stop are
// called by the vhost-user thread while that worker leaves the queue alone.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "util/rate_limited_log.h"
#include "virtio/guest_memory.h"

namespace dpfs::virtio {

// virtio 1.2 §2.7.5, §2.7.6, §2.7.8.
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
inline constexpr uint16_t kAvailFNoInterrupt = 1;
inline constexpr uint16_t kUsedFNoNotify = 1;
// §2.7: Queue Size is a power of 2 no larger than 32768.
inline constexpr uint32_t kMaxQueueSize = 32768;

// One request as the device sees it: the device-readable buffers, then the
// device-writable ones, as host iovecs into tenant memory. Reused from one
// pop to the next so that steady state allocates nothing. A descriptor that
// spans adjacent memory regions gives several iovecs; a zero-length one none.
struct DescriptorChain {
  uint16_t head = 0;  // what push() takes back
  std::vector<iovec> readable;
  std::vector<iovec> writable;
  uint64_t readable_len = 0;  // total bytes of `readable`
  uint64_t writable_len = 0;  // total bytes of `writable`

  void clear() {
    head = 0;
    readable.clear();
    writable.clear();
    readable_len = writable_len = 0;
  }
};

// Byte sizes of the three areas of a split ring of `size` entries, including
// used_event / avail_event when VIRTIO_F_EVENT_IDX is negotiated (§2.7).
inline uint64_t desc_table_bytes(uint32_t size) { return 16ull * size; }
inline uint64_t avail_ring_bytes(uint32_t size, bool event_idx) {
  return 4 + 2ull * size + (event_idx ? 2 : 0);
}
inline uint64_t used_ring_bytes(uint32_t size, bool event_idx) {
  return 4 + 8ull * size + (event_idx ? 2 : 0);
}

// What vhost-user says about one ring.
struct VringConfig {
  uint16_t queue_index = 0;  // for log lines only
  uint32_t size = 0;         // SET_VRING_NUM
  // SET_VRING_ADDR: front-end user addresses, translated with translate_uva.
  uint64_t desc_uva = 0;
  uint64_t avail_uva = 0;
  uint64_t used_uva = 0;
  uint16_t last_avail_idx = 0;  // SET_VRING_BASE (packed: index | avail wrap << 15)
  uint16_t last_used_idx = 0;   // packed only: SET_VRING_BASE bits 16-31 (index | used wrap << 15)
  bool event_idx = false;       // VIRTIO_RING_F_EVENT_IDX negotiated
  bool indirect_desc = false;   // VIRTIO_RING_F_INDIRECT_DESC negotiated
};

enum class PopResult {
  kEmpty,   // nothing available (or the queue is not running)
  kChain,   // *chain holds a request
  kBroken,  // the queue is broken (now or before); nothing was read
};

class SplitVirtqueue {
 public:
  SplitVirtqueue() = default;
  SplitVirtqueue(const SplitVirtqueue&) = delete;
  SplitVirtqueue& operator=(const SplitVirtqueue&) = delete;

  // Starts (or restarts, clearing a broken state) the queue over `mem`,
  // which must outlive it or be replaced through remap(). The used index
  // continues from what the used ring holds; nothing is in flight. Returns
  // 0, EINVAL (size not a power of 2 in [1, 32768], or a ring misaligned:
  // §2.7 desc 16, avail 2, used 4 bytes) or EFAULT (a ring not inside one
  // memory region); the queue is then stopped.
  int start(const GuestMemory& mem, const VringConfig& config);

  // Re-translates the rings in a new memory table (SET_MEM_TABLE while
  // running), keeping indexes and what is in flight. Returns 0 or EFAULT
  // (the queue is then stopped). No-op on a stopped queue.
  int remap(const GuestMemory& mem);

  // Stops the queue (GET_VRING_BASE): no more guest memory access;
  // last_avail_idx() stays readable.
  void stop();

  bool running() const { return state_ == State::kRunning; }
  bool broken() const { return state_ == State::kBroken; }

  // Takes the next available chain into *chain (cleared first, capacity
  // kept; left empty unless kChain). Marks the queue broken on a malformed chain: head or next
  // index out of range, a chain longer than the queue, an unmapped buffer, a device-readable
  // descriptor after a device-writable one, an indirect descriptor that is not negotiated, nested,
  // chained with NEXT, or whose table is empty, not a multiple of 16 bytes, longer than the queue
  // or not in one region, a head already in flight, or an avail index more than the queue size
  // ahead.
  PopResult pop(DescriptorChain* chain);

  // Returns chain `head` with `len` bytes written to its writable buffers.
  // Not visible to the driver until publish(). Returns false (nothing
  // written) if the queue is not running or `head` is not in flight.
  bool push(uint16_t head, uint32_t len);

  // Makes every push() since the last publish visible to the driver (one
  // release store of used->idx). Call should_notify() next.
  void publish();

  // Whether the driver wants a used buffer notification now, per
  // VIRTIO_F_EVENT_IDX (used_event, §2.7.7) or VRING_AVAIL_F_NO_INTERRUPT.
  // Call after publish(); the answer covers everything published since the
  // last notification.
  bool should_notify();

  // Asks the driver for available buffer notifications (kicks) or, when
  // polling, tells it not to bother (VRING_USED_F_NO_NOTIFY or avail_event,
  // §2.7.10). Enabling returns true when buffers arrived meanwhile: pop
  // again before sleeping, or a kick may be lost.
  bool set_notification(bool enable);

  uint16_t queue_index() const { return index_; }
  uint32_t size() const { return size_; }
  // The next avail ring entry to take (GET_VRING_BASE).
  uint16_t last_avail_idx() const { return last_avail_idx_; }
  // The next used ring entry to fill (published or not).
  uint16_t used_idx() const { return used_idx_; }
  // Chains popped and not yet pushed.
  uint32_t inflight() const { return inflight_; }

 private:
  enum class State { kStopped, kRunning, kBroken };

  struct Desc {
    uint64_t addr;
    uint32_t len;
    uint16_t flags;
    uint16_t next;
  };

  int map_rings(const GuestMemory& mem);
  // Walks the chain at `head` into *chain; false if the queue broke.
  bool read_chain(uint16_t head, DescriptorChain* chain);
  // Logs why, marks the queue broken; returns false for the caller to pass on.
  bool fail(std::string_view reason);

  uint16_t load_avail_idx() const;

  // The front-end can restart a queue it broke, and break it again: its
  // lines are limited per queue.
  util::RateLimitedLog log_{"virtio queue"};
  State state_ = State::kStopped;
  const GuestMemory* mem_ = nullptr;
  VringConfig config_;
  uint16_t index_ = 0;
  uint32_t size_ = 0;
  uint8_t* desc_ = nullptr;    // desc table, 16 * size bytes
  uint16_t* avail_ = nullptr;  // flags, idx, ring[size], used_event
  uint8_t* used_ = nullptr;    // flags, idx, ring[size] of {id, len}, avail_event
  bool event_idx_ = false;
  bool indirect_ = false;

  uint16_t last_avail_idx_ = 0;
  uint16_t shadow_avail_idx_ = 0;  // the last avail->idx read
  uint16_t used_idx_ = 0;          // next used entry to fill
  uint16_t published_used_idx_ = 0;
  uint16_t signalled_used_ = 0;  // used idx at the last notification
  bool signalled_used_valid_ = false;
  bool notification_ = true;
  uint32_t inflight_ = 0;
  std::vector<uint8_t> in_flight_;  // per head: popped, not pushed
};

}  // namespace dpfs::virtio
