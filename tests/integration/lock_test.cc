// File locks between processes through the kernel: POSIX record locks
// (F_SETLK conflicts, F_GETLK reporting the holder, F_SETLKW waiting, release
// on close and on exit, byte-range splitting) and flock(2).
#include <sys/file.h>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class LockTest : public MountTest {};

struct flock make_lock(short type, off_t start, off_t len) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = start;
  fl.l_len = len;
  return fl;
}

const char* lock_name(short t) {
  return t == F_RDLCK ? "F_RDLCK" : t == F_WRLCK ? "F_WRLCK" : t == F_UNLCK ? "F_UNLCK" : "?";
}

// F_GETLK for `type` over [start, start+len): what conflicts.
struct flock probe(int fd, short type, off_t start, off_t len) {
  struct flock fl = make_lock(type, start, len);
  if (fcntl(fd, F_GETLK, &fl) != 0) {
    ADD_FAILURE() << "F_GETLK: " << errname(errno);
    fl.l_type = -1;
  }
  return fl;
}

// A child that takes `locks` on `file` (in order; F_UNLCK entries unlock),
// signals, and holds them until the parent signals back.
std::string hold_locks(Child& self, const std::string& file,
                       const std::vector<struct flock>& locks) {
  int fd = ::open(file.c_str(), O_RDWR);
  if (fd < 0) return "child open: " + errname(errno);
  for (auto fl : locks) {
    if (::fcntl(fd, F_SETLK, &fl) != 0) {
      return std::string("child F_SETLK ") + lock_name(fl.l_type) + " at " +
             std::to_string(fl.l_start) + ": " + errname(errno);
    }
  }
  self.signal();
  if (!self.wait(30s)) return "child: the parent never said to let go";
  ::close(fd);
  return "";
}

TEST_P(LockTest, ConflictingSetlkIsEAGAIN) {
  ASSERT_EQ(write_file(path("f"), std::string(1000, 'x')), 0);
  Child holder([&](Child& self) {
    return hold_locks(self, path("f"), {make_lock(F_WRLCK, 0, 100), make_lock(F_RDLCK, 200, 100)});
  });
  ASSERT_TRUE(holder.wait()) << holder.join();
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  struct flock fl = make_lock(F_WRLCK, 50, 10);
  EXPECT_ERRNO(EAGAIN, fcntl(fd, F_SETLK, &fl)) << "write lock over a write lock";
  fl = make_lock(F_RDLCK, 99, 1);
  EXPECT_ERRNO(EAGAIN, fcntl(fd, F_SETLK, &fl)) << "read lock over a write lock";
  fl = make_lock(F_WRLCK, 250, 1);
  EXPECT_ERRNO(EAGAIN, fcntl(fd, F_SETLK, &fl)) << "write lock over a read lock";
  fl = make_lock(F_RDLCK, 200, 100);
  EXPECT_SYS(fcntl(fd, F_SETLK, &fl)) << "read locks share";
  fl = make_lock(F_WRLCK, 100, 100);
  EXPECT_SYS(fcntl(fd, F_SETLK, &fl)) << "the gap between the holder's locks is free";
  fl = make_lock(F_WRLCK, 300, 0);
  EXPECT_SYS(fcntl(fd, F_SETLK, &fl)) << "from 300 to EOF and beyond is free";
  holder.signal();
  EXPECT_EQ(holder.join(), "");
  // Once the holder is gone, everything is ours.
  fl = make_lock(F_WRLCK, 0, 0);
  EXPECT_SYS(fcntl(fd, F_SETLK, &fl));
  close(fd);
}

