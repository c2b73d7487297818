// The device side of a virtqueue (virtio 1.2 §2.6), whatever its layout:
// takes the descriptor chains the driver made available, turns them into
// host iovecs, and returns them used. Two layouts implement it: the split
// ring (SplitVirtqueue, virtqueue.h, §2.7) and the packed ring
// (PackedVirtqueue, packed_virtqueue.h, §2.8). VIRTIO_F_RING_PACKED picks
// one for a device; make_virtqueue() makes it.
//
// The rings live in tenant memory and the tenant writes them concurrently
// with us: every index, address, length and flag is hostile input. Each
// descriptor and ring entry is read exactly once into a local copy (no
// double fetch), every buffer is translated through GuestMemory, and any
// violation of the driver's rules marks the queue broken with one log line;
// a broken queue never reads or writes tenant memory again until start().
// What both layouts check -- buffers inside guest memory, readable before
// writable, at most 4 GiB a chain, indirect tables negotiated, whole,
// no longer than the queue and inside one region, a head or buffer id in
// flight once -- is written once, here and in queue.cc.
//
// Not thread-safe. One worker owns a running queue and is the only caller of
// pop/push/publish/should_notify/set_notification; start/remap/stop are
// called by the vhost-user thread while that worker leaves the queue alone.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "util/rate_limited_log.h"
#include "virtio/guest_memory.h"

namespace dpfs::virtio {

// Descriptor flags both layouts share (§2.7.5, §2.8.13).
inline constexpr uint16_t kDescFNext = 1;
inline constexpr uint16_t kDescFWrite = 2;
inline constexpr uint16_t kDescFIndirect = 4;
// §2.7, §2.8: no queue has more than 32768 entries.
inline constexpr uint32_t kMaxQueueSize = 32768;

// One request as the device sees it: the device-readable buffers, then the
// device-writable ones, as host iovecs into tenant memory. Reused from one
// pop to the next so that steady state allocates nothing. A descriptor that
// spans adjacent memory regions gives several iovecs; a zero-length one none.
struct DescriptorChain {
  uint16_t head = 0;  // what push() takes back: the split head, the packed buffer id
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

// What a split ring's device side has done, in memory that outlives the
// process serving it (a memfd its supervisor keeps: docs/restart.md). A
// successor started on the same ring with `resume` takes the ring over
// where the last one stopped: each request it had taken and not answered
// (its answer not published) is taken again, and none is answered twice.
// Written by the ring's one worker; read only by a successor, once the
// writer is gone. Its contents are checked like any ring (a predecessor may
// have been subverted).
struct RingRecord {
  uint32_t size;        // the ring it describes; 0: none recorded yet
  uint16_t last_avail;  // the next avail entry to take
  uint16_t used_idx;    // used->idx as last published and accounted for here
  // Per head: 1 while taken and its answer not yet published.
  uint8_t flight[kMaxQueueSize];
};

// What vhost-user says about one ring.
struct VringConfig {
  uint16_t queue_index = 0;  // for log lines only
  uint32_t size = 0;         // SET_VRING_NUM
  // SET_VRING_ADDR: front-end user addresses, translated with translate_uva.
  // The descriptor, driver and device areas (§2.6): split desc table, avail
  // and used rings; packed descriptor ring, driver and device event
  // suppression.
  uint64_t desc_uva = 0;
  uint64_t avail_uva = 0;
  uint64_t used_uva = 0;
  uint16_t last_avail_idx = 0;  // SET_VRING_BASE (packed: index | avail wrap << 15)
  uint16_t last_used_idx = 0;   // packed only: SET_VRING_BASE bits 16-31 (index | used wrap << 15)
  bool event_idx = false;       // VIRTIO_RING_F_EVENT_IDX negotiated
  bool indirect_desc = false;   // VIRTIO_RING_F_INDIRECT_DESC negotiated
  // Split rings: where to record progress (null: nowhere), and whether to
  // resume from what it holds (last_avail_idx is then the record's).
  RingRecord* record = nullptr;
  bool resume = false;
};

enum class PopResult {
  kEmpty,   // nothing available (or the queue is not running)
  kChain,   // *chain holds a request
  kBroken,  // the queue is broken (now or before); nothing was read
};

enum class RingLayout {
  kSplit,   // §2.7
  kPacked,  // §2.8: VIRTIO_F_RING_PACKED
};

std::string_view to_string(RingLayout layout);

class Virtqueue {
 public:
  Virtqueue(const Virtqueue&) = delete;
  Virtqueue& operator=(const Virtqueue&) = delete;
  virtual ~Virtqueue() = default;

