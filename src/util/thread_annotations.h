// Lock rules the compiler checks: clang's thread safety analysis
// (-Wthread-safety, on in every clang build: CMakeLists.txt) over mutexes
// that say what they protect.
//
//   util::Mutex mu_;
//   std::vector<int> items_ DPFS_GUARDED_BY(mu_);
//   void trim() DPFS_REQUIRES(mu_);
//   ...
//   util::MutexLock lock(mu_);   // items_ may be used until it goes
//
// libstdc++'s std::mutex and std::shared_mutex carry no annotations, so the
// analysis cannot see them: a lock whose rule matters is one of these thin
// wrappers instead. They cost nothing over the standard types they hold.
// Rules the analysis cannot express (memfs's "the inode's lock, or the tree
// lock held exclusively") stay in comments beside the fields.
//
// GCC ignores the attributes; the clang build (CI's sanitized tree) fails
// on a broken rule.
#pragma once

#include <mutex>
#include <shared_mutex>

#if defined(__clang__)
#define DPFS_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define DPFS_THREAD_ANNOTATION(x)
#endif

#define DPFS_CAPABILITY(x) DPFS_THREAD_ANNOTATION(capability(x))
#define DPFS_SCOPED_CAPABILITY DPFS_THREAD_ANNOTATION(scoped_lockable)
#define DPFS_GUARDED_BY(x) DPFS_THREAD_ANNOTATION(guarded_by(x))
#define DPFS_PT_GUARDED_BY(x) DPFS_THREAD_ANNOTATION(pt_guarded_by(x))
#define DPFS_REQUIRES(...) DPFS_THREAD_ANNOTATION(requires_capability(__VA_ARGS__))
#define DPFS_REQUIRES_SHARED(...) DPFS_THREAD_ANNOTATION(requires_shared_capability(__VA_ARGS__))
#define DPFS_ACQUIRE(...) DPFS_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define DPFS_ACQUIRE_SHARED(...) DPFS_THREAD_ANNOTATION(acquire_shared_capability(__VA_ARGS__))
#define DPFS_RELEASE(...) DPFS_THREAD_ANNOTATION(release_capability(__VA_ARGS__))
#define DPFS_RELEASE_SHARED(...) DPFS_THREAD_ANNOTATION(release_shared_capability(__VA_ARGS__))
#define DPFS_RELEASE_GENERIC(...) DPFS_THREAD_ANNOTATION(release_generic_capability(__VA_ARGS__))
#define DPFS_EXCLUDES(...) DPFS_THREAD_ANNOTATION(locks_excluded(__VA_ARGS__))
#define DPFS_NO_THREAD_SAFETY_ANALYSIS DPFS_THREAD_ANNOTATION(no_thread_safety_analysis)

namespace dpfs::util {

// std::mutex, visible to the analysis.
class DPFS_CAPABILITY("mutex") Mutex {
 public:
  void lock() DPFS_ACQUIRE() { mu_.lock(); }
  void unlock() DPFS_RELEASE() { mu_.unlock(); }
  bool try_lock() DPFS_THREAD_ANNOTATION(try_acquire_capability(true)) { return mu_.try_lock(); }
  // For std::condition_variable: wait on a std::unique_lock of this.
  std::mutex& native() { return mu_; }

 private:
  std::mutex mu_;
};

// std::shared_mutex, visible to the analysis.
class DPFS_CAPABILITY("mutex") SharedMutex {
 public:
  void lock() DPFS_ACQUIRE() { mu_.lock(); }
  void unlock() DPFS_RELEASE() { mu_.unlock(); }
  void lock_shared() DPFS_ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() DPFS_RELEASE_SHARED() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

// Holds a Mutex, or a SharedMutex exclusively, for its scope.
template <typename M>
class DPFS_SCOPED_CAPABILITY ExclusiveLock {
 public:
  explicit ExclusiveLock(M& mu) DPFS_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ExclusiveLock(const ExclusiveLock&) = delete;
  ExclusiveLock& operator=(const ExclusiveLock&) = delete;
  ~ExclusiveLock() DPFS_RELEASE() { mu_.unlock(); }

 private:
  M& mu_;
};
using MutexLock = ExclusiveLock<Mutex>;
using WriterLock = ExclusiveLock<SharedMutex>;

// Holds a SharedMutex shared for its scope.
class DPFS_SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(SharedMutex& mu) DPFS_ACQUIRE_SHARED(mu) : mu_(mu) { mu_.lock_shared(); }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;
  ~ReaderLock() DPFS_RELEASE() { mu_.unlock_shared(); }

 private:
  SharedMutex& mu_;
};

}  // namespace dpfs::util
