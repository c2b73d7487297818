#include "virtio/virtqueue.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "virtio/guest_memory.h"

namespace dpfs::virtio {
namespace {

constexpr uint64_t kGuestBase = 0x40000000;     // GPA of the test guest's RAM
constexpr uint64_t kUserBase = 0x7f1200000000;  // where "QEMU" has it mapped
constexpr uint64_t kRamSize = 1 << 20;
// Layout of the test guest's RAM.
constexpr uint64_t kDescOff = 0x0;
constexpr uint64_t kAvailOff = 0x40000;
constexpr uint64_t kUsedOff = 0x60000;
constexpr uint64_t kDataOff = 0x80000;  // buffers and indirect tables from here

// A tiny virtio driver over a memfd-backed guest, as the Linux driver would
// lay out a split ring: it writes descriptors and the avail ring, and reads
// the used ring.
class TestDriver {
 public:
  explicit TestDriver(uint32_t size, bool event_idx = false, bool indirect = true) : size_(size) {
    const int fd = ::memfd_create("virtqueue_test", MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, kRamSize), 0);
    EXPECT_EQ(mem.add_region(fd, kGuestBase, kRamSize, kUserBase, 0), 0);
    ram_ = static_cast<uint8_t*>(mem.translate_gpa(kGuestBase, kRamSize));
    config.queue_index = 3;
    config.size = size;
    config.desc_uva = kUserBase + kDescOff;
    config.avail_uva = kUserBase + kAvailOff;
    config.used_uva = kUserBase + kUsedOff;
    config.event_idx = event_idx;
    config.indirect_desc = indirect;
  }

  // Host address of a guest physical address in the test RAM.
  uint8_t* host(uint64_t gpa) { return ram_ + (gpa - kGuestBase); }
  // A fresh data buffer of `len` bytes (16-aligned); returns its GPA.
  uint64_t alloc(uint64_t len) {
    const uint64_t gpa = kGuestBase + kDataOff + data_used_;
    data_used_ += (len + 15) & ~uint64_t(15);
    EXPECT_LE(kDataOff + data_used_, kRamSize);
    return gpa;
  }

  void set_desc(uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next = 0) {
    write_desc(host(kGuestBase + kDescOff) + 16 * size_t(i), addr, len, flags, next);
  }
  static void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next) {
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &flags, 2);
    std::memcpy(at + 14, &next, 2);
  }
  // An indirect table of `n` descriptors in data memory; returns its GPA.
  uint64_t indirect_table(uint16_t n) { return alloc(16 * uint64_t(n)); }
  void set_indirect(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags,
                    uint16_t next = 0) {
    write_desc(host(table) + 16 * size_t(i), addr, len, flags, next);
  }

  // Puts `head` in the next avail slot and publishes it.
  void make_available(uint16_t head) {
    avail16(2 + (avail_idx_ & (size_ - 1))) = head;
    ++avail_idx_;
    __atomic_store_n(&avail16(1), avail_idx_, __ATOMIC_RELEASE);
  }
  void set_avail_idx(uint16_t idx) {
    avail_idx_ = idx;
    avail16(1) = idx;
  }
  void set_avail_flags(uint16_t f) { avail16(0) = f; }
  void set_used_event(uint16_t e) { avail16(2 + size_) = e; }

  uint16_t used_flags() { return used16(0); }
  uint16_t used_idx() { return used16(1); }
  uint16_t avail_event() { return used16(2 + 4 * size_); }
  std::pair<uint32_t, uint32_t> used_elem(uint16_t i) {
    uint32_t e[2];
    std::memcpy(e, host(kGuestBase + kUsedOff) + 4 + 8 * size_t(i & (size_ - 1)), 8);
    return {e[0], e[1]};
  }

  GuestMemory mem;
  VringConfig config;

 private:
  uint16_t& avail16(size_t i) {
    return reinterpret_cast<uint16_t*>(host(kGuestBase + kAvailOff))[i];
  }
  uint16_t& used16(size_t i) { return reinterpret_cast<uint16_t*>(host(kGuestBase + kUsedOff))[i]; }

  uint32_t size_;
  uint8_t* ram_ = nullptr;
  uint16_t avail_idx_ = 0;
  uint64_t data_used_ = 0;
};

class VirtqueueTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
};

TEST_F(VirtqueueTest, PopsAChainIntoHostIovecs) {
  TestDriver d(8);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);

  const uint64_t hdr = d.alloc(40), arg = d.alloc(100), out = d.alloc(4096);
  d.set_desc(5, hdr, 40, kDescFNext, 2);
  d.set_desc(2, arg, 100, kDescFNext, 7);
  d.set_desc(7, out, 4096, kDescFWrite);
  d.make_available(5);

  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, 5);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d.host(hdr));
  EXPECT_EQ(c.readable[0].iov_len, 40u);
  EXPECT_EQ(c.readable[1].iov_base, d.host(arg));
  EXPECT_EQ(c.readable[1].iov_len, 100u);
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d.host(out));
  EXPECT_EQ(c.readable_len, 140u);
  EXPECT_EQ(c.writable_len, 4096u);
  EXPECT_EQ(q.inflight(), 1u);
  EXPECT_EQ(q.last_avail_idx(), 1);
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);
  EXPECT_TRUE(c.readable.empty()) << "a chain object is cleared before it is filled";
}

TEST_F(VirtqueueTest, PushIsInvisibleUntilPublish) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  for (uint16_t i = 0; i < 3; ++i) {
    d.set_desc(i, d.alloc(64), 64, kDescFWrite);
    d.make_available(i);
  }
  DescriptorChain c;
  std::vector<uint16_t> heads;
  while (q.pop(&c) == PopResult::kChain) heads.push_back(c.head);
  ASSERT_EQ(heads.size(), 3u);
  EXPECT_EQ(q.inflight(), 3u);

  // Completed out of order, published as one batch.
  EXPECT_TRUE(q.push(heads[2], 10));
  EXPECT_TRUE(q.push(heads[0], 20));
  EXPECT_EQ(d.used_idx(), 0) << "not published yet";
  q.publish();
  EXPECT_EQ(d.used_idx(), 2);
  EXPECT_EQ(d.used_elem(0), std::make_pair(uint32_t(heads[2]), 10u));
  EXPECT_EQ(d.used_elem(1), std::make_pair(uint32_t(heads[0]), 20u));
  EXPECT_EQ(q.inflight(), 1u);

  EXPECT_FALSE(q.push(heads[0], 1)) << "already returned";
  EXPECT_FALSE(q.push(7, 1)) << "out of range";
  EXPECT_FALSE(q.push(3, 1)) << "never popped";
  EXPECT_TRUE(q.push(heads[1], 30));
  q.publish();
  EXPECT_EQ(d.used_idx(), 3);
  EXPECT_EQ(q.used_idx(), 3);
  EXPECT_EQ(q.inflight(), 0u);
}

TEST_F(VirtqueueTest, IndexesWrapAroundFromVringBase) {
  TestDriver d(4);
  d.set_avail_idx(65534);  // the driver's view after a reconnect
  d.config.last_avail_idx = 65534;
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  for (int round = 0; round < 5; ++round) {
    d.set_desc(1, d.alloc(8), 8, 0);
    d.make_available(1);
    ASSERT_EQ(q.pop(&c), PopResult::kChain) << round;
    EXPECT_EQ(c.head, 1);
    ASSERT_TRUE(q.push(1, 0));
    q.publish();
  }
  EXPECT_EQ(q.last_avail_idx(), uint16_t(65534 + 5));
  EXPECT_EQ(d.used_idx(), 5);
}