  virtual RingLayout layout() const = 0;

  // Starts (or restarts, clearing a broken state) the queue over `mem`,
  // which must outlive it or be replaced through remap(). Nothing is in
  // flight afterwards; where the indexes start is the layout's (see its
  // header). Returns 0, EINVAL (a size or base the layout does not allow, or
  // an area misaligned) or EFAULT (an area not inside one memory region); the
  // queue is then stopped.
  int start(const GuestMemory& mem, const VringConfig& config);

  // Re-translates the rings in a new memory table (SET_MEM_TABLE while
  // running), keeping indexes and what is in flight. Returns 0 or EFAULT
  // (the queue is then stopped). No-op on a stopped queue.
  int remap(const GuestMemory& mem);

  // Stops the queue (GET_VRING_BASE): no more guest memory access; the
  // indexes stay readable.
  void stop();

  bool running() const { return state_ == State::kRunning; }
  bool broken() const { return state_ == State::kBroken; }

  // Takes the next available chain into *chain (cleared first, capacity
  // kept; left empty unless kChain). Marks the queue broken on a malformed
  // chain (what each layout refuses is in its header); the bad entry is not
  // consumed.
  virtual PopResult pop(DescriptorChain* chain) = 0;

  // Returns chain `head` (DescriptorChain::head) with `len` bytes written to
  // its writable buffers. Not visible to the driver until publish(). Returns
  // false (nothing written) if the queue is not running or `head` is not in
  // flight.
  virtual bool push(uint16_t head, uint32_t len) = 0;

  // Makes every push() since the last publish visible to the driver at once.
  // Call should_notify() next.
  virtual void publish() = 0;

  // Whether the driver wants a used buffer notification now (its
  // suppression fields, with or without VIRTIO_F_EVENT_IDX). Call after
  // publish(); the answer covers everything published since the last
  // notification.
  virtual bool should_notify() = 0;

  // Asks the driver for available buffer notifications (kicks) or, when
  // polling, tells it not to bother. Enabling returns true when buffers
  // arrived meanwhile: pop again before sleeping, or a kick may be lost.
  virtual bool set_notification(bool enable) = 0;

  uint16_t queue_index() const { return index_; }
  uint32_t size() const { return size_; }
  // Chains popped and not yet pushed.
  uint32_t inflight() const { return inflight_; }
  // The next available entry to take.
  virtual uint16_t last_avail_idx() const = 0;
  // The next used entry.
  virtual uint16_t used_idx() const = 0;
  // What GET_VRING_BASE returns (vhost-user.rst).
  virtual uint32_t vring_base() const = 0;

 protected:
  enum class State { kStopped, kRunning, kBroken };

  // The bytes and alignment a layout needs of one area.
  struct AreaSpec {
    uint64_t bytes;
    uintptr_t align;
  };
  struct AreaSpecs {
    AreaSpec desc, driver, device;
  };

  Virtqueue() = default;

  // The layout's rules for `config` beyond what start() checks: 0, or
  // EINVAL with a line logged.
  virtual int check(const VringConfig& config) = 0;
  // What the areas of a ring of size_ entries (with event_idx_) take.
  virtual AreaSpecs area_specs() const = 0;
  // Called by start() once the areas are mapped and the queue is running:
  // sets the layout's indexes from config_ and the ring.
  virtual void reset() = 0;

