// vhost-user message validation: headers, the exact payload size of every
// request, fd counts, and the decoded fields.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "vhost_user/message.h"

namespace dpfs::vhost_user {
namespace {

// Payload bytes built from values in order, as the front-end lays them out.
class Bytes {
 public:
  template <typename T>
  Bytes& add(const T& value) {
    const auto* p = reinterpret_cast<const uint8_t*>(&value);
    data_.insert(data_.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& pad(size_t n) {
    data_.resize(data_.size() + n);
    return *this;
  }
  const std::vector<uint8_t>& data() const { return data_; }

 private:
  std::vector<uint8_t> data_;
};

Header header(Request request, size_t size, uint32_t flags = kVersion) {
  return Header{static_cast<uint32_t>(request), flags, static_cast<uint32_t>(size)};
}

struct Parsed {
  bool ok;
  Message message;
  std::string error;
};

Parsed parse(Request request, const std::vector<uint8_t>& payload, size_t fds = 0,
             uint32_t flags = kVersion) {
  Parsed p;
  p.ok = parse_message(header(request, payload.size(), flags), payload, fds, &p.message, &p.error);
  EXPECT_EQ(p.ok, p.error.empty()) << "a failure says why, a success says nothing";
  return p;
}

Parsed parse_raw(uint32_t request, const std::vector<uint8_t>& payload, size_t fds = 0) {
  Parsed p;
  const Header h{request, kVersion, static_cast<uint32_t>(payload.size())};
  p.ok = parse_message(h, payload, fds, &p.message, &p.error);
  return p;
}

MemoryRegion region(uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t offset) {
  return MemoryRegion{gpa, size, uaddr, offset};
}

std::vector<uint8_t> mem_table(uint32_t nregions, const std::vector<MemoryRegion>& regions) {
  Bytes b;
  b.add(nregions).add(uint32_t{0});
  for (const auto& r : regions) b.add(r);
  return b.data();
}

TEST(VhostUserHeader, AcceptsVersionOneWithAndWithoutNeedReply) {
  std::string error;
  EXPECT_TRUE(validate_header(header(Request::kGetFeatures, 0), &error)) << error;
  EXPECT_TRUE(validate_header(header(Request::kSetFeatures, 8, kVersion | kFlagNeedReply), &error))
      << error;
  EXPECT_TRUE(validate_header(header(Request::kSetFeatures, kMaxPayloadSize), &error)) << error;
}

TEST(VhostUserHeader, RejectsBadVersionFlagsAndSize) {
  std::string error;
  EXPECT_FALSE(validate_header(header(Request::kGetFeatures, 0, 0), &error));
  EXPECT_FALSE(validate_header(header(Request::kGetFeatures, 0, 2), &error));
  EXPECT_FALSE(validate_header(header(Request::kGetFeatures, 0, 3), &error));
  EXPECT_FALSE(validate_header(header(Request::kGetFeatures, 0, kVersion | kFlagReply), &error))
      << "the reply flag is the back-end's";
  EXPECT_FALSE(validate_header(header(Request::kGetFeatures, 0, kVersion | 0x10), &error));
  EXPECT_FALSE(validate_header(header(Request::kGetFeatures, 0, kVersion | 0x80000000u), &error));
  EXPECT_FALSE(validate_header(header(Request::kSetMemTable, kMaxPayloadSize + 1), &error));
  EXPECT_FALSE(validate_header(header(Request::kSetMemTable, 0xffffffffu), &error));
  EXPECT_NE(error.find("4294967295"), std::string::npos) << error;
}

TEST(VhostUserMessage, RequestsWithoutPayloadMustHaveNone) {
  for (Request r : {Request::kGetFeatures, Request::kSetOwner, Request::kResetOwner,
                    Request::kGetProtocolFeatures, Request::kGetQueueNum, Request::kResetDevice,
                    Request::kGetMaxMemSlots, Request::kGetStatus}) {
    EXPECT_TRUE(parse(r, {}).ok) << request_name(static_cast<uint32_t>(r));
    const Parsed p = parse(r, std::vector<uint8_t>(8));
    EXPECT_FALSE(p.ok) << request_name(static_cast<uint32_t>(r));
    EXPECT_FALSE(parse(r, {}, 1).ok) << "no fds with " << request_name(static_cast<uint32_t>(r));
  }
}

TEST(VhostUserMessage, U64PayloadsAreExactlyEightBytes) {
  for (Request r : {Request::kSetFeatures, Request::kSetProtocolFeatures, Request::kSetStatus}) {
    const Parsed ok = parse(r, Bytes().add(uint64_t{0x1234}).data());
    ASSERT_TRUE(ok.ok) << ok.error;
    EXPECT_EQ(std::get<U64Payload>(ok.message.payload).value, 0x1234u);
    EXPECT_FALSE(parse(r, std::vector<uint8_t>(7)).ok);
    EXPECT_FALSE(parse(r, std::vector<uint8_t>(9)).ok);
    EXPECT_FALSE(parse(r, std::vector<uint8_t>(16)).ok);
    EXPECT_FALSE(parse(r, {}).ok);
  }
}

TEST(VhostUserMessage, VringStateAndAddress) {
  const Parsed num =
      parse(Request::kSetVringNum, Bytes().add(uint32_t{1}).add(uint32_t{256}).data());
  ASSERT_TRUE(num.ok) << num.error;
  const auto state = std::get<VringState>(num.message.payload);
  EXPECT_EQ(state.index, 1u);
  EXPECT_EQ(state.num, 256u);
  EXPECT_FALSE(parse(Request::kSetVringNum, std::vector<uint8_t>(4)).ok);
  EXPECT_FALSE(parse(Request::kGetVringBase, std::vector<uint8_t>(12)).ok);

  const auto addr_bytes = Bytes()
                              .add(uint32_t{2})
                              .add(uint32_t{0})
                              .add(uint64_t{0x1000})
                              .add(uint64_t{0x2000})
                              .add(uint64_t{0x3000})
                              .add(uint64_t{0x4000})
                              .data();
  ASSERT_EQ(addr_bytes.size(), 40u);
  const Parsed addr = parse(Request::kSetVringAddr, addr_bytes);
  ASSERT_TRUE(addr.ok) << addr.error;
  const auto a = std::get<VringAddr>(addr.message.payload);
  EXPECT_EQ(a.index, 2u);
  EXPECT_EQ(a.desc_user_addr, 0x1000u);
  EXPECT_EQ(a.used_user_addr, 0x2000u);
  EXPECT_EQ(a.avail_user_addr, 0x3000u);
  EXPECT_EQ(a.log_guest_addr, 0x4000u);
  EXPECT_FALSE(parse(Request::kSetVringAddr, std::vector<uint8_t>(32)).ok);
  EXPECT_FALSE(parse(Request::kSetVringAddr, std::vector<uint8_t>(48)).ok);
}

TEST(VhostUserMessage, VringFileIndexAndNoFdBit) {
  for (Request r : {Request::kSetVringKick, Request::kSetVringCall, Request::kSetVringErr}) {
    const Parsed with_fd = parse(r, Bytes().add(uint64_t{3}).data(), 1);
    ASSERT_TRUE(with_fd.ok) << with_fd.error;
    EXPECT_EQ(std::get<VringFilePayload>(with_fd.message.payload).index, 3u);
    EXPECT_FALSE(std::get<VringFilePayload>(with_fd.message.payload).no_fd);

    const Parsed no_fd = parse(r, Bytes().add(uint64_t{0x100 | 5}).data(), 0);
    ASSERT_TRUE(no_fd.ok) << no_fd.error;
    EXPECT_EQ(std::get<VringFilePayload>(no_fd.message.payload).index, 5u);
    EXPECT_TRUE(std::get<VringFilePayload>(no_fd.message.payload).no_fd);

    EXPECT_FALSE(parse(r, Bytes().add(uint64_t{3}).data(), 0).ok) << "an fd is missing";
    EXPECT_FALSE(parse(r, Bytes().add(uint64_t{3}).data(), 2).ok) << "one fd too many";
    EXPECT_FALSE(parse(r, Bytes().add(uint64_t{0x100}).data(), 1).ok) << "no-fd bit with an fd";
    EXPECT_FALSE(parse(r, Bytes().add(uint64_t{0x200}).data(), 1).ok) << "reserved bit";
    EXPECT_FALSE(parse(r, Bytes().add(uint64_t{1} << 63).data(), 1).ok) << "reserved bit";
    EXPECT_FALSE(parse(r, Bytes().add(uint32_t{3}).data(), 1).ok) << "4-byte payload";
  }
}

TEST(VhostUserMessage, MemTableDecodesRegionsInOrder) {
  const auto r0 = region(0, 0x80000000, 0x7f0000000000, 0);
  const auto r1 = region(0x100000000, 0x40000000, 0x7f0080000000, 0x80000000);
  const Parsed p = parse(Request::kSetMemTable, mem_table(2, {r0, r1}), 2);
  ASSERT_TRUE(p.ok) << p.error;
  const auto& regions = std::get<MemoryTablePayload>(p.message.payload).regions;
  ASSERT_EQ(regions.size(), 2u);
  EXPECT_EQ(regions[1].guest_phys_addr, 0x100000000u);
  EXPECT_EQ(regions[1].memory_size, 0x40000000u);
  EXPECT_EQ(regions[1].userspace_addr, 0x7f0080000000u);
  EXPECT_EQ(regions[1].mmap_offset, 0x80000000u);

  const Parsed empty = parse(Request::kSetMemTable, mem_table(0, {}), 0);
  EXPECT_TRUE(empty.ok) << empty.error;
}

TEST(VhostUserMessage, MemTableRejectsLiesAboutItsSize) {
  const auto r = region(0, 0x1000, 0x10000, 0);
  // More regions than the header allows (size consistent with the count).
  std::vector<MemoryRegion> nine(9, r);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(9, nine), 8).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(9, nine), 9).ok);
  // A count that does not match the size.
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(2, {r}), 2).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {r, r}), 1).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(0xffffffffu, {r}), 1).ok);
  // Shorter than its own header; a region cut short.
  EXPECT_FALSE(parse(Request::kSetMemTable, std::vector<uint8_t>(4), 0).ok);
  auto cut = mem_table(1, {r});
  cut.pop_back();
  EXPECT_FALSE(parse(Request::kSetMemTable, cut, 1).ok);
  // The full 8-region payload QEMU's union would allow, with a count of 1.
  auto padded = mem_table(1, {r});
  padded.resize(8 + 8 * 32);
  EXPECT_FALSE(parse(Request::kSetMemTable, padded, 1).ok);
}

