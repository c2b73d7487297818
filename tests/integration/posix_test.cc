// POSIX behaviour of names and attributes through the kernel: lookup, getattr,
// setattr (chmod, chown, truncate, utimensat), symlink/readlink, mknod,
// mkdir/rmdir, unlink, rename, link, open/create and access, with the errno
// of every failure, as root and as unprivileged users (the mount uses
// default_permissions: the kernel checks permissions).
#include <linux/fs.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/xattr.h>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class PosixTest : public MountTest {
 protected:
  // FORGET and BATCH_FORGET requests the daemon has counted, from the
  // statistics it logs on SIGUSR1 (waiting up to 1 s for them).
  int64_t forget_requests() const {
    Mount& m = mount();
    const size_t before = m.log().size();
    ::kill(m.pid(), SIGUSR1);
    std::string fresh;
    for (int i = 0; i < 100; ++i) {
      fresh = m.log().substr(before);
      if (fresh.find("stats: ") != std::string::npos) {
        std::this_thread::sleep_for(20ms);  // the rest of its lines, logged at once
        fresh = m.log().substr(before);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    int64_t total = 0;
    for (const std::string& line : lines_of(fresh)) {
      for (const char* op : {" FORGET ", " BATCH_FORGET "}) {
        const size_t at = line.find(op);
        if (at == std::string::npos || line.find("stats: ") == std::string::npos) continue;
        total += std::stoll(line.substr(at + std::strlen(op)));
      }
    }
    return total;
  }
};

// ---------------------------------------------------------------------------
// lookup / stat

TEST_P(PosixTest, LookupMissingIsENOENT) {
  struct stat st;
  EXPECT_ERRNO(ENOENT, stat(cpath("missing"), &st));
  EXPECT_ERRNO(ENOENT, lstat(cpath("missing"), &st));
  EXPECT_ERRNO(ENOENT, stat(cpath("missing/below"), &st));
  EXPECT_ERRNO(ENOENT, open(cpath("missing"), O_RDONLY));
  EXPECT_ERRNO(ENOENT, open(cpath("missing/new"), O_CREAT | O_WRONLY, 0644));
  // A name that was removed is gone for lookups too (no stale cache).
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(stat(cpath("f"), &st));
  ASSERT_SYS(unlink(cpath("f")));
  EXPECT_ERRNO(ENOENT, stat(cpath("f"), &st));
}

TEST_P(PosixTest, UnusualNames) {
  std::vector<std::string> names = {
      " leading space", "trailing space ",   "new\nline",   "tab\there", "-dash",   "...", "..a",
      "\xff\xfe bytes", "\xc3\xa9t\xc3\xa9", "back\\slash", "*?[glob]",  "'quote\""};
  for (const auto& n : names) {
    ASSERT_EQ(write_file(path(n), n), 0) << n;
  }
  auto listed = list_dir(path());
  std::sort(listed.begin(), listed.end());
  auto want = names;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(listed, want);
  for (const auto& n : names) {
    EXPECT_EQ(read_file(path(n)).value_or("<error>"), n);
  }
}

// The kernel forgets inodes it no longer caches (FORGET) and looks them up
// again later: names, attributes, data, link counts (and extended
// attributes, where there are) must survive.
TEST_P(PosixTest, ForgetThenLookupAgain) {
  ASSERT_SYS(mkdir(cpath("tree"), 0755));
  for (int i = 0; i < 300; ++i) {
    std::string d = "tree/d" + std::to_string(i % 10);
    if (i < 10) {
      ASSERT_SYS(mkdir(cpath(d), 0750));
    }
    ASSERT_EQ(write_file(path(d + "/f" + std::to_string(i)), pattern(i, 0, i * 13), 0600), 0);
  }
  ASSERT_SYS(link(cpath("tree/d0/f0"), cpath("tree/hard")));
  ASSERT_SYS(symlink("d1/f1", cpath("tree/sym")));
  if (has(Capability::kXattrs)) {
    ASSERT_SYS(setxattr(cpath("tree/d2/f2"), "user.k", "v", 1, 0));
  }
  struct stat before = lst(path("tree/d3/f3"));
  // An open, unlinked file must survive the forgetting too.
  int fd = open(cpath("tree/d4/f4"), O_RDONLY);
  ASSERT_SYS(fd);
  ASSERT_SYS(unlink(cpath("tree/d4/f4")));
  sync();
  const int64_t forgets_before = has(Capability::kForgetCounting) ? forget_requests() : -1;
  if (!tmpfs()) {
    ASSERT_EQ(write_file("/proc/sys/vm/drop_caches", "2"), 0) << "drop dentries and inodes";
  }
  // The kernel sends its FORGETs asynchronously: wait until dpfs counted
  // more of them (its statistics, SIGUSR1). Where nothing counts them (a
  // forwarder, tmpfs) there is nothing to wait for.
  if (forgets_before >= 0) {
    int64_t now = forgets_before;
    for (int i = 0; i < 100 && now <= forgets_before; ++i) now = forget_requests();
    EXPECT_GT(now, forgets_before) << "no FORGET reached dpfs after dropping the caches";
  }
  for (int i = 0; i < 300; ++i) {
    if (i == 4) continue;
    std::string p = path("tree/d" + std::to_string(i % 10) + "/f" + std::to_string(i));
    auto got = read_file(p);
    ASSERT_TRUE(got) << p << ": " << errname(errno);
    ASSERT_EQ(check_pattern(*got, i, 0), "") << p;
    ASSERT_EQ(got->size(), static_cast<size_t>(i * 13)) << p;
  }
  struct stat after = lst(path("tree/d3/f3"));
  EXPECT_EQ(after.st_ino, before.st_ino) << "an inode number changed across a forget";
  EXPECT_TRUE(ts_eq(after.st_mtim, before.st_mtim));
  EXPECT_EQ(after.st_mode, before.st_mode);
  EXPECT_EQ(lst(path("tree/hard")).st_nlink, 2u);
  EXPECT_EQ(lst(path("tree/d0")).st_nlink, 2u);
  EXPECT_EQ(lst(path("tree")).st_nlink, 12u);
  EXPECT_EQ(read_file(path("tree/sym")).value_or("<error>"), pattern(1, 0, 13));
  if (has(Capability::kXattrs)) {
    char v = 0;
    EXPECT_EQ(getxattr(cpath("tree/d2/f2"), "user.k", &v, 1), 1);
  }
  std::string buf(4 * 13, '\0');
  EXPECT_EQ(pread_all(fd, buf.data(), buf.size(), 0), 4 * 13);
  EXPECT_EQ(check_pattern(buf, 4, 0), "") << "the open unlinked file";
  close(fd);
}

TEST_P(PosixTest, FileInPathIsENOTDIR) {
  ASSERT_EQ(write_file(path("file"), "data"), 0);
  struct stat st;
  EXPECT_ERRNO(ENOTDIR, stat(cpath("file/x"), &st));
  EXPECT_ERRNO(ENOTDIR, open(cpath("file/x"), O_CREAT | O_WRONLY, 0644));
  EXPECT_ERRNO(ENOTDIR, mkdir(cpath("file/x"), 0755));
  EXPECT_ERRNO(ENOTDIR, unlink(cpath("file/x")));
  EXPECT_ERRNO(ENOTDIR, rmdir(cpath("file/x")));
  EXPECT_ERRNO(ENOTDIR, symlink("t", cpath("file/x")));
  EXPECT_ERRNO(ENOTDIR, rename(cpath("file/x"), cpath("y")));
  // A trailing slash demands a directory.
  EXPECT_ERRNO(ENOTDIR, stat(cpath("file/"), &st));
  EXPECT_ERRNO(ENOTDIR, open(cpath("file"), O_RDONLY | O_DIRECTORY));
}

TEST_P(PosixTest, NameTooLong) {
  std::string ok(255, 'n');
  std::string bad(256, 'n');
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  // 255 bytes (NAME_MAX) is a valid name for every kind of entry.
  int fd = open(cpath("d/" + ok), O_CREAT | O_WRONLY, 0644);
  EXPECT_SYS(fd);
  if (fd >= 0) close(fd);
  struct stat st;
  EXPECT_SYS(stat(cpath("d/" + ok), &st));
  auto names = list_dir(path("d"));
  EXPECT_EQ(names, std::vector<std::string>{ok});
  EXPECT_SYS(unlink(cpath("d/" + ok)));
  EXPECT_SYS(mkdir(cpath("d/" + ok), 0755));
  EXPECT_SYS(rmdir(cpath("d/" + ok)));
  EXPECT_SYS(symlink("target", cpath("d/" + ok)));
  EXPECT_SYS(unlink(cpath("d/" + ok)));
  // 256 bytes is ENAMETOOLONG for every operation taking a name.
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  EXPECT_ERRNO(ENAMETOOLONG, open(cpath("d/" + bad), O_CREAT | O_WRONLY, 0644));
  EXPECT_ERRNO(ENAMETOOLONG, stat(cpath("d/" + bad), &st));
  EXPECT_ERRNO(ENAMETOOLONG, mkdir(cpath("d/" + bad), 0755));
  EXPECT_ERRNO(ENAMETOOLONG, symlink("t", cpath("d/" + bad)));
  EXPECT_ERRNO(ENAMETOOLONG, link(cpath("f"), cpath("d/" + bad)));
  EXPECT_ERRNO(ENAMETOOLONG, rename(cpath("f"), cpath("d/" + bad)));
  EXPECT_ERRNO(ENAMETOOLONG, mknod(cpath("d/" + bad), S_IFIFO | 0644, 0));
  EXPECT_ERRNO(ENAMETOOLONG, unlink(cpath("d/" + bad)));
  // A path longer than PATH_MAX.
  std::string long_path = path("d");
  while (long_path.size() <= PATH_MAX) long_path += "/" + std::string(200, 'p');
  EXPECT_ERRNO(ENAMETOOLONG, stat(long_path.c_str(), &st));
}

TEST_P(PosixTest, NewFileAttributes) {
  timespec before = now_realtime();
  before.tv_sec -= 1;  // the kernel's coarse clock may lag CLOCK_REALTIME
  int fd = open(cpath("f"), O_CREAT | O_EXCL | O_WRONLY, 0640);
  ASSERT_SYS(fd);
  close(fd);
  timespec after = now_realtime();
  after.tv_sec += 1;
  struct stat st = lst(path("f"));
  EXPECT_EQ(st.st_mode, S_IFREG | 0640u) << std::oct << st.st_mode;
  EXPECT_EQ(st.st_nlink, 1u);
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(st.st_gid, 0u);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_EQ(st.st_blocks, 0);
  for (const timespec* t : {&st.st_atim, &st.st_mtim, &st.st_ctim}) {
    EXPECT_TRUE(ts_lt(before, *t) && ts_lt(*t, after))
        << "timestamp " << ts_str(*t) << " not between " << ts_str(before) << " and "
        << ts_str(after);
    EXPECT_LT(t->tv_nsec, 1000000000);
  }
  struct stat dir = lst(path());
  EXPECT_NE(st.st_ino, dir.st_ino);
  EXPECT_EQ(st.st_dev, dir.st_dev);
  EXPECT_GT(st.st_blksize, 0);
}

TEST_P(PosixTest, TimestampsHaveSubsecondPrecision) {
  // With one-second granularity every tv_nsec would be 0; five files created
  // a few milliseconds apart all landing on a whole second is not chance.
  int with_ns = 0;
  for (int i = 0; i < 5; ++i) {
    ASSERT_EQ(write_file(path("f" + std::to_string(i)), "x"), 0);
    struct stat st = lst(path("f" + std::to_string(i)));
    if (st.st_mtim.tv_nsec != 0 || st.st_ctim.tv_nsec != 0) ++with_ns;
    std::this_thread::sleep_for(3ms);
  }
  EXPECT_GT(with_ns, 0) << "all timestamps are whole seconds";
}

TEST_P(PosixTest, NewFileOwnedByCreator) {
  ASSERT_SYS(chmod(cpath(""), 0777));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("mine"), O_CREAT | O_WRONLY, 0600); }));
  EXPECT_SYS(as_user(kUser1, [&] { return mkdir(cpath("mydir"), 0700); }));
  EXPECT_SYS(as_user(kUser1, [&] { return symlink("x", cpath("mylink")); }));
  EXPECT_SYS(as_user(kUser1, [&] { return mknod(cpath("myfifo"), S_IFIFO | 0600, 0); }));
  for (const char* n : {"mine", "mydir", "mylink", "myfifo"}) {
    struct stat st = lst(path(n));
    EXPECT_EQ(st.st_uid, kUser1.uid) << n;
    EXPECT_EQ(st.st_gid, kUser1.gid) << n;
  }
}

