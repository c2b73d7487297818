#include "virtio/packed_virtqueue.h"

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

constexpr uint64_t kGuestBase = 0x40000000;
constexpr uint64_t kUserBase = 0x7f1200000000;
constexpr uint64_t kRamSize = 1 << 20;
constexpr uint64_t kDescOff = 0x0;
constexpr uint64_t kDriverEventOff = 0x40000;
constexpr uint64_t kDeviceEventOff = 0x60000;
constexpr uint64_t kDataOff = 0x80000;

struct Buf {
  uint64_t addr;
  uint32_t len;
  uint16_t flags;  // kDescFWrite, kDescFIndirect
};

// A tiny packed-ring driver over a memfd-backed guest, laid out as Linux's
// virtqueue_add_packed does: descriptors of a chain in consecutive slots,
// each with AVAIL/USED for its slot's lap, the head's flags written last.
class PackedDriver {
 public:
  explicit PackedDriver(uint32_t size, bool event_idx = false, bool indirect = true) : size_(size) {
    const int fd = ::memfd_create("packed_virtqueue_test", MFD_CLOEXEC);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::ftruncate(fd, kRamSize), 0);
    EXPECT_EQ(mem.add_region(fd, kGuestBase, kRamSize, kUserBase, 0), 0);
    ram_ = static_cast<uint8_t*>(mem.translate_gpa(kGuestBase, kRamSize));
    config.queue_index = 5;
    config.size = size;
    config.desc_uva = kUserBase + kDescOff;
    config.avail_uva = kUserBase + kDriverEventOff;
    config.used_uva = kUserBase + kDeviceEventOff;
    config.last_avail_idx = 0x8000;
    config.last_used_idx = 0x8000;
    config.event_idx = event_idx;
    config.indirect_desc = indirect;
  }

  uint8_t* host(uint64_t gpa) { return ram_ + (gpa - kGuestBase); }
  uint64_t alloc(uint64_t len) {
    const uint64_t gpa = kGuestBase + kDataOff + data_used_;
    data_used_ += (len + 15) & ~uint64_t(15);
    EXPECT_LE(kDataOff + data_used_, kRamSize);
    return gpa;
  }
  uint8_t* slot(uint16_t i) { return host(kGuestBase + kDescOff) + 16 * size_t(i); }
  static void write_desc(uint8_t* at, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags) {
    std::memcpy(at, &addr, 8);
    std::memcpy(at + 8, &len, 4);
    std::memcpy(at + 12, &id, 2);
    std::memcpy(at + 14, &flags, 2);
  }

  // Makes `bufs` available as one chain with buffer id `id`; returns the
  // slot of its first descriptor.
  uint16_t add(uint16_t id, const std::vector<Buf>& bufs) {
    const uint16_t first = next_;
    uint16_t head_flags = 0;
    for (size_t k = 0; k < bufs.size(); ++k) {
      uint16_t f = bufs[k].flags;
      if (k + 1 < bufs.size()) f |= kDescFNext;
      f |= wrap_ ? kPackedDescFAvail : kPackedDescFUsed;
      if (k == 0) {
        head_flags = f;
        write_desc(slot(next_), bufs[k].addr, bufs[k].len, id, 0);
        // The head's flags must not look available yet: on a fresh lap they
        // hold last lap's value (used), which the device skips.
        uint16_t stale = wrap_ ? 0 : (kPackedDescFAvail | kPackedDescFUsed);
        std::memcpy(slot(next_) + 14, &stale, 2);
      } else {
        write_desc(slot(next_), bufs[k].addr, bufs[k].len, id, f);
      }
      if (++next_ == size_) {
        next_ = 0;
        wrap_ = !wrap_;
      }
    }
    __atomic_store_n(reinterpret_cast<uint16_t*>(slot(first) + 14), head_flags, __ATOMIC_RELEASE);
    return first;
  }

  // The used descriptor at the driver's next used slot, if the device
  // published one: {id, len}, advancing by `ndesc` slots.
  bool take_used(uint16_t* id, uint32_t* len, uint16_t ndesc) {
    uint16_t f = __atomic_load_n(reinterpret_cast<uint16_t*>(slot(used_) + 14), __ATOMIC_ACQUIRE);
    const bool avail = f & kPackedDescFAvail, used = f & kPackedDescFUsed;
    if (avail != used_wrap_ || used != used_wrap_) return false;
    std::memcpy(len, slot(used_) + 8, 4);
    std::memcpy(id, slot(used_) + 12, 2);
    used_ += ndesc;
    if (used_ >= size_) {
      used_ -= size_;
      used_wrap_ = !used_wrap_;
    }
    return true;
  }

  uint16_t* driver_event() {
    return reinterpret_cast<uint16_t*>(host(kGuestBase + kDriverEventOff));
  }
  uint16_t* device_event() {
    return reinterpret_cast<uint16_t*>(host(kGuestBase + kDeviceEventOff));
  }

  GuestMemory mem;
  VringConfig config;

 private:
  uint32_t size_;
  uint8_t* ram_ = nullptr;
  uint64_t data_used_ = 0;
  uint16_t next_ = 0;
  bool wrap_ = true;
  uint16_t used_ = 0;
  bool used_wrap_ = true;
};

class PackedVirtqueueTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
};

TEST_F(PackedVirtqueueTest, PopsAChainAndPushesItBack) {
  PackedDriver d(8);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);

  const uint64_t hdr = d.alloc(40), arg = d.alloc(100), out = d.alloc(4096);
  d.add(6, {{hdr, 40, 0}, {arg, 100, 0}, {out, 4096, kDescFWrite}});
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, 6);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d.host(hdr));
  EXPECT_EQ(c.readable[1].iov_base, d.host(arg));
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d.host(out));
  EXPECT_EQ(c.readable_len, 140u);
  EXPECT_EQ(c.writable_len, 4096u);
  EXPECT_EQ(q.inflight(), 1u);
  EXPECT_EQ(q.last_avail_idx(), 0x8000 | 3);
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);

  EXPECT_FALSE(q.push(5, 1));  // not in flight
  ASSERT_TRUE(q.push(6, 77));
  uint16_t id;
  uint32_t len;
  EXPECT_FALSE(d.take_used(&id, &len, 3)) << "invisible until publish";
  q.publish();
  ASSERT_TRUE(d.take_used(&id, &len, 3));
  EXPECT_EQ(id, 6);
  EXPECT_EQ(len, 77u);
  EXPECT_EQ(q.inflight(), 0u);
  EXPECT_EQ(q.used_idx(), 0x8000 | 3);
  EXPECT_EQ(q.vring_base(), (0x8003u << 16) | 0x8003u);
  EXPECT_FALSE(q.push(6, 1));  // twice
}

TEST_F(PackedVirtqueueTest, WrapsTheRingAndTheWrapCounters) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  const uint64_t b = d.alloc(64);
  // 2-descriptor chains in a ring of 4: every other one crosses nothing,
  // then a 3-descriptor chain crosses the end of the ring.
  uint16_t id;
  uint32_t len;
  for (int round = 0; round < 10; ++round) {
    const uint16_t n = (round % 3 == 2) ? 3 : 2;
    std::vector<Buf> bufs(n, Buf{b, 8, 0});
    bufs.back().flags = kDescFWrite;
    d.add(uint16_t(round % 4), bufs);
    ASSERT_EQ(q.pop(&c), PopResult::kChain) << round;
    EXPECT_EQ(c.head, round % 4);
    EXPECT_EQ(c.readable.size(), size_t(n - 1));
    EXPECT_EQ(q.pop(&c), PopResult::kEmpty) << round;
    ASSERT_TRUE(q.push(uint16_t(round % 4), round));
    q.publish();
    ASSERT_TRUE(d.take_used(&id, &len, n)) << round;
    EXPECT_EQ(id, round % 4);
    EXPECT_EQ(len, uint32_t(round));
  }
  // 10 chains of 2,2,3,... = 23 descriptors: slot 3, lap 6 (wrap counter 1
  // after 5 flips from 1 -> 0).
  EXPECT_EQ(q.last_avail_idx(), 23 % 4 | ((23 / 4) % 2 == 0 ? 0x8000 : 0));
  EXPECT_EQ(q.used_idx(), q.last_avail_idx());
}