TEST_F(VirtqueueTest, IndirectTable) {
  TestDriver d(8);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t t = d.indirect_table(3);
  const uint64_t a = d.alloc(16), b = d.alloc(32), w = d.alloc(64);
  d.set_indirect(t, 0, a, 16, kDescFNext, 2);
  d.set_indirect(t, 2, b, 32, kDescFNext, 1);
  d.set_indirect(t, 1, w, 64, kDescFWrite);
  d.set_desc(4, t, 48, kDescFIndirect | kDescFWrite);  // WRITE here is ignored
  d.make_available(4);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, 4);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d.host(a));
  EXPECT_EQ(c.readable[1].iov_base, d.host(b));
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d.host(w));
  EXPECT_EQ(c.writable[0].iov_len, 64u);
}

TEST_F(VirtqueueTest, DirectDescriptorsThenAnIndirectTable) {
  // §2.7.5.3.2: the device MUST handle this layout.
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t t = d.indirect_table(3);
  const uint64_t h = d.alloc(8);
  d.set_indirect(t, 0, d.alloc(8), 8, kDescFNext, 1);
  d.set_indirect(t, 1, d.alloc(8), 8, kDescFWrite | kDescFNext, 2);
  d.set_indirect(t, 2, d.alloc(8), 8, kDescFWrite);
  d.set_desc(0, h, 8, kDescFNext, 1);
  d.set_desc(1, t, 48, kDescFIndirect);
  d.make_available(0);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d.host(h));
  EXPECT_EQ(c.writable.size(), 2u);
}

TEST_F(VirtqueueTest, ZeroLengthDescriptorsGiveNoIovec) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  d.set_desc(0, 0xdead0000000, 0, kDescFNext, 1);  // address irrelevant: nothing to touch
  d.set_desc(1, d.alloc(8), 8, kDescFWrite);
  d.make_available(0);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_TRUE(c.readable.empty());
  EXPECT_EQ(c.writable.size(), 1u);
}

TEST_F(VirtqueueTest, BuffersSpanningRegionsGiveSeveralIovecs) {
  TestDriver d(4);
  // A second RAM region right after the first in GPA, elsewhere in ours.
  const int fd = ::memfd_create("second", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, 1 << 16), 0);
  ASSERT_EQ(d.mem.add_region(fd, kGuestBase + kRamSize, 1 << 16, kUserBase + (1ull << 32), 0), 0);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t across = kGuestBase + kRamSize - 100;
  d.set_desc(0, across, 300, kDescFNext, 1);
  d.set_desc(1, kGuestBase + kRamSize + 4096, 512, kDescFWrite);
  d.make_available(0);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d.host(across));
  EXPECT_EQ(c.readable[0].iov_len, 100u);
  EXPECT_EQ(c.readable[1].iov_base, d.mem.translate_gpa(kGuestBase + kRamSize, 1));
  EXPECT_EQ(c.readable[1].iov_len, 200u);
  EXPECT_EQ(c.readable_len, 300u);
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d.mem.translate_gpa(kGuestBase + kRamSize + 4096, 1));
}

// --- Malformed input: each case breaks the queue. ------------------------

// Arranges for the next pop to see one malformed chain (or ring).
using Corruption = void (*)(TestDriver&);

struct MalformedCase {
  const char* name;
  Corruption corrupt;
  uint32_t size = 8;
  bool indirect = true;
};

void PrintTo(const MalformedCase& c, std::ostream* os) { *os << c.name; }

class MalformedTest : public VirtqueueTest, public ::testing::WithParamInterface<MalformedCase> {};