TEST(VhostUserMessage, MemTableFdsMatchRegions) {
  const auto r = region(0, 0x1000, 0x10000, 0);
  EXPECT_TRUE(parse(Request::kSetMemTable, mem_table(3, {r, r, r}), 3).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(3, {r, r, r}), 2).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(3, {r, r, r}), 4).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {r}), 0).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(0, {}), 1).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {r}), kMaxFds + 1).ok);
}

TEST(VhostUserMessage, RegionsMustBeNonEmptyAndNotWrap) {
  const uint64_t top = ~uint64_t{0};
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {region(0, 0, 0, 0)}), 1).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {region(top, 2, 0, 0)}), 1).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {region(0, 2, top, 0)}), 1).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {region(0, 2, 0, top)}), 1).ok);
  // Ending exactly at 2^64 is fine; so is the whole space from 0.
  EXPECT_TRUE(parse(Request::kSetMemTable, mem_table(1, {region(top, 1, 0, 0)}), 1).ok);
  EXPECT_TRUE(parse(Request::kSetMemTable, mem_table(1, {region(0, top, 1, 1)}), 1).ok);
  EXPECT_TRUE(parse(Request::kSetMemTable, mem_table(1, {region(1, top, 0, 0)}), 1).ok);
  EXPECT_FALSE(parse(Request::kSetMemTable, mem_table(1, {region(2, top, 0, 0)}), 1).ok);
}

