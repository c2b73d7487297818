// The FUSE session against hand-built and byte-exact requests: decoding,
// INIT negotiation, reply encoding, and malformed input of every kind.
#include "fuse/session.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <functional>
#include <optional>
#include <thread>
#include <vector>

#include "backend/null/null.h"
#include "session_harness.h"

namespace dpfs {
namespace {

using testing::init_request;
using testing::RequestBuilder;
using testing::TestRequest;

// Records what it was asked and answers from canned values. A reply is kept
// unanswered when `hold` is set, to test late and dropped replies.
class RecordingBackend : public Backend {
 public:
  Capabilities capabilities() const override {
    Capabilities c;
    c.posix_locks = true;
    return c;
  }
  void lookup(const Context& ctx, uint64_t parent, std::string_view name,
              EntryReply reply) override {
    if (on_call) on_call();
    last_ctx = ctx;
    last_ino = parent;
    last_name = std::string(name);
    if (name == "missing") return reply.error(ENOENT);
    Entry e;
    e.ino = 42;
    e.generation = 3;
    e.attr = attr;
    e.entry_timeout = 1.5;
    e.attr_timeout = 2.0;
    reply.ok(e);
  }
  void forget(uint64_t ino, uint64_t nlookup) override { forgets.emplace_back(ino, nlookup); }
  void getattr(const Context&, uint64_t ino, std::optional<uint64_t> fh, AttrReply reply) override {
    last_ino = ino;
    last_fh = fh;
    if (hold) {
      held_attr = std::move(reply);
      return;
    }
    if (drop) return;  // reply destroyed unanswered
    reply.ok(attr, 1.0);
    if (twice) reply.ok(attr, 1.0);
  }
  void read(const Context&, uint64_t, uint64_t, uint64_t offset, uint32_t size,
            std::span<const iovec> dst, ReadReply reply) override {
    last_offset = offset;
    read_iov.assign(dst.begin(), dst.end());
    std::string data(size / 2, 'x');  // a short read
    reply.ok(iov_copy_in(dst, data.data(), data.size()));
  }
  void write(const Context&, uint64_t, uint64_t, uint64_t offset, std::span<const iovec> src,
             uint32_t, WriteReply reply) override {
    last_offset = offset;
    write_iov.assign(src.begin(), src.end());
    reply.ok(iov_length(src));
  }
  void getxattr(const Context&, uint64_t, std::string_view name, XattrReply reply) override {
    last_name = std::string(name);
    reply.ok(std::string_view("value"));
  }
  void setxattr(const Context&, uint64_t, std::string_view name, std::span<const std::byte> value,
                uint32_t flags, StatusReply reply) override {
    if (on_call) on_call();
    last_name = std::string(name);
    last_value.assign(reinterpret_cast<const char*>(value.data()), value.size());
    last_flags = flags;
    reply.ok();
  }
  void readdir(const Context&, uint64_t, uint64_t, uint64_t offset, DirReply reply) override {
    last_offset = offset;
    plus = reply.plus();
    for (uint64_t i = offset; i < 1000; ++i) {
      if (!reply.add("file" + std::to_string(i), 100 + i, DT_REG, i + 1)) break;
      ++added;
    }
    reply.done();
  }
  void rename(const Context&, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, StatusReply reply) override {
    if (on_call) on_call();
    last_ino = parent;
    last_name = std::string(name) + "->" + std::to_string(new_parent) + "/" + std::string(new_name);
    last_flags = flags;
    reply.ok();
  }
  void symlink(const Context&, uint64_t, std::string_view name, std::string_view target,
               EntryReply reply) override {
    last_name = std::string(name) + "->" + std::string(target);
    reply.error(EEXIST);
  }
  void interrupt(uint64_t unique) override { interrupted = unique; }

  struct stat attr {};
  std::optional<uint64_t> last_fh;
  Context last_ctx;
  uint64_t last_ino = 0, last_offset = 0;
  uint32_t last_flags = 0;
  std::string last_name, last_value;
  std::vector<std::pair<uint64_t, uint64_t>> forgets;
  std::vector<iovec> read_iov, write_iov;
  bool hold = false, drop = false, twice = false, plus = false;
  AttrReply held_attr;
  int added = 0;
  uint64_t interrupted = 0;
  // Runs first in lookup, rename and setxattr: a tenant rewriting its
  // request while the backend works on it.
  std::function<void()> on_call;
};

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() : session(backend, {}) {
    backend.attr.st_ino = 42;
    backend.attr.st_mode = S_IFREG | 0644;
    backend.attr.st_nlink = 1;
    backend.attr.st_uid = 1000;
    backend.attr.st_gid = 100;
    backend.attr.st_size = 12345;
    backend.attr.st_blocks = 24;
    backend.attr.st_atim = {1700000000, 1};
    backend.attr.st_mtim = {1700000001, 2};
    backend.attr.st_ctim = {1700000002, 999999999};
  }

  void init() {
    TestRequest req(init_request());
    session.handle(req);
    ASSERT_EQ(req.error(), 0);
  }

