// The packed ring's own behaviour: wrap counters, vring bases that carry
// them, event suppression structures, sizes that are not a power of 2 and
// the free-slot limit on chains. What it shares with the split ring is tested
// over both layouts in virtqueue_test.cc.
#include "virtio/packed_virtqueue.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "virtqueue_drivers.h"

namespace dpfs::virtio {
namespace {

using drivers::Buf;
using drivers::kGuestBase;
using drivers::kRamSize;
using drivers::kUserBase;
using drivers::PackedDriver;

class PackedVirtqueueTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
};

TEST_F(PackedVirtqueueTest, IndexesCarryTheWrapCounter) {
  PackedDriver d(8);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(64);
  d.add_as(6, {{b, 40, 0}, {b, 60, 0}, {b, 64, kDescFWrite}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, 6);
  EXPECT_EQ(q.last_avail_idx(), 0x8000 | 3);
  ASSERT_TRUE(q.push(6, 77));
  EXPECT_EQ(q.used_idx(), 0x8000) << "the published used index: nothing yet";
  q.publish();
  EXPECT_EQ(q.used_idx(), 0x8000 | 3);
  EXPECT_EQ(q.vring_base(), (0x8003u << 16) | 0x8003u);
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
    d.add_as(uint16_t(round % 4), bufs);
    ASSERT_EQ(q.pop(&c), PopResult::kChain) << round;
    EXPECT_EQ(c.head, round % 4);
    EXPECT_EQ(c.readable.size(), size_t(n - 1));
    EXPECT_EQ(q.pop(&c), PopResult::kEmpty) << round;
    ASSERT_TRUE(q.push(uint16_t(round % 4), round));
    q.publish();
    ASSERT_TRUE(d.take_used(&id, &len)) << round;
    EXPECT_EQ(id, round % 4);
    EXPECT_EQ(len, uint32_t(round));
  }
  // 10 chains of 2,2,3,... = 23 descriptors: slot 3, lap 6 (wrap counter 1
  // after 5 flips from 1 -> 0).
  EXPECT_EQ(q.last_avail_idx(), 23 % 4 | ((23 / 4) % 2 == 0 ? 0x8000 : 0));
  EXPECT_EQ(q.used_idx(), q.last_avail_idx());
}

TEST_F(PackedVirtqueueTest, ChainOfExactlyQueueSizeFlipsTheWrapCounter) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add_as(0, {{b, 16, 0}, {b, 16, 0}, {b, 16, 0}, {b, 16, kDescFWrite}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  EXPECT_EQ(q.last_avail_idx(), 0) << "a whole lap: slot 0, wrap counter flipped";
  ASSERT_TRUE(q.push(0, 0));
  q.publish();
  EXPECT_EQ(q.used_idx(), 0);
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

TEST_F(PackedVirtqueueTest, EventSuppression) {
  PackedDriver d(8, /*event_idx=*/true);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_EQ(d.device_event()[1], kRingEventFlagsEnable);
  EXPECT_FALSE(q.set_notification(false));
  EXPECT_EQ(d.device_event()[1], kRingEventFlagsDisable);
  const uint64_t b = d.alloc(16);
  d.add_as(0, {{b, 16, kDescFWrite}});
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
    d.add_as(id, {{b, 16, kDescFWrite}});
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
    d.add_as(id, {{b, 16, kDescFWrite}});
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
    d.add_as(id, {{b, 16, kDescFWrite}});
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
  bad.last_used_idx = 0x8000 | 8;
  EXPECT_EQ(q.start(d.mem, bad), EINVAL);
  bad = d.config;
  bad.desc_uva += 8;
  EXPECT_EQ(q.start(d.mem, bad), EINVAL);
  bad = d.config;
  bad.avail_uva += 2;
  EXPECT_EQ(q.start(d.mem, bad), EINVAL) << "event suppression must be 4-aligned";
  bad = d.config;
  bad.used_uva = kUserBase + kRamSize - 2;
  EXPECT_EQ(q.start(d.mem, bad), EFAULT);
  bad = d.config;
  bad.desc_uva = kGuestBase;  // a GPA where a user address belongs
  EXPECT_EQ(q.start(d.mem, bad), EFAULT);
  EXPECT_FALSE(q.running());
  bad = d.config;
  bad.size = 6;  // packed rings need not be a power of 2
  EXPECT_EQ(q.start(d.mem, bad), 0);
  EXPECT_TRUE(q.running());
}

TEST_F(PackedVirtqueueTest, ChainBeyondTheFreeSlotsBreaksTheQueue) {
  PackedDriver d(4);
  PackedVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  const uint64_t b = d.alloc(16);
  d.add_as(0, {{b, 16, 0}, {b, 16, 0}, {b, 16, 0}});
  DescriptorChain c;
  ASSERT_EQ(q.pop(&c), PopResult::kChain);
  // Slot 3 chained onto slot 0, which the first chain still holds.
  d.add_as(1, {{b, 16, 0}, {b, 16, 0}});
  EXPECT_EQ(q.pop(&c), PopResult::kBroken);
}

}  // namespace
}  // namespace dpfs::virtio