TEST_P(PosixTest, SetgidDirectoryGivesItsGroup) {
  ASSERT_SYS(mkdir(cpath("sg"), 0777));
  ASSERT_SYS(chown(cpath("sg"), 0, 2000));
  ASSERT_SYS(chmod(cpath("sg"), 02777));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("sg/f"), O_CREAT | O_WRONLY, 0644); }));
  EXPECT_SYS(as_user(kUser1, [&] { return mkdir(cpath("sg/sub"), 0755); }));
  struct stat f = lst(path("sg/f"));
  EXPECT_EQ(f.st_gid, 2000u) << "a file created in a setgid directory takes its group";
  EXPECT_EQ(f.st_uid, kUser1.uid);
  struct stat sub = lst(path("sg/sub"));
  EXPECT_EQ(sub.st_gid, 2000u);
  EXPECT_TRUE(sub.st_mode & S_ISGID)
      << "a subdirectory inherits the setgid bit, mode " << std::oct << sub.st_mode;
}

TEST_P(PosixTest, NewDirectoryAttributes) {
  struct stat parent0 = lst(path());
  ASSERT_SYS(mkdir(cpath("d"), 0751));
  struct stat st = lst(path("d"));
  EXPECT_EQ(st.st_mode, S_IFDIR | 0751u) << std::oct << st.st_mode;
  EXPECT_EQ(st.st_nlink, 2u) << "an empty directory has '.' and its name";
  EXPECT_EQ(st.st_uid, 0u);
  struct stat parent1 = lst(path());
  EXPECT_EQ(parent1.st_nlink, parent0.st_nlink + 1) << "the new '..' links the parent";
  auto names = list_dir(path("d"));
  EXPECT_TRUE(names.empty());
}

TEST_P(PosixTest, UmaskApplies) {
  mode_t old = umask(027);
  int fd = open(cpath("f"), O_CREAT | O_WRONLY, 0777);
  EXPECT_SYS(fd);
  if (fd >= 0) close(fd);
  EXPECT_SYS(mkdir(cpath("d"), 0777));
  EXPECT_SYS(mknod(cpath("p"), S_IFIFO | 0666, 0));
  umask(old);
  EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | 0750u);
  EXPECT_EQ(lst(path("d")).st_mode, S_IFDIR | 0750u);
  EXPECT_EQ(lst(path("p")).st_mode, S_IFIFO | 0640u);
}

// ---------------------------------------------------------------------------
// timestamps

TEST_P(PosixTest, WriteUpdatesMtimeAndCtime) {
  ASSERT_EQ(write_file(path("f"), "hello"), 0);
  struct stat a = lst(path("f"));
  tick();
  int fd = open(cpath("f"), O_WRONLY);
  ASSERT_SYS(fd);
  EXPECT_EQ(pwrite(fd, "abc", 3, 5), 3);
  close(fd);
  struct stat b = lst(path("f"));
  EXPECT_EQ(b.st_size, 8);
  EXPECT_TRUE(ts_lt(a.st_mtim, b.st_mtim))
      << "mtime " << ts_str(a.st_mtim) << " -> " << ts_str(b.st_mtim);
  EXPECT_TRUE(ts_lt(a.st_ctim, b.st_ctim))
      << "ctime " << ts_str(a.st_ctim) << " -> " << ts_str(b.st_ctim);
}

TEST_P(PosixTest, ChmodUpdatesCtimeNotMtime) {
  ASSERT_EQ(write_file(path("f"), "hello"), 0);
  struct stat a = lst(path("f"));
  tick();
  ASSERT_SYS(chmod(cpath("f"), 0600));
  struct stat b = lst(path("f"));
  EXPECT_TRUE(ts_lt(a.st_ctim, b.st_ctim))
      << "ctime " << ts_str(a.st_ctim) << " -> " << ts_str(b.st_ctim);
  EXPECT_TRUE(ts_eq(a.st_mtim, b.st_mtim))
      << "mtime " << ts_str(a.st_mtim) << " -> " << ts_str(b.st_mtim);
}

TEST_P(PosixTest, LinkUpdatesCtimeAndParentTimes) {
  ASSERT_EQ(write_file(path("f"), "hello"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  struct stat f0 = lst(path("f"));
  struct stat d0 = lst(path("d"));
  tick();
  ASSERT_SYS(link(cpath("f"), cpath("d/l")));
  struct stat f1 = lst(path("f"));
  struct stat d1 = lst(path("d"));
  EXPECT_EQ(f1.st_nlink, 2u);
  EXPECT_TRUE(ts_lt(f0.st_ctim, f1.st_ctim))
      << "file ctime " << ts_str(f0.st_ctim) << " -> " << ts_str(f1.st_ctim);
  EXPECT_TRUE(ts_lt(d0.st_mtim, d1.st_mtim))
      << "dir mtime " << ts_str(d0.st_mtim) << " -> " << ts_str(d1.st_mtim);
  EXPECT_TRUE(ts_lt(d0.st_ctim, d1.st_ctim))
      << "dir ctime " << ts_str(d0.st_ctim) << " -> " << ts_str(d1.st_ctim);
}

TEST_P(PosixTest, UnlinkUpdatesParentTimesAndFileCtime) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_EQ(write_file(path("d/f"), "hello"), 0);
  ASSERT_SYS(link(cpath("d/f"), cpath("keep")));
  struct stat d0 = lst(path("d"));
  struct stat f0 = lst(path("keep"));
  tick();
  ASSERT_SYS(unlink(cpath("d/f")));
  struct stat d1 = lst(path("d"));
  struct stat f1 = lst(path("keep"));
  EXPECT_EQ(f1.st_nlink, 1u);
  EXPECT_TRUE(ts_lt(d0.st_mtim, d1.st_mtim))
      << "dir mtime " << ts_str(d0.st_mtim) << " -> " << ts_str(d1.st_mtim);
  EXPECT_TRUE(ts_lt(d0.st_ctim, d1.st_ctim))
      << "dir ctime " << ts_str(d0.st_ctim) << " -> " << ts_str(d1.st_ctim);
  EXPECT_TRUE(ts_lt(f0.st_ctim, f1.st_ctim))
      << "file ctime " << ts_str(f0.st_ctim) << " -> " << ts_str(f1.st_ctim);
}

TEST_P(PosixTest, RenameUpdatesParentTimes) {
  ASSERT_SYS(mkdir(cpath("a"), 0755));
  ASSERT_SYS(mkdir(cpath("b"), 0755));
  ASSERT_EQ(write_file(path("a/f"), "hello"), 0);
  struct stat a0 = lst(path("a")), b0 = lst(path("b")), f0 = lst(path("a/f"));
  tick();
  ASSERT_SYS(rename(cpath("a/f"), cpath("b/g")));
  struct stat a1 = lst(path("a")), b1 = lst(path("b")), f1 = lst(path("b/g"));
  EXPECT_TRUE(ts_lt(a0.st_mtim, a1.st_mtim)) << "source dir mtime";
  EXPECT_TRUE(ts_lt(a0.st_ctim, a1.st_ctim)) << "source dir ctime";
  EXPECT_TRUE(ts_lt(b0.st_mtim, b1.st_mtim)) << "target dir mtime";
  EXPECT_TRUE(ts_lt(b0.st_ctim, b1.st_ctim)) << "target dir ctime";
  EXPECT_EQ(f0.st_ino, f1.st_ino);
  EXPECT_TRUE(ts_eq(f0.st_mtim, f1.st_mtim)) << "rename does not change the file's mtime";
}

TEST_P(PosixTest, CreateUpdatesParentTimes) {
  struct stat d0 = lst(path());
  tick();
  ASSERT_EQ(write_file(path("f"), ""), 0);
  struct stat d1 = lst(path());
  EXPECT_TRUE(ts_lt(d0.st_mtim, d1.st_mtim))
      << "dir mtime " << ts_str(d0.st_mtim) << " -> " << ts_str(d1.st_mtim);
  EXPECT_TRUE(ts_lt(d0.st_ctim, d1.st_ctim));
  tick();
  ASSERT_SYS(mkdir(cpath("sub"), 0755));
  struct stat d2 = lst(path());
  EXPECT_TRUE(ts_lt(d1.st_mtim, d2.st_mtim)) << "mkdir updates the parent's mtime";
  tick();
  ASSERT_SYS(rmdir(cpath("sub")));
  struct stat d3 = lst(path());
  EXPECT_TRUE(ts_lt(d2.st_mtim, d3.st_mtim)) << "rmdir updates the parent's mtime";
}

// ---------------------------------------------------------------------------
// setattr: chmod

TEST_P(PosixTest, ChmodKeepsEveryModeBit) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  for (mode_t m : {0u, 0644u, 04755u, 02755u, 01755u, 07777u, 06000u, 0111u}) {
    EXPECT_SYS(chmod(cpath("f"), m));
    EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | m) << "chmod " << std::oct << m;
    EXPECT_SYS(chmod(cpath("d"), m));
    EXPECT_EQ(lst(path("d")).st_mode, S_IFDIR | m) << "chmod dir " << std::oct << m;
  }
  int fd = open(cpath("f"), O_RDONLY);
  ASSERT_SYS(fd);
  EXPECT_SYS(fchmod(fd, 0604));
  struct stat st;
  EXPECT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_mode, S_IFREG | 0604u);
  close(fd);
  EXPECT_ERRNO(ENOENT, chmod(cpath("missing"), 0644));
}