  // Handles a request and checks it completed exactly once.
  TestRequest run(std::vector<uint8_t> bytes, size_t out_size = 1 << 21,
                  std::vector<size_t> splits = {}) {
    TestRequest req(std::move(bytes), out_size, std::move(splits));
    session.handle(req);
    EXPECT_EQ(req.completions, 1) << "every request completes exactly once";
    return req;
  }

  // The same on another session.
  TestRequest run_on(fuse::FuseSession& s, std::vector<uint8_t> bytes) {
    TestRequest req(std::move(bytes), 1 << 21);
    s.handle(req);
    EXPECT_EQ(req.completions, 1);
    return req;
  }

  RecordingBackend backend;
  fuse::FuseSession session;
};

TEST_F(SessionTest, InitNegotiatesVersionLimitsAndFeatures) {
  TestRequest req = run(init_request());
  ASSERT_EQ(req.error(), 0);
  ASSERT_EQ(req.reply_len, sizeof(fuse_out_header) + sizeof(fuse_init_out));
  const auto& out = req.payload<fuse_init_out>();
  EXPECT_EQ(out.major, 7u);
  EXPECT_EQ(out.minor, uint32_t(FUSE_KERNEL_MINOR_VERSION));
  EXPECT_EQ(out.max_readahead, 128u * 1024) << "the smaller of the kernel's and ours";
  EXPECT_EQ(out.max_write, 1u << 20);
  EXPECT_EQ(out.max_pages, 256);
  EXPECT_EQ(out.time_gran, 1u);
  EXPECT_TRUE(out.flags & FUSE_POSIX_LOCKS);
  EXPECT_TRUE(out.flags & FUSE_DO_READDIRPLUS);
  EXPECT_TRUE(out.flags & FUSE_MAX_PAGES);
  EXPECT_FALSE(out.flags & FUSE_FLOCK_LOCKS) << "backend did not offer flock";
  EXPECT_FALSE(out.flags & FUSE_WRITEBACK_CACHE) << "not asked for";
  EXPECT_FALSE(out.flags & FUSE_DONT_MASK) << "backends expect the kernel to apply umask";
  EXPECT_FALSE(out.flags & FUSE_HANDLE_KILLPRIV_V2) << "backend did not declare killpriv_v2";
  EXPECT_TRUE(session.initialized());
}

// A successor process's session (docs/restart.md): what INIT negotiated
// in the first one is handed to the next, which serves without INIT.
TEST_F(SessionTest, ARestoredSessionServesWithoutInit) {
  std::optional<fuse::InitState> kept;
  fuse::SessionOptions options;
  options.on_init = [&](const fuse::InitState& s) { kept = s; };
  fuse::FuseSession first(backend, options);
  TestRequest req(init_request());
  first.handle(req);
  ASSERT_EQ(req.error(), 0);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->max_write, 1u << 20);
  EXPECT_EQ(kept->flags, first.negotiated_flags());

  fuse::FuseSession next(backend, {});
  EXPECT_EQ(run_on(next, RequestBuilder(FUSE_GETATTR, 1).arg(fuse_getattr_in{}).bytes()).error(),
            -EIO)
      << "nothing before INIT";
  ASSERT_TRUE(next.restore(*kept));
  EXPECT_EQ(next.negotiated_flags(), first.negotiated_flags());
  EXPECT_EQ(next.max_write(), first.max_write());
  EXPECT_EQ(next.proto_minor(), first.proto_minor());
  EXPECT_EQ(run_on(next, RequestBuilder(FUSE_GETATTR, 1).arg(fuse_getattr_in{}).bytes()).error(),
            0);

  // What this session would not have negotiated is refused.
  fuse::FuseSession other(backend, {});
  fuse::InitState bad = *kept;
  bad.max_write = 2u << 20;  // above its own
  EXPECT_FALSE(other.restore(bad));
  bad = *kept;
  bad.proto_minor = 5;
  EXPECT_FALSE(other.restore(bad));
  bad = *kept;
  bad.flags |= 1ull << 62;
  EXPECT_FALSE(other.restore(bad));
  EXPECT_FALSE(other.initialized());
}

TEST_F(SessionTest, InitOnlyOffersWhatTheKernelSupports) {
  TestRequest req = run(init_request(FUSE_KERNEL_MINOR_VERSION, FUSE_ASYNC_READ));
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(req.payload<fuse_init_out>().flags & ~uint32_t(FUSE_INIT_EXT),
            uint32_t(FUSE_ASYNC_READ));
  EXPECT_EQ(req.payload<fuse_init_out>().max_write, 32u * 4096) << "no MAX_PAGES: 32 pages";
}

TEST_F(SessionTest, InitFromOlderKernelGetsCompatReplySize) {
  TestRequest req = run(init_request(22));
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(req.reply_len, sizeof(fuse_out_header) + FUSE_COMPAT_22_INIT_OUT_SIZE);
  EXPECT_EQ(req.payload<fuse_init_out>().minor, 22u);
}

