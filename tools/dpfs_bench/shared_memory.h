// The front-end's "guest memory": one memfd mapping shared with the device
// through SET_MEM_TABLE, from which rings and request buffers are carved.
//
// Guest physical addresses (what descriptors carry) are offsets from
// kGuestBase; front-end user addresses (what SET_VRING_ADDR carries) are the
// addresses of this process's mapping, as QEMU's would be.
//
// Not thread-safe: allocate() during set-up only; the memory itself is then
// shared by the driver threads, each using what it allocated.
#pragma once

#include <cstddef>
#include <cstdint>

#include "util/unique_fd.h"

namespace dpfs::bench {

class SharedMemory {
 public:
  // Not 0: an address 0 in a descriptor is more likely a bug than a buffer.
  static constexpr uint64_t kGuestBase = 0x40000000;

  // Creates and maps `size` bytes (rounded up to 2 MiB); throws
  // std::system_error.
  explicit SharedMemory(size_t size);
  SharedMemory(const SharedMemory&) = delete;
  SharedMemory& operator=(const SharedMemory&) = delete;
  ~SharedMemory();

  // `size` bytes aligned to `align` (a power of 2), zeroed; throws
  // std::runtime_error when the mapping is full.
  uint8_t* allocate(size_t size, size_t align = 64);

  int fd() const { return fd_.get(); }
  size_t size() const { return size_; }
  uint8_t* base() const { return base_; }
  uint64_t user_addr(const void* p) const { return reinterpret_cast<uint64_t>(p); }
  uint64_t guest_addr(const void* p) const {
    return kGuestBase + uint64_t(static_cast<const uint8_t*>(p) - base_);
  }
  // One past the last guest physical address of the region.
  uint64_t guest_end() const { return kGuestBase + size_; }

 private:
  util::UniqueFd fd_;
  size_t size_ = 0;
  uint8_t* base_ = nullptr;
  size_t used_ = 0;
};

}  // namespace dpfs::bench
