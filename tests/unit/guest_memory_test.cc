#include "virtio/guest_memory.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

namespace dpfs::virtio {
namespace {

constexpr uint64_t kPage = 4096;

// A memfd of `size` bytes; the test keeps its own descriptor (add_region
// takes ownership of the one it is given, so it gets a dup).
class Memfd {
 public:
  explicit Memfd(uint64_t size) {
    fd_ = ::memfd_create("guest_memory_test", MFD_CLOEXEC);
    EXPECT_GE(fd_, 0) << strerror(errno);
    EXPECT_EQ(::ftruncate(fd_, off_t(size)), 0) << strerror(errno);
  }
  ~Memfd() { ::close(fd_); }
  int dup() const { return ::dup(fd_); }
  // Byte `offset` of the file, read through the file itself (not a mapping).
  uint8_t byte_at(uint64_t offset) const {
    uint8_t b = 0;
    EXPECT_EQ(::pread(fd_, &b, 1, off_t(offset)), 1);
    return b;
  }
  void truncate(uint64_t size) const { EXPECT_EQ(::ftruncate(fd_, off_t(size)), 0); }
  void write_at(uint64_t offset, uint8_t b) const {
    EXPECT_EQ(::pwrite(fd_, &b, 1, off_t(offset)), 1);
  }

 private:
  int fd_ = -1;
};

TEST(GuestMemoryTest, TranslatesIntoTheSharedFile) {
  Memfd f(4 * kPage);
  GuestMemory mem;
  ASSERT_EQ(mem.add_region(f.dup(), 0x100000, 4 * kPage, 0x7f0000000000, 0), 0);
  auto* p = static_cast<uint8_t*>(mem.translate_gpa(0x100000 + 100, 8));
  ASSERT_NE(p, nullptr);
  p[0] = 0xab;
  EXPECT_EQ(f.byte_at(100), 0xab) << "MAP_SHARED: the tenant sees what we write";
  f.write_at(101, 0xcd);
  EXPECT_EQ(p[1], 0xcd) << "and we see what the tenant writes";
  EXPECT_EQ(mem.translate_uva(0x7f0000000000 + 100, 8), p);
}

TEST(GuestMemoryTest, RegionPastTheEndOfItsFileIsRefused) {
  Memfd f(2 * kPage);
  GuestMemory mem;
  EXPECT_EQ(mem.add_region(f.dup(), 0, 3 * kPage, 0x1000000, 0), EINVAL);
  EXPECT_EQ(mem.add_region(f.dup(), 0, 2 * kPage, 0x1000000, kPage), EINVAL)
      << "the offset counts: the region would end past the file";
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  ::close(pipe_fds[1]);
  EXPECT_EQ(mem.add_region(pipe_fds[0], 0, kPage, 0x1000000, 0), EINVAL) << "not a file";
  EXPECT_EQ(mem.num_regions(), 0u);
  EXPECT_EQ(mem.add_region(f.dup(), 0, kPage, 0x1000000, kPage), 0);
}

// A front-end that shrinks a memory file after we mapped it makes the pages
// past the new end fault. That must cost its memory (the device stops
// serving it), not the daemon: the access reads zeros, faulted() is set,
// and another tenant's memory is untouched.
TEST(GuestMemoryTest, FileShrunkUnderTheMappingFaultsOnlyThatMemory) {
  Memfd f(4 * kPage), other_file(kPage);
  GuestMemory mem, other;
  ASSERT_EQ(mem.add_region(f.dup(), 0x100000, 4 * kPage, 0x1000000, 0), 0);
  ASSERT_EQ(other.add_region(other_file.dup(), 0, kPage, 0x2000000, 0), 0);
  auto* p = static_cast<volatile uint8_t*>(mem.translate_gpa(0x100000, 4 * kPage));
  ASSERT_NE(p, nullptr);
  p[3 * kPage] = 7;
  EXPECT_FALSE(mem.faulted());
  f.truncate(kPage);
  EXPECT_EQ(p[3 * kPage], 0) << "the faulting page is now a zero page";
  p[3 * kPage + 1] = 9;  // writes go into a void, without a fault
  EXPECT_TRUE(mem.faulted());
  EXPECT_FALSE(other.faulted());
  auto* q = static_cast<volatile uint8_t*>(other.translate_gpa(0, 1));
  q[0] = 5;
  EXPECT_EQ(other_file.byte_at(0), 5) << "the other memory is still shared with its tenant";
}

// The handler contains faults in guest memory only: any other SIGBUS still
// ends the process, as it would without dpfs's handler.
TEST(GuestMemoryDeathTest, FaultOutsideGuestMemoryStillKills) {
  Memfd guest(kPage);
  GuestMemory mem;
  ASSERT_EQ(mem.add_region(guest.dup(), 0, kPage, 0x1000000, 0), 0);  // installs the handler
  EXPECT_DEATH(
      {
        Memfd f(2 * kPage);
        void* m = ::mmap(nullptr, 2 * kPage, PROT_READ, MAP_SHARED, f.dup(), 0);
        f.truncate(0);
        (void)*static_cast<volatile uint8_t*>(m);
      },
      "");
}

TEST(GuestMemoryTest, MmapOffsetSelectsWhereTheRegionStartsInTheFile) {
  Memfd f(3 * kPage);
  f.write_at(kPage + 5, 0x42);
  GuestMemory mem;
  ASSERT_EQ(mem.add_region(f.dup(), 0x0, kPage, 0x1000000, kPage), 0);
  auto* p = static_cast<uint8_t*>(mem.translate_gpa(5, 1));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 0x42);
  EXPECT_EQ(mem.translate_gpa(kPage, 1), nullptr) << "the region is one page long";
  // An unaligned offset (hugetlbfs-style layouts) works too.
  Memfd g(3 * kPage);
  g.write_at(kPage + 7 + 100, 0x44);
  ASSERT_EQ(mem.add_region(g.dup(), 0x10000, kPage, 0x2000000, kPage + 7), 0);
  p = static_cast<uint8_t*>(mem.translate_gpa(0x10000 + 100, 1));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, 0x44);
}