TEST_F(SessionTest, InitRejectsAncientProtocol) {
  TestRequest req = run(init_request(5));
  EXPECT_EQ(req.error(), -EPROTO);
  EXPECT_FALSE(session.initialized());
}

TEST_F(SessionTest, InitFromNewerMajorOffersOurs) {
  fuse_init_in in{};
  in.major = 8;
  in.minor = 1;
  TestRequest req = run(RequestBuilder(FUSE_INIT, 0, 1).arg(in).bytes());
  EXPECT_EQ(req.error(), 0);
  EXPECT_EQ(req.payload<fuse_init_out>().major, 7u);
  EXPECT_FALSE(session.initialized()) << "the kernel retries INIT with our major";
}

TEST_F(SessionTest, RequestsBeforeInitFailWithEio) {
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 1).arg(fuse_getattr_in{}).bytes());
  EXPECT_EQ(req.error(), -EIO);
  EXPECT_EQ(backend.last_ino, 0u) << "backend must not be called";
}

// A LOOKUP of "hello" in the root, unique 0x1234, uid 1000, gid 100, pid
// 4242, as the kernel writes it, and the exact ENOENT reply.
TEST_F(SessionTest, LookupByteExact) {
  init();
  const std::vector<uint8_t> lookup = {
      0x2e, 0x00, 0x00, 0x00,                          // len 46
      0x01, 0x00, 0x00, 0x00,                          // opcode LOOKUP
      0x34, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // unique
      0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // nodeid 1
      0xe8, 0x03, 0x00, 0x00,                          // uid 1000
      0x64, 0x00, 0x00, 0x00,                          // gid 100
      0x92, 0x10, 0x00, 0x00,                          // pid 4242
      0x00, 0x00, 0x00, 0x00,                          // total_extlen, padding
      'h',  'e',  'l',  'l',  'o',  0x00,
  };
  TestRequest req = run(lookup);
  EXPECT_EQ(backend.last_name, "hello");
  EXPECT_EQ(backend.last_ctx.uid, 1000u);
  EXPECT_EQ(backend.last_ctx.gid, 100u);
  EXPECT_EQ(backend.last_ctx.pid, 4242u);
  EXPECT_EQ(backend.last_ctx.unique, 0x1234u);
  ASSERT_EQ(req.reply_len, sizeof(fuse_out_header) + sizeof(fuse_entry_out));
  const auto& e = req.payload<fuse_entry_out>();
  EXPECT_EQ(e.nodeid, 42u);
  EXPECT_EQ(e.generation, 3u);
  EXPECT_EQ(e.entry_valid, 1u);
  EXPECT_EQ(e.entry_valid_nsec, 500000000u);
  EXPECT_EQ(e.attr_valid, 2u);
  EXPECT_EQ(e.attr.mode, uint32_t(S_IFREG | 0644));
  EXPECT_EQ(e.attr.ctimensec, 999999999u);

  std::vector<uint8_t> missing = lookup;
  missing.resize(48);
  std::copy_n("missing", 8, missing.begin() + 40);
  missing[0] = 48;
  TestRequest enoent = run(missing);
  const std::vector<uint8_t> expected = {
      0x10, 0x00, 0x00, 0x00,                          // len 16
      0xfe, 0xff, 0xff, 0xff,                          // error -ENOENT
      0x34, 0x12, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,  // unique
  };
  EXPECT_EQ(enoent.reply_bytes(), expected);
}

TEST_F(SessionTest, GetattrReplyByteExact) {
  init();
  fuse_getattr_in in{};
  in.getattr_flags = FUSE_GETATTR_FH;
  in.fh = 9;
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42, 0x99).arg(in).bytes());
  ASSERT_EQ(backend.last_fh, std::optional<uint64_t>(9));
  const std::vector<uint8_t> expected = {
      // header: len 120, error 0, unique 0x99
      0x78, 0, 0, 0, 0, 0, 0, 0, 0x99, 0, 0, 0, 0, 0, 0, 0,
      // attr_valid 1 s, 0 ns, dummy
      1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
      // ino 42, size 12345, blocks 24
      42, 0, 0, 0, 0, 0, 0, 0, 0x39, 0x30, 0, 0, 0, 0, 0, 0, 24, 0, 0, 0, 0, 0, 0, 0,
      // atime, mtime, ctime seconds (1700000000 = 0x6553f100)
      0x00, 0xf1, 0x53, 0x65, 0, 0, 0, 0, 0x01, 0xf1, 0x53, 0x65, 0, 0, 0, 0, 0x02, 0xf1, 0x53,
      0x65, 0, 0, 0, 0,
      // atimensec 1, mtimensec 2, ctimensec 999999999
      1, 0, 0, 0, 2, 0, 0, 0, 0xff, 0xc9, 0x9a, 0x3b,
      // mode 0100644, nlink 1, uid 1000, gid 100, rdev 0, blksize 4096, flags 0
      0xa4, 0x81, 0, 0, 1, 0, 0, 0, 0xe8, 0x03, 0, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0,
      0, 0, 0};
  EXPECT_EQ(req.reply_bytes(), expected);
}

