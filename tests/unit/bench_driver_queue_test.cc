// dpfs-bench's driver side of the split ring (tools/dpfs_bench/) against
// dpfs's device side (src/virtio/virtqueue.h) in one process: what the driver
// makes available the device pops with the same buffers, what the device
// returns the driver reads back, descriptors are recycled, and the
// notification flags mean what each side thinks they mean. Also the
// latency histogram's quantiles.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>

#include "../../tools/dpfs_bench/driver_queue.h"
#include "../../tools/dpfs_bench/histogram.h"
#include "../../tools/dpfs_bench/shared_memory.h"
#include "virtio/guest_memory.h"
#include "virtio/virtqueue.h"

namespace dpfs::bench {
namespace {

class DriverQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(device_mem_.add_region(::dup(mem_.fd()), SharedMemory::kGuestBase, mem_.size(),
                                     mem_.user_addr(mem_.base()), 0),
              0);
    virtio::VringConfig c;
    c.size = queue_.size();
    c.desc_uva = queue_.desc_user_addr();
    c.avail_uva = queue_.avail_user_addr();
    c.used_uva = queue_.used_user_addr();
    ASSERT_EQ(device_.start(device_mem_, c), 0);
  }

  SharedMemory mem_{1u << 20};
  DriverQueue queue_{mem_, 1, 8};
  virtio::GuestMemory device_mem_;
  virtio::SplitVirtqueue device_;
};

TEST_F(DriverQueueTest, ChainsRoundTrip) {
  uint8_t* request = mem_.allocate(64);
  uint8_t* payload = mem_.allocate(4096);
  uint8_t* reply = mem_.allocate(128);
  std::memcpy(request, "request", 8);
  const Buffer readable[] = {{request, 64}, {payload, 4096}};
  const Buffer writable[] = {{reply, 128}};
  const int head = queue_.add(readable, writable);
  ASSERT_GE(head, 0);
  EXPECT_EQ(queue_.free_descriptors(), 5u);

  virtio::DescriptorChain chain;
  EXPECT_EQ(device_.pop(&chain), virtio::PopResult::kEmpty) << "visible before publish()";
  queue_.publish();
  ASSERT_EQ(device_.pop(&chain), virtio::PopResult::kChain);
  EXPECT_EQ(chain.head, head);
  ASSERT_EQ(chain.readable.size(), 2u);
  ASSERT_EQ(chain.writable.size(), 1u);
  // The device maps the memfd on its own: same bytes, other addresses.
  EXPECT_STREQ(static_cast<const char*>(chain.readable[0].iov_base), "request");
  EXPECT_EQ(chain.readable[1].iov_len, 4096u);
  std::memcpy(chain.writable[0].iov_base, "reply", 6);
  EXPECT_STREQ(reinterpret_cast<const char*>(reply), "reply");
  EXPECT_EQ(chain.writable_len, 128u);

  uint16_t used_head;
  uint32_t len;
  EXPECT_FALSE(queue_.next_used(&used_head, &len));
  ASSERT_TRUE(device_.push(chain.head, 100));
  EXPECT_FALSE(queue_.next_used(&used_head, &len)) << "visible before the device publishes";
  device_.publish();
  ASSERT_TRUE(queue_.next_used(&used_head, &len));
  EXPECT_EQ(used_head, head);
  EXPECT_EQ(len, 100u);
  EXPECT_EQ(queue_.free_descriptors(), 8u);
}

TEST_F(DriverQueueTest, RingWrapsAndRunsOutOfDescriptors) {
  uint8_t* buf = mem_.allocate(64);
  const Buffer r[] = {{buf, 16}};
  const Buffer w[] = {{buf + 16, 48}};
  virtio::DescriptorChain chain;
  // 100 rounds of 4 two-descriptor chains on an 8-entry ring: the indexes
  // wrap many times, and a fifth chain finds no descriptors.
  for (int round = 0; round < 100; ++round) {
    for (int i = 0; i < 4; ++i) ASSERT_GE(queue_.add(r, w), 0);
    ASSERT_EQ(queue_.add(r, w), -1);
    queue_.publish();
    for (int i = 0; i < 4; ++i) {
      ASSERT_EQ(device_.pop(&chain), virtio::PopResult::kChain) << "round " << round;
      ASSERT_TRUE(device_.push(chain.head, 0));
    }
    device_.publish();
    uint16_t head;
    uint32_t len;
    for (int i = 0; i < 4; ++i) ASSERT_TRUE(queue_.next_used(&head, &len));
    ASSERT_FALSE(queue_.next_used(&head, &len));
  }
}

TEST_F(DriverQueueTest, NotificationFlags) {
  uint8_t* buf = mem_.allocate(64);
  const Buffer r[] = {{buf, 16}};
  ASSERT_GE(queue_.add(r, {}), 0);
  queue_.publish();
  EXPECT_TRUE(queue_.kick());
  device_.set_notification(false);
  EXPECT_FALSE(queue_.kick()) << "the device asked not to be kicked";
  device_.set_notification(true);
  EXPECT_TRUE(queue_.kick());

  virtio::DescriptorChain chain;
  ASSERT_EQ(device_.pop(&chain), virtio::PopResult::kChain);
  ASSERT_TRUE(device_.push(chain.head, 0));
  device_.publish();
  queue_.set_interrupts(false);
  EXPECT_FALSE(device_.should_notify()) << "the driver asked for no calls";
}

TEST(HistogramTest, Quantiles) {
  Histogram h;
  for (uint64_t v = 1; v <= 10000; ++v) h.record(v * 1000);  // 1 µs .. 10 ms
  EXPECT_EQ(h.count(), 10000u);
  EXPECT_NEAR(h.mean(), 5000500.0, 1.0);
  EXPECT_NEAR(h.quantile(0.5), 5000000.0, 5000000.0 * 0.016);
  EXPECT_NEAR(h.quantile(0.99), 9900000.0, 9900000.0 * 0.016);
  EXPECT_NEAR(h.quantile(0.999), 9990000.0, 9990000.0 * 0.016);
  Histogram small;
  small.record(7);
  EXPECT_EQ(small.quantile(0.5), 7.0) << "exact below 64 ns";
  h.merge(small);
  EXPECT_EQ(h.count(), 10001u);
  h.clear();
  EXPECT_EQ(h.quantile(0.99), 0.0);
}

}  // namespace
}  // namespace dpfs::bench