TEST_P(LockTest, GetlkReportsTheHolder) {
  ASSERT_EQ(write_file(path("f"), std::string(1000, 'x')), 0);
  Child holder([&](Child& self) {
    return hold_locks(self, path("f"), {make_lock(F_WRLCK, 10, 90), make_lock(F_RDLCK, 500, 0)});
  });
  ASSERT_TRUE(holder.wait()) << holder.join();
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  struct flock fl = probe(fd, F_WRLCK, 0, 50);
  EXPECT_EQ(fl.l_type, F_WRLCK) << lock_name(fl.l_type);
  EXPECT_EQ(fl.l_pid, holder.pid()) << "F_GETLK names the holding process";
  EXPECT_EQ(fl.l_start, 10);
  EXPECT_EQ(fl.l_len, 90);
  EXPECT_EQ(fl.l_whence, SEEK_SET);
  fl = probe(fd, F_WRLCK, 600, 10);
  EXPECT_EQ(fl.l_type, F_RDLCK) << lock_name(fl.l_type);
  EXPECT_EQ(fl.l_pid, holder.pid());
  EXPECT_EQ(fl.l_start, 500);
  EXPECT_EQ(fl.l_len, 0) << "a lock to EOF is reported with length 0";
  fl = probe(fd, F_RDLCK, 600, 10);
  EXPECT_EQ(fl.l_type, F_UNLCK) << "read locks do not conflict: " << lock_name(fl.l_type);
  fl = probe(fd, F_WRLCK, 100, 400);
  EXPECT_EQ(fl.l_type, F_UNLCK) << "[100, 500) is free: " << lock_name(fl.l_type);
  // Our own locks never conflict with ourselves.
  struct flock own = make_lock(F_WRLCK, 100, 10);
  ASSERT_SYS(fcntl(fd, F_SETLK, &own));
  fl = probe(fd, F_WRLCK, 100, 10);
  EXPECT_EQ(fl.l_type, F_UNLCK) << lock_name(fl.l_type);
  holder.signal();
  EXPECT_EQ(holder.join(), "");
  close(fd);
}

TEST_P(LockTest, SetlkwWaitsForRelease) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder(
      [&](Child& self) { return hold_locks(self, path("f"), {make_lock(F_WRLCK, 0, 0)}); });
  ASSERT_TRUE(holder.wait()) << holder.join();
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  struct flock fl = make_lock(F_WRLCK, 0, 1);
  std::atomic<pid_t> tid{0};
  std::atomic<bool> returned{false};
  int result = -1, error = 0;
  std::thread waiter([&] {
    tid = ::gettid();
    result = fcntl(fd, F_SETLKW, &fl);
    error = errno;
    returned = true;
  });
  // The waiter is in F_SETLKW (its thread's current system call is fcntl),
  // and stays there while the lock is held.
  for (int i = 0; i < 1000 && tid == 0; ++i) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(in_system_call(tid, SYS_fcntl, 10s)) << "the waiter never blocked in F_SETLKW";
  std::this_thread::sleep_for(100ms);  // time for a wrong early return to show
  EXPECT_FALSE(returned) << "F_SETLKW returned while another process held the lock";
  // Released: the waiter gets the lock.
  holder.signal();
  waiter.join();
  EXPECT_EQ(result, 0) << errname(error);
  fl = probe(fd, F_WRLCK, 0, 1);
  EXPECT_EQ(fl.l_type, F_UNLCK);
  EXPECT_EQ(holder.join(), "");
  // And now we hold it: another process is refused.
  Child other([&](Child&) -> std::string {
    int ofd = ::open(path("f").c_str(), O_RDWR);
    struct flock ofl = make_lock(F_WRLCK, 0, 1);
    if (::fcntl(ofd, F_SETLK, &ofl) == 0) return "got a lock the parent holds";
    if (errno != EAGAIN) return "expected EAGAIN, got " + errname(errno);
    return "";
  });
  EXPECT_EQ(other.join(), "");
  close(fd);
}

