// The passthrough backend through a real FUSE mount: what the tenant does
// shows on the host and the other way round, escape attempts through the
// mount fail, the descriptor bound holds with many files, read-only mode.
//
// Layout: base/deep/er/export is served; base/deep/er/outside holds a secret.
// The mount is base/mnt, at another depth than the export: a relative symlink
// that reaches `outside` on the host ("../../outside" from export/T/d) leads
// nowhere on the tenant's side (mnt/T/../../outside is base/outside, which
// does not exist). So the tenant finding the secret through it would mean
// dpfs followed a symlink on the host.
//
// The hostile requests no kernel would send (lookups through symlink inodes,
// ".." at the root, device opens) are in tests/unit/passthrough_test.cc.
#include <sys/mman.h>
#include <sys/xattr.h>

#include <atomic>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

template <typename Mode>
class PassthroughMountTest : public ::testing::Test {
 public:
  static void SetUpTestSuite() {
    umask(0);
    problem_ = environment_problem();
    if (!problem_.empty()) return;
    mount_ = std::make_unique<Mount>();
    top_ = mount_->base() + "/deep/er";
    std::filesystem::create_directories(top_ + "/export");
    std::filesystem::create_directories(top_ + "/outside");
    if (int e = write_file(top_ + "/outside/secret", "secret"); e != 0) {
      problem_ = "writing the secret: " + errname(e);
      return;
    }
    std::vector<std::string> args{"serve",
                                  "--backend",
                                  "passthrough:" + exported(),
                                  "--fuse-mount",
                                  mount_->dir(),
                                  "--threads",
                                  "2",
                                  "--entry-timeout",
                                  "0",
                                  "--attr-timeout",
                                  "0"};
    for (const std::string& a : Mode::args()) args.push_back(a);
    problem_ = mount_->start_dpfs(args);
  }
  static void TearDownTestSuite() {
    if (mount_) {
      close_fds_under(mount_->dir());
      std::string p = mount_->stop(SIGTERM);
      if (problem_.empty() && !p.empty()) ADD_FAILURE() << "stopping the daemon: " << p;
      std::error_code ignored;
      std::filesystem::remove_all(mount_->base() + "/deep", ignored);
      mount_.reset();
    }
    problem_.clear();
  }

 protected:
  void SetUp() override {
    ASSERT_TRUE(problem_.empty()) << problem_;
    std::string alive = mount_->check_alive();
    ASSERT_TRUE(alive.empty()) << alive;
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    name_ = info->name();
    umask(0);
    // Made on the host: read-only mounts cannot make it.
    ASSERT_SYS(::mkdir(host().c_str(), 0777));
  }
  void TearDown() override {
    if (mount_) close_fds_under(mount_->dir());
    std::string alive = mount_ ? mount_->check_alive() : "";
    EXPECT_TRUE(alive.empty()) << alive;
  }

  static std::string exported() { return top_ + "/export"; }
  static std::string outside(const std::string& name = "") {
    return top_ + "/outside" + (name.empty() ? "" : "/" + name);
  }
  // This test's directory on the host and through the mount.
  std::string host(const std::string& name = "") const {
    return exported() + "/" + name_ + (name.empty() ? "" : "/" + name);
  }
  std::string mnt(const std::string& name = "") const {
    return mount_->dir() + "/" + name_ + (name.empty() ? "" : "/" + name);
  }
  static Mount& mount() { return *mount_; }

  // Descriptors the daemon holds now.
  static size_t daemon_fds() {
    int error = 0;
    return list_dir("/proc/" + std::to_string(mount_->pid()) + "/fd", &error).size();
  }

 private:
  std::string name_;
  static inline std::unique_ptr<Mount> mount_;
  static inline std::string top_;
  static inline std::string problem_;
};

// READ and WRITE reach the daemon (no FUSE passthrough): the tests of its
// data path need them.
struct ReadWrite {
  static constexpr size_t kMaxFds = 64;
  static std::vector<std::string> args() {
    return {"--passthrough-max-fds", std::to_string(kMaxFds), "--no-fuse-passthrough"};
  }
};
struct ReadOnly {
  static std::vector<std::string> args() { return {"--passthrough-read-only"}; }
};
// Every READ and WRITE through the ring, even those that need no wait.
struct RingForAll {
  static std::vector<std::string> args() {
    return {"--passthrough-io-uring", "always", "--no-fuse-passthrough"};
  }
};
// The default: FUSE passthrough, where the kernel reads and writes open
// files itself.
struct KernelIo {
  static std::vector<std::string> args() { return {}; }
};