TEST_P(PosixTest, ChmodByNonOwnerIsEPERM) {
  ASSERT_EQ(write_file(path("rootfile"), "x", 0666), 0);
  ASSERT_EQ(write_file(path("userfile"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("userfile"), kUser1.uid, kUser1.gid));
  EXPECT_ERRNO(EPERM, as_user(kUser1, [&] { return chmod(cpath("rootfile"), 0777); }));
  EXPECT_ERRNO(EPERM, as_user(kUser2, [&] { return chmod(cpath("userfile"), 0777); }));
  EXPECT_SYS(as_user(kUser1, [&] { return chmod(cpath("userfile"), 0600); }));
  EXPECT_EQ(lst(path("userfile")).st_mode, S_IFREG | 0600u);
  EXPECT_EQ(lst(path("rootfile")).st_mode, S_IFREG | 0666u);
}

TEST_P(PosixTest, ChmodSetgidDroppedForNonMember) {
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, 3000));  // a group user1 is not in
  EXPECT_SYS(as_user(kUser1, [&] { return chmod(cpath("f"), 02755); }));
  EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | 0755u)
      << "setgid must be cleared when the owner is not in the file's group";
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, kUser1.gid));
  EXPECT_SYS(as_user(kUser1, [&] { return chmod(cpath("f"), 02755); }));
  EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | 02755u);
}

TEST_P(PosixTest, StickyBitForbidsNonOwnerUnlinkAndRename) {
  ASSERT_SYS(mkdir(cpath("tmp"), 01777));
  ASSERT_SYS(chmod(cpath("tmp"), 01777));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("tmp/a"), O_CREAT | O_WRONLY, 0666); }));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("tmp/b"), O_CREAT | O_WRONLY, 0666); }));
  EXPECT_SYS(as_user(kUser1, [&] { return mkdir(cpath("tmp/d"), 0777); }));
  EXPECT_ERRNO(EPERM, as_user(kUser2, [&] { return unlink(cpath("tmp/a")); }));
  EXPECT_ERRNO(EPERM, as_user(kUser2, [&] { return rename(cpath("tmp/a"), cpath("tmp/z")); }));
  EXPECT_ERRNO(EPERM, as_user(kUser2, [&] { return rmdir(cpath("tmp/d")); }));
  EXPECT_SYS(as_user(kUser1, [&] { return unlink(cpath("tmp/a")); }));  // the file's owner
  EXPECT_SYS(unlink(cpath("tmp/b")));                                   // root
  EXPECT_SYS(as_user(kUser1, [&] { return rmdir(cpath("tmp/d")); }));
  // Without the sticky bit, anyone with write permission on the dir may.
  ASSERT_SYS(mkdir(cpath("open"), 0777));
  ASSERT_SYS(chmod(cpath("open"), 0777));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("open/a"), O_CREAT | O_WRONLY, 0600); }));
  EXPECT_SYS(as_user(kUser2, [&] { return unlink(cpath("open/a")); }));
}

// ---------------------------------------------------------------------------
// setattr: chown

TEST_P(PosixTest, ChownByRoot) {
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  struct stat a = lst(path("f"));
  tick();
  ASSERT_SYS(chown(cpath("f"), 1234, 5678));
  struct stat b = lst(path("f"));
  EXPECT_EQ(b.st_uid, 1234u);
  EXPECT_EQ(b.st_gid, 5678u);
  EXPECT_TRUE(ts_lt(a.st_ctim, b.st_ctim)) << "chown updates ctime";
  EXPECT_SYS(chown(cpath("f"), -1, 42));
  EXPECT_EQ(lst(path("f")).st_uid, 1234u) << "uid -1 leaves the owner";
  EXPECT_EQ(lst(path("f")).st_gid, 42u);
  // lchown changes the link, not its target.
  ASSERT_SYS(symlink("f", cpath("l")));
  EXPECT_SYS(lchown(cpath("l"), 77, 88));
  EXPECT_EQ(lst(path("l")).st_uid, 77u);
  EXPECT_EQ(lst(path("f")).st_uid, 1234u);
  EXPECT_ERRNO(ENOENT, chown(cpath("missing"), 1, 1));
}

TEST_P(PosixTest, ChownByNonRoot) {
  const Cred member{kUser1.uid, kUser1.gid, {kUser1.gid, 2000}};
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, kUser1.gid));
  EXPECT_ERRNO(EPERM, as_user(member, [&] { return chown(cpath("f"), kUser2.uid, -1); }))
      << "giving a file away";
  EXPECT_ERRNO(EPERM, as_user(member, [&] { return chown(cpath("f"), -1, 3000); }))
      << "to a group the owner is not in";
  EXPECT_ERRNO(EPERM, as_user(kUser2, [&] { return chown(cpath("f"), -1, kUser2.gid); }))
      << "by a non-owner";
  EXPECT_SYS(as_user(member, [&] { return chown(cpath("f"), -1, 2000); }));
  EXPECT_EQ(lst(path("f")).st_gid, 2000u);
  EXPECT_SYS(as_user(member, [&] { return chown(cpath("f"), kUser1.uid, kUser1.gid); }));
  EXPECT_EQ(lst(path("f")).st_gid, kUser1.gid);
  EXPECT_EQ(lst(path("f")).st_uid, kUser1.uid);
}

TEST_P(PosixTest, ChownClearsSetuidSetgid) {
  const Cred member{kUser1.uid, kUser1.gid, {kUser1.gid, 2000}};
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, kUser1.gid));
  ASSERT_SYS(chmod(cpath("f"), 06755));
  EXPECT_SYS(as_user(member, [&] { return chown(cpath("f"), -1, 2000); }));
  EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | 0755u)
      << "chown by a non-root owner clears setuid and setgid";
  // Root too, on Linux (since 2.2.13), for an executable.
  ASSERT_SYS(chmod(cpath("f"), 06755));
  EXPECT_SYS(chown(cpath("f"), 3000, 3000));
  EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | 0755u);
  // Directories keep their setgid bit.
  ASSERT_SYS(mkdir(cpath("d"), 02755));
  ASSERT_SYS(chmod(cpath("d"), 02755));
  EXPECT_SYS(chown(cpath("d"), 3000, 3000));
  EXPECT_EQ(lst(path("d")).st_mode, S_IFDIR | 02755u);
}

TEST_P(PosixTest, WriteByNonRootClearsSetuid) {
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, kUser1.gid));
  ASSERT_SYS(chmod(cpath("f"), 04777));
  EXPECT_SYS(as_user(kUser2, [&] {
    int fd = open(cpath("f"), O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, "yy", 2);
    close(fd);
    return n == 2 ? 0 : -1;
  }));
  EXPECT_EQ(lst(path("f")).st_mode, S_IFREG | 0777u) << "writing clears setuid";
  EXPECT_EQ(read_file(path("f")).value_or("<error>"), "yy");
}

// A writer without CAP_FSETID: set-user-ID goes; set-group-ID goes only with
// group execute. Truncation (truncate(2) and O_TRUNC) drops them alike.
TEST_P(PosixTest, WriteAndTruncateByNonRootDropPrivileges) {
  ASSERT_EQ(write_file(path("f"), "x", 0644), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, kUser1.gid));
  // In the file's group: Linux also drops setgid for a writer outside it.
  const Cred writer{kUser2.uid, kUser2.gid, {kUser2.gid, kUser1.gid}};
  auto as_writer = [&](auto&& op) { return as_user(writer, op); };
  auto mode = [&] { return lst(path("f")).st_mode & 07777; };

  ASSERT_SYS(chmod(cpath("f"), 02767));
  EXPECT_SYS(as_writer([&] {
    int fd = open(cpath("f"), O_WRONLY);
    if (fd < 0) return -1;
    ssize_t n = write(fd, "y", 1);
    close(fd);
    return n == 1 ? 0 : -1;
  }));
  EXPECT_EQ(mode(), 02767u) << "setgid without group execute is not a privilege";

  ASSERT_SYS(chmod(cpath("f"), 06777));
  EXPECT_SYS(as_writer([&] { return truncate(cpath("f"), 1); }));
  EXPECT_EQ(mode(), 0777u) << "truncate(2) drops setuid and setgid";

  ASSERT_SYS(chmod(cpath("f"), 06777));
  EXPECT_SYS(as_writer([&] {
    int fd = open(cpath("f"), O_WRONLY | O_TRUNC);
    return fd < 0 ? -1 : close(fd);
  }));
  EXPECT_EQ(mode(), 0777u) << "open with O_TRUNC drops setuid and setgid";

  ASSERT_SYS(chmod(cpath("f"), 06777));
  ASSERT_SYS(truncate(cpath("f"), 0));
  EXPECT_EQ(mode(), 06777u) << "root (CAP_FSETID) keeps them";
}