const MalformedCase kMalformed[] = {
    {"head_out_of_range", [](TestDriver& d) { d.make_available(8); }},
    {"next_out_of_range",
     [](TestDriver& d) {
       d.set_desc(0, d.alloc(8), 8, kDescFNext, 8);
       d.make_available(0);
     }},
    {"loop",
     [](TestDriver& d) {
       d.set_desc(0, d.alloc(8), 8, kDescFNext, 1);
       d.set_desc(1, d.alloc(8), 8, kDescFNext, 0);
       d.make_available(0);
     }},
    {"self_loop",
     [](TestDriver& d) {
       d.set_desc(3, d.alloc(8), 8, kDescFNext, 3);
       d.make_available(3);
     }},
    {"loop_in_indirect_table",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(2);
       d.set_indirect(t, 0, d.alloc(8), 8, kDescFNext, 1);
       d.set_indirect(t, 1, d.alloc(8), 8, kDescFNext, 0);
       d.set_desc(0, t, 32, kDescFIndirect);
       d.make_available(0);
     }},
    {"chain_longer_than_queue",
     [](TestDriver& d) {
       // One direct buffer, then a full-size table: 9 buffers in a queue of 8.
       const uint64_t t = d.indirect_table(8);
       for (uint16_t i = 0; i < 8; ++i) {
         d.set_indirect(t, i, d.alloc(8), 8, i < 7 ? kDescFNext : 0, uint16_t(i + 1));
       }
       d.set_desc(0, d.alloc(8), 8, kDescFNext, 1);
       d.set_desc(1, t, 8 * 16, kDescFIndirect);
       d.make_available(0);
     }},
    {"indirect_next_out_of_table",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(2);
       d.set_indirect(t, 0, d.alloc(8), 8, kDescFNext, 2);
       d.set_desc(0, t, 32, kDescFIndirect);
       d.make_available(0);
     }},
    {"indirect_not_negotiated",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(1);
       d.set_indirect(t, 0, d.alloc(8), 8, 0);
       d.set_desc(0, t, 16, kDescFIndirect);
       d.make_available(0);
     },
     8, false},
    {"nested_indirect",
     [](TestDriver& d) {
       const uint64_t inner = d.indirect_table(1), outer = d.indirect_table(1);
       d.set_indirect(inner, 0, d.alloc(8), 8, 0);
       d.set_indirect(outer, 0, inner, 16, kDescFIndirect);
       d.set_desc(0, outer, 16, kDescFIndirect);
       d.make_available(0);
     }},
    {"indirect_with_next",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(1);
       d.set_indirect(t, 0, d.alloc(8), 8, 0);
       d.set_desc(0, t, 16, kDescFIndirect | kDescFNext, 1);
       d.set_desc(1, d.alloc(8), 8, 0);
       d.make_available(0);
     }},
    {"indirect_len_zero",
     [](TestDriver& d) {
       d.set_desc(0, d.indirect_table(1), 0, kDescFIndirect);
       d.make_available(0);
     }},
    {"indirect_len_not_multiple_of_16",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(2);
       d.set_indirect(t, 0, d.alloc(8), 8, 0);
       d.set_desc(0, t, 17, kDescFIndirect);
       d.make_available(0);
     }},
    {"indirect_table_larger_than_queue",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(9);
       d.set_indirect(t, 0, d.alloc(8), 8, 0);
       d.set_desc(0, t, 9 * 16, kDescFIndirect);
       d.make_available(0);
     }},
    {"indirect_table_unmapped",
     [](TestDriver& d) {
       d.set_desc(0, kGuestBase + kRamSize - 16, 32, kDescFIndirect);
       d.make_available(0);
     }},
    {"readable_after_writable",
     [](TestDriver& d) {
       d.set_desc(0, d.alloc(8), 8, kDescFWrite | kDescFNext, 1);
       d.set_desc(1, d.alloc(8), 8, 0);
       d.make_available(0);
     }},
    {"readable_in_table_after_writable_before_it",
     [](TestDriver& d) {
       const uint64_t t = d.indirect_table(1);
       d.set_indirect(t, 0, d.alloc(8), 8, 0);
       d.set_desc(0, d.alloc(8), 8, kDescFWrite | kDescFNext, 1);
       d.set_desc(1, t, 16, kDescFIndirect);
       d.make_available(0);
     }},
    {"buffer_unmapped",
     [](TestDriver& d) {
       d.set_desc(0, 0x1000, 8, 0);
       d.make_available(0);
     }},
    {"buffer_past_end_of_memory",
     [](TestDriver& d) {
       d.set_desc(0, kGuestBase + kRamSize - 8, 9, kDescFWrite);
       d.make_available(0);
     }},
    {"buffer_address_wraps",
     [](TestDriver& d) {
       d.set_desc(0, UINT64_MAX - 4, 8, 0);
       d.make_available(0);
     }},
    {"avail_idx_jumps_ahead",
     [](TestDriver& d) {
       d.set_desc(0, d.alloc(8), 8, 0);
       d.set_avail_idx(1 + 9);  // 9 new entries in a queue of 8
     }},
    {"avail_idx_goes_backwards",
     [](TestDriver& d) {
       d.set_desc(0, d.alloc(8), 8, 0);
       d.set_avail_idx(65535);
     }},
};