using PassthroughTest = PassthroughMountTest<ReadWrite>;
using PassthroughReadOnlyTest = PassthroughMountTest<ReadOnly>;
using PassthroughRingTest = PassthroughMountTest<RingForAll>;
using PassthroughKernelIoTest = PassthroughMountTest<KernelIo>;

TEST_F(PassthroughTest, TenantChangesAreOnTheHostWithTheTenantsIds) {
  EXPECT_SYS(
      as_user(kUser1, [&] { return write_file(mnt("mine"), "tenant data", 0640) == 0 ? 0 : -1; }));
  struct stat st {};
  ASSERT_SYS(::lstat(host("mine").c_str(), &st));
  EXPECT_EQ(st.st_uid, kUser1.uid);
  EXPECT_EQ(st.st_gid, kUser1.gid);
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(read_file(host("mine")).value_or("<error>"), "tenant data");

  ASSERT_SYS(::mkdir(mnt("dir").c_str(), 0750));
  ASSERT_SYS(::symlink("mine", mnt("link").c_str()));
  ASSERT_SYS(::rename(mnt("mine").c_str(), mnt("dir/moved").c_str()));
  ASSERT_SYS(::lstat(host("dir").c_str(), &st));
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_EQ(read_file(host("dir/moved")).value_or("<error>"), "tenant data");
  ASSERT_SYS(::lstat(host("link").c_str(), &st));
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_ERRNO(ENOENT, ::lstat(host("mine").c_str(), &st));

  // And the host's changes show through the mount (timeouts 0).
  ASSERT_EQ(write_file(host("from-host"), "host data"), 0);
  EXPECT_EQ(read_file(mnt("from-host")).value_or("<error>"), "host data");
}

TEST_F(PassthroughTest, HostSymlinksAreNotFollowedByDpfs) {
  ASSERT_SYS(::symlink("/", host("to-root").c_str()));
  ASSERT_SYS(::symlink("../../outside", host("to-outside").c_str()));
  struct stat st {};
  ASSERT_SYS(::lstat(mnt("to-root").c_str(), &st));
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  char target[64] = {};
  ASSERT_SYS(::readlink(mnt("to-outside").c_str(), target, sizeof target - 1));
  EXPECT_STREQ(target, "../../outside");
  // Resolved by the tenant's kernel, relative to the mount: nothing there.
  EXPECT_ERRNO(ENOENT, ::stat(mnt("to-outside/secret").c_str(), &st));
  EXPECT_ERRNO(ELOOP, ::open(mnt("to-outside").c_str(), O_RDONLY | O_NOFOLLOW));
  EXPECT_ERRNO(ENOENT, ::open(mnt("to-outside/planted").c_str(), O_CREAT | O_WRONLY, 0644));
  EXPECT_ERRNO(ENOENT, ::lstat(outside("planted").c_str(), &st));
}

TEST_F(PassthroughTest, HardLinksToOutsideFiles) {
  // An operator's hard link to an outside file is that file: the tenant
  // sees it, and removing the link leaves the file.
  ASSERT_SYS(::link(outside("secret").c_str(), host("hl").c_str()));
  EXPECT_EQ(read_file(mnt("hl")).value_or("<error>"), "secret");
  ASSERT_SYS(::unlink(mnt("hl").c_str()));
  EXPECT_EQ(read_file(outside("secret")).value_or("<error>"), "secret");
  // The tenant cannot link an outside file in: another file system to it.
  EXPECT_ERRNO(EXDEV, ::link(outside("secret").c_str(), mnt("in").c_str()));
  // Nor rename one out.
  ASSERT_EQ(write_file(mnt("f"), "x"), 0);
  EXPECT_ERRNO(EXDEV, ::rename(mnt("f").c_str(), outside("f").c_str()));
}