// Any write drops the file's capabilities (security.capability), even
// root's.
TEST_P(PosixTest, WriteDropsFileCapabilities) {
  REQUIRE_CAPABILITY(kXattrs);
  ASSERT_EQ(write_file(path("f"), "x", 0755), 0);
  // A file capability (VFS_CAP_REVISION_2: cap_net_raw permitted+effective).
  const uint32_t cap[5] = {0x02000001, 1u << 13, 0, 0, 0};
  ASSERT_SYS(setxattr(cpath("f"), "security.capability", cap, sizeof(cap), 0));
  ASSERT_EQ(getxattr(cpath("f"), "security.capability", nullptr, 0), ssize_t(sizeof(cap)));
  {
    Fd fd(open(cpath("f"), O_WRONLY));
    ASSERT_SYS(fd.get());
    ASSERT_EQ(write(fd.get(), "z", 1), 1);
  }
  EXPECT_ERRNO(ENODATA, getxattr(cpath("f"), "security.capability", nullptr, 0))
      << "any write drops file capabilities, even root's";
}

// ---------------------------------------------------------------------------
// setattr: size

TEST_P(PosixTest, TruncateUpAndDown) {
  std::string data = pattern(1, 0, 10000);
  ASSERT_EQ(write_file(path("f"), data), 0);
  struct stat a = lst(path("f"));
  tick();
  ASSERT_SYS(truncate(cpath("f"), 1 << 20));
  struct stat b = lst(path("f"));
  EXPECT_EQ(b.st_size, 1 << 20);
  EXPECT_TRUE(ts_lt(a.st_mtim, b.st_mtim)) << "truncate updates mtime";
  EXPECT_TRUE(ts_lt(a.st_ctim, b.st_ctim)) << "truncate updates ctime";
  auto content = read_file(path("f"));
  ASSERT_TRUE(content);
  ASSERT_EQ(content->size(), 1u << 20);
  EXPECT_EQ(check_pattern(std::string_view(*content).substr(0, 10000), 1, 0), "");
  EXPECT_EQ(check_zero(std::string_view(*content).substr(10000), 10000), "");

  ASSERT_SYS(truncate(cpath("f"), 10));
  EXPECT_EQ(lst(path("f")).st_size, 10);
  EXPECT_EQ(read_file(path("f")).value_or(""), data.substr(0, 10));

  // Shrinking then growing again must read zeros, not the old bytes.
  ASSERT_SYS(truncate(cpath("f"), 5000));
  content = read_file(path("f"));
  ASSERT_TRUE(content);
  EXPECT_EQ(content->substr(0, 10), data.substr(0, 10));
  EXPECT_EQ(check_zero(std::string_view(*content).substr(10), 10), "");

  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  EXPECT_SYS(ftruncate(fd, 3));
  struct stat st;
  EXPECT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 3);
  EXPECT_ERRNO(EINVAL, ftruncate(fd, -1));
  close(fd);
  EXPECT_SYS(truncate(cpath("f"), 0));
  EXPECT_EQ(lst(path("f")).st_size, 0);
  EXPECT_EQ(lst(path("f")).st_blocks, 0);
}

TEST_P(PosixTest, TruncateErrors) {
  ASSERT_EQ(write_file(path("f"), "data", 0644), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  EXPECT_ERRNO(EISDIR, truncate(cpath("d"), 0));
  EXPECT_ERRNO(ENOENT, truncate(cpath("missing"), 0));
  EXPECT_ERRNO(EINVAL, truncate(cpath("f"), -1));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return truncate(cpath("f"), 0); }));
  int fd = open(cpath("f"), O_RDONLY);
  ASSERT_SYS(fd);
  EXPECT_ERRNO(EINVAL, ftruncate(fd, 0)) << "ftruncate of a read-only descriptor";
  close(fd);
  EXPECT_EQ(lst(path("f")).st_size, 4);
}

// ---------------------------------------------------------------------------
// setattr: times

TEST_P(PosixTest, UtimensatExplicitNanoseconds) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  struct stat a = lst(path("f"));
  tick();
  timespec ts[2] = {{1000000000, 123456789}, {1500000000, 987654321}};
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), ts, 0));
  struct stat b = lst(path("f"));
  EXPECT_TRUE(ts_eq(b.st_atim, ts[0])) << "atime " << ts_str(b.st_atim);
  EXPECT_TRUE(ts_eq(b.st_mtim, ts[1])) << "mtime " << ts_str(b.st_mtim);
  EXPECT_TRUE(ts_lt(a.st_ctim, b.st_ctim)) << "setting times updates ctime";
  // Far in the future, but within 32 unsigned bits of seconds (short of
  // 2^32 - 1 itself, where Linux's NFS client drops the nanoseconds: the
  // bound of its clamp).
  timespec late[2] = {{4102444800, 999999999}, {4294967294, 999999999}};
  EXPECT_SYS(utimensat(AT_FDCWD, cpath("f"), late, 0));
  b = lst(path("f"));
  EXPECT_TRUE(ts_eq(b.st_atim, late[0])) << "atime " << ts_str(b.st_atim);
  EXPECT_TRUE(ts_eq(b.st_mtim, late[1])) << "mtime " << ts_str(b.st_mtim);
  timespec bad[2] = {{0, 1000000000}, {0, 0}};
  EXPECT_ERRNO(EINVAL, utimensat(AT_FDCWD, cpath("f"), bad, 0));
}

// Times before the epoch, and past 2^32 - 1 seconds (February 2106).
TEST_P(PosixTest, UtimensatTimesOutsideUnsigned32Bits) {
  REQUIRE_CAPABILITY(kWideTimes);
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  timespec wide[2] = {{-100, 5}, {4294967296 + 100, 999999999}};
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), wide, 0));
  struct stat b = lst(path("f"));
  EXPECT_TRUE(ts_eq(b.st_atim, wide[0])) << "atime " << ts_str(b.st_atim);
  EXPECT_TRUE(ts_eq(b.st_mtim, wide[1])) << "mtime " << ts_str(b.st_mtim);
}

TEST_P(PosixTest, UtimensatNowAndOmit) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  timespec ts[2] = {{1000000000, 111}, {1100000000, 222}};
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), ts, 0));
  timespec omit_now[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
  timespec before = now_realtime();
  before.tv_sec -= 1;
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), omit_now, 0));
  struct stat b = lst(path("f"));
  EXPECT_TRUE(ts_eq(b.st_atim, ts[0])) << "UTIME_OMIT changed atime to " << ts_str(b.st_atim);
  EXPECT_TRUE(ts_lt(before, b.st_mtim)) << "UTIME_NOW set mtime to " << ts_str(b.st_mtim);
  timespec now_omit[2] = {{0, UTIME_NOW}, {0, UTIME_OMIT}};
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), now_omit, 0));
  struct stat c = lst(path("f"));
  EXPECT_TRUE(ts_lt(before, c.st_atim)) << "UTIME_NOW set atime to " << ts_str(c.st_atim);
  EXPECT_TRUE(ts_eq(c.st_mtim, b.st_mtim)) << "UTIME_OMIT changed mtime";
  // NULL: both now.
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), ts, 0));
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), nullptr, 0));
  struct stat d = lst(path("f"));
  EXPECT_TRUE(ts_lt(before, d.st_atim) && ts_lt(before, d.st_mtim));
  // futimens on a descriptor.
  int fd = open(cpath("f"), O_RDONLY);
  ASSERT_SYS(fd);
  EXPECT_SYS(futimens(fd, ts));
  close(fd);
  struct stat e = lst(path("f"));
  EXPECT_TRUE(ts_eq(e.st_atim, ts[0]) && ts_eq(e.st_mtim, ts[1]));
}

TEST_P(PosixTest, UtimensatPermissions) {
  ASSERT_EQ(write_file(path("ro"), "x", 0644), 0);
  ASSERT_EQ(write_file(path("rw"), "x", 0666), 0);
  timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
  // A non-owner may set "now" with write permission, never explicit times.
  EXPECT_SYS(as_user(kUser1, [&] { return utimensat(AT_FDCWD, cpath("rw"), nullptr, 0); }));
  EXPECT_ERRNO(EPERM, as_user(kUser1, [&] { return utimensat(AT_FDCWD, cpath("rw"), ts, 0); }));
  EXPECT_ERRNO(EACCES,
               as_user(kUser1, [&] { return utimensat(AT_FDCWD, cpath("ro"), nullptr, 0); }));
  EXPECT_ERRNO(EPERM, as_user(kUser1, [&] { return utimensat(AT_FDCWD, cpath("ro"), ts, 0); }));
  ASSERT_SYS(chown(cpath("ro"), kUser1.uid, kUser1.gid));
  EXPECT_SYS(as_user(kUser1, [&] { return utimensat(AT_FDCWD, cpath("ro"), ts, 0); }));
  EXPECT_TRUE(ts_eq(lst(path("ro")).st_mtim, ts[1]));
}

TEST_P(PosixTest, UtimensatNoFollowChangesTheLink) {
  REQUIRE_CAPABILITY(kSymlinkTimes);
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(symlink("f", cpath("l")));
  timespec f_ts[2] = {{1000000000, 1}, {1000000000, 2}};
  timespec l_ts[2] = {{1200000000, 3}, {1200000000, 4}};
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("f"), f_ts, 0));
  ASSERT_SYS(utimensat(AT_FDCWD, cpath("l"), l_ts, AT_SYMLINK_NOFOLLOW));
  EXPECT_TRUE(ts_eq(lst(path("l")).st_mtim, l_ts[1])) << ts_str(lst(path("l")).st_mtim);
  EXPECT_TRUE(ts_eq(lst(path("f")).st_mtim, f_ts[1])) << ts_str(lst(path("f")).st_mtim);
}

// ---------------------------------------------------------------------------
// symlink / readlink

