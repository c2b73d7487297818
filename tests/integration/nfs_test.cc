// The NFS backend against a real server: nfs-ganesha (VFS) on 127.0.0.1,
// started by the test (nfs_server.h). Files and directories made through the
// dpfs mount are compared with the exported directory on disk; errors come
// back as an NFS client's errno; the server is killed and restarted in the
// middle of a write workload and every acknowledged byte is checked; a
// stopped server gives the tenant ETIMEDOUT/EIO within the configured
// timeout, never a hang. Each test runs on NFSv3 and on NFSv4 (/v3, /v4).
#include <sys/statvfs.h>
#include <sys/sysmacros.h>

#include <atomic>
#include <map>

#include "mount_fixture.h"
#include "nfs_server.h"

namespace dpfs::itest {
namespace {

constexpr int kNfsTimeoutSeconds = 3;

class NfsTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    server_ = &NfsServer::shared(&problem);
    ASSERT_TRUE(problem.empty()) << problem;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    std::string hint = info->name();  // "Name/v3": no '/' in a directory name
    std::replace(hint.begin(), hint.end(), '/', '-');
    export_ = server_->fresh_dir(hint);
    ASSERT_FALSE(export_.empty()) << "cannot create a directory in " << server_->export_dir();
    mount_ = std::make_unique<Mount>();
    std::vector<std::string> args{"serve",
                                  "--backend",
                                  NfsServer::url(export_, version()),
                                  "--fuse-mount",
                                  mount_->dir(),
                                  "--nfs-timeout",
                                  std::to_string(kNfsTimeoutSeconds),
                                  "--nfs-connections",
                                  "2",
                                  "--entry-timeout",
                                  "0",
                                  "--attr-timeout",
                                  "0"};
    // The suite makes device nodes as root (mount_fixture.h).
    const std::vector<std::string>& policy = conformance_policy_args();
    args.insert(args.end(), policy.begin(), policy.end());
    std::string started = mount_->start_dpfs(args);
    ASSERT_TRUE(started.empty()) << started;
    mnt_ = mount_->dir();
  }

  void TearDown() override {
    if (mount_) {
      close_fds_under(mount_->dir());
      std::string stopped = mount_->stop(SIGTERM, 20s);
      EXPECT_TRUE(stopped.empty()) << stopped;
    }
    // A test that stopped the server leaves it running again for the next.
    if (server_ != nullptr && !server_->running()) {
      std::string e = server_->start();
      EXPECT_TRUE(e.empty()) << e;
    }
  }

  int version() const { return GetParam(); }
  std::string m(const std::string& name) const { return mnt_ + "/" + name; }
  // lstat that must succeed.
  struct stat lst(const std::string& p) {
    struct stat st {};
    if (::lstat(p.c_str(), &st) != 0) ADD_FAILURE() << "lstat " << p << ": " << errname(errno);
    return st;
  }
  std::string d(const std::string& name) const { return export_ + "/" + name; }

  NfsServer* server_ = nullptr;
  std::unique_ptr<Mount> mount_;
  std::string export_, mnt_;
};