TEST(GuestMemoryTest, RangeMustLieInsideARegion) {
  Memfd f(kPage);
  GuestMemory mem;
  ASSERT_EQ(mem.add_region(f.dup(), 0x10000, kPage, 0x50000, 0), 0);
  EXPECT_NE(mem.translate_gpa(0x10000, kPage), nullptr);
  EXPECT_NE(mem.translate_gpa(0x10000 + kPage - 1, 1), nullptr);
  EXPECT_EQ(mem.translate_gpa(0x10000 + kPage - 1, 2), nullptr) << "one byte past the end";
  EXPECT_EQ(mem.translate_gpa(0x10000 + kPage, 1), nullptr);
  EXPECT_EQ(mem.translate_gpa(0xffff, 1), nullptr) << "one byte before";
  EXPECT_EQ(mem.translate_gpa(0xffff, 2), nullptr) << "straddles the start";
  EXPECT_EQ(mem.translate_gpa(0x10000, UINT64_MAX), nullptr) << "length wraps";
  EXPECT_EQ(mem.translate_gpa(UINT64_MAX, 2), nullptr);
  EXPECT_EQ(mem.translate_uva(0x50000 + kPage - 4, 8), nullptr);
  EXPECT_EQ(mem.translate_uva(0x50000, UINT64_MAX), nullptr);
  EXPECT_NE(mem.translate_uva(0x50000 + kPage - 8, 8), nullptr);

  std::vector<iovec> iov;
  EXPECT_FALSE(mem.map_gpa(0x10000 + 10, kPage, &iov));
  EXPECT_FALSE(mem.map_gpa(UINT64_MAX - 2, 8, &iov)) << "wraps";
  EXPECT_TRUE(iov.empty());
  EXPECT_TRUE(mem.map_gpa(0x123456789, 0, &iov)) << "nothing to map";
  EXPECT_TRUE(iov.empty());
}

