#include "backend/lock_table.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <unordered_set>

namespace dpfs {
namespace {

constexpr uint64_t kOffsetMax = INT64_MAX;  // OFFSET_MAX: "to the end of the file"

bool overlap(uint64_t a_start, uint64_t a_end, uint64_t b_start, uint64_t b_end) {
  return a_start <= b_end && b_start <= a_end;
}

}  // namespace

Completions::~Completions() {
  for (auto& [reply, error] : items_) {
    if (error != 0) {
      reply.error(error);
    } else {
      reply.ok();
    }
  }
}

const LockTable::Range* LockTable::conflict(const Ranges& ranges, const Range& want) {
  for (const Range& r : ranges) {
    if (r.owner != want.owner && overlap(r.start, r.end, want.start, want.end) &&
        (r.type == F_WRLCK || want.type == F_WRLCK)) {
      return &r;
    }
  }
  return nullptr;
}

void LockTable::remove(Ranges& ranges, uint64_t owner, uint64_t start, uint64_t end) {
  Ranges kept;
  kept.reserve(ranges.size() + 1);
  for (const Range& r : ranges) {
    if (r.owner != owner || !overlap(r.start, r.end, start, end)) {
      kept.push_back(r);
      continue;
    }
    if (r.start < start) {
      Range left = r;
      left.end = start - 1;
      kept.push_back(left);
    }
    if (r.end > end) {
      Range right = r;
      right.start = end + 1;
      kept.push_back(right);
    }
  }
  ranges.swap(kept);
}

void LockTable::apply(Ranges& ranges, const Range& want) {
  remove(ranges, want.owner, want.start, want.end);
  Range merged = want;
  for (auto it = ranges.begin(); it != ranges.end();) {
    const bool adjacent = (it->end != kOffsetMax && it->end + 1 == merged.start) ||
                          (merged.end != kOffsetMax && merged.end + 1 == it->start);
    if (it->owner == merged.owner && it->type == merged.type && adjacent) {
      merged.start = std::min(merged.start, it->start);
      merged.end = std::max(merged.end, it->end);
      it = ranges.erase(it);
    } else {
      ++it;
    }
  }
  ranges.push_back(merged);
}

Lock LockTable::test(uint64_t ino, uint64_t owner, const Lock& want) {
  util::MutexLock lock(mu_);
  auto it = files_.find(ino);
  if (it != files_.end()) {
    const Range probe{want.start, want.end, owner, want.type, want.pid};
    if (const Range* r = conflict(it->second.posix, probe)) {
      return Lock{r->start, r->end, r->type, r->pid};
    }
  }
  Lock none = want;
  none.type = F_UNLCK;
  return none;
}

bool LockTable::would_deadlock(const Range& want, uint64_t ino) {
  // Follow "waits for an owner holding a conflicting lock" from the owners
  // blocking `want`; reaching want.owner closes a cycle. Bounded, as Linux
  // bounds its search (MAX_DEADLK_ITERATIONS).
  std::vector<uint64_t> frontier;
  std::unordered_set<uint64_t> seen;
  auto add_blockers = [&](uint64_t file, const Range& w) DPFS_REQUIRES(mu_) {
    auto f = files_.find(file);
    if (f == files_.end()) return;
    for (const Range& r : f->second.posix) {
      if (r.owner != w.owner && overlap(r.start, r.end, w.start, w.end) &&
          (r.type == F_WRLCK || w.type == F_WRLCK)) {
        frontier.push_back(r.owner);
      }
    }
  };
  add_blockers(ino, want);
  for (int steps = 0; !frontier.empty() && steps < 1024; ++steps) {
    const uint64_t owner = frontier.back();
    frontier.pop_back();
    if (owner == want.owner) return true;
    if (!seen.insert(owner).second) continue;
    for (const Waiter& w : waiters_) {
      if (!w.flock && w.want.owner == owner) add_blockers(w.ino, w.want);
    }
  }
  return false;
}

void LockTable::set(uint64_t ino, uint64_t fh, uint64_t owner, const Lock& want, LockWait wait,
                    LockFlavor flavor, uint64_t unique, StatusReply reply, Completions& done) {
  const bool flock = flavor == LockFlavor::kFlock;
  util::MutexLock lock(mu_);
  FileLocks& file = files_[ino];
  Ranges& ranges = flock ? file.flock : file.posix;
  Range range{want.start, want.end, owner, want.type, want.pid};
  if (flock) {
    range.start = 0;
    range.end = kOffsetMax;
  }

  if (want.type == F_UNLCK) {
    remove(ranges, owner, range.start, range.end);
    wake(ino, done);
    drop_if_unused(ino);
    done.add(std::move(reply), 0);
    return;
  }
  if (flock) {
    // flock(2) converts a lock by dropping the old one first (not atomic).
    auto held = std::find_if(ranges.begin(), ranges.end(),
                             [&](const Range& r) { return r.owner == owner; });
    if (held != ranges.end() && held->type != want.type) {
      ranges.erase(held);
      wake(ino, done);
    }
  }
  if (conflict(ranges, range) == nullptr) {
    if (ranges.size() >= kMaxRangesPerFile) {
      done.add(std::move(reply), ENOLCK);
      return;
    }
    apply(ranges, range);
    wake(ino, done);  // a changed type (write to read) may let others in
    done.add(std::move(reply), 0);
    return;
  }
  if (wait == LockWait::kNoWait) {
    done.add(std::move(reply), EAGAIN);
    return;
  }
  if (!flock && would_deadlock(range, ino)) {
    done.add(std::move(reply), EDEADLK);
    return;
  }
  if (early_interrupts_.take(unique)) {
    done.add(std::move(reply), EINTR);
    return;
  }
  waiters_.push_back(Waiter{ino, fh, unique, flock, range, std::move(reply)});
}

void LockTable::wake(uint64_t ino, Completions& done) {
  // Granting one waiter can free ranges another waits for (its owner's own
  // ranges change), so go round until nothing moves.
  for (bool granted = true; granted;) {
    granted = false;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      if (it->ino != ino) {
        ++it;
        continue;
      }
      FileLocks& file = files_[ino];
      Ranges& ranges = it->flock ? file.flock : file.posix;
      if (conflict(ranges, it->want) != nullptr) {
        ++it;
        continue;
      }
      apply(ranges, it->want);
      done.add(std::move(it->reply), 0);
      it = waiters_.erase(it);
      granted = true;
    }
  }
}

