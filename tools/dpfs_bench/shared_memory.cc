#include "shared_memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>

namespace dpfs::bench {

SharedMemory::SharedMemory(size_t size) {
  constexpr size_t kRound = 2u << 20;
  size_ = (size + kRound - 1) / kRound * kRound;
  fd_.reset(::memfd_create("dpfs-bench-guest", MFD_CLOEXEC));
  if (!fd_) throw std::system_error(errno, std::generic_category(), "memfd_create");
  if (::ftruncate(fd_.get(), off_t(size_)) != 0) {
    throw std::system_error(errno, std::generic_category(), "ftruncate of the shared memory");
  }
  void* p = ::mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
  if (p == MAP_FAILED) throw std::system_error(errno, std::generic_category(), "mmap");
  base_ = static_cast<uint8_t*>(p);
}

SharedMemory::~SharedMemory() {
  if (base_) ::munmap(base_, size_);
}

uint8_t* SharedMemory::allocate(size_t size, size_t align) {
  const size_t start = (used_ + align - 1) & ~(align - 1);
  if (start + size > size_) {
    throw std::runtime_error("shared memory of " + std::to_string(size_) +
                             " bytes is full (a bug in the size estimate)");
  }
  used_ = start + size;
  std::memset(base_ + start, 0, size);
  return base_ + start;
}

}  // namespace dpfs::bench