// The signal comes as soon as the waiter is in fcntl: the daemon may or
// may not have its request yet. A row that loses the signal in the first
// case (the next test) cannot pass this one reliably.
TEST_P(LockTest, SetlkwInterruptedBySignal) {
  REQUIRE_CAPABILITY(kInterrupts);
  REQUIRE_CAPABILITY(kInterruptBeforeDelivery);
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder(
      [&](Child& self) { return hold_locks(self, path("f"), {make_lock(F_WRLCK, 0, 0)}); });
  ASSERT_TRUE(holder.wait()) << holder.join();
  Child waiter([&](Child& self) -> std::string {
    interrupt_on_sigusr1();
    int fd = ::open(path("f").c_str(), O_RDWR);
    struct flock fl = make_lock(F_WRLCK, 0, 1);
    self.signal();
    if (::fcntl(fd, F_SETLKW, &fl) == 0) return "F_SETLKW got the lock while it was held";
    if (errno != EINTR) return "F_SETLKW: expected EINTR, got " + errname(errno);
    return "";
  });
  ASSERT_TRUE(waiter.wait());
  // Signalled only once it waits in F_SETLKW (its system call is fcntl).
  ASSERT_TRUE(in_system_call(waiter.pid(), SYS_fcntl, 10s)) << "the waiter never blocked";
  kill(waiter.pid(), SIGUSR1);
  EXPECT_EQ(waiter.join(), "");
  holder.signal();
  EXPECT_EQ(holder.join(), "");
}

// The signal comes while the F_SETLKW still waits in the kernel's queue:
// the daemon is stopped until the waiter has taken the signal. The kernel
// must send the INTERRUPT as it hands the request over, and the daemon
// answer EINTR -- a remote device forwards both, maybe on two connections,
// so that its server may well see the INTERRUPT first.
TEST_P(LockTest, SetlkwInterruptedBeforeTheDaemonHasIt) {
  REQUIRE_CAPABILITY(kInterrupts);
  REQUIRE_CAPABILITY(kInterruptBeforeDelivery);
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder(
      [&](Child& self) { return hold_locks(self, path("f"), {make_lock(F_WRLCK, 0, 0)}); });
  ASSERT_TRUE(holder.wait()) << holder.join();
  Child waiter([&](Child& self) -> std::string {
    interrupt_on_sigusr1();
    int fd = ::open(path("f").c_str(), O_RDWR);
    if (fd < 0) return "open: " + errname(errno);
    self.signal();
    if (!self.wait()) return "no go-ahead";
    struct flock fl = make_lock(F_WRLCK, 0, 1);
    const int rc = ::fcntl(fd, F_SETLKW, &fl);
    const int error = errno;
    // Closing the file (at exit) needs the daemon: not while it is stopped.
    self.signal();
    if (!self.wait(60s)) return "no go-ahead to exit";
    if (rc == 0) return "F_SETLKW got the lock while it was held";
    if (error != EINTR) return "F_SETLKW: expected EINTR, got " + errname(error);
    return "";
  });
  ASSERT_TRUE(waiter.wait()) << waiter.join();
  bool answered = false;
  {
    const StoppedProcess daemon(mount().pid());
    ASSERT_EQ(daemon.problem(), "");
    waiter.signal();
    ASSERT_TRUE(in_system_call(waiter.pid(), SYS_fcntl, 10s)) << "the waiter never blocked";
    kill(waiter.pid(), SIGUSR1);
    // Either the kernel took the signal, marked the request interrupted and
    // waits on for its reply, which only a fatal signal ends (state D), or
    // the lock is one the kernel keeps itself, interrupted at once.
    const auto deadline = std::chrono::steady_clock::now() + 10s;
    while (!answered && process_state(waiter.pid()) != 'D') {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "the signalled waiter is in state " << process_state(waiter.pid());
      answered = waiter.wait(1ms);
    }
  }
  // The daemon goes on: it takes the F_SETLKW, then the INTERRUPT.
  const bool interrupted = answered || waiter.wait(20s);
  EXPECT_TRUE(interrupted) << "F_SETLKW not answered within 20 s of the daemon going on: "
                              "its INTERRUPT was lost";
  holder.signal();  // an F_SETLKW still waiting gets the lock now
  if (!interrupted) waiter.wait(10s);
  waiter.signal();
  EXPECT_EQ(waiter.join(), "");
  EXPECT_EQ(holder.join(), "");
}