void LockTable::drop_if_unused(uint64_t ino) {
  auto it = files_.find(ino);
  if (it == files_.end() || !it->second.posix.empty() || !it->second.flock.empty()) return;
  // Waiters always wait for a range someone holds, so none wait on ino.
  files_.erase(it);
}

void LockTable::interrupt(uint64_t unique, Completions& done) {
  util::MutexLock lock(mu_);
  for (auto it = waiters_.begin(); it != waiters_.end(); ++it) {
    if (it->unique == unique) {
      done.add(std::move(it->reply), EINTR);
      waiters_.erase(it);
      return;
    }
  }
  early_interrupts_.note(unique);
}

void LockTable::release_owner(uint64_t ino, uint64_t owner, LockFlavor flavor, Completions& done) {
  util::MutexLock lock(mu_);
  auto it = files_.find(ino);
  if (it == files_.end()) return;
  remove(flavor == LockFlavor::kFlock ? it->second.flock : it->second.posix, owner, 0, kOffsetMax);
  wake(ino, done);
  drop_if_unused(ino);
}

void LockTable::cancel_handle(uint64_t ino, uint64_t fh, Completions& done) {
  util::MutexLock lock(mu_);
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    if (it->ino == ino && it->fh == fh) {
      done.add(std::move(it->reply), EBADF);
      it = waiters_.erase(it);
    } else {
      ++it;
    }
  }
}

void LockTable::forget_file(uint64_t ino) {
  util::MutexLock lock(mu_);
  files_.erase(ino);
}

void LockTable::clear(int error, Completions& done) {
  util::MutexLock lock(mu_);
  for (Waiter& w : waiters_) done.add(std::move(w.reply), error);
  waiters_.clear();
  files_.clear();
  early_interrupts_.clear();
}

}  // namespace dpfs
