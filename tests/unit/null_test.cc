// The null backend through a FuseSession: the fixed tree, zero-filled reads
// clamped at EOF, discarded writes, and EROFS for every change.
#include "backend/null/null.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/stat.h>

#include <string>
#include <vector>

#include "fuse/session.h"
#include "session_harness.h"

namespace dpfs {
namespace {

using testing::init_request;
using testing::RequestBuilder;
using testing::TestRequest;

constexpr uint64_t kFileSize = 10000;  // not a multiple of a page: EOF inside one
constexpr uint64_t kFile = NullBackend::kFileIno;

class NullTest : public ::testing::Test {
 protected:
  explicit NullTest(NullOptions options = {.file_size = kFileSize})
      : backend(options), session(backend, {}) {
    TestRequest req(init_request());
    session.handle(req);
    EXPECT_EQ(req.error(), 0);
  }

  TestRequest run(const RequestBuilder& b) {
    TestRequest req(b.bytes());
    session.handle(req);
    EXPECT_EQ(req.completions, 1) << "every request completes exactly once";
    return req;
  }

  TestRequest read(uint64_t ino, uint64_t offset, uint32_t size) {
    fuse_read_in in{};
    in.offset = offset;
    in.size = size;
    return run(RequestBuilder(FUSE_READ, ino).arg(in));
  }

  // The names a READDIR reply lists, from `offset`.
  std::vector<std::string> list(uint64_t offset) {
    fuse_read_in in{};
    in.offset = offset;
    in.size = 4096;
    TestRequest req = run(RequestBuilder(FUSE_READDIR, kRootIno).arg(in));
    EXPECT_EQ(req.error(), 0);
    std::vector<std::string> names;
    const uint8_t* p = req.reply_data();
    const uint8_t* end = p + (req.reply_len - sizeof(fuse_out_header));
    while (p < end) {
      const auto* d = reinterpret_cast<const fuse_dirent*>(p);
      names.emplace_back(d->name, d->namelen);
      p += FUSE_DIRENT_SIZE(d);
    }
    return names;
  }

  NullBackend backend;
  fuse::FuseSession session;
};

TEST_F(NullTest, RootHoldsOneFileNamedZero) {
  TestRequest req = run(RequestBuilder(FUSE_LOOKUP, kRootIno).name("zero"));
  ASSERT_EQ(req.error(), 0);
  const auto& e = req.payload<fuse_entry_out>();
  EXPECT_EQ(e.nodeid, kFile);
  EXPECT_EQ(e.attr.ino, kFile);
  EXPECT_EQ(e.attr.mode, uint32_t(S_IFREG | 0644));
  EXPECT_EQ(e.attr.size, kFileSize);
  EXPECT_GE(e.entry_valid, 3600u) << "nothing changes: long timeouts";

  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP, kRootIno).name("one")).error(), -ENOENT);
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP, kFile).name("x")).error(), -ENOTDIR);
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP, 77).name("zero")).error(), -ESTALE)
      << "an inode never given out";
}

TEST_F(NullTest, Getattr) {
  TestRequest root = run(RequestBuilder(FUSE_GETATTR, kRootIno).arg(fuse_getattr_in{}));
  ASSERT_EQ(root.error(), 0);
  EXPECT_EQ(root.payload<fuse_attr_out>().attr.mode, uint32_t(S_IFDIR | 0755));
  EXPECT_EQ(run(RequestBuilder(FUSE_GETATTR, 3).arg(fuse_getattr_in{})).error(), -ESTALE);
}

TEST_F(NullTest, OpenAsksForNoCaching) {
  fuse_open_in in{};
  in.flags = O_RDWR;
  TestRequest req = run(RequestBuilder(FUSE_OPEN, kFile).arg(in));
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(req.payload<fuse_open_out>().open_flags & FOPEN_KEEP_CACHE, 0u);
  EXPECT_EQ(req.payload<fuse_open_out>().open_flags & FOPEN_DIRECT_IO, 0u);
  EXPECT_EQ(run(RequestBuilder(FUSE_OPEN, kRootIno).arg(in)).error(), -EISDIR);
}

class NullDirectIoTest : public NullTest {
 protected:
  NullDirectIoTest() : NullTest({.file_size = kFileSize, .direct_io = true}) {}
};

