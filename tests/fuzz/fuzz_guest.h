// The guest side of the virtqueue fuzz target: fuzzer bytes read as
// a stream of values, and guest memory made of three heap buffers of exactly
// their size, registered as borrowed regions (two adjacent in guest physical
// space, one after a gap), so AddressSanitizer reports any access past what
// the tenant shared.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "fuzz_input.h"
#include "virtio/guest_memory.h"
#include "virtio/queue.h"

namespace dpfs::fuzz {

using dpfs::virtio::GuestMemory;

constexpr uint64_t kUserOffset = 0x7f0000000000;  // uva = gpa + this

struct RegionSpec {
  uint64_t gpa;
  size_t size;
};
// A (rings + data) and B adjacent; C after a hole.
constexpr RegionSpec kRegions[] = {{0x1000, 4096}, {0x2000, 2048}, {0x8000, 512}};
constexpr size_t kNumRegions = sizeof(kRegions) / sizeof(kRegions[0]);
constexpr uint64_t kDescGpa = 0x1000;   // up to 32 * 16 = 512 bytes
constexpr uint64_t kAvailGpa = 0x1200;  // up to 4 + 64 + 2 bytes
constexpr uint64_t kUsedGpa = 0x1300;   // up to 4 + 256 + 2 bytes

class Guest {
 public:
  Guest() {
    for (size_t i = 0; i < kNumRegions; ++i) {
      buf_[i] = std::make_unique<uint8_t[]>(kRegions[i].size);
      std::memset(buf_[i].get(), 0, kRegions[i].size);
      if (mem.add_borrowed_region(buf_[i].get(), kRegions[i].gpa, kRegions[i].size,
                                  kRegions[i].gpa + kUserOffset) != 0) {
        std::abort();
      }
    }
  }

  // Host pointer for a GPA the harness itself writes (always in range).
  uint8_t* at(uint64_t gpa, size_t len) {
    for (size_t i = 0; i < kNumRegions; ++i) {
      if (gpa < kRegions[i].gpa) continue;
      const uint64_t off = gpa - kRegions[i].gpa;
      if (off < kRegions[i].size && len <= kRegions[i].size - off) return buf_[i].get() + off;
    }
    return nullptr;
  }

  // Whether [p, p + len) lies inside one region's buffer.
  bool contains(const void* p, size_t len) const {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < kNumRegions; ++i) {
      const uint8_t* s = buf_[i].get();
      if (b >= s && b <= s + kRegions[i].size && len <= size_t(s + kRegions[i].size - b)) {
        return true;
      }
    }
    return false;
  }

  // Checks that every buffer of a popped chain lies inside one region and
  // that its lengths add up (aborting otherwise), then reads the readable
  // buffers and writes the writable ones, so the sanitizer sees any byte
  // outside guest memory. Returns a sum of what was read.
  uint64_t touch(const dpfs::virtio::DescriptorChain& chain) {
    uint64_t sum = 0, rlen = 0, wlen = 0;
    for (const iovec& v : chain.readable) {
      if (!contains(v.iov_base, v.iov_len)) std::abort();
      const auto* p = static_cast<const uint8_t*>(v.iov_base);
      for (size_t i = 0; i < v.iov_len; ++i) sum += p[i];
      rlen += v.iov_len;
    }
    for (const iovec& v : chain.writable) {
      if (!contains(v.iov_base, v.iov_len)) std::abort();
      std::memset(v.iov_base, 0x5a, v.iov_len);
      wlen += v.iov_len;
    }
    if (rlen != chain.readable_len || wlen != chain.writable_len) std::abort();
    return sum;
  }

  // An address the fuzzer steers: usually inside a region, sometimes raw.
  uint64_t address(Input& in) {
    const uint8_t sel = in.byte();
    if (sel >= 0xf0) return uint64_t(in.u32()) << 32 | in.u32();
    return kRegions[sel % kNumRegions].gpa + in.u16() % 4608;
  }

  void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    if (at == nullptr) return;
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &flags, 2);
    std::memcpy(at + 14, &next, 2);
  }

  GuestMemory mem;

 private:
  std::unique_ptr<uint8_t[]> buf_[kNumRegions];
};

}  // namespace dpfs::fuzz
