// The Virtqueue interface (virtio/queue.h) over both ring layouts: what the
// split and the packed ring do alike runs as one suite over each
// (VirtqueueTest, MalformedTest); then what is the split ring's own
// (SplitVirtqueueTest). The packed ring's own is in packed_virtqueue_test.cc.
#include "virtio/virtqueue.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>
#include <algorithm>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "virtio/guest_memory.h"
#include "virtio/queue.h"
#include "virtqueue_drivers.h"

namespace dpfs::virtio {
namespace {

using drivers::Buf;
using drivers::kDataOff;
using drivers::kDeviceOff;
using drivers::kGuestBase;
using drivers::kRamSize;
using drivers::kUserBase;
using drivers::RingDriver;
using drivers::SplitDriver;

std::string layout_name(RingLayout layout) {
  return layout == RingLayout::kPacked ? "Packed" : "Split";
}

// A second RAM region right after the first in GPA, elsewhere in ours.
void add_second_region(GuestMemory& mem, uint64_t size) {
  const int fd = ::memfd_create("second", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, off_t(size)), 0);
  ASSERT_EQ(mem.add_region(fd, kGuestBase + kRamSize, size, kUserBase + (1ull << 32), 0), 0);
}

class VirtqueueTest : public ::testing::TestWithParam<RingLayout> {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }

  // A driver and a started queue of the layout under test.
  void start(uint32_t size, bool event_idx = false) {
    d = RingDriver::make(GetParam(), size, event_idx);
    q = make_virtqueue(GetParam());
    ASSERT_EQ(q->layout(), GetParam());
    ASSERT_EQ(q->start(d->mem, d->config), 0);
  }
  // Pops, completes with `len` and publishes one chain of `bufs`.
  void round_trip(const std::vector<Buf>& bufs, uint32_t len = 0) {
    const uint16_t id = d->add(bufs);
    ASSERT_EQ(q->pop(&c), PopResult::kChain);
    ASSERT_EQ(c.head, id);
    ASSERT_TRUE(q->push(id, len));
    q->publish();
    uint16_t used_id;
    uint32_t used_len;
    ASSERT_TRUE(d->take_used(&used_id, &used_len));
    ASSERT_EQ(used_id, id);
    ASSERT_EQ(used_len, len);
  }

  std::unique_ptr<RingDriver> d;
  std::unique_ptr<Virtqueue> q;
  DescriptorChain c;
};

INSTANTIATE_TEST_SUITE_P(Layouts, VirtqueueTest,
                         ::testing::Values(RingLayout::kSplit, RingLayout::kPacked),
                         [](const auto& info) { return layout_name(info.param); });

TEST_P(VirtqueueTest, PopsAChainIntoHostIovecs) {
  start(8);
  EXPECT_EQ(q->pop(&c), PopResult::kEmpty);

  const uint64_t hdr = d->alloc(40), arg = d->alloc(100), out = d->alloc(4096);
  const uint16_t id = d->add({{hdr, 40, 0}, {arg, 100, 0}, {out, 4096, kDescFWrite}});

  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, id);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d->host(hdr));
  EXPECT_EQ(c.readable[0].iov_len, 40u);
  EXPECT_EQ(c.readable[1].iov_base, d->host(arg));
  EXPECT_EQ(c.readable[1].iov_len, 100u);
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d->host(out));
  EXPECT_EQ(c.writable[0].iov_len, 4096u);
  EXPECT_EQ(c.readable_len, 140u);
  EXPECT_EQ(c.writable_len, 4096u);
  EXPECT_EQ(q->inflight(), 1u);
  EXPECT_EQ(q->last_avail_idx(), d->avail_position());
  EXPECT_EQ(q->pop(&c), PopResult::kEmpty);
  EXPECT_TRUE(c.readable.empty()) << "a chain object is cleared before it is filled";
}