TEST(GuestMemoryTest, RejectsBadRegions) {
  Memfd f(4 * kPage);
  GuestMemory mem;
  EXPECT_EQ(mem.add_region(f.dup(), 0x0, 0, 0x0, 0), EINVAL) << "size 0";
  EXPECT_EQ(mem.add_region(f.dup(), UINT64_MAX - kPage + 2, kPage, 0x0, 0), EINVAL)
      << "gpa + size wraps";
  EXPECT_EQ(mem.add_region(f.dup(), 0x0, kPage, UINT64_MAX - 10, 0), EINVAL) << "uva wraps";
  EXPECT_EQ(mem.add_region(f.dup(), 0x0, kPage, 0x0, UINT64_MAX - 10), EINVAL)
      << "offset + size wraps";
  EXPECT_EQ(mem.add_region(-1, 0x0, kPage, 0x0, 0), EBADF) << "not a descriptor";
  ASSERT_EQ(mem.add_region(f.dup(), 0x10000, 2 * kPage, 0x0, 0), 0);
  EXPECT_EQ(mem.add_region(f.dup(), 0x11000, kPage, 0x100000, 0), EINVAL) << "inside";
  EXPECT_EQ(mem.add_region(f.dup(), 0xf000, 2 * kPage, 0x100000, 0), EINVAL) << "overlaps start";
  EXPECT_EQ(mem.add_region(f.dup(), 0x11fff, kPage, 0x100000, 0), EINVAL) << "overlaps end";
  EXPECT_EQ(mem.add_region(f.dup(), 0x0, 0x100000, 0x100000, 0), EINVAL) << "covers";
  EXPECT_EQ(mem.add_region(f.dup(), 0x12000, kPage, 0x100000, 0), 0) << "adjacent is fine";
  EXPECT_EQ(mem.add_region(f.dup(), 0xf000, kPage, 0x200000, 0), 0) << "adjacent below too";
  EXPECT_EQ(mem.num_regions(), 3u);
  for (size_t i = 1; i < mem.regions().size(); ++i) {
    EXPECT_LT(mem.regions()[i - 1].guest_phys_addr, mem.regions()[i].guest_phys_addr);
  }
}

TEST(GuestMemoryTest, SlotLimit) {
  std::vector<uint8_t> backing(GuestMemory::kMaxRegions + 1);
  GuestMemory mem;
  for (size_t i = 0; i < GuestMemory::kMaxRegions; ++i) {
    ASSERT_EQ(mem.add_borrowed_region(&backing[i], 2 * i, 1, 2 * i), 0);
  }
  EXPECT_EQ(mem.add_borrowed_region(&backing.back(), 0x100000, 1, 0), ENOSPC);
  Memfd f(kPage);
  EXPECT_EQ(mem.add_region(f.dup(), 0x200000, kPage, 0, 0), ENOSPC);
  // Lookups stay correct with many regions (binary search).
  for (size_t i = 0; i < GuestMemory::kMaxRegions; i += 37) {
    EXPECT_EQ(mem.translate_gpa(2 * i, 1), &backing[i]);
    EXPECT_EQ(mem.translate_gpa(2 * i + 1, 1), nullptr) << "the hole between regions";
  }
}

TEST(GuestMemoryTest, MapGpaSpansAdjacentRegionsOnly) {
  Memfd a(kPage), b(kPage), c(kPage);
  GuestMemory mem;
  ASSERT_EQ(mem.add_region(a.dup(), 0x1000, kPage, 0x900000, 0), 0);
  ASSERT_EQ(mem.add_region(b.dup(), 0x2000, kPage, 0x700000, 0), 0);  // adjacent in GPA only
  ASSERT_EQ(mem.add_region(c.dup(), 0x4000, kPage, 0x500000, 0), 0);  // after a hole

  std::vector<iovec> iov = {{nullptr, 0}};
  ASSERT_TRUE(mem.map_gpa(0x1800, kPage, &iov));
  ASSERT_EQ(iov.size(), 3u) << "appends after what was there";
  EXPECT_EQ(iov[1].iov_base, mem.translate_gpa(0x1800, 1));
  EXPECT_EQ(iov[1].iov_len, 0x800u);
  EXPECT_EQ(iov[2].iov_base, mem.translate_gpa(0x2000, 1));
  EXPECT_EQ(iov[2].iov_len, 0x800u);
  EXPECT_EQ(mem.translate_gpa(0x1800, kPage), nullptr) << "not contiguous on our side";

  iov.clear();
  EXPECT_FALSE(mem.map_gpa(0x2800, kPage * 2, &iov)) << "the hole at 0x3000";
  EXPECT_TRUE(iov.empty()) << "left as it was";
  ASSERT_TRUE(mem.map_gpa(0x1000, 2 * kPage, &iov));
  EXPECT_EQ(iov.size(), 2u);
  EXPECT_EQ(mem.translate_uva(0x700000 + 8, 8), mem.translate_gpa(0x2008, 8));
}