// Differences between the tree at `a` (through dpfs) and `b` (on disk):
// names, types, modes, owners, sizes, link counts, inode numbers, content
// and link targets. "" if none.
std::string compare_trees(const std::string& a, const std::string& b) {
  std::ostringstream diff;
  auto names = [](const std::string& dir) {
    auto v = list_dir(dir);
    std::sort(v.begin(), v.end());
    return v;
  };
  const auto na = names(a), nb = names(b);
  if (na != nb) {
    diff << a << " and " << b << " list different names (" << na.size() << " vs " << nb.size()
         << ")\n";
    return diff.str();
  }
  for (const std::string& n : na) {
    const std::string pa = a + "/" + n, pb = b + "/" + n;
    struct stat sa {
    }, sb{};
    if (::lstat(pa.c_str(), &sa) != 0 || ::lstat(pb.c_str(), &sb) != 0) {
      diff << "lstat " << pa << " or " << pb << ": " << errname(errno) << "\n";
      continue;
    }
    if (sa.st_mode != sb.st_mode)
      diff << pa << ": mode " << std::oct << sa.st_mode << " vs " << sb.st_mode << std::dec << "\n";
    if (sa.st_uid != sb.st_uid || sa.st_gid != sb.st_gid) diff << pa << ": owner differs\n";
    if (sa.st_ino != sb.st_ino)
      diff << pa << ": st_ino " << sa.st_ino << " vs " << sb.st_ino << "\n";
    if (sa.st_nlink != sb.st_nlink)
      diff << pa << ": nlink " << sa.st_nlink << " vs " << sb.st_nlink << "\n";
    if (S_ISREG(sa.st_mode)) {
      if (sa.st_size != sb.st_size)
        diff << pa << ": size " << sa.st_size << " vs " << sb.st_size << "\n";
      auto ca = read_file(pa), cb = read_file(pb);
      if (!ca || !cb || *ca != *cb) diff << pa << ": content differs from the export\n";
    } else if (S_ISLNK(sa.st_mode)) {
      char ta[PATH_MAX + 1] = {}, tb[PATH_MAX + 1] = {};
      if (::readlink(pa.c_str(), ta, PATH_MAX) < 0 || ::readlink(pb.c_str(), tb, PATH_MAX) < 0 ||
          std::string(ta) != tb) {
        diff << pa << ": link target differs\n";
      }
    } else if (S_ISDIR(sa.st_mode)) {
      diff << compare_trees(pa, pb);
    } else if (sa.st_rdev != sb.st_rdev) {
      diff << pa << ": rdev differs\n";
    }
  }
  return diff.str();
}

TEST_P(NfsTest, TreeMadeThroughDpfsIsTheExportOnDisk) {
  ASSERT_SYS(mkdir(m("dir").c_str(), 0750));
  ASSERT_SYS(mkdir(m("dir/sub").c_str(), 0700));
  // Sizes around the page, the FUSE and the NFS transfer sizes.
  const std::vector<size_t> sizes = {0, 1, 4095, 4096, 65537, (1u << 20) + 3, 5u << 20};
  for (size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_EQ(write_file(m("dir/f" + std::to_string(i)), pattern(i, 0, sizes[i]), 0640), 0);
  }
  ASSERT_SYS(symlink("f1", m("dir/link").c_str()));
  ASSERT_SYS(link(m("dir/f2").c_str(), m("dir/sub/hard").c_str()));
  ASSERT_SYS(mknod(m("dir/fifo").c_str(), S_IFIFO | 0600, 0));
  ASSERT_SYS(mknod(m("dir/chr").c_str(), S_IFCHR | 0600, makedev(1, 3)));
  ASSERT_SYS(rename(m("dir/f3").c_str(), m("dir/sub/moved").c_str()));
  ASSERT_SYS(unlink(m("dir/f4").c_str()));
  ASSERT_SYS(chmod(m("dir/f5").c_str(), 0604));
  ASSERT_SYS(chown(m("dir/f6").c_str(), kUser1.uid, kUser1.gid));
  ASSERT_SYS(truncate(m("dir/f6").c_str(), 12345));
  // Made by another user: the file is theirs on the server too.
  ASSERT_SYS(chmod(m("dir").c_str(), 0777));
  EXPECT_SYS(as_user(kUser2, [&] {
    int fd = ::open(m("dir/theirs").c_str(), O_CREAT | O_WRONLY, 0644);
    return fd < 0 ? -1 : ::close(fd);
  }));
  EXPECT_EQ(compare_trees(mnt_, export_), "");
  struct stat st = lst(d("dir/theirs"));
  EXPECT_EQ(st.st_uid, kUser2.uid);
  EXPECT_EQ(st.st_gid, kUser2.gid);
  EXPECT_EQ(lst(d("dir/sub/hard")).st_nlink, 2u);
  EXPECT_EQ(lst(d("dir/f6")).st_size, 12345);
}