TEST_P(PosixTest, SymlinkTargetPreservedExactly) {
  std::vector<std::string> targets = {
      "a",   "../up/and/over", "/absolute/path",       "with space",          "dir/",
      "./.", "\x01\x7f\xff",   std::string(1000, 'L'), std::string(4095, 'M')};
  for (size_t i = 0; i < targets.size(); ++i) {
    std::string name = "l" + std::to_string(i);
    ASSERT_SYS(symlink(targets[i].c_str(), cpath(name)))
        << "target of " << targets[i].size() << " bytes";
    std::string buf(8192, '\0');
    ssize_t n = readlink(cpath(name), buf.data(), buf.size());
    ASSERT_SYS(n);
    EXPECT_EQ(buf.substr(0, static_cast<size_t>(n)), targets[i]);
    struct stat st = lst(path(name));
    EXPECT_TRUE(S_ISLNK(st.st_mode)) << std::oct << st.st_mode;
    EXPECT_EQ(st.st_mode & 07777, 0777u);
    EXPECT_EQ(st.st_size, static_cast<off_t>(targets[i].size()))
        << "lstat size of a symlink is its target's length";
  }
  // A too small buffer truncates, without a NUL.
  char small[4];
  EXPECT_EQ(readlink(cpath("l1"), small, sizeof small), 4);
  EXPECT_EQ(std::string(small, 4), "../u");
  EXPECT_ERRNO(ENAMETOOLONG, symlink(std::string(4096, 'x').c_str(), cpath("toolong")));
}

TEST_P(PosixTest, SymlinkResolution) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_EQ(write_file(path("d/f"), "content"), 0);
  ASSERT_SYS(symlink("d/f", cpath("rel")));
  ASSERT_SYS(symlink(path("d/f").c_str(), cpath("abs")));
  ASSERT_SYS(symlink("d", cpath("dirlink")));
  EXPECT_EQ(read_file(path("rel")).value_or("<error>"), "content");
  EXPECT_EQ(read_file(path("abs")).value_or("<error>"), "content");
  EXPECT_EQ(read_file(path("dirlink/f")).value_or("<error>"), "content");
  struct stat st;
  ASSERT_SYS(stat(cpath("rel"), &st));
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 7);
  EXPECT_ERRNO(ELOOP, open(cpath("rel"), O_RDONLY | O_NOFOLLOW));
}

TEST_P(PosixTest, SymlinkDanglingAndLoop) {
  ASSERT_SYS(symlink("nowhere", cpath("dangling")));
  struct stat st;
  EXPECT_ERRNO(ENOENT, stat(cpath("dangling"), &st));
  EXPECT_ERRNO(ENOENT, open(cpath("dangling"), O_RDONLY));
  EXPECT_SYS(lstat(cpath("dangling"), &st));
  EXPECT_ERRNO(EEXIST, open(cpath("dangling"), O_CREAT | O_EXCL | O_WRONLY, 0644));
  // O_CREAT without O_EXCL creates the target.
  int fd = open(cpath("dangling"), O_CREAT | O_WRONLY, 0644);
  EXPECT_SYS(fd);
  if (fd >= 0) close(fd);
  EXPECT_SYS(stat(cpath("nowhere"), &st));
  ASSERT_SYS(symlink("b", cpath("a")));
  ASSERT_SYS(symlink("a", cpath("b")));
  EXPECT_ERRNO(ELOOP, stat(cpath("a"), &st));
  EXPECT_ERRNO(ELOOP, open(cpath("a/x"), O_RDONLY));
}

TEST_P(PosixTest, SymlinkErrors) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_SYS(symlink("x", cpath("l")));
  EXPECT_ERRNO(EEXIST, symlink("t", cpath("f")));
  EXPECT_ERRNO(EEXIST, symlink("t", cpath("d")));
  EXPECT_ERRNO(EEXIST, symlink("t", cpath("l")));
  EXPECT_ERRNO(ENOENT, symlink("t", cpath("missing/l")));
  EXPECT_ERRNO(ENOENT, symlink("", cpath("empty")));
  char buf[64];
  EXPECT_ERRNO(EINVAL, readlink(cpath("f"), buf, sizeof buf));
  EXPECT_ERRNO(EINVAL, readlink(cpath("d"), buf, sizeof buf));
  EXPECT_ERRNO(ENOENT, readlink(cpath("missing"), buf, sizeof buf));
  ASSERT_SYS(chmod(cpath("d"), 0555));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return symlink("t", cpath("d/l")); }));
}

// ---------------------------------------------------------------------------
// mknod

TEST_P(PosixTest, MknodFifo) {
  ASSERT_SYS(mkfifo(cpath("p"), 0640));
  struct stat st = lst(path("p"));
  EXPECT_EQ(st.st_mode, S_IFIFO | 0640u) << std::oct << st.st_mode;
  EXPECT_EQ(st.st_size, 0);
  // The kernel serves the pipe itself: data flows between two opens.
  int fd = open(cpath("p"), O_RDWR | O_NONBLOCK);
  ASSERT_SYS(fd);
  EXPECT_EQ(write(fd, "pipe", 4), 4);
  char buf[8] = {};
  EXPECT_EQ(read(fd, buf, sizeof buf), 4);
  EXPECT_STREQ(buf, "pipe");
  close(fd);
  EXPECT_ERRNO(EEXIST, mkfifo(cpath("p"), 0640));
}

TEST_P(PosixTest, MknodDevicesKeepRdev) {
  struct Node {
    const char* name;
    mode_t type;
    dev_t rdev;
  };
  for (Node n : {Node{"null", S_IFCHR, makedev(1, 3)}, Node{"blk", S_IFBLK, makedev(8, 17)},
                 Node{"bigchr", S_IFCHR, makedev(300, 70000)},
                 Node{"maxblk", S_IFBLK, makedev(4095, 1048575)}}) {
    ASSERT_SYS(mknod(cpath(n.name), n.type | 0600, n.rdev)) << n.name;
    struct stat st = lst(path(n.name));
    EXPECT_EQ(st.st_mode, n.type | 0600u) << n.name << " mode " << std::oct << st.st_mode;
    EXPECT_EQ(major(st.st_rdev), major(n.rdev)) << n.name;
    EXPECT_EQ(minor(st.st_rdev), minor(n.rdev)) << n.name;
  }
  ASSERT_SYS(mknod(cpath("reg"), S_IFREG | 0644, 0));
  EXPECT_EQ(lst(path("reg")).st_mode, S_IFREG | 0644u);
  EXPECT_ERRNO(EEXIST, mknod(cpath("null"), S_IFCHR | 0600, makedev(1, 3)));
  ASSERT_SYS(chmod(cpath(""), 0777));
  EXPECT_ERRNO(
      EPERM,
      as_user(kUser1, [&] { return mknod(cpath("userdev"), S_IFCHR | 0600, makedev(1, 3)); }))
      << "creating a device needs CAP_MKNOD";
  EXPECT_SYS(as_user(kUser1, [&] { return mknod(cpath("userfifo"), S_IFIFO | 0600, 0); }));
}

TEST_P(PosixTest, MknodSockets) {
  ASSERT_SYS(mknod(cpath("s"), S_IFSOCK | 0600, 0));
  EXPECT_EQ(lst(path("s")).st_mode, S_IFSOCK | 0600u);
  // bind() creates a socket node; connecting to it works (the kernel serves it).
  int srv = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_SYS(srv);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::string sp = path("bound");
  if (sp.size() >= sizeof addr.sun_path) GTEST_SKIP() << "socket path too long: " << sp;
  strcpy(addr.sun_path, sp.c_str());
  ASSERT_SYS(bind(srv, reinterpret_cast<sockaddr*>(&addr), sizeof addr));
  ASSERT_SYS(listen(srv, 1));
  EXPECT_TRUE(S_ISSOCK(lst(sp).st_mode));
  int cli = socket(AF_UNIX, SOCK_STREAM, 0);
  EXPECT_SYS(connect(cli, reinterpret_cast<sockaddr*>(&addr), sizeof addr));
  close(cli);
  close(srv);
}

// ---------------------------------------------------------------------------
// mkdir / rmdir

TEST_P(PosixTest, MkdirErrors) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_SYS(symlink("d", cpath("l")));
  EXPECT_ERRNO(EEXIST, mkdir(cpath("d"), 0755));
  EXPECT_ERRNO(EEXIST, mkdir(cpath("f"), 0755));
  EXPECT_ERRNO(EEXIST, mkdir(cpath("l"), 0755));
  EXPECT_ERRNO(ENOENT, mkdir(cpath("missing/d"), 0755));
  EXPECT_ERRNO(ENOTDIR, mkdir(cpath("f/d"), 0755));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return mkdir(cpath("d/x"), 0755); }));
  ASSERT_SYS(chmod(cpath("d"), 0777));
  EXPECT_SYS(as_user(kUser1, [&] { return mkdir(cpath("d/x"), 0755); }));
}

TEST_P(PosixTest, RmdirErrors) {
  ASSERT_SYS(mkdir(cpath("full"), 0755));
  ASSERT_EQ(write_file(path("full/f"), "x"), 0);
  ASSERT_SYS(mkdir(cpath("withdir"), 0755));
  ASSERT_SYS(mkdir(cpath("withdir/sub"), 0755));
  ASSERT_SYS(mkdir(cpath("empty"), 0755));
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(symlink("empty", cpath("l")));
  EXPECT_ERRNO(ENOTEMPTY, rmdir(cpath("full")));
  EXPECT_ERRNO(ENOTEMPTY, rmdir(cpath("withdir")));
  EXPECT_ERRNO(ENOTDIR, rmdir(cpath("f")));
  EXPECT_ERRNO(ENOTDIR, rmdir(cpath("l")));
  EXPECT_ERRNO(ENOENT, rmdir(cpath("missing")));
  EXPECT_ERRNO(EINVAL, rmdir(cpath("empty/.")));
  EXPECT_ERRNO(ENOTEMPTY, rmdir(cpath("withdir/sub/..")));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return rmdir(cpath("empty")); }));
  EXPECT_SYS(rmdir(cpath("empty")));
  struct stat st;
  EXPECT_ERRNO(ENOENT, stat(cpath("empty"), &st));
  EXPECT_SYS(stat(cpath("full/f"), &st)) << "a failed rmdir must not remove anything";
}

