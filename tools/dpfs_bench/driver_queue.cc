#include "driver_queue.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <system_error>

namespace dpfs::bench {

DriverQueue::DriverQueue(SharedMemory& mem, uint32_t index, uint32_t size)
    : mem_(mem), index_(index), size_(size) {
  // virtio 1.2 §2.7: alignment 16 (desc), 2 (avail), 4 (used).
  desc_ = reinterpret_cast<VringDesc*>(mem.allocate(16ull * size, 4096));
  avail_ = reinterpret_cast<VringAvail*>(mem.allocate(4 + 2ull * size + 2, 64));
  used_ = reinterpret_cast<VringUsed*>(mem.allocate(4 + 8ull * size + 2, 4096));
  kick_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  call_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!kick_ || !call_) throw std::system_error(errno, std::generic_category(), "eventfd");
  for (uint32_t i = size; i-- > 0;) free_.push_back(uint16_t(i));
}

uint64_t DriverQueue::desc_user_addr() const { return mem_.user_addr(desc_); }
uint64_t DriverQueue::avail_user_addr() const { return mem_.user_addr(avail_); }
uint64_t DriverQueue::used_user_addr() const { return mem_.user_addr(used_); }

int DriverQueue::add(std::span<const Buffer> readable, std::span<const Buffer> writable) {
  const size_t n = readable.size() + writable.size();
  if (n == 0 || n > free_.size()) return -1;
  uint16_t next = 0;
  // Built from the tail so each descriptor knows its successor.
  for (size_t k = n; k-- > 0;) {
    const bool device_writes = k >= readable.size();
    const Buffer& b = device_writes ? writable[k - readable.size()] : readable[k];
    const uint16_t i = free_.back();
    free_.pop_back();
    VringDesc& d = desc_[i];
    d.addr = mem_.guest_addr(b.data);
    d.len = b.len;
    d.flags =
        uint16_t((device_writes ? virtio::kDescFWrite : 0) | (k + 1 < n ? virtio::kDescFNext : 0));
    d.next = next;
    next = i;
  }
  avail_->ring[avail_idx_ % size_] = next;
  ++avail_idx_;
  return next;
}

void DriverQueue::publish() {
  std::atomic_ref<uint16_t>(avail_->idx).store(avail_idx_, std::memory_order_release);
}

void DriverQueue::kick_always() {
  const uint64_t one = 1;
  [[maybe_unused]] const ssize_t n = ::write(kick_.get(), &one, sizeof(one));
}

bool DriverQueue::kick() {
  // virtio 1.2 §2.7.10: the flag is read after the avail index is
  // published (a full fence orders the store before this load).
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (std::atomic_ref<uint16_t>(used_->flags).load(std::memory_order_relaxed) &
      virtio::kUsedFNoNotify) {
    return false;
  }
  kick_always();
  return true;
}

bool DriverQueue::next_used(uint16_t* head, uint32_t* len) {
  if (std::atomic_ref<uint16_t>(used_->idx).load(std::memory_order_acquire) == last_used_) {
    return false;
  }
  const VringUsedElem e = used_->ring[last_used_ % size_];
  ++last_used_;
  *head = uint16_t(e.id);
  *len = e.len;
  if (e.id < size_) free_chain(uint16_t(e.id));
  return true;
}

void DriverQueue::free_chain(uint16_t head) {
  // Our own descriptors (the device never writes the table): at most size
  // of them, whatever the flags say.
  uint16_t i = head;
  for (uint32_t k = 0; k < size_; ++k) {
    free_.push_back(i);
    if (!(desc_[i].flags & virtio::kDescFNext)) break;
    i = uint16_t(desc_[i].next % size_);
  }
}

void DriverQueue::set_interrupts(bool enable) {
  std::atomic_ref<uint16_t>(avail_->flags)
      .store(enable ? 0 : virtio::kAvailFNoInterrupt, std::memory_order_release);
}

bool DriverQueue::drain_call() {
  uint64_t v;
  return ::read(call_.get(), &v, sizeof(v)) == sizeof(v);
}

}  // namespace dpfs::bench
