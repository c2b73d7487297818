// PolicyBackend and the session's half of the host policy, driven through a
// FuseSession as a transport would, with a backend that records what reached
// it.
#include "backend/policy.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstring>
#include <memory>
#include <string>

#include "fuse/session.h"
#include "session_harness.h"

namespace dpfs {
namespace {

using testing::RequestBuilder;
using testing::TestRequest;

// What reached the backend behind the policy.
struct Seen {
  int calls = 0;
  Context ctx;
  SetAttr setattr;
  uint32_t write_flags = 0;
  uint32_t mknod_mode = 0;
  std::string xattr_name;
};

class FakeBackend final : public Backend {
 public:
  explicit FakeBackend(Seen* seen) : seen_(seen) {
    attr_.st_ino = 42;
    attr_.st_mode = S_IFREG | 0644;
    attr_.st_nlink = 1;
    attr_.st_uid = 100005;
    attr_.st_gid = 100007;
  }
  Capabilities capabilities() const override {
    Capabilities caps;
    caps.killpriv_v2 = true;
    return caps;
  }
  void getattr(const Context& ctx, uint64_t, std::optional<uint64_t>, AttrReply r) override {
    note(ctx);
    r.ok(attr_, 1);
  }
  void lookup(const Context& ctx, uint64_t, std::string_view, EntryReply r) override {
    note(ctx);
    Entry e;
    e.ino = 42;
    e.attr = attr_;
    r.ok(e);
  }
  void setattr(const Context& ctx, uint64_t, const SetAttr& a, AttrReply r) override {
    note(ctx);
    seen_->setattr = a;
    r.ok(attr_, 1);
  }
  void mknod(const Context& ctx, uint64_t, std::string_view, uint32_t mode, uint32_t, uint32_t,
             EntryReply r) override {
    note(ctx);
    seen_->mknod_mode = mode;
    Entry e;
    e.ino = 43;
    e.attr = attr_;
    r.ok(e);
  }
  void open(const Context& ctx, uint64_t, uint32_t, OpenReply r) override {
    note(ctx);
    r.ok(7);
  }
  void write(const Context& ctx, uint64_t, uint64_t, uint64_t, std::span<const iovec> src,
             uint32_t flags, WriteReply r) override {
    note(ctx);
    seen_->write_flags = flags;
    r.ok(iov_length(src));
  }
  void release(const Context& ctx, uint64_t, uint64_t, uint32_t, uint64_t, ReleaseFlock,
               StatusReply r) override {
    note(ctx);
    r.ok();
  }
  void setxattr(const Context& ctx, uint64_t, std::string_view name, std::span<const std::byte>,
                uint32_t, StatusReply r) override {
    note(ctx);
    seen_->xattr_name = name;
    r.ok();
  }
  void getxattr(const Context& ctx, uint64_t, std::string_view name, XattrReply r) override {
    note(ctx);
    seen_->xattr_name = name;
    r.ok(std::string_view("v"));
  }
  void listxattr(const Context& ctx, uint64_t, XattrReply r) override {
    note(ctx);
    static constexpr char kNames[] =
        "user.a\0trusted.b\0security.capability\0system.posix_acl_access\0user.c";
    r.ok(std::string_view(kNames, sizeof kNames));  // with the last NUL
  }

 private:
  static size_t iov_length(std::span<const iovec> iov) {
    size_t n = 0;
    for (const iovec& v : iov) n += v.iov_len;
    return n;
  }
  void note(const Context& ctx) {
    ++seen_->calls;
    seen_->ctx = ctx;
  }
  Seen* seen_;
  struct stat attr_ {};
};

class PolicyTest : public ::testing::Test {
 protected:
  void start(HostPolicy policy) {
    auto shared = std::make_shared<const HostPolicy>(std::move(policy));
    backend_ = std::make_unique<PolicyBackend>(std::make_unique<FakeBackend>(&seen), shared);
    fuse::SessionOptions options;
    options.policy = shared;
    session_ = std::make_unique<fuse::FuseSession>(*backend_, options);
    TestRequest init(testing::init_request());
    session_->handle(init);
    ASSERT_EQ(init.error(), 0);
  }