TEST(GuestMemoryTest, RemovedRegionIsGoneButOldPointersStaySafe) {
  Memfd f(kPage);
  GuestMemory mem;
  ASSERT_EQ(mem.add_region(f.dup(), 0x1000, kPage, 0x900000, 0), 0);
  auto* p = static_cast<uint8_t*>(mem.translate_gpa(0x1000, kPage));
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(mem.remove_region(0x1000, kPage, 0x123), ENOENT);
  EXPECT_EQ(mem.remove_region(0x1000, 2 * kPage, 0x900000), ENOENT);
  EXPECT_EQ(mem.remove_region(0x1000, kPage, 0x900000), 0);
  EXPECT_EQ(mem.translate_gpa(0x1000, 1), nullptr);
  EXPECT_EQ(mem.translate_uva(0x900000, 1), nullptr);
  EXPECT_EQ(mem.num_regions(), 0u);
  // An in-flight request writing through an old pointer neither crashes nor
  // reaches the tenant's memory.
  p[0] = 0x77;
  EXPECT_EQ(f.byte_at(0), 0);
  EXPECT_EQ(mem.remove_region(0x1000, kPage, 0x900000), ENOENT);
  // The GPA range can be reused.
  EXPECT_EQ(mem.add_region(f.dup(), 0x1000, kPage, 0x900000, 0), 0);
}

// Removed regions stay reserved for requests in flight, but a front-end
// that adds and removes regions in a loop cannot make that grow for ever.
TEST(GuestMemoryTest, ReservedAddressSpaceForRemovedRegionsIsBounded) {
  Memfd f(kPage);
  GuestMemory mem;
  for (size_t i = 0; i < GuestMemory::kMaxRegions; ++i) {
    ASSERT_EQ(mem.add_region(f.dup(), 0x1000, kPage, 0x900000, 0), 0);
    ASSERT_EQ(mem.remove_region(0x1000, kPage, 0x900000), 0) << i;
  }
  ASSERT_EQ(mem.add_region(f.dup(), 0x1000, kPage, 0x900000, 0), 0);
  EXPECT_EQ(mem.remove_region(0x1000, kPage, 0x900000), EBUSY);
  EXPECT_EQ(mem.num_removed(), GuestMemory::kMaxRegions);
  mem.release_removed();  // nothing in flight any more
  EXPECT_EQ(mem.num_removed(), 0u);
  EXPECT_EQ(mem.remove_region(0x1000, kPage, 0x900000), 0);
}

TEST(GuestMemoryTest, MovesOwnership) {
  Memfd f(kPage);
  GuestMemory a;
  ASSERT_EQ(a.add_region(f.dup(), 0x1000, kPage, 0x900000, 0), 0);
  void* p = a.translate_gpa(0x1000, 1);
  GuestMemory b(std::move(a));
  EXPECT_EQ(b.translate_gpa(0x1000, 1), p);
  GuestMemory c;
  ASSERT_EQ(c.add_region(f.dup(), 0x5000, kPage, 0x900000, 0), 0);
  c = std::move(b);
  EXPECT_EQ(c.translate_gpa(0x1000, 1), p);
  EXPECT_EQ(c.translate_gpa(0x5000, 1), nullptr);
  static_cast<uint8_t*>(p)[0] = 1;  // still mapped (ASan/SEGV would tell)
}

}  // namespace
}  // namespace dpfs::virtio
