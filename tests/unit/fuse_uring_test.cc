// The decisions of the FUSE-over-io_uring transport that need no kernel:
// when to use it, how a ring entry's request is laid out, and the INIT
// reply that accepts it. The ring itself runs in
// tests/integration/fuse_uring_test.cc, through the kernel.
#include "transport/fuse_uring.h"

#include <gtest/gtest.h>
#include <linux/fuse.h>

#include <cstring>
#include <vector>

#include "transport/fuse_dev.h"
#include "transport/fuse_uring_abi.h"

namespace dpfs::transport {
namespace {

TEST(FuseUringPlanTest, CountsPossibleCpus) {
  EXPECT_EQ(count_cpu_list("0-1\n"), 2u);
  EXPECT_EQ(count_cpu_list("0"), 1u);
  EXPECT_EQ(count_cpu_list("0-3,8-11"), 12u);
  EXPECT_EQ(count_cpu_list("0,2"), 3u);
  EXPECT_EQ(count_cpu_list(""), 0u);
  EXPECT_EQ(count_cpu_list("zero"), 0u);
  EXPECT_EQ(count_cpu_list("0-x"), 0u);
}

TEST(FuseUringPlanTest, AutoUsesItOnlyWhenTheKernelOffersIt) {
  const FuseUringPlan on = plan_fuse_uring(FuseUringMode::kAuto, true, 2);
  EXPECT_TRUE(on.use);
  EXPECT_EQ(on.queues, 2u);

  const FuseUringPlan disabled = plan_fuse_uring(FuseUringMode::kAuto, false, 2);
  EXPECT_FALSE(disabled.use);
  // The reason names the parameter and how to turn it on.
  EXPECT_NE(disabled.reason.find("/sys/module/fuse/parameters/enable_uring"), std::string::npos)
      << disabled.reason;
  EXPECT_NE(disabled.reason.find("echo 1 >"), std::string::npos) << disabled.reason;

  const FuseUringPlan old_kernel = plan_fuse_uring(FuseUringMode::kAuto, std::nullopt, 2);
  EXPECT_FALSE(old_kernel.use);
  EXPECT_NE(old_kernel.reason.find("6.14"), std::string::npos) << old_kernel.reason;

  EXPECT_FALSE(plan_fuse_uring(FuseUringMode::kAuto, true, 0).use);
}

TEST(FuseUringPlanTest, OffNeverUsesIt) {
  EXPECT_FALSE(plan_fuse_uring(FuseUringMode::kOff, true, 2).use);
}

TEST(FuseUringPlanTest, OnFailsWithWhatToFix) {
  EXPECT_TRUE(plan_fuse_uring(FuseUringMode::kOn, true, 2).use);
  try {
    plan_fuse_uring(FuseUringMode::kOn, false, 2);
    FAIL() << "on with enable_uring off must fail";
  } catch (const MountError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("echo 1 > /sys/module/fuse/parameters/enable_uring"), std::string::npos)
        << what;
    EXPECT_NE(what.find("fuse.io_uring"), std::string::npos) << what;
  }
  EXPECT_THROW(plan_fuse_uring(FuseUringMode::kOn, std::nullopt, 2), MountError);
}

fuse_in_header header(uint32_t opcode, uint32_t len) {
  fuse_in_header h{};
  h.opcode = opcode;
  h.len = len;
  h.unique = 7;
  return h;
}

TEST(RingRequestLayoutTest, SplitsHeaderFirstArgumentAndPayload) {
  // WRITE: fuse_write_in in op_in, 4096 bytes of data in the payload.
  const auto write = ring_request_layout(
      header(FUSE_WRITE, sizeof(fuse_in_header) + sizeof(fuse_write_in) + 4096), 4096, 1 << 20);
  ASSERT_TRUE(write);
  EXPECT_EQ(write->op_in_len, sizeof(fuse_write_in));
  EXPECT_EQ(write->payload_len, 4096u);

  // LOOKUP: an empty first argument, the name in the payload.
  const auto lookup = ring_request_layout(header(FUSE_LOOKUP, sizeof(fuse_in_header) + 4), 4, 8192);
  ASSERT_TRUE(lookup);
  EXPECT_EQ(lookup->op_in_len, 0u);
  EXPECT_EQ(lookup->payload_len, 4u);

  // GETATTR: everything in op_in.
  const auto getattr = ring_request_layout(
      header(FUSE_GETATTR, sizeof(fuse_in_header) + sizeof(fuse_getattr_in)), 0, 8192);
  ASSERT_TRUE(getattr);
  EXPECT_EQ(getattr->op_in_len, sizeof(fuse_getattr_in));
  EXPECT_EQ(getattr->payload_len, 0u);
}

TEST(RingRequestLayoutTest, RefusesWhatDoesNotAddUp) {
  // A length below a header.
  EXPECT_FALSE(ring_request_layout(header(FUSE_GETATTR, 8), 0, 8192));
  // A payload larger than the buffer it was put in.
  EXPECT_FALSE(ring_request_layout(header(FUSE_WRITE, 1 << 20), 9000, 8192));
  // A payload larger than the request.
  EXPECT_FALSE(ring_request_layout(header(FUSE_LOOKUP, sizeof(fuse_in_header) + 4), 5, 8192));
  // A first argument larger than op_in.
  EXPECT_FALSE(ring_request_layout(
      header(FUSE_SETATTR, uint32_t(sizeof(fuse_in_header) + uring_abi::kOpInSize + 1)), 0, 8192));
}

// An INIT request as the kernel sends it, and dpfs's successful reply.
struct Init {
  std::vector<char> request;
  std::vector<char> reply;
};
Init make_init(bool offered, uint32_t reply_flags, int32_t error = 0) {
  Init init;
  fuse_in_header in = header(FUSE_INIT, sizeof(fuse_in_header) + sizeof(fuse_init_in));
  fuse_init_in a{};
  a.major = 7;
  a.minor = 42;
  a.flags = FUSE_INIT_EXT;
  a.flags2 = offered ? uring_abi::kFlags2OverIoUring : 0;
  init.request.resize(sizeof(in) + sizeof(a));
  std::memcpy(init.request.data(), &in, sizeof(in));
  std::memcpy(init.request.data() + sizeof(in), &a, sizeof(a));

  fuse_out_header out{};
  out.len = sizeof(out) + sizeof(fuse_init_out);
  out.error = error;
  out.unique = 7;
  fuse_init_out b{};
  b.major = 7;
  b.minor = 38;
  b.flags = reply_flags;
  init.reply.resize(sizeof(out) + sizeof(b));
  std::memcpy(init.reply.data(), &out, sizeof(out));
  std::memcpy(init.reply.data() + sizeof(out), &b, sizeof(b));
  return init;
}
uint32_t reply_flags2(const Init& init) {
  fuse_init_out b{};
  std::memcpy(&b, init.reply.data() + sizeof(fuse_out_header), sizeof(b));
  return b.flags2;
}

TEST(InitReplyTest, AcceptsWhatTheKernelOffers) {
  Init init = make_init(true, FUSE_INIT_EXT | FUSE_ASYNC_READ);
  bool offered = false;
  EXPECT_TRUE(accept_uring_in_init_reply(init.request, init.reply, &offered));
  EXPECT_TRUE(offered);
  EXPECT_EQ(reply_flags2(init), uring_abi::kFlags2OverIoUring);
}

TEST(InitReplyTest, LeavesOtherRepliesAlone) {
  bool offered = true;
  Init not_offered = make_init(false, FUSE_INIT_EXT);
  EXPECT_FALSE(accept_uring_in_init_reply(not_offered.request, not_offered.reply, &offered));
  EXPECT_FALSE(offered);
  EXPECT_EQ(reply_flags2(not_offered), 0u);

  // A reply without FUSE_INIT_EXT has no flags2 the kernel would read.
  Init no_ext = make_init(true, FUSE_ASYNC_READ);
  EXPECT_FALSE(accept_uring_in_init_reply(no_ext.request, no_ext.reply, &offered));
  EXPECT_EQ(reply_flags2(no_ext), 0u);

  Init failed = make_init(true, FUSE_INIT_EXT, -EPROTO);
  EXPECT_FALSE(accept_uring_in_init_reply(failed.request, failed.reply, &offered));

  // Short buffers are refused, not read past.
  Init short_init = make_init(true, FUSE_INIT_EXT);
  EXPECT_FALSE(accept_uring_in_init_reply(std::span<const char>(short_init.request.data(), 40),
                                          short_init.reply, &offered));
  EXPECT_FALSE(accept_uring_in_init_reply(short_init.request,
                                          std::span<char>(short_init.reply.data(), 20), &offered));

  // Not an INIT.
  Init other = make_init(true, FUSE_INIT_EXT);
  fuse_in_header h = header(FUSE_GETATTR, uint32_t(other.request.size()));
  std::memcpy(other.request.data(), &h, sizeof(h));
  EXPECT_FALSE(accept_uring_in_init_reply(other.request, other.reply, &offered));
}

}  // namespace
}  // namespace dpfs::transport