  TestRequest run(RequestBuilder b, uint32_t uid, uint32_t gid) {
    b.header().uid = uid;
    b.header().gid = gid;
    TestRequest req(b.bytes());
    session_->handle(req);
    EXPECT_EQ(req.completions, 1);
    return req;
  }

  static HostPolicy mapped() {
    HostPolicy p;
    p.identity.uids.add_all("map:0:100000:65536");
    p.identity.gids.add_all("map:0:100000:65536,forbid-guest:70000:1");
    return p;
  }

  Seen seen;
  std::unique_ptr<PolicyBackend> backend_;
  std::unique_ptr<fuse::FuseSession> session_;
};

TEST_F(PolicyTest, CredentialsAreTranslatedAndAttributesShownBack) {
  ASSERT_NO_FATAL_FAILURE(start(mapped()));
  fuse_getattr_in in{};
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42).arg(in), 5, 7);
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(seen.ctx.uid, 100005u);
  EXPECT_EQ(seen.ctx.gid, 100007u);
  EXPECT_EQ(req.payload<fuse_attr_out>().attr.uid, 5u) << "host 100005 is the tenant's 5";
  EXPECT_EQ(req.payload<fuse_attr_out>().attr.gid, 7u);
  TestRequest entry = run(RequestBuilder(FUSE_LOOKUP, 1).name("f"), 5, 7);
  ASSERT_EQ(entry.error(), 0);
  EXPECT_EQ(entry.payload<fuse_entry_out>().attr.uid, 5u);
}

TEST_F(PolicyTest, WithoutTranslationIdsPassAsTheyAre) {
  ASSERT_NO_FATAL_FAILURE(start(HostPolicy{}));
  fuse_getattr_in in{};
  TestRequest req = run(RequestBuilder(FUSE_GETATTR, 42).arg(in), 0, 0);
  ASSERT_EQ(req.error(), 0);
  EXPECT_EQ(seen.ctx.uid, 0u);
  EXPECT_EQ(req.payload<fuse_attr_out>().attr.uid, 100005u);
}

TEST_F(PolicyTest, ForbiddenIdsGetEpermButMayStillLetGo) {
  ASSERT_NO_FATAL_FAILURE(start(mapped()));
  fuse_getattr_in in{};
  EXPECT_EQ(run(RequestBuilder(FUSE_GETATTR, 42).arg(in), 5, 70000).error(), -EPERM);
  EXPECT_EQ(run(RequestBuilder(FUSE_GETATTR, 42).arg(in), kInvalidId, 7).error(), -EPERM)
      << "(uid_t)-1 is never an identity";
  EXPECT_EQ(seen.calls, 0) << "refused before the backend";
  fuse_release_in rel{};
  rel.fh = 7;
  EXPECT_EQ(run(RequestBuilder(FUSE_RELEASE, 42).arg(rel), 5, 70000).error(), 0);
  EXPECT_EQ(seen.calls, 1);
  EXPECT_EQ(seen.ctx.gid, kDefaultSquashId);
}

TEST_F(PolicyTest, SquashRoot) {
  HostPolicy p;
  p.identity.squash = Squash::kRoot;
  p.identity.squash_id = 4321;
  ASSERT_NO_FATAL_FAILURE(start(std::move(p)));
  fuse_getattr_in in{};
  ASSERT_EQ(run(RequestBuilder(FUSE_GETATTR, 42).arg(in), 0, 0).error(), 0);
  EXPECT_EQ(seen.ctx.uid, 4321u);
  EXPECT_EQ(seen.ctx.gid, 4321u);
  ASSERT_EQ(run(RequestBuilder(FUSE_GETATTR, 42).arg(in), 1000, 100).error(), 0);
  EXPECT_EQ(seen.ctx.uid, 1000u);
}

TEST_F(PolicyTest, ChownIdsAreTranslated) {
  ASSERT_NO_FATAL_FAILURE(start(mapped()));
  fuse_setattr_in in{};
  in.valid = FATTR_UID | FATTR_GID;
  in.uid = 0;
  in.gid = 12;
  ASSERT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(in), 0, 0).error(), 0);
  EXPECT_EQ(seen.setattr.uid, 100000u);
  EXPECT_EQ(seen.setattr.gid, 100012u);
  in.gid = 70000;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(in), 0, 0).error(), -EPERM)
      << "chown to a forbidden gid";
  in.valid = FATTR_UID;
  in.uid = kInvalidId;
  EXPECT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(in), 0, 0).error(), -EPERM);
}