TEST_P(LockTest, CloseOfAnyDescriptorReleases) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder([&](Child& self) -> std::string {
    int fd = ::open(path("f").c_str(), O_RDWR);
    struct flock fl = make_lock(F_WRLCK, 0, 0);
    if (::fcntl(fd, F_SETLK, &fl) != 0) return "F_SETLK: " + errname(errno);
    self.signal('L');
    if (!self.wait()) return "no go-ahead";
    // POSIX: closing any descriptor of the file drops all of the process's locks.
    int other = ::open(path("f").c_str(), O_RDONLY);
    ::close(other);
    self.signal('C');
    if (!self.wait()) return "no go-ahead";
    ::close(fd);
    return "";
  });
  ASSERT_TRUE(holder.wait());
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  EXPECT_EQ(probe(fd, F_WRLCK, 0, 1).l_type, F_WRLCK) << "the holder's lock is in place";
  holder.signal();
  ASSERT_TRUE(holder.wait());
  struct flock fl = probe(fd, F_WRLCK, 0, 1);
  EXPECT_EQ(fl.l_type, F_UNLCK) << "still locked (" << lock_name(fl.l_type) << ", pid " << fl.l_pid
                                << ") after the holder closed another descriptor";
  holder.signal();
  EXPECT_EQ(holder.join(), "");
  close(fd);
}

TEST_P(LockTest, ExitReleases) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder([&](Child& self) -> std::string {
    int fd = ::open(path("f").c_str(), O_RDWR);
    struct flock fl = make_lock(F_WRLCK, 0, 0);
    if (::fcntl(fd, F_SETLK, &fl) != 0) return "F_SETLK: " + errname(errno);
    self.signal();
    ::_exit(0);  // without closing
  });
  ASSERT_TRUE(holder.wait());
  EXPECT_EQ(holder.join(), "");
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  struct flock fl = make_lock(F_WRLCK, 0, 0);
  EXPECT_SYS(fcntl(fd, F_SETLK, &fl)) << "a dead process's locks are gone";
  close(fd);
}

TEST_P(LockTest, ByteRangeSplitAndMerge) {
  ASSERT_EQ(write_file(path("f"), std::string(1000, 'x')), 0);
  Child holder([&](Child& self) {
    return hold_locks(self, path("f"),
                      {make_lock(F_WRLCK, 0, 100),     // [0,100) write
                       make_lock(F_UNLCK, 40, 20),     // split: [0,40) and [60,100)
                       make_lock(F_RDLCK, 60, 20),     // [60,80) read, [80,100) write
                       make_lock(F_WRLCK, 200, 10),    // [200,210)
                       make_lock(F_WRLCK, 210, 10)});  // merges into [200,220)
  });
  ASSERT_TRUE(holder.wait()) << holder.join();
  int fd = open(cpath("f"), O_RDWR);
  ASSERT_SYS(fd);
  struct flock fl = probe(fd, F_WRLCK, 0, 100);
  EXPECT_EQ(fl.l_type, F_WRLCK);
  EXPECT_EQ(fl.l_start, 0);
  EXPECT_EQ(fl.l_len, 40) << "the first piece of the split lock";
  fl = probe(fd, F_WRLCK, 40, 20);
  EXPECT_EQ(fl.l_type, F_UNLCK) << "the unlocked middle: " << lock_name(fl.l_type) << " ["
                                << fl.l_start << ", +" << fl.l_len << ")";
  fl = probe(fd, F_WRLCK, 40, 30);
  EXPECT_EQ(fl.l_type, F_RDLCK);
  EXPECT_EQ(fl.l_start, 60);
  EXPECT_EQ(fl.l_len, 20);
  fl = probe(fd, F_RDLCK, 60, 40);
  EXPECT_EQ(fl.l_type, F_WRLCK) << "the tail stays a write lock";
  EXPECT_EQ(fl.l_start, 80);
  EXPECT_EQ(fl.l_len, 20);
  fl = probe(fd, F_RDLCK, 60, 20);
  EXPECT_EQ(fl.l_type, F_UNLCK) << "the downgraded part admits readers";
  fl = probe(fd, F_WRLCK, 150, 100);
  EXPECT_EQ(fl.l_type, F_WRLCK);
  EXPECT_EQ(fl.l_start, 200);
  EXPECT_EQ(fl.l_len, 20) << "adjacent locks of one owner merge";
  struct flock mine = make_lock(F_WRLCK, 40, 20);
  EXPECT_SYS(fcntl(fd, F_SETLK, &mine)) << "the split-out middle can be taken";
  holder.signal();
  EXPECT_EQ(holder.join(), "");
  close(fd);
}