INSTANTIATE_TEST_SUITE_P(Virtqueue, MalformedTest, ::testing::ValuesIn(kMalformed),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_P(MalformedTest, BreaksTheQueueAndNeverTouchesGuestMemoryAgain) {
  const MalformedCase& mc = GetParam();
  TestDriver d(mc.size, /*event_idx=*/true, mc.indirect);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);

  // One good chain first, left in flight.
  d.set_desc(6, d.alloc(8), 8, kDescFWrite);
  d.make_available(6);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);

  mc.corrupt(d);
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
  EXPECT_TRUE(q.broken());
  EXPECT_TRUE(c.readable.empty() && c.writable.empty()) << "no partial chain";
  EXPECT_EQ(q.last_avail_idx(), 1) << "the bad entry is not consumed";

  // From now on any access to the guest's RAM would fault.
  uint8_t* ram = d.host(kGuestBase);
  ASSERT_EQ(::mprotect(ram, kRamSize, PROT_NONE), 0);
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
  EXPECT_FALSE(q.push(6, 8));
  q.publish();
  EXPECT_FALSE(q.should_notify());
  EXPECT_FALSE(q.set_notification(true));
  EXPECT_FALSE(q.set_notification(false));
  ASSERT_EQ(::mprotect(ram, kRamSize, PROT_READ | PROT_WRITE), 0);

  // start() is the reset: a clean ring works again.
  d.config.last_avail_idx = d.used_idx();
  d.set_avail_idx(d.used_idx());
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_FALSE(q.broken());
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);
}

TEST_F(VirtqueueTest, HeadAlreadyInFlightBreaksTheQueue) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  d.set_desc(1, d.alloc(8), 8, 0);
  d.make_available(1);
  d.make_available(1);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
}

TEST_F(VirtqueueTest, ChainOfExactlyQueueSizeIsFine) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  for (uint16_t i = 0; i < 4; ++i) {
    d.set_desc(i, d.alloc(8), 8, i < 3 ? kDescFNext : kDescFWrite, uint16_t(i + 1));
  }
  d.make_available(0);
  const uint64_t t = d.indirect_table(4);
  for (uint16_t i = 0; i < 4; ++i) {
    d.set_indirect(t, i, d.alloc(8), 8, i < 3 ? kDescFNext : 0, uint16_t(i + 1));
  }
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.readable.size(), 3u);
  ASSERT_TRUE(q.push(0, 0));
  d.set_desc(0, t, 4 * 16, kDescFIndirect);
  d.make_available(0);
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.readable.size(), 4u);
}

TEST_F(VirtqueueTest, ChainLongerThan4GiBBreaksTheQueue) {
  TestDriver d(4);
  // 2.25 GiB of sparse memory (never touched), described twice.
  const uint64_t big = 0x90000000, gpa = 0x100000000;
  const int fd = ::memfd_create("big", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, off_t(big)), 0);
  ASSERT_EQ(d.mem.add_region(fd, gpa, big, kUserBase + (1ull << 36), 0), 0);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  d.set_desc(0, gpa, uint32_t(big), kDescFNext, 1);
  d.set_desc(1, gpa, uint32_t(big), kDescFWrite);
  d.make_available(0);
  DescriptorChain c;
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
}

// --- Set-up. -------------------------------------------------------------