TEST(VhostUserMessage, SingleRegionMessages) {
  const auto bytes = Bytes().add(uint64_t{0}).add(region(0x1000, 0x2000, 0x3000, 0x4000)).data();
  const Parsed add = parse(Request::kAddMemReg, bytes, 1);
  ASSERT_TRUE(add.ok) << add.error;
  EXPECT_EQ(std::get<SingleRegionPayload>(add.message.payload).region.userspace_addr, 0x3000u);
  EXPECT_FALSE(parse(Request::kAddMemReg, bytes, 0).ok) << "ADD_MEM_REG carries one fd";
  EXPECT_FALSE(parse(Request::kAddMemReg, bytes, 2).ok);
  EXPECT_TRUE(parse(Request::kRemMemReg, bytes, 0).ok);
  EXPECT_TRUE(parse(Request::kRemMemReg, bytes, 1).ok) << "spec: MAY accept one fd, to close";
  EXPECT_FALSE(parse(Request::kRemMemReg, bytes, 2).ok);
  // Without the leading padding (32 bytes), or with a two-region table.
  EXPECT_FALSE(parse(Request::kAddMemReg, Bytes().add(region(0, 1, 0, 0)).data(), 1).ok);
  EXPECT_FALSE(
      parse(Request::kAddMemReg, mem_table(2, {region(0, 1, 0, 0), region(0, 1, 0, 0)}), 1).ok);
  EXPECT_FALSE(
      parse(Request::kAddMemReg, Bytes().add(uint64_t{0}).add(region(0, 0, 0, 0)).data(), 1).ok);
}