TEST_P(LockTest, LockTypeMustMatchOpenMode) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  int ro = open(cpath("f"), O_RDONLY);
  int wo = open(cpath("f"), O_WRONLY);
  ASSERT_SYS(ro);
  ASSERT_SYS(wo);
  struct flock fl = make_lock(F_WRLCK, 0, 1);
  EXPECT_ERRNO(EBADF, fcntl(ro, F_SETLK, &fl)) << "write lock on a read-only descriptor";
  fl = make_lock(F_RDLCK, 0, 1);
  EXPECT_ERRNO(EBADF, fcntl(wo, F_SETLK, &fl)) << "read lock on a write-only descriptor";
  fl = make_lock(F_RDLCK, -5, 1);
  EXPECT_ERRNO(EINVAL, fcntl(ro, F_SETLK, &fl)) << "negative start";
  close(ro);
  close(wo);
}

// A flock lock dies with its open file description, but on FUSE the kernel
// sends that RELEASE (FUSE_RELEASE_FLOCK_UNLOCK) in the background:
// close() returns once it is queued, not answered (fuse_release_common is
// synchronous only on fuseblk mounts), and the daemon's workers may take a
// later request first. So a lock attempt right after the last close may
// still see the lock; it must succeed once the RELEASE is served, which
// this allows 2 s for. Any other failure is returned at once.
int flock_after_release(int fd, int op) {
  auto deadline = std::chrono::steady_clock::now() + 2s;
  int rc;
  while ((rc = ::flock(fd, op)) != 0 && errno == EWOULDBLOCK &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(1ms);
  }
  return rc;
}

TEST_P(LockTest, FlockConflictsBetweenProcesses) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder([&](Child& self) -> std::string {
    int fd = ::open(path("f").c_str(), O_RDONLY);
    if (::flock(fd, LOCK_EX) != 0) return "flock LOCK_EX: " + errname(errno);
    self.signal();
    if (!self.wait()) return "no go-ahead";
    if (::flock(fd, LOCK_UN) != 0) return "flock LOCK_UN: " + errname(errno);
    if (::flock(fd, LOCK_SH) != 0) return "flock LOCK_SH: " + errname(errno);
    self.signal();
    if (!self.wait()) return "no go-ahead";
    ::close(fd);
    return "";
  });
  ASSERT_TRUE(holder.wait()) << holder.join();
  int fd = open(cpath("f"), O_RDONLY);
  ASSERT_SYS(fd);
  EXPECT_ERRNO(EWOULDBLOCK, flock(fd, LOCK_EX | LOCK_NB));
  EXPECT_ERRNO(EWOULDBLOCK, flock(fd, LOCK_SH | LOCK_NB));
  holder.signal();
  ASSERT_TRUE(holder.wait());
  EXPECT_SYS(flock(fd, LOCK_SH | LOCK_NB)) << "shared locks share";
  EXPECT_ERRNO(EWOULDBLOCK, flock(fd, LOCK_EX | LOCK_NB)) << "upgrade while another shares";
  holder.signal();
  EXPECT_EQ(holder.join(), "");
  EXPECT_SYS(flock_after_release(fd, LOCK_EX | LOCK_NB)) << "after the other closed";
  // flock locks belong to the open file description: a second open conflicts
  // even within one process.
  int fd2 = open(cpath("f"), O_RDONLY);
  ASSERT_SYS(fd2);
  EXPECT_ERRNO(EWOULDBLOCK, flock(fd2, LOCK_SH | LOCK_NB));
  close(fd);
  EXPECT_SYS(flock_after_release(fd2, LOCK_EX | LOCK_NB))
      << "closing the description released the lock";
  close(fd2);
}

