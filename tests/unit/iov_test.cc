#include "util/iov.h"

#include <gtest/gtest.h>

#include <string>

namespace dpfs {
namespace {

// "hello world!" split as "hel" | "" | "lo w" | "orld!\0tail"
struct Split {
  std::string a = "hel", b = "", c = "lo w", d = std::string("orld!\0tail", 10);
  std::vector<iovec> iov = {
      {a.data(), a.size()}, {b.data(), 0}, {c.data(), c.size()}, {d.data(), d.size()}};
};

TEST(IovReaderTest, ReadsAcrossBuffersAndStopsAtLimit) {
  Split s;
  IovReader r(s.iov, 8);
  char buf[16] = {};
  EXPECT_TRUE(r.read(buf, 5));
  EXPECT_EQ(std::string(buf, 5), "hello");
  EXPECT_EQ(r.remaining(), 3u);
  EXPECT_FALSE(r.read(buf, 4)) << "past the limit";
  EXPECT_EQ(r.remaining(), 3u) << "a failed read consumes nothing";
  EXPECT_TRUE(r.read(buf, 3));
  EXPECT_EQ(std::string(buf, 3), " wo");
  EXPECT_FALSE(r.skip(1));
}

TEST(IovReaderTest, LimitLargerThanBuffersIsClamped) {
  Split s;
  IovReader r(s.iov, 1 << 30);
  EXPECT_EQ(r.remaining(), 17u);
}

TEST(IovReaderTest, CstringContiguousAndGathered) {
  Split s;
  IovReader r(s.iov, 100);
  std::string scratch;
  std::string_view out;
  bool too_long = false;
  ASSERT_TRUE(r.cstring(255, &scratch, &out, &too_long));
  EXPECT_EQ(out, "hello world!");
  EXPECT_EQ(out.data(), scratch.data()) << "split string is gathered";
  EXPECT_EQ(r.remaining(), 4u);
  EXPECT_FALSE(r.cstring(255, &scratch, &out, &too_long)) << "'tail' has no NUL";
  EXPECT_FALSE(too_long);
}

TEST(IovReaderTest, CstringTooLong) {
  std::string s(300, 'x');
  s.push_back('\0');
  std::vector<iovec> iov = {{s.data(), s.size()}};
  IovReader r(iov, s.size());
  std::string scratch;
  std::string_view out;
  bool too_long = false;
  EXPECT_FALSE(r.cstring(255, &scratch, &out, &too_long));
  EXPECT_TRUE(too_long);
  IovReader r2(iov, s.size());
  ASSERT_TRUE(r2.cstring(300, &scratch, &out, &too_long));
  EXPECT_EQ(out.size(), 300u);
  EXPECT_EQ(out.data(), s.data()) << "contiguous string is not copied";
}

TEST(IovReaderTest, TakeIovecsPointsIntoBuffers) {
  Split s;
  IovReader r(s.iov, 100);
  r.skip(2);
  std::vector<iovec> out;
  ASSERT_TRUE(r.take_iovecs(5, &out));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].iov_base, s.a.data() + 2);
  EXPECT_EQ(out[0].iov_len, 1u);
  EXPECT_EQ(out[1].iov_base, s.c.data());
  EXPECT_EQ(out[1].iov_len, 4u);
  EXPECT_FALSE(r.take_iovecs(100, &out));
}

TEST(IovWriterTest, WritesAcrossBuffersWithinLimit) {
  std::string a(3, '.'), b(5, '.');
  std::vector<iovec> iov = {{a.data(), a.size()}, {b.data(), b.size()}};
  IovWriter w(iov, 7);
  EXPECT_TRUE(w.write("abcd", 4));
  EXPECT_FALSE(w.write("efgh", 4)) << "limit is 7";
  EXPECT_TRUE(w.write("efg", 3));
  EXPECT_EQ(a + b, "abcdefg.");
  EXPECT_EQ(w.written(), 7u);
  EXPECT_EQ(w.remaining(), 0u);
}

TEST(IovCopyTest, CopyInAndOutStopAtTheEnd) {
  std::string a(2, '.'), b(2, '.');
  std::vector<iovec> iov = {{a.data(), 2}, {b.data(), 2}};
  EXPECT_EQ(iov_copy_in(iov, "123456", 6), 4u);
  EXPECT_EQ(a + b, "1234");
  char out[8] = {};
  EXPECT_EQ(iov_copy_out(iov, out, 8), 4u);
  EXPECT_EQ(std::string(out), "1234");
}

}  // namespace
}  // namespace dpfs