TEST_F(SessionTest, UnknownOpcodesGetEnosys) {
  init();
  for (uint32_t op : {uint32_t(FUSE_IOCTL), uint32_t(FUSE_BMAP), 63u, 64u, 4096u, 0xffffffffu}) {
    TestRequest req = run(RequestBuilder(op, 1).raw(std::string(64, '\0')).bytes());
    EXPECT_EQ(req.error(), -ENOSYS) << "opcode " << op;
  }
}

TEST_F(SessionTest, ShortHeaderGetsEinval) {
  init();
  std::vector<uint8_t> bytes = RequestBuilder(FUSE_GETATTR).bytes();
  bytes.resize(20);
  TestRequest req = run(bytes);
  EXPECT_EQ(req.error(), -EINVAL);
  EXPECT_EQ(req.reply_len, sizeof(fuse_out_header));
}

TEST_F(SessionTest, HeaderLengthMustMatchWhatWasSent) {
  init();
  RequestBuilder b(FUSE_GETATTR, 42);
  b.arg(fuse_getattr_in{});
  std::vector<uint8_t> bytes = b.bytes();
  bytes[0] = 200;  // claims more than was sent
  EXPECT_EQ(run(bytes).error(), -EINVAL);
  bytes[0] = 20;  // shorter than the header itself
  EXPECT_EQ(run(bytes).error(), -EINVAL);
  EXPECT_EQ(backend.last_ino, 0u);
}

TEST_F(SessionTest, ExtensionsLongerThanRequestGetEinval) {
  init();
  RequestBuilder b(FUSE_GETATTR, 42);
  b.arg(fuse_getattr_in{});
  b.header().total_extlen = 100;
  EXPECT_EQ(run(b.bytes()).error(), -EINVAL);
}

TEST_F(SessionTest, ShortArgumentsGetEinval) {
  init();
  // Each of these carries one byte less than its argument struct.
  const std::vector<std::pair<uint32_t, size_t>> ops = {
      {FUSE_GETATTR, sizeof(fuse_getattr_in)},
      {FUSE_SETATTR, sizeof(fuse_setattr_in)},
      {FUSE_OPEN, sizeof(fuse_open_in)},
      {FUSE_READ, sizeof(fuse_read_in)},
      {FUSE_WRITE, sizeof(fuse_write_in)},
      {FUSE_RELEASE, sizeof(fuse_release_in)},
      {FUSE_FSYNC, sizeof(fuse_fsync_in)},
      {FUSE_FLUSH, sizeof(fuse_flush_in)},
      {FUSE_GETLK, sizeof(fuse_lk_in)},
      {FUSE_SETLKW, sizeof(fuse_lk_in)},
      {FUSE_ACCESS, sizeof(fuse_access_in)},
      {FUSE_CREATE, sizeof(fuse_create_in)},
      {FUSE_FALLOCATE, sizeof(fuse_fallocate_in)},
      {FUSE_LSEEK, sizeof(fuse_lseek_in)},
      {FUSE_COPY_FILE_RANGE, sizeof(fuse_copy_file_range_in)},
      {FUSE_RENAME2, sizeof(fuse_rename2_in)},
      {FUSE_MKNOD, sizeof(fuse_mknod_in)},
      {FUSE_READDIR, sizeof(fuse_read_in)},
      {FUSE_GETXATTR, sizeof(fuse_getxattr_in)},
  };
  for (auto [op, size] : ops) {
    TestRequest req = run(RequestBuilder(op, 42).raw(std::string(size - 1, '\0')).bytes());
    EXPECT_EQ(req.error(), -EINVAL) << fuse::opcode_name(op);
  }
}

TEST_F(SessionTest, NamesAreValidated) {
  init();
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).raw("unterminated").bytes()).error(), -EINVAL);
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name("a/b").bytes()).error(), -EINVAL);
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name("").bytes()).error(), -EINVAL);
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name(std::string(256, 'n')).bytes()).error(),
            -ENAMETOOLONG);
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name(std::string(255, 'n')).bytes()).error(), 0);
  EXPECT_EQ(backend.last_name, std::string(255, 'n'));
  // A rename's second name unterminated.
  EXPECT_EQ(
      run(RequestBuilder(FUSE_RENAME).arg(fuse_rename_in{5}).name("a").raw("b").bytes()).error(),
      -EINVAL);
  // A symlink target of PATH_MAX bytes is too long.
  EXPECT_EQ(
      run(RequestBuilder(FUSE_SYMLINK).name("l").name(std::string(4096, 't')).bytes()).error(),
      -ENAMETOOLONG);
  EXPECT_EQ(run(RequestBuilder(FUSE_SYMLINK).name("l").name("").bytes()).error(), -ENOENT);
}

