// Extended attributes through the kernel: set/get/list/remove, the CREATE
// and REPLACE flags, size probes and ERANGE, namespaces and permissions,
// and values up to the kernel's 64 KiB limit.
#include <sys/xattr.h>

#include <set>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class XattrTest : public MountTest {
 protected:
  std::vector<Capability> suite_needs() const override {
    return {Capability::kChangeTree, Capability::kXattrs};
  }
};

std::string get_xattr(const std::string& p, const char* name, int* err = nullptr) {
  std::string buf(70000, '\0');
  ssize_t n = lgetxattr(p.c_str(), name, buf.data(), buf.size());
  if (n < 0) {
    if (err) *err = errno;
    return "<" + errname(errno) + ">";
  }
  if (err) *err = 0;
  buf.resize(static_cast<size_t>(n));
  return buf;
}

std::multiset<std::string> list_xattrs(const std::string& p) {
  std::string buf(65536, '\0');
  ssize_t n = llistxattr(p.c_str(), buf.data(), buf.size());
  std::multiset<std::string> names;
  if (n < 0) {
    ADD_FAILURE() << "listxattr " << p << ": " << errname(errno);
    return names;
  }
  EXPECT_TRUE(n == 0 || buf[static_cast<size_t>(n) - 1] == '\0') << "the list must end with a NUL";
  for (size_t i = 0; i < static_cast<size_t>(n);) {
    std::string name(buf.c_str() + i);
    names.insert(name);
    i += name.size() + 1;
  }
  return names;
}

// Only the names this test sets (a file system may add security.* ones).
std::multiset<std::string> user_and_trusted(const std::multiset<std::string>& all) {
  std::multiset<std::string> out;
  for (const auto& n : all) {
    if (n.starts_with("user.") || n.starts_with("trusted.")) out.insert(n);
  }
  return out;
}

TEST_P(XattrTest, SetGetListRemove) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  std::string f = path("f");
  const std::string binary("a\0b\0\xff\x01", 6);
  ASSERT_SYS(setxattr(f.c_str(), "user.text", "hello", 5, 0));
  ASSERT_SYS(setxattr(f.c_str(), "user.binary", binary.data(), binary.size(), 0));
  ASSERT_SYS(setxattr(f.c_str(), "user.empty", "", 0, 0));
  EXPECT_EQ(get_xattr(f, "user.text"), "hello");
  EXPECT_EQ(get_xattr(f, "user.binary"), binary);
  EXPECT_EQ(get_xattr(f, "user.empty"), "");
  EXPECT_EQ(user_and_trusted(list_xattrs(f)),
            (std::multiset<std::string>{"user.text", "user.binary", "user.empty"}));
  // Replacing a value changes it and keeps one name.
  ASSERT_SYS(setxattr(f.c_str(), "user.text", "bye", 3, 0));
  EXPECT_EQ(get_xattr(f, "user.text"), "bye");
  EXPECT_EQ(user_and_trusted(list_xattrs(f)).count("user.text"), 1u);
  ASSERT_SYS(removexattr(f.c_str(), "user.text"));
  int err = 0;
  get_xattr(f, "user.text", &err);
  EXPECT_EQ(err, ENODATA) << errname(err);
  EXPECT_EQ(user_and_trusted(list_xattrs(f)),
            (std::multiset<std::string>{"user.binary", "user.empty"}));
  EXPECT_ERRNO(ENODATA, removexattr(f.c_str(), "user.text"));
  EXPECT_ERRNO(ENODATA, getxattr(f.c_str(), "user.never", nullptr, 0));
  EXPECT_ERRNO(ENOENT, getxattr(cpath("missing"), "user.x", nullptr, 0));
  // By descriptor too.
  int fd = open(f.c_str(), O_RDONLY);
  ASSERT_SYS(fd);
  EXPECT_SYS(fsetxattr(fd, "user.fd", "v", 1, 0));
  char c = 0;
  EXPECT_EQ(fgetxattr(fd, "user.fd", &c, 1), 1);
  EXPECT_EQ(c, 'v');
  EXPECT_SYS(fremovexattr(fd, "user.fd"));
  close(fd);
}

TEST_P(XattrTest, CreateAndReplaceFlags) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  const char* f = cpath("f");
  EXPECT_ERRNO(ENODATA, setxattr(f, "user.a", "1", 1, XATTR_REPLACE));
  EXPECT_SYS(setxattr(f, "user.a", "1", 1, XATTR_CREATE));
  EXPECT_ERRNO(EEXIST, setxattr(f, "user.a", "2", 1, XATTR_CREATE));
  EXPECT_EQ(get_xattr(f, "user.a"), "1") << "a failed XATTR_CREATE must not change the value";
  EXPECT_SYS(setxattr(f, "user.a", "3", 1, XATTR_REPLACE));
  EXPECT_EQ(get_xattr(f, "user.a"), "3");
}