TEST_F(PolicyTest, WritesAndTruncationsByNonRootDropSetIdBits) {
  HostPolicy p;
  p.identity.squash = Squash::kRoot;
  ASSERT_NO_FATAL_FAILURE(start(std::move(p)));
  fuse_write_in w{};
  w.size = 3;
  // Tenant root claims CAP_FSETID (no KILL flag); squashed, it has none.
  ASSERT_EQ(run(RequestBuilder(FUSE_WRITE, 42).arg(w).raw("abc"), 0, 0).error(), 0);
  EXPECT_TRUE(seen.write_flags & FUSE_WRITE_KILL_SUIDGID);
  fuse_setattr_in t{};
  t.valid = FATTR_SIZE;
  ASSERT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(t), 1000, 100).error(), 0);
  EXPECT_TRUE(seen.setattr.valid & SetAttr::kKillSuidgid);
  t.valid = FATTR_SIZE | FATTR_MODE;
  t.mode = 04755;
  ASSERT_EQ(run(RequestBuilder(FUSE_SETATTR, 42).arg(t), 1000, 100).error(), 0);
  EXPECT_FALSE(seen.setattr.valid & SetAttr::kKillSuidgid) << "the mode given wins";
  fuse_open_in o{};
  o.flags = O_WRONLY | O_TRUNC;
  ASSERT_EQ(run(RequestBuilder(FUSE_OPEN, 42).arg(o), 1000, 100).error(), 0);
  EXPECT_TRUE(seen.ctx.kill_suidgid);
}

TEST_F(PolicyTest, HostRootKeepsWhatItsKernelSays) {
  ASSERT_NO_FATAL_FAILURE(start(HostPolicy{}));
  fuse_write_in w{};
  w.size = 3;
  ASSERT_EQ(run(RequestBuilder(FUSE_WRITE, 42).arg(w).raw("abc"), 0, 0).error(), 0);
  EXPECT_FALSE(seen.write_flags & FUSE_WRITE_KILL_SUIDGID);
  w.write_flags = FUSE_WRITE_KILL_SUIDGID;
  ASSERT_EQ(run(RequestBuilder(FUSE_WRITE, 42).arg(w).raw("abc"), 0, 0).error(), 0);
  EXPECT_TRUE(seen.write_flags & FUSE_WRITE_KILL_SUIDGID);
  fuse_open_in o{};
  o.flags = O_WRONLY | O_TRUNC;
  ASSERT_EQ(run(RequestBuilder(FUSE_OPEN, 42).arg(o), 0, 0).error(), 0);
  EXPECT_FALSE(seen.ctx.kill_suidgid);
}

TEST_F(PolicyTest, DeviceNodesNeedPermission) {
  ASSERT_NO_FATAL_FAILURE(start(HostPolicy{}));
  fuse_mknod_in m{};
  m.mode = S_IFCHR | 0600;
  m.rdev = makedev(1, 3);
  EXPECT_EQ(run(RequestBuilder(FUSE_MKNOD, 1).arg(m).name("null"), 0, 0).error(), -EPERM);
  m.mode = S_IFBLK | 0600;
  EXPECT_EQ(run(RequestBuilder(FUSE_MKNOD, 1).arg(m).name("sda"), 0, 0).error(), -EPERM);
  EXPECT_EQ(seen.calls, 0);
  for (uint32_t type : {S_IFIFO, S_IFSOCK, S_IFREG}) {
    m.mode = type | 0600;
    EXPECT_EQ(run(RequestBuilder(FUSE_MKNOD, 1).arg(m).name("x"), 0, 0).error(), 0) << type;
  }
  HostPolicy allow;
  allow.allow_device_nodes = true;
  ASSERT_NO_FATAL_FAILURE(start(std::move(allow)));
  m.mode = S_IFCHR | 0600;
  EXPECT_EQ(run(RequestBuilder(FUSE_MKNOD, 1).arg(m).name("null"), 0, 0).error(), 0);
  EXPECT_EQ(seen.mknod_mode, uint32_t(S_IFCHR | 0600));
}