TEST_F(PackedVirtqueueTest, StartsFromAVringBase) {
  PackedDriver d(4);
  d.config.last_avail_idx = 2;  // slot 2, wrap counter 0
  d.config.last_used_idx = 2;
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  DescriptorChain c;
  // Slot 2 in lap with wrap counter 0: available means AVAIL=0, USED=1.
  const uint64_t b = d.alloc(16);
  PackedDriver::write_desc(d.slot(2), b, 16, 1, kPackedDescFUsed | kDescFWrite);
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, 1);
  EXPECT_EQ(q.last_avail_idx(), 3);
  // A descriptor marked for the other lap is not available.
  PackedDriver::write_desc(d.slot(3), b, 16, 2, kPackedDescFAvail);
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);
  ASSERT_TRUE(q.push(1, 5));
  q.publish();
  uint16_t f;
  std::memcpy(&f, d.slot(2) + 14, 2);
  EXPECT_EQ(f, 0) << "used in a lap with wrap counter 0: AVAIL=USED=0";
  EXPECT_EQ(q.vring_base(), (3u << 16) | 3u);
}

TEST_F(PackedVirtqueueTest, IndirectTable) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t in = d.alloc(32), out1 = d.alloc(32), out2 = d.alloc(32);
  const uint64_t t = d.alloc(48);
  PackedDriver::write_desc(d.host(t), in, 32, 0, 0);
  PackedDriver::write_desc(d.host(t) + 16, out1, 32, 0, kDescFWrite);
  PackedDriver::write_desc(d.host(t) + 32, out2, 16, 0, kDescFWrite);
  d.add(3, {{t, 48, kDescFIndirect}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, 3);
  ASSERT_EQ(c.readable.size(), 1u);
  EXPECT_EQ(c.readable[0].iov_base, d.host(in));
  ASSERT_EQ(c.writable.size(), 2u);
  EXPECT_EQ(c.writable_len, 48u);
  EXPECT_EQ(q.last_avail_idx(), 0x8000 | 1) << "an indirect chain takes one ring slot";
  ASSERT_TRUE(q.push(3, 9));
  q.publish();
  uint16_t id;
  uint32_t len;
  ASSERT_TRUE(d.take_used(&id, &len, 1));
  EXPECT_EQ(id, 3);
}