TEST_P(XattrTest, SizeProbeAndERANGE) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  const char* f = cpath("f");
  std::string value = pattern(3, 0, 100);
  ASSERT_SYS(setxattr(f, "user.value", value.data(), value.size(), 0));
  ASSERT_SYS(setxattr(f, "user.second", "2", 1, 0));
  EXPECT_EQ(getxattr(f, "user.value", nullptr, 0), 100) << "size 0 asks for the size";
  char small[99];
  EXPECT_ERRNO(ERANGE, getxattr(f, "user.value", small, sizeof small));
  char exact[100];
  EXPECT_EQ(getxattr(f, "user.value", exact, sizeof exact), 100);
  EXPECT_EQ(std::string(exact, 100), value);
  ssize_t list_size = listxattr(f, nullptr, 0);
  ASSERT_SYS(list_size);
  std::string list(static_cast<size_t>(list_size), '\0');
  EXPECT_EQ(listxattr(f, list.data(), list.size()), list_size);
  EXPECT_GE(list_size, static_cast<ssize_t>(sizeof "user.value" + sizeof "user.second"));
  EXPECT_ERRNO(ERANGE, listxattr(f, list.data(), static_cast<size_t>(list_size) - 1));
  // A file without attributes lists nothing.
  ASSERT_EQ(write_file(path("bare"), "x"), 0);
  EXPECT_TRUE(user_and_trusted(list_xattrs(path("bare"))).empty());
}

TEST_P(XattrTest, TrustedNamespaceIsForRoot) {
  ASSERT_EQ(write_file(path("f"), "x", 0666), 0);
  const char* f = cpath("f");
  EXPECT_SYS(setxattr(f, "trusted.t", "root only", 9, 0));
  EXPECT_EQ(get_xattr(f, "trusted.t"), "root only");
  EXPECT_EQ(user_and_trusted(list_xattrs(f)), std::multiset<std::string>{"trusted.t"});
  // trusted.* is invisible and untouchable for an unprivileged user.
  EXPECT_ERRNO(ENODATA, as_user(kUser1, [&] { return getxattr(f, "trusted.t", nullptr, 0); }));
  EXPECT_ERRNO(EPERM, as_user(kUser1, [&] { return setxattr(f, "trusted.u", "x", 1, 0); }));
  EXPECT_ERRNO(EPERM, as_user(kUser1, [&] { return removexattr(f, "trusted.t"); }));
  EXPECT_EQ(get_xattr(f, "trusted.t"), "root only");
}

TEST_P(XattrTest, TrustedNamesNotListedForUsers) {
  ASSERT_EQ(write_file(path("f"), "x", 0666), 0);
  const char* f = cpath("f");
  ASSERT_SYS(setxattr(f, "trusted.t", "root only", 9, 0));
  ASSERT_SYS(setxattr(f, "user.u", "anyone", 6, 0));
  // As a local file system does it: listxattr by a user without
  // CAP_SYS_ADMIN leaves out trusted.* names. Child exit codes: EEXIST =
  // trusted.* listed, ENOENT = user.u missing.
  EXPECT_SYS(as_user(kUser1, [&] {
    char buf[1024];
    ssize_t n = listxattr(f, buf, sizeof buf);
    if (n < 0) return -1L;
    bool user_seen = false;
    for (ssize_t i = 0; i < n; i += static_cast<ssize_t>(strlen(buf + i)) + 1) {
      if (strncmp(buf + i, "trusted.", 8) == 0) {
        errno = EEXIST;
        return -1L;
      }
      if (strcmp(buf + i, "user.u") == 0) user_seen = true;
    }
    if (!user_seen) {
      errno = ENOENT;
      return -1L;
    }
    return 0L;
  })) << "EEXIST: an unprivileged listxattr listed trusted.t; ENOENT: it missed user.u";
}

TEST_P(XattrTest, UnknownNamespaceIsEOPNOTSUPP) {
  ASSERT_EQ(write_file(path("f"), "x", 0666), 0);
  const char* f = cpath("f");
  EXPECT_ERRNO(EOPNOTSUPP, setxattr(f, "bogus.name", "x", 1, 0));
  EXPECT_ERRNO(EOPNOTSUPP, setxattr(f, "noprefix", "x", 1, 0));
  EXPECT_ERRNO(EOPNOTSUPP, getxattr(f, "bogus.name", nullptr, 0));
  for (const auto& name : list_xattrs(path("f"))) {
    EXPECT_TRUE(name.starts_with("user.") || name.starts_with("trusted.") ||
                name.starts_with("security.") || name.starts_with("system."))
        << "a name outside the known namespaces was stored: " << name;
  }
}