TEST_P(LockTest, FlockBlockingWaits) {
  ASSERT_EQ(write_file(path("f"), "x"), 0);
  Child holder([&](Child& self) -> std::string {
    int fd = ::open(path("f").c_str(), O_RDONLY);
    if (::flock(fd, LOCK_EX) != 0) return "flock: " + errname(errno);
    self.signal();
    std::this_thread::sleep_for(400ms);
    ::close(fd);
    return "";
  });
  ASSERT_TRUE(holder.wait());
  int fd = open(cpath("f"), O_RDONLY);
  ASSERT_SYS(fd);
  auto start = std::chrono::steady_clock::now();
  EXPECT_SYS(flock(fd, LOCK_EX));
  double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(waited, 0.25) << "flock(LOCK_EX) returned after " << waited << " s";
  EXPECT_EQ(holder.join(), "");
  close(fd);
}

// Mutual exclusion under contention: processes increment a counter in the
// file under a lock; no increment may be lost.
void locked_counter(const std::string& file, bool use_flock) {
  constexpr int kWorkers = 6;
  constexpr int kIncrements = 150;
  ASSERT_EQ(write_file(file, "0"), 0);
  std::vector<std::unique_ptr<Child>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Child>([&](Child&) -> std::string {
      int fd = ::open(file.c_str(), O_RDWR);
      if (fd < 0) return "open: " + errname(errno);
      for (int i = 0; i < kIncrements; ++i) {
        struct flock fl = make_lock(F_WRLCK, 0, 0);
        int rc = use_flock ? ::flock(fd, LOCK_EX) : ::fcntl(fd, F_SETLKW, &fl);
        if (rc != 0) return "lock: " + errname(errno);
        char buf[32] = {};
        if (::pread(fd, buf, sizeof buf - 1, 0) < 0) return "pread: " + errname(errno);
        std::string next = std::to_string(atoi(buf) + 1);
        if (::ftruncate(fd, 0) != 0) return "ftruncate: " + errname(errno);
        if (int e = pwrite_all(fd, next.data(), next.size(), 0)) return "pwrite: " + errname(e);
        fl.l_type = F_UNLCK;
        rc = use_flock ? ::flock(fd, LOCK_UN) : ::fcntl(fd, F_SETLK, &fl);
        if (rc != 0) return "unlock: " + errname(errno);
      }
      ::close(fd);
      return "";
    }));
  }
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(workers[w]->join(), "") << "worker " << w;
  EXPECT_EQ(read_file(file).value_or("<error>"), std::to_string(kWorkers * kIncrements))
      << "increments were lost: the lock did not exclude";
}

TEST_P(LockTest, PosixLockExcludesUnderContention) { locked_counter(path("counter"), false); }

TEST_P(LockTest, FlockExcludesUnderContention) { locked_counter(path("counter"), true); }

DPFS_CONFORMANCE_SUITE(LockTest);

}  // namespace
}  // namespace dpfs::itest