// A guest may rewrite its request while dpfs works on it: what the backend
// is handed must be the bytes the session checked, in memory the tenant
// cannot reach, however the tenant's copy changes meanwhile.
TEST_F(SessionTest, BackendSeesThePrivateCopyNotTheTenantsBuffer) {
  init();
  auto rewrite = [](TestRequest& req, std::string_view from, std::string_view to) {
    ASSERT_EQ(from.size(), to.size());
    for (const iovec& v : req.in) {
      auto* p = static_cast<char*>(v.iov_base);
      for (size_t i = 0; i + from.size() <= v.iov_len; ++i) {
        if (std::string_view(p + i, from.size()) == from) std::memcpy(p + i, to.data(), to.size());
      }
    }
  };
  {
    TestRequest req(RequestBuilder(FUSE_LOOKUP).name("abcd").bytes());
    backend.on_call = [&] { rewrite(req, "abcd", "../E"); };
    session.handle(req);
    EXPECT_EQ(req.error(), 0);
    EXPECT_EQ(backend.last_name, "abcd") << "the name was read again from the tenant's buffer";
  }
  {
    fuse_rename_in in{};
    in.newdir = 9;
    TestRequest req(RequestBuilder(FUSE_RENAME, 5).arg(in).name("src1").name("dst1").bytes(),
                    1 << 21, {sizeof(fuse_in_header) + sizeof(in) + 2});
    backend.on_call = [&] {
      rewrite(req, "c1", "/x");
      rewrite(req, "dst1", "../d");
    };
    session.handle(req);
    EXPECT_EQ(req.error(), 0);
    EXPECT_EQ(backend.last_name, "src1->9/dst1");
  }
  {
    fuse_setxattr_in in{};
    in.size = 3;
    TestRequest req(RequestBuilder(FUSE_SETXATTR, 5).arg(in).name("user.abc").raw("v12").bytes());
    backend.on_call = [&] {
      rewrite(req, "user.abc", "trusted.");
      rewrite(req, "v12", "XYZ");
    };
    session.handle(req);
    EXPECT_EQ(req.error(), 0);
    EXPECT_EQ(backend.last_name, "user.abc");
    EXPECT_EQ(backend.last_value, "v12");
  }
}

TEST_F(SessionTest, NameSplitAcrossBuffersIsGathered) {
  init();
  std::vector<uint8_t> bytes = RequestBuilder(FUSE_LOOKUP).name("split-name").bytes();
  TestRequest req = run(bytes, 1 << 21, {sizeof(fuse_in_header) + 3, sizeof(fuse_in_header) + 7});
  EXPECT_EQ(req.error(), 0);
  EXPECT_EQ(backend.last_name, "split-name");
}

TEST_F(SessionTest, RenameCarriesBothNamesAndFlags) {
  init();
  fuse_rename2_in in{};
  in.newdir = 77;
  in.flags = RENAME_NOREPLACE;
  EXPECT_EQ(run(RequestBuilder(FUSE_RENAME2, 5).arg(in).name("old").name("new").bytes()).error(),
            0);
  EXPECT_EQ(backend.last_name, "old->77/new");
  EXPECT_EQ(backend.last_flags, uint32_t(RENAME_NOREPLACE));
  in.flags = RENAME_NOREPLACE | RENAME_EXCHANGE;
  EXPECT_EQ(run(RequestBuilder(FUSE_RENAME2, 5).arg(in).name("a").name("b").bytes()).error(),
            -EINVAL);
  in.flags = 1u << 20;
  EXPECT_EQ(run(RequestBuilder(FUSE_RENAME2, 5).arg(in).name("a").name("b").bytes()).error(),
            -EINVAL);
}

TEST_F(SessionTest, WriteHandsTheTenantsBuffersWithoutCopy) {
  init();
  fuse_write_in in{};
  in.offset = 4096;
  in.size = 10;
  std::vector<uint8_t> bytes = RequestBuilder(FUSE_WRITE, 42).arg(in).raw("0123456789").bytes();
  const size_t data_at = sizeof(fuse_in_header) + sizeof(fuse_write_in);
  TestRequest req(bytes, 1 << 21, {data_at + 4});
  session.handle(req);
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(req.payload<fuse_write_out>().size, 10u);
  ASSERT_EQ(backend.write_iov.size(), 2u) << "one iovec per tenant buffer";
  EXPECT_EQ(backend.write_iov[0].iov_base, static_cast<const char*>(req.in[0].iov_base) + data_at)
      << "the payload is not copied";
  EXPECT_EQ(backend.write_iov[0].iov_len, 4u);
  EXPECT_EQ(backend.write_iov[1].iov_len, 6u);
}

TEST_F(SessionTest, WriteLengthsAreChecked) {
  init();
  fuse_write_in in{};
  in.size = 100;  // carries 10
  EXPECT_EQ(run(RequestBuilder(FUSE_WRITE, 42).arg(in).raw("0123456789").bytes()).error(), -EINVAL);
  in.size = (1u << 20) + 4096;  // past max_write
  EXPECT_EQ(run(RequestBuilder(FUSE_WRITE, 42).arg(in).bytes()).error(), -EINVAL);
  in.size = 10;
  in.offset = uint64_t(INT64_MAX) - 5;  // end past the largest offset
  EXPECT_EQ(run(RequestBuilder(FUSE_WRITE, 42).arg(in).raw("0123456789").bytes()).error(), -EFBIG);
  EXPECT_TRUE(backend.write_iov.empty());
}