TEST_P(XattrTest, UserNamespaceOnlyOnFilesAndDirectories) {
  ASSERT_EQ(write_file(path("f"), "x", 0666), 0);
  // user.* is not allowed on symlinks and special files.
  ASSERT_SYS(symlink("f", cpath("l")));
  EXPECT_ERRNO(EPERM, lsetxattr(cpath("l"), "user.x", "x", 1, 0));
  ASSERT_SYS(mkfifo(cpath("p"), 0666));
  EXPECT_ERRNO(EPERM, lsetxattr(cpath("p"), "user.x", "x", 1, 0));
  // But trusted.* is, for root.
  EXPECT_SYS(lsetxattr(cpath("l"), "trusted.link", "L", 1, 0));
  EXPECT_EQ(get_xattr(path("l"), "trusted.link"), "L");
  int err = 0;
  get_xattr(path("f"), "trusted.link", &err);
  EXPECT_EQ(err, ENODATA) << "lsetxattr on the link must not touch its target";
}

TEST_P(XattrTest, ManyAttributes) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  std::multiset<std::string> want;
  for (int i = 0; i < 200; ++i) {
    std::string name = "user.attr-" + std::to_string(i);
    std::string value = pattern(i, 0, i * 10);
    ASSERT_SYS(setxattr(cpath("f"), name.c_str(), value.data(), value.size(), 0)) << name;
    want.insert(name);
  }
  EXPECT_EQ(user_and_trusted(list_xattrs(path("f"))), want);
  for (int i = 0; i < 200; i += 17) {
    std::string name = "user.attr-" + std::to_string(i);
    EXPECT_EQ(get_xattr(path("f"), name.c_str()), pattern(i, 0, i * 10)) << name;
  }
}

TEST_P(XattrTest, LargeValues) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  const char* f = cpath("f");
  std::string big = pattern(17, 0, 65536);
  ASSERT_SYS(setxattr(f, "user.big", big.data(), big.size(), 0)) << "a 64 KiB value";
  EXPECT_EQ(getxattr(f, "user.big", nullptr, 0), 65536);
  std::string back = get_xattr(f, "user.big");
  EXPECT_EQ(back.size(), big.size());
  EXPECT_TRUE(back == big) << check_pattern(back, 17, 0);
  std::string too_big(65537, 'x');
  EXPECT_ERRNO(E2BIG, setxattr(f, "user.huge", too_big.data(), too_big.size(), 0));
  std::string long_name = "user." + std::string(250, 'n');  // 255 bytes: XATTR_NAME_MAX
  EXPECT_SYS(setxattr(f, long_name.c_str(), "v", 1, 0));
  EXPECT_EQ(get_xattr(f, long_name.c_str()), "v");
  std::string too_long = "user." + std::string(251, 'n');
  EXPECT_ERRNO(ERANGE, setxattr(f, too_long.c_str(), "v", 1, 0));
}

TEST_P(XattrTest, PermissionsAndCtime) {
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, kUser1.gid));
  ASSERT_SYS(setxattr(cpath("f"), "user.a", "1", 1, 0));
  EXPECT_SYS(as_user(kUser2, [&] { return getxattr(cpath("f"), "user.a", nullptr, 0); }))
      << "reading user.* needs read permission";
  EXPECT_ERRNO(EACCES, as_user(kUser2, [&] { return setxattr(cpath("f"), "user.b", "2", 1, 0); }))
      << "writing user.* needs write permission";
  EXPECT_ERRNO(EACCES, as_user(kUser2, [&] { return removexattr(cpath("f"), "user.a"); }));
  EXPECT_SYS(as_user(kUser1, [&] { return setxattr(cpath("f"), "user.b", "2", 1, 0); }));
  ASSERT_SYS(chmod(cpath("f"), 0600));
  EXPECT_ERRNO(EACCES, as_user(kUser2, [&] { return getxattr(cpath("f"), "user.a", nullptr, 0); }));
  struct stat a = lst(path("f"));
  tick();
  ASSERT_SYS(setxattr(cpath("f"), "user.c", "3", 1, 0));
  struct stat b = lst(path("f"));
  EXPECT_TRUE(ts_lt(a.st_ctim, b.st_ctim))
      << "setxattr updates ctime: " << ts_str(a.st_ctim) << " -> " << ts_str(b.st_ctim);
  EXPECT_TRUE(ts_eq(a.st_mtim, b.st_mtim)) << "but not mtime";
}

TEST_P(XattrTest, OnDirectories) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_SYS(setxattr(cpath("d"), "user.dir", "yes", 3, 0));
  EXPECT_EQ(get_xattr(path("d"), "user.dir"), "yes");
  // Attributes belong to the inode: they follow renames and hard links.
  ASSERT_SYS(rename(cpath("d"), cpath("e")));
  EXPECT_EQ(get_xattr(path("e"), "user.dir"), "yes");
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(setxattr(cpath("f"), "user.k", "v", 1, 0));
  ASSERT_SYS(link(cpath("f"), cpath("g")));
  EXPECT_EQ(get_xattr(path("g"), "user.k"), "v");
  ASSERT_SYS(removexattr(cpath("g"), "user.k"));
  int err = 0;
  get_xattr(path("f"), "user.k", &err);
  EXPECT_EQ(err, ENODATA);
}

DPFS_CONFORMANCE_SUITE(XattrTest);

}  // namespace
}  // namespace dpfs::itest
