// CapturedRequest: the deciding bytes of a request, copied once.
#include "fuse/captured_request.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

namespace dpfs::fuse {
namespace {

// Bytes of a request: header then `args`, in buffers split at `splits`.
struct Bytes {
  Bytes(uint32_t opcode, const std::string& args, std::vector<size_t> splits = {}) {
    fuse_in_header h{};
    h.len = uint32_t(sizeof(h) + args.size());
    h.opcode = opcode;
    h.unique = 99;
    data.resize(h.len);
    std::memcpy(data.data(), &h, sizeof(h));
    std::memcpy(data.data() + sizeof(h), args.data(), args.size());
    size_t start = 0;
    for (size_t at : splits) {
      iov.push_back({data.data() + start, at - start});
      start = at;
    }
    iov.push_back({data.data() + start, data.size() - start});
  }
  bool inside(const void* p) const {
    const char* c = static_cast<const char*>(p);
    return c >= data.data() && c < data.data() + data.size();
  }
  std::vector<char> data;
  std::vector<iovec> iov;
};

TEST(CapturedRequestTest, CopiesHeaderAndArgumentsOutOfTheTenantsBuffers) {
  Bytes b(FUSE_MKDIR, std::string(sizeof(fuse_mkdir_in), '\0') + "name", {50, 60});
  CapturedRequest cap;
  ASSERT_TRUE(cap.capture(b.iov, false));
  EXPECT_EQ(cap.header().unique, 99u);
  EXPECT_EQ(cap.sent(), b.data.size());
  ASSERT_EQ(cap.args().size(), sizeof(fuse_mkdir_in) + 4);
  EXPECT_FALSE(b.inside(cap.args().data())) << "arguments must be a private copy";
  std::memcpy(b.data.data() + b.data.size() - 4, "../x", 4);  // the tenant rewrites
  EXPECT_EQ(std::string(cap.args().data() + sizeof(fuse_mkdir_in), 4), "name");
  EXPECT_TRUE(cap.payload().empty());
}

TEST(CapturedRequestTest, WritePayloadStaysInPlace) {
  Bytes b(FUSE_WRITE, std::string(sizeof(fuse_write_in), '\0') + "0123456789",
          {sizeof(fuse_in_header) + sizeof(fuse_write_in) + 3});
  CapturedRequest cap;
  ASSERT_TRUE(cap.capture(b.iov, false));
  EXPECT_EQ(cap.args().size(), sizeof(fuse_write_in));
  EXPECT_FALSE(b.inside(cap.args().data()));
  EXPECT_EQ(cap.payload_length(), 10u);
  ASSERT_EQ(cap.payload().size(), 2u);
  EXPECT_TRUE(b.inside(cap.payload()[0].iov_base)) << "bulk data is zero-copy";
  EXPECT_EQ(cap.payload()[0].iov_len, 3u);
  EXPECT_EQ(cap.payload()[1].iov_len, 7u);
}

TEST(CapturedRequestTest, HeaderLengthBoundsWhatIsTaken) {
  Bytes b(FUSE_LOOKUP, std::string("abc\0junk", 8));
  reinterpret_cast<fuse_in_header*>(b.data.data())->len = sizeof(fuse_in_header) + 4;
  CapturedRequest cap;
  ASSERT_TRUE(cap.capture(b.iov, false));
  EXPECT_EQ(cap.args().size(), 4u) << "bytes past the header's length are not arguments";
  EXPECT_EQ(cap.sent(), b.data.size());
}

TEST(CapturedRequestTest, ShortRequestHasNoHeader) {
  std::vector<char> bytes(sizeof(fuse_in_header) - 1);
  iovec v{bytes.data(), bytes.size()};
  CapturedRequest cap;
  EXPECT_FALSE(cap.capture({&v, 1}, false));
  EXPECT_EQ(cap.sent(), bytes.size());
}

TEST(CapturedRequestTest, OversizedRequestIsFlaggedNotCopiedWhole) {
  Bytes b(FUSE_SETXATTR, std::string(CapturedRequest::kMaxArgs + 100, 'x'));
  CapturedRequest cap;
  ASSERT_TRUE(cap.capture(b.iov, false));
  EXPECT_TRUE(cap.too_large());
  EXPECT_EQ(cap.args().size(), CapturedRequest::kMaxArgs);
}

TEST(CapturedRequestTest, PrivateBuffersAreViewedInPlace) {
  Bytes b(FUSE_LOOKUP, std::string("name\0", 5));
  CapturedRequest cap;
  ASSERT_TRUE(cap.capture(b.iov, true));
  EXPECT_EQ(cap.args().data(), b.data.data() + sizeof(fuse_in_header))
      << "a /dev/fuse or TCP buffer is dpfs's own: no copy";
}

TEST(CapturedRequestTest, StorageIsReusedAcrossRequests) {
  CapturedRequest cap;
  Bytes big(FUSE_SETXATTR, std::string(10000, 'x'));
  ASSERT_TRUE(cap.capture(big.iov, false));
  const char* storage = cap.args().data();
  Bytes small(FUSE_LOOKUP, std::string("a\0", 2));
  ASSERT_TRUE(cap.capture(small.iov, false));
  EXPECT_EQ(cap.args().data(), storage) << "no allocation once the capacity is there";
  EXPECT_FALSE(cap.too_large());
}

}  // namespace
}  // namespace dpfs::fuse