TEST_F(SessionTest, ReadFillsTheReplyBufferDirectly) {
  init();
  fuse_read_in in{};
  in.offset = 8192;
  in.size = 4096;
  TestRequest req = run(RequestBuilder(FUSE_READ, 42).arg(in).bytes());
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(req.reply_len, sizeof(fuse_out_header) + 2048) << "a short read is passed on";
  EXPECT_EQ(req.header().len, req.reply_len);
  EXPECT_EQ(backend.last_offset, 8192u);
  ASSERT_EQ(backend.read_iov.size(), 1u);
  EXPECT_EQ(backend.read_iov[0].iov_base, req.reply_data());
  EXPECT_EQ(backend.read_iov[0].iov_len, 4096u);
  EXPECT_EQ(req.reply_data()[0], 'x');
}

TEST_F(SessionTest, ReadLargerThanReplyBufferOrMaxWriteFails) {
  init();
  fuse_read_in in{};
  in.size = 8192;
  EXPECT_EQ(run(RequestBuilder(FUSE_READ, 42).arg(in).bytes(), 4096).error(), -EINVAL);
  in.size = 0xffffffff;
  EXPECT_EQ(run(RequestBuilder(FUSE_READ, 42).arg(in).bytes()).error(), -EINVAL);
  in.size = 10;
  in.offset = ~0ull;
  EXPECT_EQ(run(RequestBuilder(FUSE_READ, 42).arg(in).bytes()).error(), -EINVAL);
  EXPECT_TRUE(backend.read_iov.empty());
}

TEST_F(SessionTest, ReplyBufferTooSmallForHeaderCompletesWithoutReply) {
  init();
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42).arg(fuse_getattr_in{}).bytes(), 8);
  EXPECT_EQ(req.reply_len, 0u);
}

TEST_F(SessionTest, ReplyThatDoesNotFitAnswersEio) {
  init();
  // Room for the header and 10 bytes: an attr reply does not fit.
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42).arg(fuse_getattr_in{}).bytes(), 26);
  EXPECT_EQ(req.error(), -EIO);
}

TEST_F(SessionTest, DroppedReplyAnswersEio) {
  init();
  backend.drop = true;
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42).arg(fuse_getattr_in{}).bytes());
  EXPECT_EQ(req.error(), -EIO);
}

TEST_F(SessionTest, SecondReplyIsIgnored) {
  init();
  backend.twice = true;
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42).arg(fuse_getattr_in{}).bytes());
  EXPECT_EQ(req.error(), 0);
}

TEST_F(SessionTest, LateReplyCompletesWhenAnswered) {
  init();
  backend.hold = true;
  TestRequest req(RequestBuilder(FUSE_GETATTR, 42, 555).arg(fuse_getattr_in{}).bytes());
  session.handle(req);
  EXPECT_EQ(req.completions, 0);
  EXPECT_EQ(backend.held_attr.unique(), 555u);
  backend.held_attr.ok(backend.attr, 0);
  EXPECT_EQ(req.completions, 1);
  EXPECT_EQ(req.error(), 0);
}

TEST_F(SessionTest, ForgetTakesNoReply) {
  init();
  TestRequest req = run(RequestBuilder(FUSE_FORGET, 42).arg(fuse_forget_in{3}).bytes());
  EXPECT_EQ(req.reply_len, 0u);
  ASSERT_EQ(backend.forgets.size(), 1u);
  EXPECT_EQ(backend.forgets[0], std::make_pair(uint64_t(42), uint64_t(3)));
}

TEST_F(SessionTest, ForgetNeedsNoReplyBuffer) {
  init();
  // virtio-fs: FORGET comes on the hiprio queue with no writable buffers.
  TestRequest req = run(RequestBuilder(FUSE_FORGET, 42).arg(fuse_forget_in{2}).bytes(), 0);
  EXPECT_EQ(req.reply_len, 0u);
  ASSERT_EQ(backend.forgets.size(), 1u);
  EXPECT_EQ(backend.forgets[0], std::make_pair(uint64_t(42), uint64_t(2)));
}

TEST_F(SessionTest, BatchForgetOnlyForgetsWhatItCarries) {
  init();
  fuse_batch_forget_in in{};
  in.count = 1000000;  // lies: carries two
  TestRequest req = run(RequestBuilder(FUSE_BATCH_FORGET, 0)
                            .arg(in)
                            .arg(fuse_forget_one{10, 1})
                            .arg(fuse_forget_one{11, 2})
                            .bytes());
  EXPECT_EQ(req.reply_len, 0u);
  ASSERT_EQ(backend.forgets.size(), 2u);
  EXPECT_EQ(backend.forgets[1], std::make_pair(uint64_t(11), uint64_t(2)));
}

TEST_F(SessionTest, InterruptReachesBackendWithoutReply) {
  init();
  TestRequest req = run(RequestBuilder(FUSE_INTERRUPT, 0).arg(fuse_interrupt_in{1234}).bytes());
  EXPECT_EQ(req.reply_len, 0u);
  EXPECT_EQ(backend.interrupted, 1234u);
}

