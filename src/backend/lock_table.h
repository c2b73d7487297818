// Byte-range (fcntl) and whole-file (flock) locks kept by a backend itself
// (memfs; passthrough, whose host files' own locks would be the daemon's),
// with the SETLKW requests waiting for one.
#pragma once

#include <cstdint>
#include <list>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "backend/early_interrupts.h"
#include "util/thread_annotations.h"

namespace dpfs {

// Replies to answer once every lock is released. Declare one before the lock
// guards of a scope: its destructor runs after theirs, so a reply (whose
// completion may write to /dev/fuse) is never answered under a lock.
class Completions {
 public:
  Completions() = default;
  Completions(const Completions&) = delete;
  Completions& operator=(const Completions&) = delete;
  ~Completions();

  void add(StatusReply reply, int error) { items_.emplace_back(std::move(reply), error); }

 private:
  std::vector<std::pair<StatusReply, int>> items_;
};

// The locks of every file, keyed by inode number.
//
// POSIX locks (fcntl) belong to a lock owner (a process's files, as the
// kernel names it in lk_owner): a request replaces the owner's own locks over
// its range, splitting and merging ranges; ranges of other owners conflict
// when they overlap and one of the two is a write lock. flock locks live in a
// separate namespace, as on Linux: they cover the whole file and their owner
// is an open file; converting one drops the old lock first, as flock(2) does.
//
// A SETLKW that conflicts does not block: its reply is kept and answered when
// the conflicting locks go away (by whoever releases them, on that thread),
// with EINTR on interrupt(), EDEADLK when waiting would close a cycle of POSIX
// owners waiting for each other.
//
// Safe for concurrent use. Replies are handed to a Completions and answered
// by the caller after its locks are released.
class LockTable {
 public:
  // The first lock of another owner that conflicts with `want` (POSIX), or
  // `want` with type F_UNLCK when none does.
  Lock test(uint64_t ino, uint64_t owner, const Lock& want);
  // SETLK / SETLKW (kWait) of `owner` through handle `fh`. `unique` names
  // the request for interrupt().
  void set(uint64_t ino, uint64_t fh, uint64_t owner, const Lock& want, LockWait wait,
           LockFlavor flavor, uint64_t unique, StatusReply reply, Completions& done);
  // Answers the waiting request `unique` with EINTR. An interrupt that comes
  // before its request (workers race) is remembered for a while.
  void interrupt(uint64_t unique, Completions& done);
  // Drops every lock `owner` holds on `ino` (POSIX on close, flock on release).
  void release_owner(uint64_t ino, uint64_t owner, LockFlavor flavor, Completions& done);
  // Answers EBADF to requests waiting through `fh`, which is going away.
  void cancel_handle(uint64_t ino, uint64_t fh, Completions& done);
  // Forgets the locks of a file that is freed. REQUIRES: no waiters on it
  // (every waiter has a live handle on its file).
  void forget_file(uint64_t ino);
  // Drops everything; waiters get `error` (the session ends).
  void clear(int error, Completions& done);

 private:
  struct Range {
    uint64_t start = 0;
    uint64_t end = 0;  // inclusive
    uint64_t owner = 0;
    uint32_t type = 0;
    uint32_t pid = 0;
  };
  // Ranges of different owners may overlap (read locks); an owner's own
  // ranges never overlap, and adjacent ranges of one owner and type are merged.
  using Ranges = std::vector<Range>;
  struct FileLocks {
    Ranges posix;
    Ranges flock;
  };
  struct Waiter {
    uint64_t ino;
    uint64_t fh;
    uint64_t unique;
    bool flock;
    Range want;
    StatusReply reply;
  };

  static const Range* conflict(const Ranges& ranges, const Range& want);
  static void remove(Ranges& ranges, uint64_t owner, uint64_t start, uint64_t end);
  static void apply(Ranges& ranges, const Range& want);
  bool would_deadlock(const Range& want, uint64_t ino) DPFS_REQUIRES(mu_);
  // Grants what waiters on `ino` can now have.
  void wake(uint64_t ino, Completions& done) DPFS_REQUIRES(mu_);
  void drop_if_unused(uint64_t ino) DPFS_REQUIRES(mu_);

  // A tenant could split ranges without end; past this, ENOLCK.
  static constexpr size_t kMaxRangesPerFile = 16384;

  util::Mutex mu_;
  std::unordered_map<uint64_t, FileLocks> files_ DPFS_GUARDED_BY(mu_);
  std::list<Waiter> waiters_ DPFS_GUARDED_BY(mu_);  // in arrival order
  EarlyInterrupts early_interrupts_ DPFS_GUARDED_BY(mu_);
};

}  // namespace dpfs