// Files changed on the server by someone else are seen through dpfs (no
// stale cache with zero timeouts), and inode numbers stay those of the
// server across lookups and forgets.
TEST_P(NfsTest, InodeNumbersAreTheServersAndStable) {
  ASSERT_EQ(write_file(m("a"), "one"), 0);
  const ino_t first = lst(m("a")).st_ino;
  EXPECT_EQ(first, lst(d("a")).st_ino);
  sync();
  ASSERT_EQ(write_file("/proc/sys/vm/drop_caches", "2"), 0);
  std::this_thread::sleep_for(200ms);  // FORGETs are asynchronous
  EXPECT_EQ(lst(m("a")).st_ino, first) << "a lookup after FORGET gives the same inode";
  ASSERT_SYS(rename(m("a").c_str(), m("b").c_str()));
  EXPECT_EQ(lst(m("b")).st_ino, first) << "rename keeps the inode";
  // readdir's d_ino is st_ino.
  DIR* dir = opendir(mnt_.c_str());
  ASSERT_NE(dir, nullptr);
  bool seen = false;
  while (dirent* de = readdir(dir)) {
    if (std::string(de->d_name) == "b") {
      seen = true;
      EXPECT_EQ(de->d_ino, first);
    }
  }
  closedir(dir);
  EXPECT_TRUE(seen);
}