TEST_F(PolicyTest, XattrNamespacesByDefaultOnlyUser) {
  ASSERT_NO_FATAL_FAILURE(start(HostPolicy{}));
  fuse_setxattr_in s{};
  s.size = 1;
  for (const char* name : {"trusted.x", "security.capability", "system.posix_acl_access"}) {
    EXPECT_EQ(run(RequestBuilder(FUSE_SETXATTR, 42).arg(s).name(name).raw("v"), 0, 0).error(),
              -EPERM)
        << name;
    EXPECT_EQ(run(RequestBuilder(FUSE_REMOVEXATTR, 42).name(name), 0, 0).error(), -EPERM) << name;
    fuse_getxattr_in g{};
    g.size = 64;
    EXPECT_EQ(run(RequestBuilder(FUSE_GETXATTR, 42).arg(g).name(name), 0, 0).error(), -ENODATA)
        << name;
  }
  EXPECT_EQ(seen.calls, 0);
  EXPECT_EQ(run(RequestBuilder(FUSE_SETXATTR, 42).arg(s).name("user.x").raw("v"), 0, 0).error(), 0);
  EXPECT_EQ(seen.xattr_name, "user.x");
  fuse_getxattr_in g{};
  g.size = 4096;
  TestRequest list = run(RequestBuilder(FUSE_LISTXATTR, 42).arg(g), 0, 0);
  ASSERT_EQ(list.error(), 0);
  const std::string listed(reinterpret_cast<const char*>(list.reply_data()),
                           list.reply_len - sizeof(fuse_out_header));
  EXPECT_EQ(listed, std::string("user.a\0user.c\0", 14));
  // The size probe answers the filtered size.
  g.size = 0;
  TestRequest probe = run(RequestBuilder(FUSE_LISTXATTR, 42).arg(g), 0, 0);
  ASSERT_EQ(probe.error(), 0);
  EXPECT_EQ(probe.payload<fuse_getxattr_out>().size, 14u);
}

TEST_F(PolicyTest, XattrNamespacesAllowed) {
  HostPolicy p;
  p.xattr_namespaces = parse_xattr_namespaces("user,trusted,security,system");
  ASSERT_NO_FATAL_FAILURE(start(std::move(p)));
  fuse_setxattr_in s{};
  s.size = 1;
  for (const char* name : {"trusted.x", "security.capability", "system.posix_acl_access"}) {
    EXPECT_EQ(run(RequestBuilder(FUSE_SETXATTR, 42).arg(s).name(name).raw("v"), 0, 0).error(), 0)
        << name;
  }
  fuse_getxattr_in g{};
  g.size = 4096;
  TestRequest list = run(RequestBuilder(FUSE_LISTXATTR, 42).arg(g), 0, 0);
  ASSERT_EQ(list.error(), 0);
  EXPECT_EQ(list.reply_len - sizeof(fuse_out_header),
            sizeof("user.a\0trusted.b\0security.capability\0system.posix_acl_access\0user.c"));
}

TEST_F(PolicyTest, AclsAreRefusedWhenIdsAreTranslated) {
  HostPolicy p = mapped();
  p.xattr_namespaces = parse_xattr_namespaces("user,system");
  ASSERT_NO_FATAL_FAILURE(start(std::move(p)));
  fuse_setxattr_in s{};
  s.size = 1;
  EXPECT_EQ(
      run(RequestBuilder(FUSE_SETXATTR, 42).arg(s).name("system.posix_acl_access").raw("v"), 0, 0)
          .error(),
      -EPERM);
  EXPECT_EQ(
      run(RequestBuilder(FUSE_SETXATTR, 42).arg(s).name("system.other").raw("v"), 0, 0).error(), 0);
}

TEST(XattrNamespaces, Parse) {
  EXPECT_EQ(parse_xattr_namespaces("user"), HostPolicy::kXattrUser);
  EXPECT_EQ(parse_xattr_namespaces(""), 0u);
  EXPECT_EQ(parse_xattr_namespaces("trusted, security"),
            HostPolicy::kXattrTrusted | HostPolicy::kXattrSecurity);
  EXPECT_THROW(parse_xattr_namespaces("user,acl"), std::invalid_argument);
  EXPECT_EQ(xattr_namespace_names(HostPolicy::kXattrUser | HostPolicy::kXattrSystem),
            "user,system");
  EXPECT_EQ(xattr_namespace_names(0), "none");
}

}  // namespace
}  // namespace dpfs