TEST_F(VirtqueueTest, StartChecksSizeAndRings) {
  TestDriver d(8);
  SplitVirtqueue q;
  for (uint32_t bad : {0u, 3u, 12u, 65536u}) {
    VringConfig cfg = d.config;
    cfg.size = bad;
    EXPECT_EQ(q.start(d.mem, cfg), EINVAL) << bad;
    EXPECT_FALSE(q.running());
  }
  VringConfig cfg = d.config;
  cfg.desc_uva = kUserBase + kRamSize - 64;  // 8 descriptors do not fit
  EXPECT_EQ(q.start(d.mem, cfg), EFAULT);
  cfg = d.config;
  cfg.used_uva = kUserBase + kRamSize - 4 - 8 * 8;  // fits without avail_event only
  EXPECT_EQ(q.start(d.mem, cfg), 0);
  cfg.event_idx = true;
  EXPECT_EQ(q.start(d.mem, cfg), EFAULT);
  cfg = d.config;
  cfg.avail_uva = kGuestBase + kAvailOff;  // a GPA where a user address belongs
  EXPECT_EQ(q.start(d.mem, cfg), EFAULT);
  cfg = d.config;
  cfg.desc_uva += 8;
  EXPECT_EQ(q.start(d.mem, cfg), EINVAL) << "descriptor table must be 16-aligned";
  cfg = d.config;
  cfg.used_uva += 2;
  EXPECT_EQ(q.start(d.mem, cfg), EINVAL) << "used ring must be 4-aligned";
  cfg = d.config;
  cfg.avail_uva += 1;
  EXPECT_EQ(q.start(d.mem, cfg), EINVAL) << "avail ring must be 2-aligned";
  EXPECT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_TRUE(q.running());
  q.stop();
  EXPECT_FALSE(q.running());
  DescriptorChain c;
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);
  cfg = d.config;
  cfg.size = kMaxQueueSize;
  cfg.desc_uva = kUserBase + kDataOff;  // 512 KiB of descriptors
  cfg.avail_uva = kUserBase + kAvailOff;
  cfg.used_uva = kUserBase;
  EXPECT_EQ(q.start(d.mem, cfg), 0) << "the largest queue size";
}

TEST_F(VirtqueueTest, RemapFollowsANewMemoryTable) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  d.set_desc(0, d.alloc(8), 8, 0);
  d.make_available(0);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);

  // A new table: other memory at the same addresses.
  GuestMemory other;
  const int fd = ::memfd_create("other", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, kRamSize), 0);
  ASSERT_EQ(other.add_region(fd, kGuestBase, kRamSize, kUserBase, 0), 0);
  ASSERT_EQ(q.remap(other), 0);
  EXPECT_EQ(q.inflight(), 1u) << "state kept";
  EXPECT_EQ(q.last_avail_idx(), 1);
  EXPECT_TRUE(q.push(0, 4));
  q.publish();
  EXPECT_EQ(d.used_idx(), 0) << "written to the new table's memory";

  GuestMemory empty;
  EXPECT_EQ(q.remap(empty), EFAULT);
  EXPECT_FALSE(q.running());
}

// --- Notifications. ------------------------------------------------------

TEST_F(VirtqueueTest, NoInterruptFlagWithoutEventIdx) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  auto round_trip = [&] {
    d.set_desc(0, d.alloc(8), 8, 0);
    d.make_available(0);
    ASSERT_EQ(q.pop(&c), PopResult::kChain);
    ASSERT_TRUE(q.push(0, 0));
    q.publish();
  };
  round_trip();
  EXPECT_TRUE(q.should_notify());
  EXPECT_FALSE(q.should_notify()) << "nothing new since";
  round_trip();
  d.set_avail_flags(kAvailFNoInterrupt);
  EXPECT_FALSE(q.should_notify());
  round_trip();
  d.set_avail_flags(0);
  EXPECT_TRUE(q.should_notify());
}

