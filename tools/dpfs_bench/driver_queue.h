// The driver side of a split virtqueue (virtio 1.2 §2.7), as a guest's
// virtio-fs driver runs it: descriptors and the avail ring are written here,
// the used ring is read, the device is kicked through an eventfd and calls
// back through another.
//
// Neither VIRTIO_F_EVENT_IDX nor indirect descriptors are negotiated: the
// driver kicks unless the device set VRING_USED_F_NO_NOTIFY (a polling
// device does), and asks for no calls (VRING_AVAIL_F_NO_INTERRUPT) when it
// polls itself.
//
// Not thread-safe: one driver thread owns a queue. The raw accessors are
// for the hostile cases, which write what no driver should.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "shared_memory.h"
#include "util/unique_fd.h"
#include "virtio/virtqueue.h"

namespace dpfs::bench {

// The split ring's layout (virtio 1.2 §2.7.5-§2.7.8); the flag values are
// the device side's (virtio/virtqueue.h).
struct VringDesc {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;
  uint16_t next;
};
struct VringAvail {
  uint16_t flags;
  uint16_t idx;
  uint16_t ring[];  // size entries, then used_event
};
struct VringUsedElem {
  uint32_t id;
  uint32_t len;
};
struct VringUsed {
  uint16_t flags;
  uint16_t idx;
  VringUsedElem ring[];  // size entries, then avail_event
};

// A buffer in shared memory.
struct Buffer {
  const void* data;
  uint32_t len;
};

class DriverQueue {
 public:
  // Allocates the rings of `size` entries (a power of 2) in `mem`; `index`
  // is the virtqueue number (0 hiprio, 1.. requests).
  DriverQueue(SharedMemory& mem, uint32_t index, uint32_t size);
  DriverQueue(const DriverQueue&) = delete;
  DriverQueue& operator=(const DriverQueue&) = delete;

  // Writes a chain of the device-readable buffers then the device-writable
  // ones into free descriptors and puts its head into the avail ring (not
  // yet visible: publish()). Returns the head, or -1 if too few descriptors
  // are free.
  int add(std::span<const Buffer> readable, std::span<const Buffer> writable);
  // Makes every add() since the last publish visible (release store of
  // avail->idx).
  void publish();
  // Kicks the device unless it asked not to be (VRING_USED_F_NO_NOTIFY).
  // Returns whether it kicked.
  bool kick();
  // Takes the next used entry; false when the used ring has none. Frees
  // the chain's descriptors.
  bool next_used(uint16_t* head, uint32_t* len);
  // Asks the device for calls (used buffer notifications) or not.
  void set_interrupts(bool enable);
  // Reads and clears the call eventfd; returns whether it was signalled.
  bool drain_call();

  uint32_t index() const { return index_; }
  uint32_t size() const { return size_; }
  uint32_t free_descriptors() const { return uint32_t(free_.size()); }
  int kick_fd() const { return kick_.get(); }
  int call_fd() const { return call_.get(); }
  uint64_t desc_user_addr() const;
  uint64_t avail_user_addr() const;
  uint64_t used_user_addr() const;

  // Raw access (hostile cases).
  VringDesc* desc() { return desc_; }
  VringAvail* avail() { return avail_; }
  VringUsed* used() { return used_; }
  uint16_t avail_idx() const { return avail_idx_; }
  void set_avail_idx(uint16_t idx) { avail_idx_ = idx; }
  void kick_always();

 private:
  void free_chain(uint16_t head);

  SharedMemory& mem_;
  uint32_t index_;
  uint32_t size_;
  VringDesc* desc_;
  VringAvail* avail_;
  VringUsed* used_;
  util::UniqueFd kick_;
  util::UniqueFd call_;
  std::vector<uint16_t> free_;
  uint16_t avail_idx_ = 0;  // next avail entry (published or not)
  uint16_t last_used_ = 0;  // next used entry to read
};

}  // namespace dpfs::bench