  // Logs why, marks the queue broken; returns false for the caller to pass on.
  bool fail(std::string_view reason);

  // Appends the buffer [addr, addr + len) to *chain (§2.7.4.2, §2.8.14.1:
  // every device-readable buffer before the first device-writable one;
  // §2.7.5.2: at most 4 GiB a chain). False, the queue broken, if not.
  // `at` names the chain in the log line: its head (split), the ring slot of
  // the descriptor (packed).
  bool add_buffer(uint32_t at, uint64_t addr, uint32_t len, bool writable, bool* seen_writable,
                  DescriptorChain* chain) {
    if (writable) {
      *seen_writable = true;
      if (!mem_->map_gpa(addr, len, &chain->writable)) {
        return fail_buffer(at, addr, len, BufferFault::kWritableUnmapped);
      }
      chain->writable_len += len;
    } else {
      if (*seen_writable) return fail_buffer(at, addr, len, BufferFault::kReadableAfterWritable);
      if (!mem_->map_gpa(addr, len, &chain->readable)) {
        return fail_buffer(at, addr, len, BufferFault::kReadableUnmapped);
      }
      chain->readable_len += len;
    }
    if (chain->readable_len + chain->writable_len > (uint64_t(1) << 32)) {
      return fail_buffer(at, addr, len, BufferFault::kChainTooLong);
    }
    return true;
  }

  // The host address of the indirect table of `len` bytes at `addr`, if
  // INDIRECT was negotiated (§2.7.5.3.1, §2.8.7.1) and the table is whole
  // descriptors, not empty, no longer than the queue (no chain is) and
  // inside one memory region; else nullptr, the queue broken. The layouts
  // check where a table may be (nesting, NEXT) and what its entries hold.
  const uint8_t* indirect_table(uint32_t at, uint64_t addr, uint32_t len);

  // Chains in flight, by head (split) or buffer id (packed): how many ring
  // descriptors each holds, 0 if it is not in flight. REQUIRES id < size_.
  bool in_flight(uint16_t id) const { return in_flight_[id] != 0; }
  void admit(uint16_t id, uint16_t ndesc) {
    in_flight_[id] = ndesc;
    ++inflight_;
  }
  // Ends chain `id`'s flight: the ring descriptors it held, or 0 (logged)
  // if it is not in flight (a backend's bug, not the tenant's).
  uint16_t retire(uint16_t id) {
    const uint16_t n = id < size_ ? in_flight_[id] : 0;
    if (n == 0) return not_in_flight(id);
    in_flight_[id] = 0;
    --inflight_;
    return n;
  }

  // The front-end can restart a queue it broke, and break it again: its
  // lines are limited per queue.
  util::RateLimitedLog log_{"virtio queue"};
  State state_ = State::kStopped;
  const GuestMemory* mem_ = nullptr;
  VringConfig config_;
  uint16_t index_ = 0;
  uint32_t size_ = 0;
  bool event_idx_ = false;
  bool indirect_ = false;
  // The three areas (§2.6) in host memory; nullptr unless running or broken.
  uint8_t* desc_ = nullptr;
  uint8_t* driver_area_ = nullptr;
  uint8_t* device_area_ = nullptr;

 private:
  enum class BufferFault {
    kReadableUnmapped,
    kWritableUnmapped,
    kReadableAfterWritable,
    kChainTooLong,
  };

  int map_areas(const GuestMemory& mem);
  bool fail_buffer(uint32_t at, uint64_t addr, uint32_t len, BufferFault fault);
  // How log lines name a chain: "head 5" (split), "desc 3" (packed).
  const char* chain_name() const;
  uint16_t not_in_flight(uint16_t id);

  uint32_t inflight_ = 0;
  std::vector<uint16_t> in_flight_;  // per head or buffer id: descriptors held
};

// A stopped queue of `layout`.
std::unique_ptr<Virtqueue> make_virtqueue(RingLayout layout);

}  // namespace dpfs::virtio
