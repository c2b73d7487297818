// What every configuration answers, the null backend's fixed read-only tree
// included: the directory a test starts in, statfs, lookups of names that
// are not there, a listing that agrees with lookups, and making and removing
// names, or where the tree cannot change, refusing with EROFS.
//
// On a configuration that can change its tree the tests work in a fresh
// directory of their own; on one that cannot (null), in the mount's root.
#include <sys/statvfs.h>

#include <set>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class RootTest : public MountTest {
 protected:
  std::vector<Capability> suite_needs() const override { return {}; }
};

TEST_P(RootTest, StartsInADirectory) {
  struct stat st {};
  ASSERT_SYS(stat(cpath(""), &st));
  EXPECT_TRUE(S_ISDIR(st.st_mode)) << "mode " << std::oct << st.st_mode;
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  EXPECT_GE(st.st_nlink, 2u);
  struct stat mnt {};
  ASSERT_SYS(stat(mount().dir().c_str(), &mnt));
  EXPECT_EQ(st.st_dev, mnt.st_dev) << "the test's directory is on the mount";
}

TEST_P(RootTest, StatfsIsConsistent) {
  struct statvfs sv {};
  ASSERT_SYS(statvfs(cpath(""), &sv));
  EXPECT_GT(sv.f_bsize, 0u);
  EXPECT_GT(sv.f_namemax, 0u);
  EXPECT_GE(sv.f_blocks, sv.f_bfree) << "more blocks free than there are";
  EXPECT_GE(sv.f_bfree, sv.f_bavail) << "more blocks available than free";
  EXPECT_GE(sv.f_files, sv.f_ffree) << "more inodes free than there are";
}

TEST_P(RootTest, MissingNamesAreENOENT) {
  struct stat st {};
  EXPECT_ERRNO(ENOENT, stat(cpath("missing"), &st));
  EXPECT_ERRNO(ENOENT, lstat(cpath("missing"), &st));
  EXPECT_ERRNO(ENOENT, stat(cpath("missing/below"), &st));
  EXPECT_ERRNO(ENOENT, open(cpath("missing"), O_RDONLY));
  EXPECT_ERRNO(ENOENT, unlink(cpath("missing")));
  EXPECT_ERRNO(ENOENT, rmdir(cpath("missing")));
  char buf[16];
  EXPECT_ERRNO(ENOENT, readlink(cpath("missing"), buf, sizeof buf));
}

// Every name listed can be looked up, as the type and inode number listed.
TEST_P(RootTest, ListingAgreesWithLookups) {
  DIR* d = opendir(cpath(""));
  ASSERT_NE(d, nullptr) << "opendir: " << errname(errno);
  std::set<std::string> names;
  errno = 0;
  while (dirent* de = readdir(d)) {
    const std::string name = de->d_name;
    EXPECT_TRUE(names.insert(name).second) << name << " listed twice";
    if (name == "." || name == "..") continue;
    struct stat st {};
    EXPECT_SYS(lstat(cpath(name), &st)) << name;
    EXPECT_EQ(de->d_ino, st.st_ino) << name;
    if (de->d_type != DT_UNKNOWN) {
      EXPECT_EQ(de->d_type, IFTODT(st.st_mode)) << name;
    }
  }
  EXPECT_EQ(errno, 0) << "readdir: " << errname(errno);
  closedir(d);
  EXPECT_TRUE(names.contains(".") && names.contains("..")) << "no . or ..";
}

// Names made and removed again; where the tree cannot change, every way of
// making a name is refused with EROFS and the listing stays as it was.
TEST_P(RootTest, MakeAndRemoveNames) {
  const std::vector<std::string> before = list_dir(path());
  if (!has(Capability::kChangeTree)) {
    EXPECT_ERRNO(EROFS, mkdir(cpath("new"), 0755));
    EXPECT_ERRNO(EROFS, open(cpath("new"), O_CREAT | O_WRONLY, 0644));
    EXPECT_ERRNO(EROFS, symlink("target", cpath("new")));
    EXPECT_ERRNO(EROFS, mknod(cpath("new"), S_IFIFO | 0644, 0));
    EXPECT_EQ(list_dir(path()), before);
    return;
  }
  EXPECT_TRUE(before.empty()) << "the test's directory is not empty";
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_EQ(write_file(path("f"), "data"), 0);
  ASSERT_SYS(symlink("f", cpath("l")));
  ASSERT_SYS(mknod(cpath("p"), S_IFIFO | 0644, 0));
  std::vector<std::string> names = list_dir(path());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"d", "f", "l", "p"}));
  EXPECT_SYS(rmdir(cpath("d")));
  for (const char* n : {"f", "l", "p"}) EXPECT_SYS(unlink(cpath(n))) << n;
  EXPECT_EQ(list_dir(path()), before);
}

DPFS_CONFORMANCE_SUITE(RootTest);

}  // namespace
}  // namespace dpfs::itest