TEST_P(PosixTest, RmdirOpenDirectory) {
  REQUIRE_CAPABILITY(kRmdirOpenDirectory);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  int fd = open(cpath("d"), O_RDONLY | O_DIRECTORY);
  ASSERT_SYS(fd);
  ASSERT_SYS(rmdir(cpath("d")));
  struct stat st;
  EXPECT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_nlink, 0u) << "a removed directory has no links";
  EXPECT_ERRNO(ENOENT, openat(fd, "new", O_CREAT | O_WRONLY, 0644))
      << "creating in a removed directory";
  close(fd);
}

TEST_P(PosixTest, DirectoryNlinkCountsSubdirectories) {
  ASSERT_SYS(mkdir(cpath("p"), 0755));
  ASSERT_SYS(mkdir(cpath("q"), 0755));
  for (const char* d : {"p/a", "p/b", "p/c"}) ASSERT_SYS(mkdir(cpath(d), 0755));
  ASSERT_EQ(write_file(path("p/f1"), "x"), 0);
  ASSERT_SYS(symlink("a", cpath("p/l")));
  ASSERT_SYS(mknod(cpath("p/fifo"), S_IFIFO | 0644, 0));
  EXPECT_EQ(lst(path("p")).st_nlink, 5u) << "2 + three subdirectories; files do not count";
  ASSERT_SYS(rmdir(cpath("p/c")));
  EXPECT_EQ(lst(path("p")).st_nlink, 4u);
  ASSERT_SYS(rename(cpath("p/b"), cpath("q/b")));
  EXPECT_EQ(lst(path("p")).st_nlink, 3u) << "moving a subdirectory out";
  EXPECT_EQ(lst(path("q")).st_nlink, 3u) << "moving a subdirectory in";
  ASSERT_SYS(mkdir(cpath("q/c"), 0755));
  ASSERT_SYS(rename(cpath("p/a"), cpath("q/c")));  // over an empty directory
  EXPECT_EQ(lst(path("p")).st_nlink, 2u);
  EXPECT_EQ(lst(path("q")).st_nlink, 4u) << "replacing a subdirectory keeps the count";
}

// ---------------------------------------------------------------------------
// unlink

TEST_P(PosixTest, UnlinkErrors) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_EQ(write_file(path("d/f"), "x", 0666), 0);
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  EXPECT_ERRNO(EISDIR, unlink(cpath("d")));
  EXPECT_ERRNO(ENOENT, unlink(cpath("missing")));
  EXPECT_ERRNO(ENOENT, unlink(cpath("missing/f")));
  EXPECT_ERRNO(ENOTDIR, unlink(cpath("f/x")));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return unlink(cpath("d/f")); }))
      << "unlink needs write permission on the directory, not the file";
  ASSERT_SYS(chmod(cpath("d"), 0777));
  ASSERT_SYS(chmod(cpath("d/f"), 0));
  EXPECT_SYS(as_user(kUser1, [&] { return unlink(cpath("d/f")); }));
  struct stat st;
  EXPECT_ERRNO(ENOENT, lstat(cpath("d/f"), &st));
  EXPECT_ERRNO(EISDIR, unlinkat(AT_FDCWD, cpath("d"), 0));
  EXPECT_ERRNO(ENOTDIR, unlinkat(AT_FDCWD, cpath("f"), AT_REMOVEDIR));
}

TEST_P(PosixTest, UnlinkedOpenFileStaysUsable) {
  std::string data = pattern(7, 0, 100000);
  ASSERT_EQ(write_file(path("f"), data), 0);
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  ASSERT_SYS(unlink(cpath("f")));
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(st.st_size, 100000);
  std::string buf(100000, '\0');
  EXPECT_EQ(pread_all(fd, buf.data(), buf.size(), 0), 100000);
  EXPECT_EQ(check_pattern(buf, 7, 0), "");
  EXPECT_EQ(pwrite_all(fd, "tail", 4, 100000), 0);
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 100004);
  EXPECT_SYS(fchmod(fd, 0600));
  EXPECT_TRUE(list_dir(path()).empty());
  // A new file of the same name is a different file.
  ASSERT_EQ(write_file(path("f"), "new"), 0);
  EXPECT_EQ(pread_all(fd, buf.data(), 4, 100000), 4);
  EXPECT_EQ(buf.substr(0, 4), "tail");
  EXPECT_NE(lst(path("f")).st_ino, st.st_ino);
  EXPECT_EQ(close(fd), 0);
}

// ---------------------------------------------------------------------------
// rename

TEST_P(PosixTest, RenameFileOverFile) {
  ASSERT_EQ(write_file(path("a"), "AAAA"), 0);
  ASSERT_EQ(write_file(path("b"), "BB"), 0);
  ASSERT_SYS(link(cpath("b"), cpath("b2")));
  ino_t ino_a = lst(path("a")).st_ino;
  ASSERT_SYS(rename(cpath("a"), cpath("b")));
  struct stat st;
  EXPECT_ERRNO(ENOENT, lstat(cpath("a"), &st));
  EXPECT_EQ(lst(path("b")).st_ino, ino_a);
  EXPECT_EQ(read_file(path("b")).value_or("<error>"), "AAAA");
  EXPECT_EQ(lst(path("b2")).st_nlink, 1u) << "the replaced file lost one link";
  EXPECT_EQ(read_file(path("b2")).value_or("<error>"), "BB");
  auto names = list_dir(path());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"b", "b2"}));
}

TEST_P(PosixTest, RenameOverOpenFileKeepsItReadable) {
  ASSERT_EQ(write_file(path("old"), "old content"), 0);
  ASSERT_EQ(write_file(path("new"), "new content"), 0);
  int fd = open(cpath("old"), O_RDONLY);
  ASSERT_SYS(fd);
  ASSERT_SYS(rename(cpath("new"), cpath("old")));
  char buf[32] = {};
  EXPECT_EQ(pread(fd, buf, sizeof buf, 0), 11);
  EXPECT_STREQ(buf, "old content") << "the replaced file lives while it is open";
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_nlink, 0u);
  close(fd);
  EXPECT_EQ(read_file(path("old")).value_or("<error>"), "new content");
}

TEST_P(PosixTest, RenameDirectories) {
  ASSERT_SYS(mkdir(cpath("src"), 0755));
  ASSERT_EQ(write_file(path("src/f"), "inside"), 0);
  ASSERT_SYS(mkdir(cpath("empty"), 0755));
  ASSERT_SYS(mkdir(cpath("full"), 0755));
  ASSERT_EQ(write_file(path("full/g"), "x"), 0);
  EXPECT_ERRNO(ENOTEMPTY, rename(cpath("src"), cpath("full")));
  ASSERT_SYS(rename(cpath("src"), cpath("empty")));
  EXPECT_EQ(read_file(path("empty/f")).value_or("<error>"), "inside");
  struct stat st;
  EXPECT_ERRNO(ENOENT, lstat(cpath("src"), &st));
  // Renaming a directory to itself is a no-op.
  EXPECT_SYS(rename(cpath("empty"), cpath("empty")));
  EXPECT_EQ(read_file(path("empty/f")).value_or("<error>"), "inside");
}

TEST_P(PosixTest, RenameTypeMismatch) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  EXPECT_ERRNO(EISDIR, rename(cpath("f"), cpath("d")));
  EXPECT_ERRNO(ENOTDIR, rename(cpath("d"), cpath("f")));
  EXPECT_ERRNO(ENOENT, rename(cpath("missing"), cpath("x")));
  EXPECT_ERRNO(ENOENT, rename(cpath("f"), cpath("missing/x")));
  EXPECT_TRUE(S_ISREG(lst(path("f")).st_mode));
  EXPECT_TRUE(S_ISDIR(lst(path("d")).st_mode));
}

TEST_P(PosixTest, RenameIntoOwnSubtreeIsEINVAL) {
  ASSERT_SYS(mkdir(cpath("a"), 0755));
  ASSERT_SYS(mkdir(cpath("a/b"), 0755));
  EXPECT_ERRNO(EINVAL, rename(cpath("a"), cpath("a/b/c")));
  EXPECT_ERRNO(EINVAL, rename(cpath("a"), cpath("a/c")));
  EXPECT_SYS(access(cpath("a/b"), F_OK));
}

TEST_P(PosixTest, RenameOverHardLinkOfItselfIsNoop) {
  ASSERT_EQ(write_file(path("a"), "same"), 0);
  ASSERT_SYS(link(cpath("a"), cpath("b")));
  EXPECT_SYS(rename(cpath("a"), cpath("b")));
  // POSIX: both names stay when they are links to the same file.
  struct stat st;
  EXPECT_SYS(lstat(cpath("a"), &st));
  EXPECT_SYS(lstat(cpath("b"), &st));
  EXPECT_EQ(st.st_nlink, 2u);
}

TEST_P(PosixTest, RenameNoreplace) {
  REQUIRE_CAPABILITY(kRenameFlags);
  ASSERT_EQ(write_file(path("a"), "A"), 0);
  ASSERT_EQ(write_file(path("b"), "B"), 0);
  EXPECT_ERRNO(EEXIST, renameat2(AT_FDCWD, cpath("a"), AT_FDCWD, cpath("b"), RENAME_NOREPLACE));
  EXPECT_EQ(read_file(path("a")).value_or(""), "A");
  EXPECT_EQ(read_file(path("b")).value_or(""), "B");
  EXPECT_SYS(renameat2(AT_FDCWD, cpath("a"), AT_FDCWD, cpath("c"), RENAME_NOREPLACE));
  EXPECT_EQ(read_file(path("c")).value_or(""), "A");
  struct stat st;
  EXPECT_ERRNO(ENOENT, lstat(cpath("a"), &st));
}