TEST_F(PackedVirtqueueTest, OutOfOrderCompletionsAndBatchedPublish) {
  PackedDriver d(8);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add(0, {{b, 16, 0}, {b, 16, kDescFWrite}});
  d.add(1, {{b, 16, kDescFWrite}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  ASSERT_TRUE(q.push(1, 11));
  ASSERT_TRUE(q.push(0, 22));
  uint16_t id;
  uint32_t len;
  EXPECT_FALSE(d.take_used(&id, &len, 1));
  q.publish();
  // Used descriptors go in completion order; each skips its chain's length.
  ASSERT_TRUE(d.take_used(&id, &len, 1));
  EXPECT_EQ(id, 1);
  EXPECT_EQ(len, 11u);
  ASSERT_TRUE(d.take_used(&id, &len, 2));
  EXPECT_EQ(id, 0);
  EXPECT_EQ(len, 22u);
  EXPECT_EQ(q.used_idx(), 0x8000 | 3);
}

TEST_F(PackedVirtqueueTest, EventSuppression) {
  PackedDriver d(8, /*event_idx=*/true);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_EQ(d.device_event()[1], kRingEventFlagsEnable);
  EXPECT_FALSE(q.set_notification(false));
  EXPECT_EQ(d.device_event()[1], kRingEventFlagsDisable);
  const uint64_t b = d.alloc(16);
  d.add(0, {{b, 16, kDescFWrite}});
  EXPECT_TRUE(q.set_notification(true)) << "a buffer came while kicks were off";
  EXPECT_EQ(d.device_event()[1], kRingEventFlagsEnable);

  DescriptorChain c;
  d.driver_event()[1] = kRingEventFlagsDisable;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  ASSERT_TRUE(q.push(0, 1));
  q.publish();
  EXPECT_FALSE(q.should_notify());
  EXPECT_FALSE(q.should_notify()) << "nothing new";

  d.driver_event()[1] = kRingEventFlagsEnable;
  for (uint16_t id = 1; id <= 2; ++id) {
    d.add(id, {{b, 16, kDescFWrite}});
    ASSERT_EQ(q.pop(&c), PopResult::kChain);
    ASSERT_TRUE(q.push(id, 1));
    q.publish();
    EXPECT_TRUE(q.should_notify());
  }

  // DESC: notify once the used index passes off_wrap (slot 5, wrap 1).
  d.driver_event()[0] = 0x8000 | 5;
  d.driver_event()[1] = kRingEventFlagsDesc;
  std::vector<bool> got;
  for (uint16_t id = 3; id <= 7; ++id) {
    d.add(id, {{b, 16, kDescFWrite}});
    ASSERT_EQ(q.pop(&c), PopResult::kChain);
    ASSERT_TRUE(q.push(id, 1));
    q.publish();
    got.push_back(q.should_notify());  // used idx now id + 1
  }
  EXPECT_EQ(got, (std::vector<bool>{false, false, true, false, false}));
  // Across the wrap: event at slot 1 of the next lap (wrap 0).
  d.driver_event()[0] = 1;
  got.clear();
  for (uint16_t id = 0; id <= 2; ++id) {
    d.add(id, {{b, 16, kDescFWrite}});
    ASSERT_EQ(q.pop(&c), PopResult::kChain);
    ASSERT_TRUE(q.push(id, 1));
    q.publish();
    got.push_back(q.should_notify());  // used idx 0, 1, 2 of lap 2
  }
  EXPECT_EQ(got, (std::vector<bool>{false, true, false}));
}

TEST_F(PackedVirtqueueTest, StartChecksSizeAndRings) {
  PackedDriver d(8);
  PackedVirtqueue q;
  VringConfig bad = d.config;
  bad.size = 0;
  EXPECT_EQ(q.start(d.mem, bad), EINVAL);
  bad.size = 32769;
  EXPECT_EQ(q.start(d.mem, bad), EINVAL);
  bad = d.config;
  bad.last_avail_idx = 8;  // beyond the ring
  EXPECT_EQ(q.start(d.mem, bad), EINVAL);
  bad = d.config;
  bad.desc_uva += 8;
  EXPECT_EQ(q.start(d.mem, bad), EINVAL);
  bad = d.config;
  bad.used_uva = kUserBase + kRamSize - 2;
  EXPECT_EQ(q.start(d.mem, bad), EFAULT);
  EXPECT_FALSE(q.running());
  bad = d.config;
  bad.size = 6;  // packed rings need not be a power of 2
  EXPECT_EQ(q.start(d.mem, bad), 0);
  EXPECT_TRUE(q.running());
}

struct Malformed {
  const char* name;
  bool indirect_negotiated;
  // Writes the bad chain into the driver (ring of 4).
  void (*make)(PackedDriver&);
};

void mk_id_out_of_range(PackedDriver& d) { d.add(4, {{d.alloc(16), 16, 0}}); }
void mk_unmapped(PackedDriver& d) { d.add(0, {{kGuestBase + kRamSize, 16, 0}}); }
void mk_read_after_write(PackedDriver& d) {
  const uint64_t b = d.alloc(16);
  d.add(0, {{b, 16, kDescFWrite}, {b, 16, 0}});
}
void mk_too_long(PackedDriver& d) {
  // NEXT on every slot of the ring: the chain never ends within the queue.
  const uint64_t b = d.alloc(16);
  for (uint16_t i = 0; i < 4; ++i) {
    PackedDriver::write_desc(d.slot(i), b, 16, 0, kPackedDescFAvail | kDescFNext);
  }
}
void mk_indirect_not_negotiated(PackedDriver& d) {
  const uint64_t t = d.alloc(16);
  PackedDriver::write_desc(d.host(t), d.alloc(16), 16, 0, 0);
  d.add(0, {{t, 16, kDescFIndirect}});
}
void mk_indirect_in_chain(PackedDriver& d) {
  const uint64_t t = d.alloc(16);
  PackedDriver::write_desc(d.host(t), d.alloc(16), 16, 0, 0);
  d.add(0, {{d.alloc(16), 16, 0}, {t, 16, kDescFIndirect}});
}
void mk_indirect_bad_len(PackedDriver& d) { d.add(0, {{d.alloc(32), 24, kDescFIndirect}}); }
void mk_indirect_empty(PackedDriver& d) { d.add(0, {{d.alloc(32), 0, kDescFIndirect}}); }
void mk_indirect_too_long(PackedDriver& d) { d.add(0, {{d.alloc(80), 80, kDescFIndirect}}); }
void mk_indirect_unmapped(PackedDriver& d) {
  d.add(0, {{kGuestBase + kRamSize - 16, 32, kDescFIndirect}});
}
void mk_indirect_nested(PackedDriver& d) {
  const uint64_t t = d.alloc(16);
  PackedDriver::write_desc(d.host(t), d.alloc(16), 16, 0, kDescFIndirect);
  d.add(0, {{t, 16, kDescFIndirect}});
}
void mk_indirect_next(PackedDriver& d) {
  const uint64_t t = d.alloc(32);
  PackedDriver::write_desc(d.host(t), d.alloc(16), 16, 0, kDescFNext);
  PackedDriver::write_desc(d.host(t) + 16, d.alloc(16), 16, 0, 0);
  d.add(0, {{t, 32, kDescFIndirect}});
}

const Malformed kMalformed[] = {
    {"IdOutOfRange", true, mk_id_out_of_range},
    {"Unmapped", true, mk_unmapped},
    {"ReadableAfterWritable", true, mk_read_after_write},
    {"ChainLongerThanQueue", true, mk_too_long},
    {"IndirectNotNegotiated", false, mk_indirect_not_negotiated},
    {"IndirectInChain", true, mk_indirect_in_chain},
    {"IndirectBadLength", true, mk_indirect_bad_len},
    {"IndirectEmpty", true, mk_indirect_empty},
    {"IndirectLongerThanQueue", true, mk_indirect_too_long},
    {"IndirectNotInMemory", true, mk_indirect_unmapped},
    {"IndirectNested", true, mk_indirect_nested},
    {"IndirectEntryWithNext", true, mk_indirect_next},
};

class PackedMalformedTest : public ::testing::TestWithParam<Malformed> {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
};

INSTANTIATE_TEST_SUITE_P(PackedVirtqueue, PackedMalformedTest, ::testing::ValuesIn(kMalformed),
                         [](const auto& info) { return std::string(info.param.name); });

TEST_P(PackedMalformedTest, BreaksTheQueueAndNeverTouchesGuestMemoryAgain) {
  PackedDriver d(4, false, GetParam().indirect_negotiated);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  GetParam().make(d);
  DescriptorChain c;
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
  EXPECT_TRUE(q.broken());
  EXPECT_TRUE(c.readable.empty() && c.writable.empty());
  EXPECT_EQ(q.inflight(), 0u);
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
  EXPECT_FALSE(q.push(0, 1));
  EXPECT_FALSE(q.set_notification(true));
  EXPECT_FALSE(q.should_notify());
  // start() clears it.
  PackedDriver fresh(4);
  ASSERT_EQ(q.start(fresh.mem, fresh.config), 0);
  EXPECT_TRUE(q.running());
}

TEST_F(PackedVirtqueueTest, IdAlreadyInFlightBreaksTheQueue) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add(2, {{b, 16, 0}});
  d.add(2, {{b, 16, 0}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
}

TEST_F(PackedVirtqueueTest, ChainBeyondTheFreeSlotsBreaksTheQueue) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add(0, {{b, 16, 0}, {b, 16, 0}, {b, 16, 0}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  // Slot 3 chained onto slot 0, which the first chain still holds.
  d.add(1, {{b, 16, 0}, {b, 16, 0}});
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
}

TEST_F(PackedVirtqueueTest, ChainOfExactlyQueueSizeIsFine) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add(0, {{b, 16, 0}, {b, 16, 0}, {b, 16, 0}, {b, 16, kDescFWrite}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(q.last_avail_idx(), 0) << "a whole lap: slot 0, wrap counter flipped";
  ASSERT_TRUE(q.push(0, 0));
  q.publish();
  EXPECT_EQ(q.used_idx(), 0);
}

TEST_F(PackedVirtqueueTest, RemapAndStopKeepIndexes) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add(0, {{b, 16, kDescFWrite}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(q.remap(d.mem), 0);
  EXPECT_EQ(q.inflight(), 1u);
  ASSERT_TRUE(q.push(0, 3));
  q.publish();
  q.stop();
  EXPECT_FALSE(q.running());
  EXPECT_EQ(q.vring_base(), (0x8001u << 16) | 0x8001u);
  EXPECT_EQ(q.pop(&c), PopResult::kEmpty);
}

}  // namespace
}  // namespace dpfs::virtio