TEST_P(VirtqueueTest, PushIsInvisibleUntilPublish) {
  start(8);
  const uint64_t b = d->alloc(64);
  // Chains of 2, 1 and 3 descriptors (a packed used entry skips as many).
  d->add({{b, 16, 0}, {b, 16, kDescFWrite}});
  d->add({{b, 64, kDescFWrite}});
  d->add({{b, 8, 0}, {b, 8, 0}, {b, 8, kDescFWrite}});
  std::vector<uint16_t> ids;
  while (q->pop(&c) == PopResult::kChain) ids.push_back(c.head);
  ASSERT_EQ(ids.size(), 3u);
  EXPECT_EQ(q->inflight(), 3u);

  // Completed out of order, published as one batch.
  EXPECT_TRUE(q->push(ids[2], 10));
  EXPECT_TRUE(q->push(ids[0], 20));
  uint16_t id;
  uint32_t len;
  EXPECT_FALSE(d->take_used(&id, &len)) << "not published yet";
  q->publish();
  ASSERT_TRUE(d->take_used(&id, &len));
  EXPECT_EQ(id, ids[2]) << "used entries go in completion order";
  EXPECT_EQ(len, 10u);
  ASSERT_TRUE(d->take_used(&id, &len));
  EXPECT_EQ(id, ids[0]);
  EXPECT_EQ(len, 20u);
  EXPECT_FALSE(d->take_used(&id, &len));
  EXPECT_EQ(q->inflight(), 1u);

  EXPECT_FALSE(q->push(ids[0], 1)) << "already returned";
  EXPECT_FALSE(q->push(8, 1)) << "out of range";
  uint16_t never = 0;
  while (never == ids[0] || never == ids[1] || never == ids[2]) ++never;
  EXPECT_FALSE(q->push(never, 1)) << "never popped";
  EXPECT_TRUE(q->push(ids[1], 30));
  q->publish();
  ASSERT_TRUE(d->take_used(&id, &len));
  EXPECT_EQ(id, ids[1]);
  EXPECT_EQ(len, 30u);
  EXPECT_FALSE(q->push(ids[1], 1)) << "twice";
  EXPECT_EQ(q->inflight(), 0u);
  EXPECT_EQ(q->used_idx(), d->used_position());
  EXPECT_EQ(q->last_avail_idx(), d->avail_position());
  EXPECT_EQ(q->vring_base(), d->vring_base());
}

TEST_P(VirtqueueTest, WrapsAroundTheRing) {
  start(4);
  const uint64_t b = d->alloc(64);
  // Chains of 2, 2, 3, ... descriptors in a ring of 4: the indexes (and, in
  // a packed ring, chains) cross the end of the ring.
  for (int round = 0; round < 10; ++round) {
    const size_t n = (round % 3 == 2) ? 3 : 2;
    std::vector<Buf> bufs(n, Buf{b, 8, 0});
    bufs.back().flags = kDescFWrite;
    const uint16_t id = d->add(bufs);
    ASSERT_EQ(q->pop(&c), PopResult::kChain) << round;
    EXPECT_EQ(c.head, id);
    EXPECT_EQ(c.readable.size(), n - 1);
    EXPECT_EQ(q->pop(&c), PopResult::kEmpty) << round;
    ASSERT_TRUE(q->push(id, uint32_t(round)));
    q->publish();
    uint16_t used_id;
    uint32_t len;
    ASSERT_TRUE(d->take_used(&used_id, &len)) << round;
    EXPECT_EQ(used_id, id);
    EXPECT_EQ(len, uint32_t(round));
  }
  EXPECT_EQ(q->last_avail_idx(), d->avail_position());
  EXPECT_EQ(q->used_idx(), d->used_position());
  EXPECT_EQ(q->vring_base(), d->vring_base());
}

TEST_P(VirtqueueTest, IndirectTable) {
  start(8);
  const uint64_t a = d->alloc(16), b = d->alloc(32), w = d->alloc(64);
  const uint64_t t = d->indirect({{a, 16, 0}, {b, 32, 0}, {w, 64, kDescFWrite}});
  // WRITE on the descriptor of a table is ignored.
  const uint16_t id = d->add({{t, 48, kDescFIndirect | kDescFWrite}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, id);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d->host(a));
  EXPECT_EQ(c.readable[1].iov_base, d->host(b));
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d->host(w));
  EXPECT_EQ(c.writable[0].iov_len, 64u);
  EXPECT_EQ(c.writable_len, 64u);
  EXPECT_EQ(q->last_avail_idx(), d->avail_position()) << "a table takes one ring entry";
  ASSERT_TRUE(q->push(id, 9));
  q->publish();
  uint16_t used_id;
  uint32_t len;
  ASSERT_TRUE(d->take_used(&used_id, &len));
  EXPECT_EQ(used_id, id);
  EXPECT_EQ(len, 9u);
}