TEST_F(SessionTest, XattrSizeProbeAndErange) {
  init();
  fuse_getxattr_in in{};
  in.size = 0;
  TestRequest probe = run(RequestBuilder(FUSE_GETXATTR, 42).arg(in).name("user.a").bytes());
  ASSERT_EQ(probe.error(), 0);
  EXPECT_EQ(probe.payload<fuse_getxattr_out>().size, 5u);
  in.size = 3;
  EXPECT_EQ(run(RequestBuilder(FUSE_GETXATTR, 42).arg(in).name("user.a").bytes()).error(), -ERANGE);
  in.size = 64;
  TestRequest full = run(RequestBuilder(FUSE_GETXATTR, 42).arg(in).name("user.a").bytes());
  EXPECT_EQ(full.reply_len, sizeof(fuse_out_header) + 5);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(full.reply_data()), 5), "value");
  EXPECT_EQ(
      run(RequestBuilder(FUSE_GETXATTR, 42).arg(in).name(std::string(256, 'x')).bytes()).error(),
      -ERANGE);
}

TEST_F(SessionTest, SetxattrValueLengthIsChecked) {
  init();  // negotiated SETXATTR_EXT: 16-byte argument
  fuse_setxattr_in in{};
  in.size = 3;
  in.flags = XATTR_CREATE;
  EXPECT_EQ(
      run(RequestBuilder(FUSE_SETXATTR, 42).arg(in).name("user.k").raw("abc").bytes()).error(), 0);
  EXPECT_EQ(backend.last_name, "user.k");
  EXPECT_EQ(backend.last_value, "abc");
  EXPECT_EQ(backend.last_flags, uint32_t(XATTR_CREATE));
  in.size = 300;  // carries 3
  EXPECT_EQ(
      run(RequestBuilder(FUSE_SETXATTR, 42).arg(in).name("user.k").raw("abc").bytes()).error(),
      -EINVAL);
  in.size = 1u << 20;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETXATTR, 42).arg(in).name("user.k").bytes()).error(), -E2BIG);
}

TEST_F(SessionTest, ReaddirEncodesDirentsByteExact) {
  init();
  fuse_read_in in{};
  in.size = 4096;
  TestRequest req = run(RequestBuilder(FUSE_READDIR, 1).arg(in).bytes());
  ASSERT_EQ(req.error(), 0);
  // "file0": 24-byte dirent head + 5 name bytes, padded to 32.
  const std::vector<uint8_t> first = {
      100, 0,   0,   0,   0,   0, 0, 0,  // ino 100
      1,   0,   0,   0,   0,   0, 0, 0,  // off 1 (next cookie)
      5,   0,   0,   0,                  // namelen
      8,   0,   0,   0,                  // DT_REG
      'f', 'i', 'l', 'e', '0', 0, 0, 0,
  };
  const auto bytes = req.reply_bytes();
  ASSERT_GE(bytes.size(), sizeof(fuse_out_header) + first.size());
  EXPECT_EQ(std::vector<uint8_t>(bytes.begin() + 16, bytes.begin() + 16 + long(first.size())),
            first);
  // The listing stops at the requested size with whole records only.
  EXPECT_LE(req.reply_len, sizeof(fuse_out_header) + 4096);
  EXPECT_EQ((req.reply_len - sizeof(fuse_out_header)) % 8, 0u);
  EXPECT_EQ(size_t(backend.added) * 32, req.reply_len - sizeof(fuse_out_header));
  EXPECT_FALSE(backend.plus);
}

TEST_F(SessionTest, HugeOffsetsAndSizesAreRefused) {
  init();
  fuse_lseek_in ls{};
  ls.offset = ~0ull;
  ls.whence = SEEK_DATA;
  EXPECT_EQ(run(RequestBuilder(FUSE_LSEEK, 42).arg(ls).bytes()).error(), -ENXIO);
  ls.offset = 0;
  ls.whence = 77;
  EXPECT_EQ(run(RequestBuilder(FUSE_LSEEK, 42).arg(ls).bytes()).error(), -EINVAL);
  fuse_fallocate_in fa{};
  fa.offset = uint64_t(INT64_MAX);
  fa.length = 10;
  EXPECT_EQ(run(RequestBuilder(FUSE_FALLOCATE, 42).arg(fa).bytes()).error(), -EFBIG);
  fa.offset = 0;
  fa.length = 0;
  EXPECT_EQ(run(RequestBuilder(FUSE_FALLOCATE, 42).arg(fa).bytes()).error(), -EINVAL);
  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE;
  sa.size = ~0ull;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(sa).bytes()).error(), -EFBIG);
  sa.valid = FATTR_MTIME;
  sa.mtimensec = 1000000000;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(sa).bytes()).error(), -EINVAL);
  fuse_lk_in lk{};
  lk.lk.type = 99;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETLK, 42).arg(lk).bytes()).error(), -EINVAL);
  lk.lk.type = F_WRLCK;
  lk.lk.start = 10;
  lk.lk.end = 5;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETLK, 42).arg(lk).bytes()).error(), -EINVAL);
}