// A host thread swaps "d" between a directory and a relative symlink that
// leads to `outside` on the host, in a loop; the tenant keeps opening and
// creating through "d". Nothing may reach `outside`.
TEST_F(PassthroughTest, RenameRaceNeverLeadsOutside) {
  ASSERT_SYS(::mkdir(host("d").c_str(), 0777));
  ASSERT_SYS(::symlink("../../outside", host("s").c_str()));
  std::atomic<bool> stop{false};
  std::atomic<int> swaps{0};
  std::thread swapper([&] {
    while (!stop.load()) {
      if (::renameat2(AT_FDCWD, host("d").c_str(), AT_FDCWD, host("s").c_str(), RENAME_EXCHANGE) ==
          0) {
        ++swaps;
      }
    }
  });
  int reached = 0, created = 0;
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (std::chrono::steady_clock::now() < deadline) {
    if (auto secret = read_file(mnt("d/secret"))) ++reached;
    Fd fd(::open(mnt("d/planted").c_str(), O_CREAT | O_WRONLY, 0644));
    if (fd.valid()) ++created;
  }
  stop = true;
  swapper.join();
  EXPECT_GT(swaps.load(), 100) << "the race did not run";
  EXPECT_EQ(reached, 0) << "read the secret through a swapped name";
  struct stat st {};
  EXPECT_ERRNO(ENOENT, ::lstat(outside("planted").c_str(), &st));
  EXPECT_EQ(read_file(outside("secret")).value_or("<error>"), "secret");
  // Whatever was created is in the export.
  if (created > 0) {
    const bool in_d = ::lstat(host("d/planted").c_str(), &st) == 0;
    const bool in_s = ::lstat(host("s/planted").c_str(), &st) == 0 &&
                      ::lstat(outside("planted").c_str(), &st) != 0;
    EXPECT_TRUE(in_d || in_s);
  }
}

// Thousands of files the kernel keeps inodes of: the daemon's descriptors
// stay near max_fds, and every file still reads right (reopened by handle).
TEST_F(PassthroughTest, DescriptorBoundHoldsWithManyFiles) {
  constexpr int kFiles = 2000;
  for (int i = 0; i < kFiles; ++i) {
    ASSERT_EQ(write_file(host("f" + std::to_string(i)), std::to_string(i)), 0);
  }
  const size_t before = daemon_fds();
  struct stat st {};
  for (int i = 0; i < kFiles; ++i) {
    ASSERT_SYS(::stat(mnt("f" + std::to_string(i)).c_str(), &st)) << i;
  }
  const size_t after = daemon_fds();
  // Besides the cache: /dev/fuse clones, io_uring rings and eventfds, logs.
  EXPECT_LE(after, ReadWrite::kMaxFds + 32) << "before the stats: " << before;
  EXPECT_GE(after, ReadWrite::kMaxFds / 2) << "the cache was not used at all";
  for (int i = 0; i < kFiles; i += 7) {
    EXPECT_EQ(read_file(mnt("f" + std::to_string(i))).value_or("<error>"), std::to_string(i));
  }
  EXPECT_LE(daemon_fds(), ReadWrite::kMaxFds + 32);
}