TEST_P(VirtqueueTest, ZeroLengthDescriptorsGiveNoIovec) {
  start(4);
  // Address irrelevant: nothing to touch.
  d->add({{0xdead0000000, 0, 0}, {d->alloc(8), 8, kDescFWrite}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_TRUE(c.readable.empty());
  EXPECT_EQ(c.writable.size(), 1u);
}

TEST_P(VirtqueueTest, BuffersSpanningRegionsGiveSeveralIovecs) {
  d = RingDriver::make(GetParam(), 4);
  add_second_region(d->mem, 1 << 16);
  q = make_virtqueue(GetParam());
  ASSERT_EQ(q->start(d->mem, d->config), 0);
  const uint64_t across = kGuestBase + kRamSize - 100;
  d->add({{across, 300, 0}, {kGuestBase + kRamSize + 4096, 512, kDescFWrite}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  ASSERT_EQ(c.readable.size(), 2u);
  EXPECT_EQ(c.readable[0].iov_base, d->host(across));
  EXPECT_EQ(c.readable[0].iov_len, 100u);
  EXPECT_EQ(c.readable[1].iov_base, d->mem.translate_gpa(kGuestBase + kRamSize, 1));
  EXPECT_EQ(c.readable[1].iov_len, 200u);
  EXPECT_EQ(c.readable_len, 300u);
  ASSERT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(c.writable[0].iov_base, d->mem.translate_gpa(kGuestBase + kRamSize + 4096, 1));
}

TEST_P(VirtqueueTest, ChainOfExactlyQueueSizeIsFine) {
  start(4);
  const uint64_t b = d->alloc(8);
  const uint16_t id = d->add({{b, 8, 0}, {b, 8, 0}, {b, 8, 0}, {b, 8, kDescFWrite}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_EQ(c.readable.size(), 3u);
  EXPECT_EQ(c.writable.size(), 1u);
  EXPECT_EQ(q->last_avail_idx(), d->avail_position());
  ASSERT_TRUE(q->push(id, 0));
  q->publish();
  uint16_t used_id;
  uint32_t len;
  ASSERT_TRUE(d->take_used(&used_id, &len));
  EXPECT_EQ(q->used_idx(), d->used_position());

  // And a table of as many entries.
  const uint64_t t = d->indirect({{b, 8, 0}, {b, 8, 0}, {b, 8, 0}, {b, 8, 0}});
  d->add({{t, 4 * 16, kDescFIndirect}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_EQ(c.readable.size(), 4u);
}

TEST_P(VirtqueueTest, ChainLongerThan4GiBBreaksTheQueue) {
  d = RingDriver::make(GetParam(), 4);
  // 2.25 GiB of sparse memory (never touched), described twice.
  const uint64_t big = 0x90000000, gpa = 0x100000000;
  const int fd = ::memfd_create("big", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, off_t(big)), 0);
  ASSERT_EQ(d->mem.add_region(fd, gpa, big, kUserBase + (1ull << 36), 0), 0);
  q = make_virtqueue(GetParam());
  ASSERT_EQ(q->start(d->mem, d->config), 0);
  d->add({{gpa, uint32_t(big), 0}, {gpa, uint32_t(big), kDescFWrite}});
  EXPECT_EQ(q->pop(&c), PopResult::kBroken);
  EXPECT_TRUE(q->broken());
}

TEST_P(VirtqueueTest, StartRefusesSizesOutOfRange) {
  d = RingDriver::make(GetParam(), 8);
  q = make_virtqueue(GetParam());
  for (uint32_t bad : {0u, kMaxQueueSize + 1, 65536u}) {
    VringConfig cfg = d->config;
    cfg.size = bad;
    EXPECT_EQ(q->start(d->mem, cfg), EINVAL) << bad;
    EXPECT_FALSE(q->running());
  }
  EXPECT_EQ(q->start(d->mem, d->config), 0);
  EXPECT_TRUE(q->running());
}

TEST_P(VirtqueueTest, RemapFollowsANewMemoryTable) {
  start(4);
  d->add({{d->alloc(8), 8, 0}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  const uint16_t id = c.head;

  // A new table: other memory at the same addresses.
  GuestMemory other;
  const int fd = ::memfd_create("other", MFD_CLOEXEC);
  ASSERT_EQ(::ftruncate(fd, kRamSize), 0);
  ASSERT_EQ(other.add_region(fd, kGuestBase, kRamSize, kUserBase, 0), 0);
  ASSERT_EQ(q->remap(other), 0);
  EXPECT_EQ(q->inflight(), 1u) << "state kept";
  EXPECT_EQ(q->last_avail_idx(), d->avail_position());
  EXPECT_TRUE(q->push(id, 4));
  q->publish();
  uint16_t used_id;
  uint32_t len;
  EXPECT_FALSE(d->take_used(&used_id, &len)) << "written to the new table's memory";

  GuestMemory empty;
  EXPECT_EQ(q->remap(empty), EFAULT);
  EXPECT_FALSE(q->running());
  EXPECT_EQ(q->remap(empty), 0) << "a stopped queue has nothing to remap";
}

TEST_P(VirtqueueTest, StopKeepsIndexes) {
  start(4);
  const uint16_t id = d->add({{d->alloc(16), 16, kDescFWrite}});
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_EQ(q->remap(d->mem), 0);
  EXPECT_EQ(q->inflight(), 1u);
  ASSERT_TRUE(q->push(id, 3));
  q->publish();
  uint16_t used_id;
  uint32_t len;
  ASSERT_TRUE(d->take_used(&used_id, &len));
  q->stop();
  EXPECT_FALSE(q->running());
  EXPECT_EQ(q->vring_base(), d->vring_base());
  EXPECT_EQ(q->last_avail_idx(), d->avail_position());
  EXPECT_EQ(q->pop(&c), PopResult::kEmpty);
  EXPECT_FALSE(q->push(id, 1));
}

TEST_P(VirtqueueTest, NotifiesOncePerPublishedBatch) {
  start(4);
  const uint64_t b = d->alloc(8);
  round_trip({{b, 8, kDescFWrite}});
  EXPECT_TRUE(q->should_notify()) << "the driver asked for nothing else";
  EXPECT_FALSE(q->should_notify()) << "nothing new since";
  round_trip({{b, 8, kDescFWrite}});
  EXPECT_TRUE(q->should_notify());
}

TEST_P(VirtqueueTest, SetNotificationReportsBuffersThatArrivedMeanwhile) {
  start(4);
  EXPECT_FALSE(q->set_notification(false));
  EXPECT_FALSE(q->set_notification(true)) << "nothing arrived";
  q->set_notification(false);
  d->add({{d->alloc(8), 8, 0}});
  EXPECT_TRUE(q->set_notification(true)) << "a buffer arrived while kicks were off";
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  EXPECT_FALSE(q->set_notification(true));
}

// --- Malformed input: each case breaks the queue. ------------------------

// Arranges for the next pop to see one malformed chain (or ring).
using Corruption = void (*)(RingDriver&);

enum Layouts { kBoth, kSplitOnly, kPackedOnly };

struct MalformedCase {
  const char* name;
  Corruption corrupt;
  Layouts layouts = kBoth;
  uint32_t size = 8;
  bool indirect = true;
};

SplitDriver& split(RingDriver& d) { return static_cast<SplitDriver&>(d); }
drivers::PackedDriver& packed(RingDriver& d) { return static_cast<drivers::PackedDriver&>(d); }

const MalformedCase kMalformed[] = {
    // Both layouts.
    {"id_out_of_range",
     [](RingDriver& d) {
       d.add_as(8, {{d.alloc(8), 8, 0}});
     }},
    {"id_already_in_flight",  // the good chain's (see the test)
     [](RingDriver& d) {
       d.add_as(6, {{d.alloc(8), 8, 0}});
     }},
    {"buffer_unmapped",
     [](RingDriver& d) {
       d.add({{0x1000, 8, 0}});
     }},
    {"buffer_after_memory",
     [](RingDriver& d) {
       d.add({{kGuestBase + kRamSize, 16, 0}});
     }},
    {"buffer_past_end_of_memory",
     [](RingDriver& d) {
       d.add({{kGuestBase + kRamSize - 8, 9, kDescFWrite}});
     }},
    {"buffer_address_wraps",
     [](RingDriver& d) {
       d.add({{UINT64_MAX - 4, 8, 0}});
     }},
    {"readable_after_writable",
     [](RingDriver& d) {
       const uint64_t b = d.alloc(8);
       d.add({{b, 8, kDescFWrite}, {b, 8, 0}});
     }},
    {"readable_after_writable_in_table",
     [](RingDriver& d) {
       const uint64_t b = d.alloc(8);
       d.add({{d.indirect({{b, 8, kDescFWrite}, {b, 8, 0}}), 32, kDescFIndirect}});
     }},
    {"indirect_not_negotiated",
     [](RingDriver& d) {
       d.add({{d.indirect({{d.alloc(8), 8, 0}}), 16, kDescFIndirect}});
     },
     kBoth, 8, false},
    {"nested_indirect",
     [](RingDriver& d) {
       const uint64_t inner = d.indirect({{d.alloc(8), 8, 0}});
       d.add({{d.indirect({{inner, 16, kDescFIndirect}}), 16, kDescFIndirect}});
     }},
    {"indirect_with_next",
     [](RingDriver& d) {
       d.add({{d.indirect({{d.alloc(8), 8, 0}}), 16, kDescFIndirect}, {d.alloc(8), 8, 0}});
     }},
    {"indirect_len_zero",
     [](RingDriver& d) {
       d.add({{d.indirect({{d.alloc(8), 8, 0}}), 0, kDescFIndirect}});
     }},
    {"indirect_len_not_multiple_of_16",
     [](RingDriver& d) {
       d.add({{d.indirect({{d.alloc(8), 8, 0}, {d.alloc(8), 8, 0}}), 17, kDescFIndirect}});
     }},
    {"indirect_table_larger_than_queue",
     [](RingDriver& d) {
       // One entry more than the queue's 8; the rest is never read.
       d.add({{d.indirect(std::vector<Buf>(9, Buf{d.alloc(8), 8, 0})), 9 * 16, kDescFIndirect}});
     }},
    {"indirect_table_unmapped",
     [](RingDriver& d) {
       d.add({{kGuestBase + kRamSize - 16, 32, kDescFIndirect}});
     }},

    // The split ring's: NEXT indexes, the avail ring.
    {"next_out_of_range",
     [](RingDriver& d) {
       split(d).set_desc(0, d.alloc(8), 8, kDescFNext, 8);
       split(d).make_available(0);
     },
     kSplitOnly},
    {"loop",
     [](RingDriver& d) {
       split(d).set_desc(0, d.alloc(8), 8, kDescFNext, 1);
       split(d).set_desc(1, d.alloc(8), 8, kDescFNext, 0);
       split(d).make_available(0);
     },
     kSplitOnly},
    {"self_loop",
     [](RingDriver& d) {
       split(d).set_desc(3, d.alloc(8), 8, kDescFNext, 3);
       split(d).make_available(3);
     },
     kSplitOnly},
    {"loop_in_indirect_table",
     [](RingDriver& d) {
       SplitDriver& s = split(d);
       const uint64_t t = s.indirect_table(2);
       s.set_indirect(t, 0, d.alloc(8), 8, kDescFNext, 1);
       s.set_indirect(t, 1, d.alloc(8), 8, kDescFNext, 0);
       s.set_desc(0, t, 32, kDescFIndirect);
       s.make_available(0);
     },
     kSplitOnly},
    {"chain_longer_than_queue",
     [](RingDriver& d) {
       // One direct buffer, then a full-size table: 9 buffers in a queue of 8.
       SplitDriver& s = split(d);
       const uint64_t t = s.indirect_table(8);
       for (uint16_t i = 0; i < 8; ++i) {
         s.set_indirect(t, i, d.alloc(8), 8, i < 7 ? kDescFNext : 0, uint16_t(i + 1));
       }
       s.set_desc(0, d.alloc(8), 8, kDescFNext, 1);
       s.set_desc(1, t, 8 * 16, kDescFIndirect);
       s.make_available(0);
     },
     kSplitOnly},
    {"indirect_next_out_of_table",
     [](RingDriver& d) {
       SplitDriver& s = split(d);
       const uint64_t t = s.indirect_table(2);
       s.set_indirect(t, 0, d.alloc(8), 8, kDescFNext, 2);
       s.set_desc(0, t, 32, kDescFIndirect);
       s.make_available(0);
     },
     kSplitOnly},
    {"readable_in_table_after_writable_before_it",
     [](RingDriver& d) {
       SplitDriver& s = split(d);
       const uint64_t t = s.indirect_table(1);
       s.set_indirect(t, 0, d.alloc(8), 8, 0);
       s.set_desc(0, d.alloc(8), 8, kDescFWrite | kDescFNext, 1);
       s.set_desc(1, t, 16, kDescFIndirect);
       s.make_available(0);
     },
     kSplitOnly},
    {"avail_idx_jumps_ahead",
     [](RingDriver& d) {
       split(d).set_desc(0, d.alloc(8), 8, 0);
       split(d).set_avail_idx(1 + 9);  // 9 new entries in a queue of 8
     },
     kSplitOnly},
    {"avail_idx_goes_backwards",
     [](RingDriver& d) {
       split(d).set_desc(0, d.alloc(8), 8, 0);
       split(d).set_avail_idx(65535);
     },
     kSplitOnly},

    // The packed ring's: chains of consecutive slots, tables without NEXT.
    {"chain_never_ends",
     [](RingDriver& d) {
       // NEXT on every slot of the ring: the chain never ends within the queue.
       const uint64_t b = d.alloc(16);
       for (uint16_t i = 0; i < 8; ++i) {
         drivers::PackedDriver::write_desc(packed(d).slot(i), b, 16, 0,
                                           kPackedDescFAvail | kDescFNext);
       }
     },
     kPackedOnly},
    {"indirect_after_a_direct_descriptor",
     [](RingDriver& d) {
       d.add({{d.alloc(16), 16, 0}, {d.indirect({{d.alloc(16), 16, 0}}), 16, kDescFIndirect}});
     },
     kPackedOnly},
    {"indirect_entry_with_next",
     [](RingDriver& d) {
       const uint64_t t = d.indirect({{d.alloc(16), 16, kDescFNext}, {d.alloc(16), 16, 0}});
       d.add({{t, 32, kDescFIndirect}});
     },
     kPackedOnly},
};

struct MalformedParam {
  RingLayout layout;
  const MalformedCase* c;
};

void PrintTo(const MalformedParam& p, std::ostream* os) {
  *os << layout_name(p.layout) << "/" << p.c->name;
}

std::vector<MalformedParam> malformed_cases(RingLayout layout) {
  std::vector<MalformedParam> out;
  for (const MalformedCase& c : kMalformed) {
    if (c.layouts == kBoth || (c.layouts == kSplitOnly) == (layout == RingLayout::kSplit)) {
      out.push_back({layout, &c});
    }
  }
  return out;
}

class MalformedTest : public ::testing::TestWithParam<MalformedParam> {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
};

INSTANTIATE_TEST_SUITE_P(Split, MalformedTest,
                         ::testing::ValuesIn(malformed_cases(RingLayout::kSplit)),
                         [](const auto& info) { return std::string(info.param.c->name); });
INSTANTIATE_TEST_SUITE_P(Packed, MalformedTest,
                         ::testing::ValuesIn(malformed_cases(RingLayout::kPacked)),
                         [](const auto& info) { return std::string(info.param.c->name); });

TEST_P(MalformedTest, BreaksTheQueueAndNeverTouchesGuestMemoryAgain) {
  const MalformedCase& mc = *GetParam().c;
  const RingLayout layout = GetParam().layout;
  auto d = RingDriver::make(layout, mc.size, /*event_idx=*/true, mc.indirect);
  auto q = make_virtqueue(layout);
  ASSERT_EQ(q->start(d->mem, d->config), 0);

  // One good chain first, left in flight.
  d->add_as(6, {{d->alloc(8), 8, kDescFWrite}});
  DescriptorChain c;
  ASSERT_EQ(q->pop(&c), PopResult::kChain);
  ASSERT_EQ(c.head, 6);
  const uint16_t avail = q->last_avail_idx();

  mc.corrupt(*d);
  EXPECT_EQ(q->pop(&c), PopResult::kBroken);
  EXPECT_TRUE(q->broken());
  EXPECT_TRUE(c.readable.empty() && c.writable.empty()) << "no partial chain";
  EXPECT_EQ(q->last_avail_idx(), avail) << "the bad entry is not consumed";
  EXPECT_EQ(q->inflight(), 1u) << "nor counted";

  // From now on any access to the guest's RAM would fault.
  uint8_t* ram = d->host(kGuestBase);
  ASSERT_EQ(::mprotect(ram, kRamSize, PROT_NONE), 0);
  EXPECT_EQ(q->pop(&c), PopResult::kBroken);
  EXPECT_FALSE(q->push(6, 8));
  q->publish();
  EXPECT_FALSE(q->should_notify());
  EXPECT_FALSE(q->set_notification(true));
  EXPECT_FALSE(q->set_notification(false));
  ASSERT_EQ(::mprotect(ram, kRamSize, PROT_READ | PROT_WRITE), 0);

  // start() is the reset: a clean ring works again.
  d->reset_ring();
  ASSERT_EQ(q->start(d->mem, d->config), 0);
  EXPECT_FALSE(q->broken());
  EXPECT_TRUE(q->running());
  EXPECT_EQ(q->pop(&c), PopResult::kEmpty);
  d->add({{d->alloc(8), 8, kDescFWrite}});
  EXPECT_EQ(q->pop(&c), PopResult::kChain);
}

// --- The split ring's own. ----------------------------------------------

class SplitVirtqueueTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
};

TEST_F(SplitVirtqueueTest, IndexesWrapAroundFromVringBase) {
  SplitDriver d(4);
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
  EXPECT_EQ(q.vring_base(), uint16_t(65534 + 5));
  EXPECT_EQ(d.used_idx(), 5);
}

TEST_F(SplitVirtqueueTest, DirectDescriptorsThenAnIndirectTable) {
  // §2.7.5.3.2: the device MUST handle this layout.
  SplitDriver d(4);
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

TEST_F(SplitVirtqueueTest, StartChecksSizeAndRings) {
  SplitDriver d(8);
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
  cfg.avail_uva = kGuestBase + drivers::kDriverOff;  // a GPA where a user address belongs
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
  cfg.avail_uva = kUserBase + drivers::kDriverOff;
  cfg.used_uva = kUserBase;
  EXPECT_EQ(q.start(d.mem, cfg), 0) << "the largest queue size";
}

// --- The split ring's notifications. ------------------------------------

TEST_F(SplitVirtqueueTest, NoInterruptFlagWithoutEventIdx) {
  SplitDriver d(4);
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

TEST_F(SplitVirtqueueTest, UsedEventDecidesWithEventIdx) {
  SplitDriver d(8, /*event_idx=*/true);
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

TEST_F(SplitVirtqueueTest, UsedEventAcrossWrap) {
  SplitDriver d(4, /*event_idx=*/true);
  // Used idx starts where the ring says (65534, after a reconnect).
  d.set_used_idx(65534);
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

TEST_F(SplitVirtqueueTest, KickSuppressionWithoutEventIdx) {
  SplitDriver d(4);
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

TEST_F(SplitVirtqueueTest, AvailEventWithEventIdx) {
  SplitDriver d(4, /*event_idx=*/true);
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

// --- Resuming a split ring from its RingRecord (docs/restart.md). -------

// A process that took requests, answered some (published or not) and died:
// a successor on the same ring and record takes again exactly those whose
// answer the driver never saw, first, then goes on with new ones; nothing
// is answered twice.
TEST_F(SplitVirtqueueTest, ASuccessorTakesAgainWhatHadNoPublishedAnswer) {
  SplitDriver d(8);
  auto record = std::make_unique<RingRecord>();
  d.config.record = record.get();
  DescriptorChain c;
  std::vector<uint16_t> ids;
  {
    SplitVirtqueue first;
    ASSERT_EQ(first.start(d.mem, d.config), 0);
    for (int i = 0; i < 5; ++i) ids.push_back(d.add({{d.alloc(8), 8, kDescFWrite}}));
    for (int i = 0; i < 4; ++i) ASSERT_EQ(first.pop(&c), PopResult::kChain);
    // ids[0] answered and published; ids[1] answered, not published; ids[2]
    // and ids[3] taken, not answered; ids[4] never taken.
    ASSERT_TRUE(first.push(ids[0], 1));
    first.publish();
    ASSERT_TRUE(first.push(ids[1], 2));
    // Gone without a word (kill -9): no stop(), no publish.
  }
  uint16_t id;
  uint32_t len;
  ASSERT_TRUE(d.take_used(&id, &len));
  EXPECT_EQ(id, ids[0]);
  EXPECT_FALSE(d.take_used(&id, &len));

  SplitVirtqueue next;
  d.config.resume = true;
  d.config.last_avail_idx = 0;  // what the front-end's SET_VRING_BASE said long ago
  ASSERT_EQ(next.start(d.mem, d.config), 0);
  EXPECT_EQ(next.inflight(), 3u);
  std::vector<uint16_t> again;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(next.pop(&c), PopResult::kChain);
    again.push_back(c.head);
  }
  std::sort(again.begin(), again.end());
  std::vector<uint16_t> want{ids[1], ids[2], ids[3]};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(again, want) << "the unanswered three, each once";
  ASSERT_EQ(next.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, ids[4]) << "then the one never taken";
  EXPECT_EQ(next.pop(&c), PopResult::kEmpty);
  for (uint16_t h : want) ASSERT_TRUE(next.push(h, 3));
  ASSERT_TRUE(next.push(ids[4], 4));
  next.publish();
  std::vector<uint16_t> used;
  while (d.take_used(&id, &len)) used.push_back(id);
  std::sort(used.begin(), used.end());
  want.push_back(ids[4]);
  std::sort(want.begin(), want.end());
  EXPECT_EQ(used, want) << "every request answered exactly once";
}

// The windows between the record's writes: a head taken but last_avail not
// yet moved, and answers published but not yet marked in the record.
TEST_F(SplitVirtqueueTest, ResumingMendsARecordCutShortMidUpdate) {
  SplitDriver d(8);
  auto record = std::make_unique<RingRecord>();
  d.config.record = record.get();
  DescriptorChain c;
  SplitVirtqueue first;
  ASSERT_EQ(first.start(d.mem, d.config), 0);
  const uint16_t a = d.add({{d.alloc(8), 8, kDescFWrite}});
  const uint16_t b = d.add({{d.alloc(8), 8, kDescFWrite}});
  ASSERT_EQ(first.pop(&c), PopResult::kChain);
  ASSERT_EQ(first.pop(&c), PopResult::kChain);
  ASSERT_TRUE(first.push(a, 1));
  first.publish();
  // As if it died between used->idx and the record: a still in flight
  // there, and the recorded used idx behind.
  record->flight[a] = 1;
  record->used_idx = 0;
  // And between taking b and moving last_avail past it.
  record->last_avail = 1;

  SplitVirtqueue next;
  d.config.resume = true;
  ASSERT_EQ(next.start(d.mem, d.config), 0);
  EXPECT_EQ(next.last_avail_idx(), 2) << "b's entry is not taken a second time";
  ASSERT_EQ(next.pop(&c), PopResult::kChain);
  EXPECT_EQ(c.head, b) << "b again (its answer never published), not a";
  EXPECT_EQ(next.pop(&c), PopResult::kEmpty);
}

// A record of another ring, or none yet, starts the ring afresh; a record
// whose used idx is impossibly far behind the ring breaks the queue.
TEST_F(SplitVirtqueueTest, ARecordThatDoesNotFitIsNotResumed) {
  SplitDriver d(8);
  auto record = std::make_unique<RingRecord>();
  record->size = 16;  // another ring
  record->flight[3] = 1;
  d.config.record = record.get();
  d.config.resume = true;
  SplitVirtqueue q;
  ASSERT_EQ(q.start(d.mem, d.config), 0);
  EXPECT_EQ(q.inflight(), 0u);
  EXPECT_EQ(record->size, 8u) << "recorded anew";
  EXPECT_EQ(record->flight[3], 0);

  record->used_idx = 100;  // the ring's is 0: 65436 entries ahead
  SplitVirtqueue bad;
  ASSERT_EQ(bad.start(d.mem, d.config), 0);
  EXPECT_TRUE(bad.broken());
}

}  // namespace
}  // namespace dpfs::virtio