TEST_P(NfsTest, ErrorsAreAnNfsClientsErrno) {
  ASSERT_SYS(mkdir(m("full").c_str(), 0755));
  ASSERT_EQ(write_file(m("full/x"), "x"), 0);
  ASSERT_SYS(mkdir(m("empty").c_str(), 0755));
  ASSERT_EQ(write_file(m("file"), "f"), 0);
  struct stat st;
  EXPECT_ERRNO(ENOENT, stat(m("missing").c_str(), &st));
  EXPECT_ERRNO(ENOTEMPTY, rmdir(m("full").c_str()));     // NFS3ERR_NOTEMPTY
  EXPECT_ERRNO(EEXIST, mkdir(m("full").c_str(), 0755));  // NFS3ERR_EXIST
  EXPECT_ERRNO(ENOTDIR, mkdir(m("file/sub").c_str(), 0755));
  EXPECT_ERRNO(ENOTEMPTY, rename(m("empty").c_str(), m("full").c_str()));
  EXPECT_ERRNO(EINVAL, renameat2(AT_FDCWD, m("file").c_str(), AT_FDCWD, m("other").c_str(),
                                 RENAME_NOREPLACE))
      << "NFS cannot refuse to replace atomically; Linux's NFS client says EINVAL";
  // The longest target Linux takes (PATH_MAX with its NUL) is one NFSv3
  // takes too (Linux's NFS3_MAXPATHLEN is PATH_MAX), and v4 has no limit.
  const std::string longest(PATH_MAX - 1, 'x');
  EXPECT_SYS(symlink(longest.c_str(), m("long").c_str()));
  char target[PATH_MAX] = {};
  EXPECT_EQ(readlink(m("long").c_str(), target, sizeof target), ssize_t(longest.size()));
  EXPECT_ERRNO(ENAMETOOLONG, symlink(std::string(PATH_MAX, 'x').c_str(), m("longer").c_str()))
      << "the kernel's own limit";
  int fd = open(m("file").c_str(), O_WRONLY);
  ASSERT_SYS(fd);
  EXPECT_ERRNO(EFBIG, ftruncate(fd, INT64_MAX / 2)) << "the server's maxfilesize";
  close(fd);
  // A directory removed while open is gone on the server: ESTALE, as with
  // any NFS client.
  int dfd = open(m("empty").c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_SYS(dfd);
  ASSERT_SYS(rmdir(m("empty").c_str()));
  EXPECT_ERRNO(ESTALE, fstat(dfd, &st));
  close(dfd);
  // Statfs is the exported file system's.
  struct statvfs a {
  }, b{};
  ASSERT_SYS(statvfs(mnt_.c_str(), &a));
  ASSERT_SYS(statvfs(export_.c_str(), &b));
  EXPECT_NEAR(double(a.f_blocks) * a.f_frsize, double(b.f_blocks) * b.f_frsize,
              double(b.f_blocks) * b.f_frsize * 0.01);
}

// A file removed (or replaced) while open stays usable, as NFS clients keep
// it (silly-rename), and disappears from the server at its last close.
TEST_P(NfsTest, RemovedWhileOpenLivesUntilLastClose) {
  ASSERT_EQ(write_file(m("f"), "still here"), 0);
  int fd = open(m("f").c_str(), O_RDWR);
  ASSERT_SYS(fd);
  ASSERT_SYS(unlink(m("f").c_str()));
  EXPECT_TRUE(list_dir(mnt_).empty()) << "the hidden name is not listed";
  EXPECT_EQ(list_dir(export_).size(), 1u) << "but kept on the server while open";
  char buf[16] = {};
  EXPECT_EQ(pread(fd, buf, sizeof buf, 0), 10);
  EXPECT_EQ(std::string(buf), "still here");
  struct stat st;
  ASSERT_SYS(fstat(fd, &st));
  EXPECT_EQ(st.st_nlink, 0u);
  ASSERT_SYS(close(fd));
  // RELEASE is asynchronous: give it a moment.
  for (int i = 0; i < 100 && !list_dir(export_).empty(); ++i) std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(list_dir(export_).empty()) << "removed on the server at the last close";
}

// A file replaced by a rename stays openable while the kernel holds it, as
// on a local file system: an O_PATH descriptor holds the inode without
// opening it (the kernel resolved the path just before the rename), and
// reopening it through /proc must find the old file -- on the server it is
// gone from its name, so dpfs keeps it under a hidden second name until
// the kernel forgets it. The name itself is never missing on the way.
TEST_P(NfsTest, RenamedOverFileStaysOpenableWhileHeld) {
  ASSERT_EQ(write_file(m("f"), "old version"), 0);
  ASSERT_EQ(write_file(m("new"), "new version"), 0);
  const int path_fd = open(m("f").c_str(), O_PATH);
  ASSERT_SYS(path_fd);
  ASSERT_SYS(rename(m("new").c_str(), m("f").c_str()));
  EXPECT_EQ(read_file(m("f")).value_or("<error>"), "new version");
  const std::string again = "/proc/self/fd/" + std::to_string(path_fd);
  EXPECT_EQ(read_file(again).value_or(std::string("<error: ") + errname(errno) + ">"),
            "old version");
  EXPECT_EQ(list_dir(mnt_), std::vector<std::string>{"f"}) << "the second name is hidden";
  ASSERT_SYS(close(path_fd));
  // FORGET comes when the kernel drops the inode: give it a moment.
  for (int i = 0; i < 100 && list_dir(export_).size() != 1; ++i) std::this_thread::sleep_for(20ms);
  EXPECT_EQ(list_dir(export_), std::vector<std::string>{"f"}) << "removed once forgotten";
  EXPECT_EQ(read_file(d("f")).value_or("<error>"), "new version");
}

// The server is killed (a crash: no clean shutdown) and restarted while a
// writer is writing; every write acknowledged to the tenant must be in the
// file on the server afterwards. Writes acknowledged UNSTABLE before the
// crash are sent again at fsync because the server's write verifier changed.
TEST_P(NfsTest, ServerRestartDuringWritesLosesNoAcknowledgedByte) {
  constexpr size_t kChunk = 64 << 10;
  constexpr size_t kChunks = 160;  // 10 MiB
  int fd = open(m("data").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_SYS(fd);
  std::vector<int> result(kChunks, -1);  // errno of each chunk's write; 0 acknowledged
  std::atomic<size_t> written{0};
  std::thread writer([&] {
    for (size_t i = 0; i < kChunks; ++i) {
      const std::string data = pattern(42, i * kChunk, kChunk);
      result[i] = pwrite_all(fd, data.data(), data.size(), off_t(i * kChunk));
      written = i + 1;
      std::this_thread::sleep_for(5ms);
    }
  });
  while (written < kChunks / 3) std::this_thread::sleep_for(5ms);
  ASSERT_EQ(server_->stop(SIGKILL), "");
  std::this_thread::sleep_for(500ms);
  const std::string restarted = server_->start();
  writer.join();
  ASSERT_EQ(restarted, "");
  const int fsync_rc = fsync(fd);
  EXPECT_EQ(fsync_rc, 0) << errname(errno);
  EXPECT_EQ(close(fd), 0) << errname(errno);
  size_t acknowledged = 0;
  for (size_t i = 0; i < kChunks; ++i) {
    if (result[i] == 0)
      ++acknowledged;
    else
      EXPECT_TRUE(result[i] == EIO || result[i] == ETIMEDOUT) << errname(result[i]);
  }
  // The outage is shorter than the timeout: nothing should have failed.
  EXPECT_EQ(acknowledged, kChunks);
  auto on_disk = read_file(d("data"));
  ASSERT_TRUE(on_disk.has_value());
  for (size_t i = 0; i < kChunks; ++i) {
    if (result[i] != 0) continue;
    ASSERT_GE(on_disk->size(), (i + 1) * kChunk) << "chunk " << i << " is missing";
    ASSERT_EQ(check_pattern(std::string_view(*on_disk).substr(i * kChunk, kChunk), 42, i * kChunk),
              "")
        << "acknowledged chunk " << i;
  }
  EXPECT_NE(mount_->log().find("write verifier changed"), std::string::npos)
      << "the writes acknowledged before the crash were not sent again; daemon log:\n"
      << mount_->log();
}

// With the server gone, requests fail within the configured timeout
// (ETIMEDOUT, or EIO) instead of hanging; once it is back, they succeed.
TEST_P(NfsTest, StoppedServerGivesTimeoutNotHang) {
  ASSERT_EQ(write_file(m("f"), "data"), 0);
  ASSERT_EQ(server_->stop(SIGKILL), "");
  const auto start = std::chrono::steady_clock::now();
  struct stat st;
  const SysResult r = DPFS_CAPTURE(stat(m("new-name").c_str(), &st));
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(r.rc, -1);
  EXPECT_TRUE(r.err == ETIMEDOUT || r.err == EIO) << errname(r.err);
  EXPECT_LT(took, kNfsTimeoutSeconds + 2.0) << "the tenant waited longer than the timeout";
  EXPECT_GT(took, kNfsTimeoutSeconds - 1.0) << "gave up before the timeout";
  const SysResult w = DPFS_CAPTURE(write_file(m("g"), "x") == 0 ? 0 : -1);
  EXPECT_EQ(w.rc, -1) << "a create with no server succeeded";
  ASSERT_EQ(server_->start(), "");
  EXPECT_EQ(read_file(m("f")).value_or("<error>"), "data") << "dpfs reconnected";
  EXPECT_EQ(write_file(m("h"), "after"), 0);
  EXPECT_EQ(read_file(d("h")).value_or("<error>"), "after");
}

// SIGTERM while the server is gone (with a write not yet committed): the
// daemon still unmounts and exits 0, within the NFS timeout.
TEST_P(NfsTest, DaemonStopsCleanlyWhileTheServerIsGone) {
  int fd = open(m("f").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "unstable", 8, 0), 0);
  ASSERT_EQ(server_->stop(SIGKILL), "");
  // close() commits: with no server, it fails within the timeout.
  const auto start = std::chrono::steady_clock::now();
  const SysResult c = DPFS_CAPTURE(close(fd));
  const double took =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(c.rc, -1) << "close committed with no server";
  EXPECT_TRUE(c.err == ETIMEDOUT || c.err == EIO) << errname(c.err);
  EXPECT_LT(took, kNfsTimeoutSeconds + 2.0);
  std::string stopped = mount_->stop(SIGTERM, 20s);
  EXPECT_EQ(stopped, "");
  mount_.reset();
}

// FUSE_HANDLE_KILLPRIV_V2: a writer without CAP_FSETID loses the set-id
// bits, as on a local file system, although the server writes as root and
// would keep them. (PosixTest.WriteAndTruncateByNonRootDropPrivileges checks
// the same, then file capabilities, an xattr NFS does not have.)
TEST_P(NfsTest, SetIdBitsDroppedForNonRootWriters) {
  ASSERT_EQ(write_file(m("f"), "x", 0644), 0);
  ASSERT_SYS(chown(m("f").c_str(), kUser1.uid, kUser1.gid));
  const Cred writer{kUser2.uid, kUser2.gid, {kUser2.gid, kUser1.gid}};
  auto mode = [&] { return lst(d("f")).st_mode & 07777; };  // on the server
  ASSERT_SYS(chmod(m("f").c_str(), 06777));
  EXPECT_SYS(as_user(writer, [&] {
    int fd = open(m("f").c_str(), O_WRONLY);
    if (fd < 0) return -1;
    const ssize_t n = write(fd, "y", 1);
    close(fd);
    return n == 1 ? 0 : -1;
  }));
  EXPECT_EQ(mode(), 0777u) << "write(2) drops setuid and setgid";
  ASSERT_SYS(chmod(m("f").c_str(), 06777));
  EXPECT_SYS(as_user(writer, [&] { return truncate(m("f").c_str(), 1); }));
  EXPECT_EQ(mode(), 0777u) << "truncate(2)";
  ASSERT_SYS(chmod(m("f").c_str(), 06777));
  EXPECT_SYS(as_user(writer, [&] {
    int fd = open(m("f").c_str(), O_WRONLY | O_TRUNC);
    return fd < 0 ? -1 : close(fd);
  }));
  EXPECT_EQ(mode(), 0777u) << "open(O_TRUNC)";
  ASSERT_SYS(chmod(m("f").c_str(), 02767));
  EXPECT_SYS(as_user(writer, [&] { return truncate(m("f").c_str(), 0); }));
  EXPECT_EQ(mode(), 02767u) << "setgid without group execute is not a privilege";
  ASSERT_SYS(chmod(m("f").c_str(), 06777));
  ASSERT_SYS(truncate(m("f").c_str(), 0));
  EXPECT_EQ(mode(), 06777u) << "root (CAP_FSETID) keeps them";
}

// A COMMIT that fails at close(2) is reported to the closer; at the last
// close nobody is left to tell, so the writes are dropped (as the kernel's
// NFS client drops pages whose writeback failed), the operator is told,
// and the file works again once the server is back.
TEST_P(NfsTest, FailedCommitAtCloseIsReportedThenDropped) {
  int fd = open(m("f").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(pwrite_all(fd, "unstable", 8, 0), 0);
  ASSERT_EQ(server_->stop(SIGKILL), "");
  const SysResult c = DPFS_CAPTURE(close(fd));
  EXPECT_EQ(c.rc, -1) << "close committed with no server";
  EXPECT_TRUE(c.err == ETIMEDOUT || c.err == EIO) << errname(c.err);
  // RELEASE follows close(2) and retries the COMMIT: give it its timeout.
  for (int i = 0; i < 100 && mount_->log().find("never committed") == std::string::npos; ++i) {
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_NE(mount_->log().find("never committed"), std::string::npos)
      << "the dropped writes were not logged; daemon log:\n"
      << mount_->log();
  ASSERT_EQ(server_->start(), "");
  fd = open(m("f").c_str(), O_WRONLY);
  ASSERT_SYS(fd);
  EXPECT_SYS(fsync(fd)) << "an old failure is not reported to a later open";
  ASSERT_EQ(pwrite_all(fd, "again", 5, 0), 0);
  EXPECT_SYS(close(fd));
  EXPECT_EQ(read_file(d("f")).value_or("<error>").substr(0, 5), "again");
}

// Each FUSE worker drives one connection from its own event loop: its
// requests' RPCs go out and their answers come back on it, with no loop
// thread in between. A connection left over (3 connections, 2 workers) has
// a loop thread of its own and serves no worker.
TEST_P(NfsTest, ConnectionsAreDrivenByTheWorkers) {
  ASSERT_TRUE(mount_->stop(SIGTERM, 20s).empty());
  mount_ = std::make_unique<Mount>();
  const std::string socket = mount_->base() + "/stats.sock";
  std::string started = mount_->start_dpfs(
      {"serve", "--backend", NfsServer::url(export_, version()), "--fuse-mount", mount_->dir(),
       "--threads", "2", "--nfs-connections", "3", "--stats-socket", socket});
  ASSERT_TRUE(started.empty()) << started;
  mnt_ = mount_->dir();
  // A connection runs its own loop thread until its worker attaches (the
  // workers start with the mount, and may take a while to on a busy
  // machine): wait for the two workers to take theirs.
  const std::vector<std::string> unattached{"dpfs-nfs-2"};
  for (int i = 0; i < 500 && threads_named(mount_->pid(), "dpfs-nfs-") != unattached; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(threads_named(mount_->pid(), "dpfs-nfs-"), unattached);

  // Work from several processes, so that both workers take requests.
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      const std::string data(64 << 10, char('a' + t));
      for (int i = 0; i < 10; ++i) {
        const std::string name = m("f" + std::to_string(t) + "-" + std::to_string(i));
        if (write_file(name, data) != 0 || read_file(name).value_or("") != data) ++failures;
      }
    });
  }
  for (auto& w : writers) w.join();
  EXPECT_EQ(failures.load(), 0);

  RunResult r = run({dpfs_binary(), "stats", socket}, 10s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  auto answered = [&](int index) -> std::pair<std::string, uint64_t> {
    const std::string head = "nfs connection " + std::to_string(index) + ": ";
    const size_t at = r.out.find(head);
    if (at == std::string::npos) return {"", 0};
    const std::string line =
        r.out.substr(at + head.size(), r.out.find('\n', at) - at - head.size());
    const size_t comma = line.find(", ");
    return {line.substr(0, comma), std::stoull(line.substr(comma + 2))};
  };
  const auto [driver0, rpcs0] = answered(0);
  const auto [driver1, rpcs1] = answered(1);
  const auto [driver2, rpcs2] = answered(2);
  EXPECT_EQ(driver0, "driven by a worker") << r.out;
  EXPECT_EQ(driver1, "driven by a worker") << r.out;
  EXPECT_EQ(driver2, "own loop thread") << r.out;
  EXPECT_GT(rpcs0 + rpcs1, 80u) << r.out;
  EXPECT_EQ(rpcs2, 0u) << "no worker hands its RPCs to a loop thread\n" << r.out;

  // Workers give their connections back as they end; the daemon stops cleanly.
  ASSERT_TRUE(mount_->stop(SIGTERM, 20s).empty());
  mount_.reset();
}

INSTANTIATE_TEST_SUITE_P(Versions, NfsTest, ::testing::Values(3, 4),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return "v" + std::to_string(info.param);
                         });

// Start-up errors name what to fix, on one line.
TEST(NfsCliTest, BadSpecsAndUnreachableServersAreOneLineErrors) {
  std::string problem = environment_problem();
  ASSERT_TRUE(problem.empty()) << problem;
  Mount mount;
  struct Case {
    std::string spec;
    std::string mention;
  };
  const std::vector<Case> cases = {
      {"nfs://", "no export path"},
      {"nfs://host:99999/export", "bad port"},
      {"nfs://127.0.0.1/x?version=2", "unknown option"},
      // Nothing listens on port 1: the mount fails, naming the server.
      {"nfs://127.0.0.1:1/nowhere", "127.0.0.1"},
  };
  for (const Case& c : cases) {
    RunResult r =
        run({dpfs_binary(), "serve", "--backend", c.spec, "--fuse-mount", mount.dir()}, 30s);
    EXPECT_FALSE(r.timed_out) << c.spec;
    EXPECT_NE(r.exit_code(), 0) << c.spec << ": " << r.describe();
    EXPECT_EQ(lines_of(r.err).size(), 1u) << c.spec << ": " << r.describe();
    EXPECT_NE(r.err.find(c.mention), std::string::npos) << c.spec << ": " << r.describe();
  }
}

}  // namespace
}  // namespace dpfs::itest