TEST_P(PosixTest, RenameExchange) {
  REQUIRE_CAPABILITY(kRenameFlags);
  ASSERT_SYS(mkdir(cpath("p"), 0755));
  ASSERT_SYS(mkdir(cpath("q"), 0755));
  ASSERT_EQ(write_file(path("p/file"), "file data"), 0);
  ASSERT_SYS(mkdir(cpath("q/dir"), 0755));
  ASSERT_EQ(write_file(path("q/dir/inner"), "inner"), 0);
  ino_t file_ino = lst(path("p/file")).st_ino;
  ino_t dir_ino = lst(path("q/dir")).st_ino;
  ASSERT_SYS(renameat2(AT_FDCWD, cpath("p/file"), AT_FDCWD, cpath("q/dir"), RENAME_EXCHANGE));
  struct stat a = lst(path("p/file")), b = lst(path("q/dir"));
  EXPECT_TRUE(S_ISDIR(a.st_mode)) << "p/file is now the directory";
  EXPECT_EQ(a.st_ino, dir_ino);
  EXPECT_TRUE(S_ISREG(b.st_mode)) << "q/dir is now the file";
  EXPECT_EQ(b.st_ino, file_ino);
  EXPECT_EQ(read_file(path("p/file/inner")).value_or("<error>"), "inner");
  EXPECT_EQ(read_file(path("q/dir")).value_or("<error>"), "file data");
  EXPECT_EQ(lst(path("p")).st_nlink, 3u) << "p gained a subdirectory";
  EXPECT_EQ(lst(path("q")).st_nlink, 2u) << "q lost its subdirectory";
  EXPECT_EQ(lst(path("p/file/..")).st_ino, lst(path("p")).st_ino) << "'..' follows the move";
  EXPECT_ERRNO(ENOENT,
               renameat2(AT_FDCWD, cpath("p/file"), AT_FDCWD, cpath("missing"), RENAME_EXCHANGE));
  EXPECT_ERRNO(EINVAL, renameat2(AT_FDCWD, cpath("p/file"), AT_FDCWD, cpath("q/dir"),
                                 RENAME_EXCHANGE | RENAME_NOREPLACE));
}

TEST_P(PosixTest, RenameAcrossDirectoriesUpdatesDotDot) {
  ASSERT_SYS(mkdir(cpath("a"), 0755));
  ASSERT_SYS(mkdir(cpath("b"), 0755));
  ASSERT_SYS(mkdir(cpath("a/moved"), 0755));
  ASSERT_EQ(write_file(path("a/moved/f"), "x"), 0);
  ASSERT_SYS(rename(cpath("a/moved"), cpath("b/moved")));
  EXPECT_EQ(lst(path("b/moved/..")).st_ino, lst(path("b")).st_ino);
  EXPECT_EQ(lst(path("a")).st_nlink, 2u);
  EXPECT_EQ(lst(path("b")).st_nlink, 3u);
  EXPECT_EQ(read_file(path("b/moved/f")).value_or("<error>"), "x");
  // The '..' entry of readdir names the new parent too.
  DIR* d = opendir(cpath("b/moved"));
  ASSERT_NE(d, nullptr);
  ino_t dotdot = 0;
  while (dirent* de = readdir(d)) {
    if (std::string(de->d_name) == "..") dotdot = de->d_ino;
  }
  closedir(d);
  EXPECT_EQ(dotdot, lst(path("b")).st_ino) << "readdir '..' of a moved directory";
}

TEST_P(PosixTest, RenamePermissions) {
  ASSERT_SYS(mkdir(cpath("ro"), 0755));
  ASSERT_EQ(write_file(path("ro/f"), "x", 0666), 0);
  ASSERT_SYS(mkdir(cpath("rw"), 0777));
  ASSERT_SYS(chmod(cpath("rw"), 0777));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return rename(cpath("ro/f"), cpath("rw/f")); }));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return rename(cpath("ro/f"), cpath("ro/g")); }));
  // Moving a directory to another parent needs write permission on it ('..' changes).
  ASSERT_SYS(mkdir(cpath("rw/rootdir"), 0755));
  ASSERT_SYS(mkdir(cpath("rw/dest"), 0777));
  ASSERT_SYS(chmod(cpath("rw/dest"), 0777));
  EXPECT_ERRNO(EACCES,
               as_user(kUser1, [&] { return rename(cpath("rw/rootdir"), cpath("rw/dest/x")); }));
  EXPECT_SYS(as_user(kUser1, [&] { return rename(cpath("rw/rootdir"), cpath("rw/renamed")); }));
}

// ---------------------------------------------------------------------------
// link

TEST_P(PosixTest, LinkCountsAndErrors) {
  ASSERT_EQ(write_file(path("f"), "linked"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_SYS(link(cpath("f"), cpath("g")));
  ASSERT_SYS(link(cpath("f"), cpath("d/h")));
  struct stat f = lst(path("f")), g = lst(path("g")), h = lst(path("d/h"));
  EXPECT_EQ(f.st_ino, g.st_ino);
  EXPECT_EQ(f.st_ino, h.st_ino);
  EXPECT_EQ(f.st_nlink, 3u);
  EXPECT_EQ(h.st_nlink, 3u);
  // Data written through one name is read through the other.
  int fd = open(cpath("d/h"), O_WRONLY | O_APPEND);
  ASSERT_SYS(fd);
  EXPECT_EQ(write(fd, "+", 1), 1);
  close(fd);
  EXPECT_EQ(read_file(path("g")).value_or(""), "linked+");
  ASSERT_SYS(unlink(cpath("f")));
  EXPECT_EQ(lst(path("g")).st_nlink, 2u);
  EXPECT_ERRNO(EEXIST, link(cpath("g"), cpath("d/h")));
  EXPECT_ERRNO(EEXIST, link(cpath("g"), cpath("d")));
  EXPECT_ERRNO(EPERM, link(cpath("d"), cpath("dlink"))) << "hard links to directories";
  EXPECT_ERRNO(ENOENT, link(cpath("missing"), cpath("x")));
  EXPECT_ERRNO(ENOENT, link(cpath("g"), cpath("missing/x")));
  // A hard link to a symlink links the symlink itself.
  ASSERT_SYS(symlink("g", cpath("sl")));
  ASSERT_SYS(linkat(AT_FDCWD, cpath("sl"), AT_FDCWD, cpath("sl2"), 0));
  EXPECT_TRUE(S_ISLNK(lst(path("sl2")).st_mode));
  EXPECT_EQ(lst(path("sl")).st_nlink, 2u);
  ASSERT_EQ(write_file(path("u1"), "x"), 0);
  ASSERT_SYS(chown(cpath("u1"), kUser1.uid, kUser1.gid));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return link(cpath("u1"), cpath("d/u")); }))
      << "no write permission on the target directory";
}

// ---------------------------------------------------------------------------
// open / create

TEST_P(PosixTest, OpenCreateExclusive) {
  int fd = open(cpath("f"), O_CREAT | O_EXCL | O_WRONLY, 0644);
  ASSERT_SYS(fd);
  close(fd);
  EXPECT_ERRNO(EEXIST, open(cpath("f"), O_CREAT | O_EXCL | O_WRONLY, 0644));
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  EXPECT_ERRNO(EEXIST, open(cpath("d"), O_CREAT | O_EXCL | O_RDONLY, 0644));
  EXPECT_ERRNO(EISDIR, open(cpath("d"), O_CREAT | O_RDONLY, 0644));
  // O_CREAT of an existing file opens it and keeps its mode and data.
  ASSERT_EQ(write_file(path("g"), "keep", 0600), 0);
  fd = open(cpath("g"), O_CREAT | O_RDWR, 0777);
  ASSERT_SYS(fd);
  close(fd);
  EXPECT_EQ(lst(path("g")).st_mode, S_IFREG | 0600u);
  EXPECT_EQ(read_file(path("g")).value_or(""), "keep");
}

TEST_P(PosixTest, OpenTruncate) {
  ASSERT_EQ(write_file(path("f"), pattern(3, 0, 50000)), 0);
  struct stat a = lst(path("f"));
  tick();
  int fd = open(cpath("f"), O_WRONLY | O_TRUNC);
  ASSERT_SYS(fd);
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_size, 0);
  close(fd);
  struct stat b = lst(path("f"));
  EXPECT_EQ(b.st_size, 0);
  EXPECT_TRUE(ts_lt(a.st_mtim, b.st_mtim)) << "O_TRUNC updates mtime";
  EXPECT_EQ(read_file(path("f")).value_or("<error>"), "");
  // O_TRUNC|O_RDONLY on Linux truncates too; needs write permission.
  ASSERT_EQ(write_file(path("g"), "data", 0644), 0);
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("g"), O_RDONLY | O_TRUNC); }));
  EXPECT_EQ(lst(path("g")).st_size, 4);
}

TEST_P(PosixTest, OpenAppend) {
  ASSERT_EQ(write_file(path("f"), "start"), 0);
  int a = open(cpath("f"), O_WRONLY | O_APPEND);
  int b = open(cpath("f"), O_WRONLY | O_APPEND);
  ASSERT_SYS(a);
  ASSERT_SYS(b);
  lseek(a, 0, SEEK_SET);
  EXPECT_EQ(write(a, "-a1", 3), 3);
  EXPECT_EQ(write(b, "-b1", 3), 3);
  EXPECT_EQ(write(a, "-a2", 3), 3);
  EXPECT_EQ(lseek(a, 0, SEEK_CUR), 14) << "the offset is at the end after an append";
  close(a);
  close(b);
  EXPECT_EQ(read_file(path("f")).value_or(""), "start-a1-b1-a2");
}

TEST_P(PosixTest, OpenDirectoryErrors) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  EXPECT_ERRNO(ENOTDIR, open(cpath("f"), O_RDONLY | O_DIRECTORY));
  EXPECT_ERRNO(EISDIR, open(cpath("d"), O_WRONLY));
  EXPECT_ERRNO(EISDIR, open(cpath("d"), O_RDWR));
  int fd = open(cpath("d"), O_RDONLY | O_DIRECTORY);
  EXPECT_SYS(fd);
  if (fd >= 0) {
    char c;
    EXPECT_ERRNO(EISDIR, read(fd, &c, 1));
    close(fd);
  }
}