// 32 threads writing and reading back their own blocks of one file with
// O_DIRECT: every 4k access is a READ or WRITE request, up to 32 queued at
// once; every block reads back as written. With `io_uring = always`, the
// daemon's workers take what the kernel has queued in batches and start
// each batch's I/O with one io_uring_enter: fewer submits than operations.
// With the default (`auto`: on), those accesses hit the host's page cache
// and are done at once, without the ring.
// `host_file` and `mnt_file`: one file of the export, on the host and
// through `mount`, whose io_uring counters are read around the work.
void direct_io_from_32_threads(const std::string& host_file, const std::string& mnt_file,
                               Mount& mount, UringCounters* before, UringCounters* after,
                               long* ios_done) {
  constexpr int kThreads = 32;
  constexpr int kBlocks = 256;  // block b belongs to thread b % kThreads
  constexpr int kRounds = 4;
  constexpr size_t kBlock = 4096;
  ASSERT_EQ(write_file(host_file, std::string(kBlocks * kBlock, '\0')), 0);
  auto counters = [&mount] {
    ::kill(mount.pid(), SIGUSR1);
    std::this_thread::sleep_for(300ms);
    return last_uring_counters(mount.log());
  };
  *before = counters();
  ASSERT_GE(before->ops, 0) << "no io_uring line in the statistics: " << mount.log();
  Fd fd(::open(mnt_file.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(fd.valid()) << errname(errno);
  std::atomic<long> ios{0};
  std::mutex mu;
  std::string failure;  // the first one, guarded by mu
  std::vector<std::thread> threads;
  for (int th = 0; th < kThreads; ++th) {
    threads.emplace_back([&, th] {
      std::unique_ptr<char, decltype(&std::free)> buf(
          static_cast<char*>(std::aligned_alloc(kBlock, kBlock)), &std::free);
      auto fail = [&](const std::string& what) {
        std::lock_guard lock(mu);
        if (failure.empty()) failure = what;
      };
      for (int round = 0; round < kRounds; ++round) {
        for (int b = th; b < kBlocks; b += kThreads) {
          const off_t off = off_t(b) * off_t(kBlock);
          const std::string data = pattern(uint64_t(round * kThreads + th + 1), off, kBlock);
          std::memcpy(buf.get(), data.data(), kBlock);
          if (::pwrite(fd, buf.get(), kBlock, off) != ssize_t(kBlock)) {
            return fail("pwrite block " + std::to_string(b) + ": " + errname(errno));
          }
          std::memset(buf.get(), 0, kBlock);
          if (::pread(fd, buf.get(), kBlock, off) != ssize_t(kBlock)) {
            return fail("pread block " + std::to_string(b) + ": " + errname(errno));
          }
          const std::string e = check_pattern(std::string_view(buf.get(), kBlock),
                                              uint64_t(round * kThreads + th + 1), off);
          if (!e.empty()) return fail("block " + std::to_string(b) + ": " + e);
          ios.fetch_add(2);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(failure, "");
  *after = counters();
  *ios_done = ios.load();
}

TEST_F(PassthroughRingTest, ConcurrentDirectIoBatchesIoUringSubmissions) {
  UringCounters before, after;
  long ios = 0;
  ASSERT_NO_FATAL_FAILURE(
      direct_io_from_32_threads(host("f"), mnt("f"), mount(), &before, &after, &ios));
  const long long ops = after.ops - before.ops;
  const long long submits = after.submits - before.submits;
  EXPECT_GE(ops, ios) << "READs and WRITEs that did not go through io_uring";
  EXPECT_LT(submits, ops) << "one io_uring_enter per request: no batching; log:\n" << mount().log();
}

TEST_F(PassthroughTest, ConcurrentDirectIoFromThePageCacheSkipsTheRing) {
  UringCounters before, after;
  long ios = 0;
  ASSERT_NO_FATAL_FAILURE(
      direct_io_from_32_threads(host("f"), mnt("f"), mount(), &before, &after, &ios));
  ASSERT_GE(before.done_at_once, 0) << "no count of I/O done at once: " << mount().log();
  // Every READ and WRITE was done at once or through the ring; on ext4
  // (tmpfs uses no ring at all) all of them at once.
  EXPECT_GE((after.done_at_once - before.done_at_once) + (after.ops - before.ops), ios)
      << mount().log();
  EXPECT_GT(after.done_at_once - before.done_at_once, ios / 2)
      << "the page cache's READs and WRITEs went through the ring; log:\n"
      << mount().log();
}

TEST_F(PassthroughReadOnlyTest, ChangesAreEROFSAndReadsWork) {
  ASSERT_EQ(write_file(host("f"), "content"), 0);
  EXPECT_EQ(read_file(mnt("f")).value_or("<error>"), "content");
  EXPECT_ERRNO(EROFS, ::open(mnt("f").c_str(), O_WRONLY));
  EXPECT_ERRNO(EROFS, ::open(mnt("new").c_str(), O_CREAT | O_WRONLY, 0644));
  EXPECT_ERRNO(EROFS, ::mkdir(mnt("d").c_str(), 0755));
  EXPECT_ERRNO(EROFS, ::unlink(mnt("f").c_str()));
  EXPECT_ERRNO(EROFS, ::rename(mnt("f").c_str(), mnt("g").c_str()));
  EXPECT_ERRNO(EROFS, ::chmod(mnt("f").c_str(), 0600));
  EXPECT_ERRNO(EROFS, ::truncate(mnt("f").c_str(), 0));
  EXPECT_ERRNO(EROFS, ::setxattr(mnt("f").c_str(), "user.x", "1", 1, 0));
  EXPECT_ERRNO(EROFS, ::symlink("f", mnt("l").c_str()));
  EXPECT_EQ(read_file(host("f")).value_or("<error>"), "content");
  EXPECT_EQ(list_dir(host()), std::vector<std::string>{"f"});
}

// ---------------------------------------------------------------------------
// FUSE passthrough

// The daemon's statistics, as it logs them on SIGUSR1: the requests of
// `opcode` answered so far (-1: the lines never came) and the passthrough
// line ("" if none).
struct DaemonCounts {
  long long requests = -1;
  std::string passthrough;
};
DaemonCounts daemon_counts(Mount& mount, const std::string& opcode) {
  const std::string key = "FUSE passthrough: ";
  const size_t before = mount.log().size();
  ::kill(mount.pid(), SIGUSR1);
  DaemonCounts c;
  // The statistics end with the transport's line: wait for it.
  for (int i = 0; i < 500; ++i) {
    const std::string log = mount.log();
    if (log.find("fuse transport: ", before) == std::string::npos) {
      std::this_thread::sleep_for(10ms);
      continue;
    }
    const std::string fresh = log.substr(before);
    c.requests = 0;
    const size_t op = fresh.find(": " + opcode + " ");
    if (op != std::string::npos) c.requests = std::atoll(fresh.c_str() + op + 2 + opcode.size());
    const size_t at = fresh.find(key);
    if (at != std::string::npos) c.passthrough = fresh.substr(at, fresh.find('\n', at) - at);
    return c;
  }
  return c;
}

TEST_F(PassthroughKernelIoTest, ReadsAndWritesNeverReachTheDaemon) {
  const std::string data = pattern(7, 0, 3 << 20);
  ASSERT_EQ(write_file(host("in"), data), 0);
  const DaemonCounts reads_before = daemon_counts(mount(), "READ");
  const DaemonCounts writes_before = daemon_counts(mount(), "WRITE");
  ASSERT_GE(reads_before.requests, 0) << mount().log();
  EXPECT_EQ(read_file(mnt("in")).value_or("<error>"), data);
  ASSERT_EQ(write_file(mnt("out"), data), 0);
  EXPECT_EQ(read_file(host("out")).value_or("<error>"), data);
  {
    // mmap goes to the host file too.
    Fd fd(::open(mnt("out").c_str(), O_RDWR | O_CLOEXEC));
    ASSERT_TRUE(fd.valid()) << errname(errno);
    void* p = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    ASSERT_NE(p, MAP_FAILED) << errname(errno);
    std::memcpy(p, "mapped", 6);
    ASSERT_SYS(::msync(p, 4096, MS_SYNC));
    ::munmap(p, 4096);
  }
  EXPECT_EQ(read_file(host("out")).value_or("").substr(0, 6), "mapped");
  EXPECT_EQ(daemon_counts(mount(), "READ").requests, reads_before.requests)
      << "READs reached the daemon:\n"
      << mount().log();
  EXPECT_EQ(daemon_counts(mount(), "WRITE").requests, writes_before.requests)
      << "WRITEs reached the daemon:\n"
      << mount().log();
  EXPECT_NE(daemon_counts(mount(), "READ").passthrough.find("0 files open"), std::string::npos)
      << "a backing file outlived its last release:\n"
      << mount().log();
}

// The kernel keeps one mode per inode: every open of an inode open through
// passthrough must name its backing id, and none may while it is open by
// requests. A set-user-ID file is served by requests (the kernel would write
// it with dpfs's credentials), so these mix.
TEST_F(PassthroughKernelIoTest, AnInodeStaysInOneModeWhileItsFilesAreOpen) {
  ASSERT_EQ(write_file(host("f"), "0123456789"), 0);
  ASSERT_SYS(::chmod(host("f").c_str(), 04755));
  Fd by_requests(::open(mnt("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(by_requests.valid()) << errname(errno);
  ASSERT_SYS(::chmod(host("f").c_str(), 0644));
  Fd second(::open(mnt("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(second.valid()) << "an open in the other mode: " << errname(errno);
  char buf[4] = {};
  EXPECT_EQ(::pread(second.get(), buf, 4, 0), 4) << errname(errno);
  EXPECT_EQ(std::string(buf, 4), "0123");
  by_requests = Fd();
  second = Fd();

  Fd passed(::open(mnt("f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(passed.valid()) << errname(errno);
  ASSERT_SYS(::chmod(host("f").c_str(), 04755));
  Fd joined(::open(mnt("f").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(joined.valid()) << "an open in the other mode: " << errname(errno);
  Fd direct(::open(mnt("f").c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  ASSERT_TRUE(direct.valid()) << "O_DIRECT: " << errname(errno);
  EXPECT_EQ(::pwrite(passed.get(), "ab", 2, 0), 2) << errname(errno);
  EXPECT_EQ(::pread(joined.get(), buf, 4, 0), 4) << errname(errno);
  EXPECT_EQ(std::string(buf, 4), "ab23");
}

// A writer without CAP_FSETID drops set-user-ID, as the VFS would, though
// the kernel would write a passthrough file with dpfs's credentials.
TEST_F(PassthroughKernelIoTest, ASetUserIdFileLosesItOnAWriteByAnotherUser) {
  ASSERT_EQ(write_file(host("s"), "x"), 0);
  ASSERT_SYS(::chmod(host("s").c_str(), 04777));
  EXPECT_SYS(as_user(kUser1, [&] {
    int fd = ::open(mnt("s").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return -1;
    const ssize_t n = ::write(fd, "y", 1);
    ::close(fd);
    return n == 1 ? 0 : -1;
  }));
  struct stat st {};
  ASSERT_SYS(::stat(host("s").c_str(), &st));
  EXPECT_EQ(st.st_mode & 07777, 0777u);
  EXPECT_EQ(read_file(host("s")).value_or("<error>"), "xy");
}

}  // namespace
}  // namespace dpfs::itest