TEST_F(SessionTest, StatsCountRequestsAndErrors) {
  init();
  run(RequestBuilder(FUSE_LOOKUP).name("a").bytes());
  run(RequestBuilder(FUSE_LOOKUP).name("missing").bytes());
  EXPECT_EQ(session.stats(FUSE_LOOKUP).requests, 2u);
  EXPECT_EQ(session.stats(FUSE_LOOKUP).errors, 1u);
}

// Each thread counts in its own block; stats() sums them. Two sessions
// served by the same threads count apart.
TEST(SessionStatsTest, CountsFromManyThreadsAndSessionsAddUp) {
  NullBackend backend;
  fuse::FuseSession a(backend, {});
  fuse::FuseSession b(backend, {});
  for (fuse::FuseSession* s : {&a, &b}) {
    TestRequest init(init_request());
    s->handle(init);
    ASSERT_EQ(init.error(), 0);
  }
  constexpr int kThreads = 4, kRounds = 300;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      fuse_getattr_in ga{};
      for (int i = 0; i < kRounds; ++i) {
        TestRequest get(RequestBuilder(FUSE_GETATTR, kRootIno).arg(ga).bytes(), 4096);
        a.handle(get);
        TestRequest miss(RequestBuilder(FUSE_LOOKUP, kRootIno).name("missing").bytes(), 4096);
        b.handle(miss);
        TestRequest hit(RequestBuilder(FUSE_LOOKUP, kRootIno).name("zero").bytes(), 4096);
        b.handle(hit);
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(a.stats(FUSE_GETATTR).requests, uint64_t(kThreads * kRounds));
  EXPECT_EQ(a.stats(FUSE_GETATTR).errors, 0u);
  EXPECT_EQ(a.stats(FUSE_LOOKUP).requests, 0u);
  EXPECT_EQ(b.stats(FUSE_LOOKUP).requests, uint64_t(2 * kThreads * kRounds));
  EXPECT_EQ(b.stats(FUSE_LOOKUP).errors, uint64_t(kThreads * kRounds));
  EXPECT_EQ(b.stats(FUSE_GETATTR).requests, 0u);
  EXPECT_EQ(a.stats(FUSE_INIT).requests + b.stats(FUSE_INIT).requests, 2u);
}

TEST(SessionXattrTest, XattrOffAnswersEnosysWithoutTheBackend) {
  RecordingBackend backend;
  fuse::SessionOptions options;
  options.xattr = false;
  fuse::FuseSession session(backend, options);
  TestRequest init(init_request());
  session.handle(init);
  fuse_getxattr_in in{};
  in.size = 64;
  TestRequest get(RequestBuilder(FUSE_GETXATTR, 42).arg(in).name("security.capability").bytes());
  session.handle(get);
  EXPECT_EQ(get.error(), -ENOSYS);
  EXPECT_EQ(backend.last_name, "") << "the backend is not asked";
  TestRequest list(RequestBuilder(FUSE_LISTXATTR, 42).arg(in).bytes());
  session.handle(list);
  EXPECT_EQ(list.error(), -ENOSYS);
}

TEST_F(SessionTest, ResetRequiresANewInit) {
  init();
  session.reset();
  EXPECT_FALSE(session.initialized());
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name("a").bytes()).error(), -EIO);
  init();
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name("a").bytes()).error(), 0);
}

TEST_F(SessionTest, DestroyEndsTheSession) {
  init();
  TestRequest req = run(RequestBuilder(FUSE_DESTROY, 0).bytes());
  EXPECT_EQ(req.error(), 0);
  EXPECT_EQ(req.reply_len, sizeof(fuse_out_header));
  EXPECT_TRUE(session.destroyed());
  EXPECT_FALSE(session.initialized());
  EXPECT_EQ(run(RequestBuilder(FUSE_LOOKUP).name("a").bytes()).error(), -EIO);
}

}  // namespace
}  // namespace dpfs

namespace dpfs {
namespace {

// The kernel refuses a request larger than the daemon's read buffer: a 64 KiB
// xattr must fit whatever max_write is.
TEST(SessionSizesTest, BuffersHoldTheLargestXattrWhateverMaxWrite) {
  RecordingBackend backend;
  fuse::SessionOptions options;
  options.max_write = 4096;
  fuse::FuseSession session(backend, options);
  EXPECT_GE(session.max_request_size(),
            sizeof(fuse_in_header) + sizeof(fuse_setxattr_in) + 256 + 65536);
  EXPECT_GE(session.max_reply_size(), sizeof(fuse_out_header) + 65536);
  EXPECT_EQ(session.max_write(), 4096u);
  options.max_write = 1u << 20;
  fuse::FuseSession big(backend, options);
  EXPECT_GE(big.max_request_size(), sizeof(fuse_in_header) + sizeof(fuse_write_in) + (1u << 20));
  EXPECT_GE(big.max_reply_size(), sizeof(fuse_out_header) + (1u << 20));
}

}  // namespace
}  // namespace dpfs