TEST_P(PosixTest, OpenPermissions) {
  ASSERT_EQ(write_file(path("secret"), "s", 0600), 0);
  ASSERT_EQ(write_file(path("public"), "p", 0644), 0);
  ASSERT_EQ(write_file(path("wo"), "w", 0622), 0);
  ASSERT_SYS(mkdir(cpath("noexec"), 0766));
  ASSERT_SYS(chmod(cpath("noexec"), 0766));
  ASSERT_EQ(write_file(path("noexec/f"), "x", 0666), 0);
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("secret"), O_RDONLY); }));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("public"), O_RDONLY); }));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("public"), O_WRONLY); }));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("public"), O_RDWR); }));
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("wo"), O_WRONLY); }));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("wo"), O_RDONLY); }));
  EXPECT_ERRNO(EACCES,
               as_user(kUser1, [&] { return open(cpath("new"), O_CREAT | O_WRONLY, 0644); }));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("noexec/f"), O_RDONLY); }))
      << "no search permission on the directory";
  // The owner's bits apply to the owner, even when 'other' allows more.
  ASSERT_EQ(write_file(path("owner"), "o", 0066), 0);
  ASSERT_SYS(chown(cpath("owner"), kUser1.uid, kUser1.gid));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("owner"), O_RDONLY); }));
  EXPECT_SYS(as_user(kUser2, [&] { return open(cpath("owner"), O_RDONLY); }));
  // Root is not bound by the mode bits for read and write.
  int fd = open(cpath("secret"), O_RDWR);
  EXPECT_SYS(fd);
  if (fd >= 0) close(fd);
}

// Permission is checked at open, not at each use of the descriptor.
TEST_P(PosixTest, DescriptorKeepsItsRightsAfterChmod) {
  ASSERT_SYS(chmod(cpath(""), 0777));
  ASSERT_EQ(write_file(path("f"), "0123456789", 0666), 0);
  Child user(
      [&](Child& self) -> std::string {
        int fd = ::open(path("f").c_str(), O_RDWR);
        if (fd < 0) return "open: " + errname(errno);
        self.signal();
        if (!self.wait()) return "no go-ahead";
        if (::pwrite(fd, "AB", 2, 0) != 2) return "pwrite after chmod 0444: " + errname(errno);
        if (::ftruncate(fd, 5) != 0) return "ftruncate after chmod 0444: " + errname(errno);
        if (::fsync(fd) != 0) return "fsync: " + errname(errno);
        if (::close(fd) != 0) return "close: " + errname(errno);
        return "";
      },
      kUser1);
  ASSERT_TRUE(user.wait()) << user.join();
  ASSERT_SYS(chmod(cpath("f"), 0444));
  user.signal();
  EXPECT_EQ(user.join(), "");
  EXPECT_EQ(read_file(path("f")).value_or("<error>"), "AB234");
}

// A file created read-only is still writable through the descriptor that
// created it.
TEST_P(PosixTest, CreateReadOnlyModeStillWritable) {
  ASSERT_SYS(chmod(cpath(""), 0777));
  EXPECT_SYS(as_user(kUser1, [&] {
    int fd = open(cpath("ro"), O_CREAT | O_EXCL | O_RDWR, 0444);
    if (fd < 0) return -1;
    if (write(fd, "data", 4) != 4) return -1;
    if (ftruncate(fd, 2) != 0) return -1;
    return close(fd);
  }));
  EXPECT_EQ(lst(path("ro")).st_mode, S_IFREG | 0444u);
  EXPECT_EQ(read_file(path("ro")).value_or("<error>"), "da");
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("ro"), O_WRONLY); }))
      << "a later open is checked against the mode";
}

TEST_P(PosixTest, OTmpfileThenLinkat) {
  REQUIRE_CAPABILITY(kTmpfile);
  int fd = -1;
  ASSERT_SYS(fd = open(cpath(""), O_TMPFILE | O_RDWR, 0640)) << "O_TMPFILE";
  std::string data = pattern(11, 0, 20000);
  EXPECT_EQ(pwrite_all(fd, data.data(), data.size(), 0), 0);
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_nlink, 0u) << "an O_TMPFILE file has no name";
  EXPECT_EQ(st.st_mode, S_IFREG | 0640u);
  EXPECT_TRUE(list_dir(path()).empty()) << "an O_TMPFILE file is not listed";
  std::string proc = "/proc/self/fd/" + std::to_string(fd);
  ASSERT_SYS(linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, cpath("named"), AT_SYMLINK_FOLLOW));
  close(fd);
  struct stat named = lst(path("named"));
  EXPECT_EQ(named.st_ino, st.st_ino);
  EXPECT_EQ(named.st_nlink, 1u);
  EXPECT_EQ(read_file(path("named")).value_or("<error>"), data);
  EXPECT_EQ(list_dir(path()), std::vector<std::string>{"named"});
  // O_EXCL forbids giving it a name.
  ASSERT_SYS(fd = open(cpath(""), O_TMPFILE | O_RDWR | O_EXCL, 0600));
  proc = "/proc/self/fd/" + std::to_string(fd);
  EXPECT_ERRNO(ENOENT, linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, cpath("never"), AT_SYMLINK_FOLLOW));
  close(fd);
  EXPECT_ERRNO(ENOTDIR, open(cpath("named"), O_TMPFILE | O_RDWR, 0600)) << "O_TMPFILE on a file";
}

// ---------------------------------------------------------------------------
// access

TEST_P(PosixTest, AccessAsUsers) {
  ASSERT_EQ(write_file(path("f"), "x", 0640), 0);
  ASSERT_SYS(chown(cpath("f"), kUser1.uid, 2000));
  const Cred group_member{kUser2.uid, kUser2.gid, {kUser2.gid, 2000}};
  EXPECT_SYS(as_user(kUser1, [&] { return access(cpath("f"), R_OK | W_OK); }));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return access(cpath("f"), X_OK); }));
  EXPECT_SYS(as_user(group_member, [&] { return access(cpath("f"), R_OK); }));
  EXPECT_ERRNO(EACCES, as_user(group_member, [&] { return access(cpath("f"), W_OK); }));
  EXPECT_ERRNO(EACCES, as_user(kUser2, [&] { return access(cpath("f"), R_OK); }));
  EXPECT_SYS(as_user(kUser2, [&] { return access(cpath("f"), F_OK); }));
  EXPECT_SYS(as_user(kUser2, [&] { return faccessat(AT_FDCWD, cpath("f"), F_OK, AT_EACCESS); }));
  EXPECT_ERRNO(EACCES,
               as_user(kUser2, [&] { return faccessat(AT_FDCWD, cpath("f"), R_OK, AT_EACCESS); }));
  EXPECT_ERRNO(ENOENT, access(cpath("missing"), F_OK));
  // Root passes R and W always, X only if some x bit is set.
  EXPECT_SYS(access(cpath("f"), R_OK | W_OK));
  EXPECT_ERRNO(EACCES, access(cpath("f"), X_OK));
  ASSERT_SYS(chmod(cpath("f"), 0001));
  EXPECT_SYS(access(cpath("f"), X_OK));
  // Directories: X is search.
  ASSERT_SYS(mkdir(cpath("d"), 0700));
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return access(cpath("d"), X_OK); }));
  EXPECT_SYS(access(cpath("d"), X_OK));
}

// ---------------------------------------------------------------------------
// statfs, sync, flush

TEST_P(PosixTest, StatfsAndFreeSpace) {
  REQUIRE_CAPABILITY(kOwnFreeSpace);
  struct statvfs a;
  ASSERT_SYS(statvfs(cpath(""), &a));
  EXPECT_GT(a.f_bsize, 0u);
  EXPECT_GT(a.f_frsize, 0u);
  EXPECT_EQ(a.f_namemax, 255u);
  EXPECT_GE(a.f_blocks, a.f_bfree);
  EXPECT_GE(a.f_bfree, a.f_bavail);
  ASSERT_GT(a.f_bfree * a.f_frsize, 64ull << 20) << "need 64 MiB free for this test";
  std::string data = pattern(5, 0, 16 << 20);
  ASSERT_EQ(write_file(path("big"), data), 0);
  struct statvfs b;
  ASSERT_SYS(statvfs(cpath(""), &b));
  uint64_t used = (a.f_bfree - b.f_bfree) * a.f_frsize;
  EXPECT_GE(used, 8ull << 20) << "f_bfree went from " << a.f_bfree << " to " << b.f_bfree
                              << " blocks of " << a.f_frsize << " after writing 16 MiB";
  ASSERT_SYS(unlink(cpath("big")));
  // Through FUSE the space may come back a moment later: a file system
  // frees an unlinked inode when the kernel FORGETs it, which the kernel
  // sends asynchronously.
  struct statvfs c;
  auto deadline = std::chrono::steady_clock::now() + 5s;
  do {
    ASSERT_SYS(statvfs(cpath(""), &c));
    if (c.f_bfree > b.f_bfree) break;
    std::this_thread::sleep_for(10ms);
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_GT(c.f_bfree, b.f_bfree) << "space did not come back within 5 s of unlink";
  struct statfs fs;
  ASSERT_SYS(statfs(cpath(""), &fs));
  EXPECT_EQ(fs.f_namelen, 255);
  // Inodes are counted too.
  EXPECT_GE(c.f_files, c.f_ffree);
  for (int i = 0; i < 20; ++i) ASSERT_EQ(write_file(path("i" + std::to_string(i)), ""), 0);
  struct statvfs d;
  ASSERT_SYS(statvfs(cpath(""), &d));
  EXPECT_LE(d.f_ffree + 20, c.f_ffree)
      << "f_ffree went from " << c.f_ffree << " to " << d.f_ffree << " after creating 20 files";
}

TEST_P(PosixTest, SyncCallsSucceed) {
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "data", 4, 0), 0);
  EXPECT_SYS(fsync(fd));
  EXPECT_SYS(fdatasync(fd));
  EXPECT_SYS(syncfs(fd));
  EXPECT_SYS(sync_file_range(fd, 0, 4, SYNC_FILE_RANGE_WRITE));
  EXPECT_EQ(close(fd), 0) << "close (FLUSH) of a written file: " << errname(errno);
  int dfd = open(cpath(""), O_RDONLY | O_DIRECTORY);
  ASSERT_SYS(dfd);
  EXPECT_SYS(fsync(dfd)) << "FSYNCDIR";
  EXPECT_SYS(fdatasync(dfd));
  EXPECT_EQ(close(dfd), 0);
  // FLUSH is sent for every close of a shared description.
  fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  int dup_fd = dup(fd);
  EXPECT_EQ(write(dup_fd, "x", 1), 1);
  EXPECT_EQ(close(dup_fd), 0);
  EXPECT_EQ(write(fd, "y", 1), 1);
  EXPECT_EQ(close(fd), 0);
  EXPECT_EQ(read_file(path("f")).value_or(""), "xyta");
}

DPFS_CONFORMANCE_SUITE(PosixTest);

}  // namespace
}  // namespace dpfs::itest