TEST(VhostUserMessage, FdCarryingRequestsWithoutPayload) {
  EXPECT_TRUE(parse(Request::kSetBackendReqFd, {}, 1).ok);
  EXPECT_FALSE(parse(Request::kSetBackendReqFd, {}, 0).ok);
  EXPECT_TRUE(parse(Request::kSetLogFd, {}, 1).ok);
  EXPECT_TRUE(parse(Request::kSetLogBase, std::vector<uint8_t>(16), 1).ok);
  EXPECT_FALSE(parse(Request::kSetLogBase, std::vector<uint8_t>(16), 2).ok);
}

TEST(VhostUserMessage, ConfigSizeComesFromItsHeader) {
  const auto ok = Bytes().add(ConfigHeader{0, 4, 0}).add(uint32_t{7}).data();
  const Parsed p = parse(Request::kSetConfig, ok);
  ASSERT_TRUE(p.ok) << p.error;
  EXPECT_EQ(std::get<ConfigPayload>(p.message.payload).data.size(), 4u);
  EXPECT_FALSE(parse(Request::kSetConfig, Bytes().add(ConfigHeader{0, 8, 0}).data()).ok);
  EXPECT_FALSE(parse(Request::kGetConfig, Bytes().add(ConfigHeader{0, 300, 0}).pad(300).data()).ok);
  EXPECT_FALSE(parse(Request::kGetConfig, std::vector<uint8_t>(8)).ok);
}

TEST(VhostUserMessage, UnknownRequestsAreSkippedWithTheirFds) {
  for (uint32_t request : {0u, 41u, 1000u, 0xffffffffu}) {
    EXPECT_EQ(request_name(request), "UNKNOWN");
    const Parsed p = parse_raw(request, std::vector<uint8_t>(100), 3);
    ASSERT_TRUE(p.ok) << p.error;
    EXPECT_TRUE(std::holds_alternative<UnknownPayload>(p.message.payload));
    EXPECT_FALSE(parse_raw(request, {}, kMaxFds + 1).ok);
  }
}

TEST(VhostUserMessage, PayloadMustMatchTheHeader) {
  Message m;
  std::string error;
  const std::vector<uint8_t> payload(8);
  EXPECT_FALSE(parse_message(header(Request::kSetFeatures, 16), payload, 0, &m, &error));
}

TEST(VhostUserMessage, NamesAndReplies) {
  EXPECT_EQ(request_name(1), "GET_FEATURES");
  EXPECT_EQ(request_name(5), "SET_MEM_TABLE");
  EXPECT_EQ(request_name(21), "SET_BACKEND_REQ_FD");
  EXPECT_EQ(request_name(40), "GET_STATUS");
  for (Request r : {Request::kGetFeatures, Request::kGetProtocolFeatures, Request::kGetVringBase,
                    Request::kGetQueueNum, Request::kGetMaxMemSlots, Request::kGetConfig,
                    Request::kGetStatus}) {
    EXPECT_TRUE(has_reply_body(static_cast<uint32_t>(r)));
  }
  for (Request r : {Request::kSetFeatures, Request::kSetMemTable, Request::kSetVringKick,
                    Request::kSetVringEnable, Request::kAddMemReg}) {
    EXPECT_FALSE(has_reply_body(static_cast<uint32_t>(r)));
  }
  EXPECT_FALSE(has_reply_body(12345));

  const auto reply = encode_reply_vring_state(11, VringState{1, 77});
  ASSERT_EQ(reply.size(), kHeaderSize + 8);
  Header h;
  std::memcpy(&h, reply.data(), sizeof(h));
  EXPECT_EQ(h.request, 11u);
  EXPECT_EQ(h.flags, kVersion | kFlagReply);
  EXPECT_EQ(h.size, 8u);
  VringState s;
  std::memcpy(&s, reply.data() + kHeaderSize, sizeof(s));
  EXPECT_EQ(s.num, 77u);
}

}  // namespace
}  // namespace dpfs::vhost_user