TEST_F(VirtqueueTest, UsedEventDecidesWithEventIdx) {
  TestDriver d(8, /*event_idx=*/true);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  auto complete = [&](int n) {
    for (int i = 0; i < n; ++i) {
      d.set_desc(0, d.alloc(8), 8, 0);
      d.make_available(0);
      ASSERT_EQ(q.pop(&c), PopResult::kChain);
      ASSERT_TRUE(q.push(0, 0));
    }
    q.publish();
  };
  d.set_avail_flags(kAvailFNoInterrupt);  // MUST be ignored with EVENT_IDX
  d.set_used_event(0);
  complete(1);  // used idx 0 -> 1 passes used_event 0
  EXPECT_TRUE(q.should_notify());
  complete(1);  // 1 -> 2: used_event 0 already passed
  EXPECT_FALSE(q.should_notify());
  d.set_used_event(4);
  complete(2);  // 2 -> 4: entry 4 not written yet
  EXPECT_FALSE(q.should_notify());
  complete(1);  // 4 -> 5: entry 4 written
  EXPECT_TRUE(q.should_notify());
  d.set_used_event(6);
  complete(3);  // 5 -> 8 in one batch passes 6
  EXPECT_TRUE(q.should_notify());
  EXPECT_FALSE(q.should_notify()) << "nothing new since";
}

TEST_F(VirtqueueTest, UsedEventAcrossWrap) {
  TestDriver d(4, /*event_idx=*/true);
  // Used idx starts where the ring says (65534, after a reconnect).
  reinterpret_cast<uint16_t*>(d.host(kGuestBase + kUsedOff))[1] = 65534;
  d.set_avail_idx(65534);
  d.config.last_avail_idx = 65534;
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_EQ(q.used_idx(), 65534);
  DescriptorChain c;
  for (int i = 0; i < 3; ++i) {
    d.set_desc(uint16_t(i), d.alloc(8), 8, 0);
    d.make_available(uint16_t(i));
    ASSERT_EQ(q.pop(&c), PopResult::kChain);
    ASSERT_TRUE(q.push(c.head, 0));
  }
  d.set_used_event(65535);
  q.publish();  // 65534 -> 1
  EXPECT_TRUE(q.should_notify()) << "first notification is always sent";
  d.set_desc(0, d.alloc(8), 8, 0);
  d.make_available(0);
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  ASSERT_TRUE(q.push(0, 0));
  d.set_used_event(0);
  q.publish();  // 1 -> 2: 0 already passed
  EXPECT_FALSE(q.should_notify());
}

TEST_F(VirtqueueTest, KickSuppressionWithoutEventIdx) {
  TestDriver d(4);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_EQ(d.used_flags(), 0);
  EXPECT_FALSE(q.set_notification(false));
  EXPECT_EQ(d.used_flags(), kUsedFNoNotify);
  EXPECT_FALSE(q.set_notification(true)) << "nothing arrived";
  EXPECT_EQ(d.used_flags(), 0);
  q.set_notification(false);
  d.set_desc(0, d.alloc(8), 8, 0);
  d.make_available(0);
  EXPECT_TRUE(q.set_notification(true)) << "a buffer arrived while kicks were off";
}

TEST_F(VirtqueueTest, AvailEventWithEventIdx) {
  TestDriver d(4, /*event_idx=*/true);
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_EQ(d.avail_event(), 0);
  d.set_desc(0, d.alloc(8), 8, 0);
  d.make_available(0);
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(d.avail_event(), 1) << "kick when entry 1 is made available";
  EXPECT_EQ(d.used_flags(), 0) << "flags stay 0 with EVENT_IDX";
  q.set_notification(false);
  ASSERT_TRUE(q.push(0, 0));
  d.make_available(0);
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(d.avail_event(), 1) << "polling: no longer moved";
  EXPECT_EQ(d.used_flags(), 0);
  EXPECT_FALSE(q.set_notification(true));
  EXPECT_EQ(d.avail_event(), 2);
  ASSERT_TRUE(q.push(0, 0));
  q.set_notification(false);
  d.make_available(0);
  EXPECT_TRUE(q.set_notification(true));
}

}  // namespace
}  // namespace dpfs::virtio