TEST_F(NullDirectIoTest, OpenSetsDirectIo) {
  TestRequest req = run(RequestBuilder(FUSE_OPEN, kFile).arg(fuse_open_in{}));
  ASSERT_EQ(req.error(), 0);
  EXPECT_NE(req.payload<fuse_open_out>().open_flags & FOPEN_DIRECT_IO, 0u);
}

TEST_F(NullTest, ReadsZerosUpToEof) {
  TestRequest req = read(kFile, 0, 4096);
  ASSERT_EQ(req.error(), 0);
  ASSERT_EQ(req.reply_len, sizeof(fuse_out_header) + 4096);
  for (size_t i = 0; i < 4096; ++i) ASSERT_EQ(req.reply_data()[i], 0) << "byte " << i;

  TestRequest tail = read(kFile, 8192, 4096);
  ASSERT_EQ(tail.error(), 0);
  EXPECT_EQ(tail.reply_len, sizeof(fuse_out_header) + (kFileSize - 8192)) << "short at EOF";

  EXPECT_EQ(read(kFile, kFileSize, 4096).reply_len, sizeof(fuse_out_header));
  EXPECT_EQ(read(kFile, ~0ull, 4096).reply_len, sizeof(fuse_out_header));
  EXPECT_EQ(read(kRootIno, 0, 4096).error(), -EISDIR);
}

TEST_F(NullTest, WritesAreDiscarded) {
  fuse_write_in in{};
  in.offset = 100;
  in.size = 5000;
  TestRequest req = run(RequestBuilder(FUSE_WRITE, kFile).arg(in).raw(std::string(5000, 'a')));
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(req.payload<fuse_write_out>().size, 5000u);
  TestRequest again = read(kFile, 100, 16);
  ASSERT_EQ(again.error(), 0);
  EXPECT_EQ(again.reply_data()[0], 0);
  TestRequest attr = run(RequestBuilder(FUSE_GETATTR, kFile).arg(fuse_getattr_in{}));
  EXPECT_EQ(attr.payload<fuse_attr_out>().attr.size, kFileSize) << "the size never changes";
}

TEST_F(NullTest, ReaddirListsDotDotdotAndZero) {
  EXPECT_EQ(list(0), (std::vector<std::string>{".", "..", "zero"}));
  EXPECT_EQ(list(2), (std::vector<std::string>{"zero"})) << "offset: the cookie of \"..\"";
  EXPECT_TRUE(list(3).empty());
  EXPECT_TRUE(list(1000).empty()) << "past the end is an empty tail, not an error";
}

TEST_F(NullTest, ChangesAnswerErofs) {
  fuse_mkdir_in mk{};
  mk.mode = 0755;
  EXPECT_EQ(run(RequestBuilder(FUSE_MKDIR, kRootIno).arg(mk).name("d")).error(), -EROFS);
  fuse_create_in cr{};
  cr.flags = O_RDWR | O_CREAT;
  cr.mode = S_IFREG | 0644;
  EXPECT_EQ(run(RequestBuilder(FUSE_CREATE, kRootIno).arg(cr).name("f")).error(), -EROFS);
  EXPECT_EQ(run(RequestBuilder(FUSE_UNLINK, kRootIno).name("zero")).error(), -EROFS);
  EXPECT_EQ(run(RequestBuilder(FUSE_UNLINK, kFile).name("zero")).error(), -ENOTDIR);

  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE;
  sa.size = 0;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, kFile).arg(sa)).error(), -EROFS);
  sa.size = kFileSize;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, kFile).arg(sa)).error(), 0)
      << "truncating to the current size changes nothing";
  sa.valid = FATTR_MODE;
  sa.mode = 0600;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, kFile).arg(sa)).error(), -EROFS);
}

TEST_F(NullTest, StatfsAndXattrs) {
  TestRequest st = run(RequestBuilder(FUSE_STATFS, kRootIno));
  ASSERT_EQ(st.error(), 0);
  EXPECT_EQ(st.payload<fuse_statfs_out>().st.files, 2u);

  fuse_getxattr_in gx{};
  gx.size = 256;
  EXPECT_EQ(run(RequestBuilder(FUSE_GETXATTR, kFile).arg(gx).name("user.a")).error(), -ENODATA);
  gx.size = 0;
  TestRequest lx = run(RequestBuilder(FUSE_LISTXATTR, kFile).arg(gx));
  ASSERT_EQ(lx.error(), 0);
  EXPECT_EQ(lx.payload<fuse_getxattr_out>().size, 0u) << "no names";
}

}  // namespace
}  // namespace dpfs
