// The file systems the conformance suites run on, and what each can do: one
// table.
//
// The conformance suites (PosixTest, IoTest, ReaddirTest, XattrTest,
// LockTest, ConcurrencyTest, ExerciserTest, RootTest) are value-parameterized
// over conformance_backends(): every test runs once per configuration, named
// after it (`PosixTest.ChmodKeepsEveryModeBit/nfs3`; `--gtest_filter='*/nfs3'`
// runs one configuration). A test that needs what some backend lacks by
// design says so first (REQUIRE_CAPABILITY; a whole suite:
// MountTest::suite_needs), and is skipped there with that backend's reason
// printed. A backend does everything it does not list as
// missing as tmpfs does for root: there a difference is a failure.
//
// CMakeLists.txt reads the names of this table (the `.name = "..."` lines)
// to give each configuration a ctest entry of its own (conformance/NAME).
//
// DPFS_TEST_ON_TMPFS=1 or DPFS_TEST_ON_DIR=/path (mount_fixture.h) replace
// the table with one configuration, "tmpfs" or "dir": a file system this
// process did not start a dpfs for (tmpfs, to check the tests themselves; the
// guest kernel's NFS client, tests/guest/nfs-reference.sh). It is held to
// everything but what no such file system can show (no daemon counts its
// FORGETs). DPFS_TEST_DIR_BACKEND=NAME says that a row of the table serves
// that directory (a guest's virtio-fs mount of a dpfs serving it,
// tests/guest/workloads/gtest.sh): "dir" then lacks what row NAME lacks too,
// and a test that needs it skips with the row's reason, as it does on NAME's
// FUSE mount. A directory on a virtio-fs mount lacks what Linux's virtio-fs
// driver does not do (virtiofs_missing()), whatever serves it.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace dpfs::itest {

// What a conformance test may need beyond what every file system does.
enum class Capability {
  // Create, change and remove files and directories: what nearly every test
  // does in a directory of its own.
  kChangeTree,
  // Extended attributes (user.*, trusted.*, security.*).
  kXattrs,
  // fallocate(2): allocation, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE.
  kFallocate,
  // fallocate(2) with FALLOC_FL_ZERO_RANGE (without it: EOPNOTSUPP, and the
  // file unchanged).
  kZeroRange,
  // lseek(2) SEEK_DATA and SEEK_HOLE that find the holes of a sparse file.
  kSeekHoles,
  // Sparse files of 2^62 bytes.
  kHugeSparseFiles,
  // open(2) with O_TMPFILE.
  kTmpfile,
  // renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE.
  kRenameFlags,
  // A directory removed while open still answers on its descriptor (an
  // empty listing, fstat).
  kRmdirOpenDirectory,
  // File times before 1970 and after 2106 (outside 32 unsigned bits of
  // seconds).
  kWideTimes,
  // utimensat(2) with AT_SYMLINK_NOFOLLOW sets the times of the symlink.
  kSymlinkTimes,
  // statfs(2)'s free space moves with what this mount writes and frees,
  // and with nothing else.
  kOwnFreeSpace,
  // The daemon counts the FORGETs it receives (its statistics, SIGUSR1), so
  // a test can wait until the kernel's forgetting reached it.
  kForgetCounting,
  // A signal interrupts a request the daemon has: the kernel sends it a
  // FUSE_INTERRUPT (an F_SETLKW that waits for a lock answers EINTR).
  kInterrupts,
  // A signal that comes while a request still waits in the kernel's queue
  // (no daemon thread has taken it yet) interrupts it all the same: the
  // kernel sends the INTERRUPT once it hands the request over.
  kInterruptBeforeDelivery,
};

inline const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kChangeTree:
      return "changing the tree";
    case Capability::kXattrs:
      return "extended attributes";
    case Capability::kFallocate:
      return "fallocate";
    case Capability::kZeroRange:
      return "FALLOC_FL_ZERO_RANGE";
    case Capability::kSeekHoles:
      return "SEEK_DATA/SEEK_HOLE";
    case Capability::kHugeSparseFiles:
      return "2^62-byte sparse files";
    case Capability::kTmpfile:
      return "O_TMPFILE";
    case Capability::kRenameFlags:
      return "RENAME_NOREPLACE/RENAME_EXCHANGE";
    case Capability::kRmdirOpenDirectory:
      return "rmdir of an open directory";
    case Capability::kWideTimes:
      return "times outside 1970..2106";
    case Capability::kSymlinkTimes:
      return "times of a symlink itself";
    case Capability::kOwnFreeSpace:
      return "statfs free space of its own";
    case Capability::kForgetCounting:
      return "counted FORGETs";
    case Capability::kInterrupts:
      return "interrupts (FUSE_INTERRUPT)";
    case Capability::kInterruptBeforeDelivery:
      return "an interrupt before the daemon has the request";
  }
  return "?";
}

// A capability a backend lacks, and why (by design: the protocol, the file
// system under it, what it is for).
struct Missing {
  Capability capability;
  const char* why;
};

// One way of serving the conformance suites.
struct BackendConfig {
  // The test name suffix (PosixTest.Foo/NAME) and ctest entry.
  const char* name = "";
  // The --backend spec. "{dir}" in it becomes a fresh empty directory: of
  // the test NFS server's export for nfs:// (nfs_server.h), else beside the
  // mount.
  const char* spec = "memfs";
  // That directory is a tmpfs of its own (a passthrough export has tmpfs's
  // limits, not those of the disk holding /tmp).
  bool export_tmpfs = false;
  // More options for the daemon that mounts.
  std::vector<std::string> serve_args;
  // The mount is served through FUSE over io_uring (--fuse-io-uring on): the
  // fixture switches the fuse module's enable_uring on for it, and puts it
  // back as it was when the suite's mount stops. Other rows are served by
  // read/write (--fuse-io-uring off), whatever enable_uring is meanwhile.
  bool fuse_io_uring = false;
  // Served through the remote transport: `dpfs serve --listen` on loopback
  // runs `spec`, the mounting daemon is its device (--backend remote://).
  bool remote = false;
  // ... with TLS on both ends (certificates made by scripts/test-certs.sh).
  bool tls = false;
  // Operations in each dpfs-exerciser run (ExerciserTest): fewer where each
  // costs network round trips, so that a run takes seconds (about 7 s for
  // 100000 on memfs, 35 s on NFS), not a minute.
  int exerciser_ops = 100000;
  // Not a dpfs: the suites run on a tmpfs or a directory given to them.
  bool not_dpfs = false;
  std::vector<Missing> missing;

  bool has(Capability c) const { return why_not(c) == nullptr; }
  // The reason `c` is missing, or nullptr if it is not.
  const char* why_not(Capability c) const {
    for (const Missing& m : missing) {
      if (m.capability == c) return m.why;
    }
    return nullptr;
  }
};

// DPFS_TEST_RUN_MISSING=1 runs the tests that need what their configuration
// lacks instead of skipping them: each should then fail, for the reason the
// table gives (a way to check that the reasons still hold).
inline bool run_missing() {
  const char* v = std::getenv("DPFS_TEST_RUN_MISSING");
  return v && *v && std::string(v) != "0";
}

// Why a test needing `c` skips on `b`, or nullptr if it runs.
inline const char* skip_reason(const BackendConfig& b, Capability c) {
  return run_missing() ? nullptr : b.why_not(c);
}

// What the redis backend does not do (yet), on one server or a cluster.
inline std::vector<Missing> redis_missing() {
  return {
      {Capability::kSeekHoles,
       "not yet in the redis backend: the kernel reports all of a file as data"},
      {Capability::kHugeSparseFiles,
       "files end at 2^50 bytes, where the store's scripts still count exactly"},
      {Capability::kTmpfile, "not yet in the redis backend: EOPNOTSUPP"},
      {Capability::kRmdirOpenDirectory,
       "a removed directory is gone from the store, which every device shares: its "
       "descriptor answers ESTALE"},
      {Capability::kOwnFreeSpace, "free space is the store's memory, which everything in it moves"},
  };
}

// What NFSv3 and v4.0 lack, and ganesha's VFS FSAL on the host's disk
// (docs/nfs.md says more). Linux's own NFS client lacks the same.
inline std::vector<Missing> nfs_missing() {
  return {
      {Capability::kXattrs,
       "NFSv3 and v4.0 have no extended attributes (RFC 8276 adds them to v4.2): EOPNOTSUPP"},
      {Capability::kFallocate, "NFSv3 and v4.0 have no ALLOCATE/DEALLOCATE (v4.2 has): EOPNOTSUPP"},
      {Capability::kZeroRange, "NFSv3 and v4.0 have no ALLOCATE/DEALLOCATE (v4.2 has): EOPNOTSUPP"},
      {Capability::kSeekHoles,
       "NFSv3 and v4.0 have no SEEK (v4.2 has): the kernel reports all of a file as data"},
      {Capability::kHugeSparseFiles,
       "the server's file system caps file sizes (ext4: 16 TiB): EFBIG"},
      {Capability::kTmpfile, "NFS has no unnamed files: O_TMPFILE is EOPNOTSUPP"},
      {Capability::kRenameFlags, "NFS RENAME takes no flags: EINVAL"},
      {Capability::kRmdirOpenDirectory,
       "a removed directory is gone on the server: its descriptor answers ESTALE"},
      {Capability::kSymlinkTimes,
       "ganesha's VFS FSAL answers success to setting a symlink's times and sets nothing "
       "(docs/nfs.md, \"Times\")"},
      {Capability::kOwnFreeSpace,
       "the export is on the host's disk, whose free space moves with everything writing to it"},
  };
}

// What a guest's virtio-fs mount lacks, whatever daemon serves it: what
// Linux's driver does not send.
inline std::vector<Missing> virtiofs_missing() {
  static const char* const kNoInterrupts =
      "Linux's virtio-fs driver sends no FUSE_INTERRUPT (fs/fuse/virtio_fs.c: \"TODO "
      "interrupts\"): a signal does not end a request the daemon has, and an F_SETLKW waits "
      "until it gets the lock";
  return {{Capability::kInterrupts, kNoInterrupts},
          {Capability::kInterruptBeforeDelivery, kNoInterrupts}};
}

inline std::vector<Missing> plus(std::vector<Missing> a, std::initializer_list<Missing> b) {
  a.insert(a.end(), b);
  return a;
}

// The table. Every suite runs on every row; the order is the order of the
// instantiations.
inline const std::vector<BackendConfig>& backend_table() {
  static const std::vector<BackendConfig> table{
      {
          .name = "memfs",
          .spec = "memfs",
      },
      {
          .name = "null",
          .spec = "null",
          .missing = {{Capability::kChangeTree,
                       "null serves a fixed read-only tree, the root and one file \"zero\"; "
                       "every change answers EROFS (src/backend/null/null.h): only RootTest "
                       "applies"}},
      },
      {
          // memfs through FUSE over io_uring rather than read/write on
          // /dev/fuse (src/transport/fuse_uring.h).
          .name = "memfs_uring",
          .spec = "memfs",
          .serve_args = {"--fuse-io-uring", "on"},
          .fuse_io_uring = true,
          .missing = {{Capability::kInterruptBeforeDelivery,
                       "Linux (6.18) forgets a signal that comes before the ring hands the "
                       "request over: fuse_uring_prepare_send (fs/fuse/dev_uring.c) marks it "
                       "sent without queueing the INTERRUPT that fuse_dev_do_read queues for "
                       "read(2), so none ever comes and an F_SETLKW so interrupted waits until "
                       "the lock is free"}},
      },
      {
          // On tmpfs, io_uring = auto would choose system calls: forced on,
          // so the suites go through the ring. No FUSE passthrough: READ and
          // WRITE must reach the backend.
          .name = "passthrough",
          .spec = "passthrough:{dir}",
          .export_tmpfs = true,
          .serve_args = {"--passthrough-io-uring", "on", "--no-fuse-passthrough"},
          .missing = {{Capability::kZeroRange,
                       "the export is a tmpfs, which has no FALLOC_FL_ZERO_RANGE; passthrough "
                       "answers what its file system does: EOPNOTSUPP"}},
      },
      {
          // The default on a FUSE mount: the kernel reads and writes open
          // files itself (FUSE passthrough); on a vhost-user device the same
          // as "passthrough" without the ring.
          .name = "passthrough_kernel_io",
          .spec = "passthrough:{dir}",
          .export_tmpfs = true,
          .missing = {{Capability::kZeroRange,
                       "the export is a tmpfs, which has no FALLOC_FL_ZERO_RANGE; passthrough "
                       "answers what its file system does: EOPNOTSUPP"}},
      },
      {
          .name = "nfs3",
          .spec = "nfs://127.0.0.1{dir}?version=3",
          .exerciser_ops = 20000,
          .missing = plus(nfs_missing(),
                          {{Capability::kWideTimes,
                            "nfstime3 seconds are an unsigned 32-bit number (RFC 1813 2.5): "
                            "no time before 1970 or after 2106"}}),
      },
      {
          .name = "nfs4",
          .spec = "nfs://127.0.0.1{dir}?version=4",
          .exerciser_ops = 20000,
          .missing = nfs_missing(),
      },
      {
          // A fresh file system in the test Redis server (redis_server.h).
          .name = "redis",
          .spec = "redis",
          .exerciser_ops = 20000,
          .missing = redis_missing(),
      },
      {
          // The same in the test Redis Cluster (6 nodes, redis_server.h).
          .name = "redis_cluster",
          .spec = "redis_cluster",
          .exerciser_ops = 20000,
          .missing = redis_missing(),
      },
      {
          .name = "remote",
          .spec = "memfs",
          .remote = true,
          .exerciser_ops = 30000,
          .missing = {{Capability::kForgetCounting,
                       "the device forwards requests without counting them; the server's "
                       "session counts them, out of this test's sight"}},
      },
      {
          .name = "remote_tls",
          .spec = "memfs",
          .remote = true,
          .tls = true,
          .exerciser_ops = 20000,
          .missing = {{Capability::kForgetCounting,
                       "the device forwards requests without counting them; the server's "
                       "session counts them, out of this test's sight"}},
      },
  };
  return table;
}

// $DPFS_TEST_ON_DIR, or nullptr.
inline const char* on_dir() {
  const char* v = std::getenv("DPFS_TEST_ON_DIR");
  return v && *v ? v : nullptr;
}

// Whether `dir` is on a virtio-fs mount (/proc/self/mounts: the longest
// mount point that holds it).
inline bool on_virtiofs(const std::string& dir) {
  std::ifstream mounts("/proc/self/mounts");
  std::string line, best, type;
  while (std::getline(mounts, line)) {
    std::istringstream fields(line);
    std::string device, point, fstype;
    if (!(fields >> device >> point >> fstype)) continue;
    const bool holds = dir == point || (dir.starts_with(point) &&
                                        (point.ends_with('/') || dir[point.size()] == '/'));
    if (holds && point.size() >= best.size()) {
      best = point;
      type = fstype;
    }
  }
  return type == "virtiofs";
}

// $DPFS_TEST_DIR_BACKEND, or nullptr.
inline const char* dir_backend() {
  const char* v = std::getenv("DPFS_TEST_DIR_BACKEND");
  return v && *v ? v : nullptr;
}

inline bool on_tmpfs() {
  const char* v = std::getenv("DPFS_TEST_ON_TMPFS");
  return (v && *v && std::string(v) != "0") || on_dir();
}

// A file system the suites did not start a dpfs for. (Not written as the
// table's rows: CMakeLists.txt reads those.)
inline BackendConfig not_dpfs(const char* name, std::vector<Missing> missing) {
  BackendConfig b;
  b.name = name;
  b.not_dpfs = true;
  b.missing = std::move(missing);
  return b;
}

// The configurations the suites are instantiated over: the table, or on a
// tmpfs or a given directory the one that stands for it.
inline std::vector<const BackendConfig*> conformance_backends() {
  static const BackendConfig tmpfs = not_dpfs(
      "tmpfs", {{Capability::kForgetCounting, "no daemon: nothing counts FORGETs"},
                {Capability::kZeroRange, "tmpfs has no FALLOC_FL_ZERO_RANGE: EOPNOTSUPP"}});
  static const BackendConfig dir = [] {
    BackendConfig d =
        not_dpfs("dir", {{Capability::kForgetCounting, "no daemon: nothing counts FORGETs"},
                         {Capability::kZeroRange,
                          "a file system of unknown kind: it may refuse "
                          "FALLOC_FL_ZERO_RANGE as tmpfs does"}});
    if (on_dir() != nullptr && on_virtiofs(on_dir())) {
      const std::vector<Missing> v = virtiofs_missing();
      d.missing.insert(d.missing.begin(), v.begin(), v.end());
    }
    const char* name = dir_backend();
    if (name == nullptr) return d;
    for (const BackendConfig& b : backend_table()) {
      if (std::string_view(b.name) != name) continue;
      // The row's reasons first: they are the ones a skip prints.
      d.missing.insert(d.missing.begin(), b.missing.begin(), b.missing.end());
      return d;
    }
    // A wrong name would hold the backend to what it never promised: stop
    // before any test is registered.
    std::fprintf(stderr, "DPFS_TEST_DIR_BACKEND=%s: no such row in tests/integration/backends.h\n",
                 name);
    std::exit(2);
  }();
  if (on_dir()) return {&dir};
  if (on_tmpfs()) return {&tmpfs};
  std::vector<const BackendConfig*> all;
  for (const BackendConfig& b : backend_table()) all.push_back(&b);
  return all;
}

// gtest prints a parameter in failure messages by its name.
inline void PrintTo(const BackendConfig* b, std::ostream* os) { *os << b->name; }

struct BackendName {
  std::string operator()(const ::testing::TestParamInfo<const BackendConfig*>& info) const {
    return info.param->name;
  }
};

}  // namespace dpfs::itest

// Runs the TEST_Ps of `suite` (a MountTest) on every configuration:
// `suite.Test/memfs`, `suite.Test/nfs3`, ...
#define DPFS_CONFORMANCE_SUITE(suite)                                                           \
  INSTANTIATE_TEST_SUITE_P(, suite, ::testing::ValuesIn(::dpfs::itest::conformance_backends()), \
                           ::dpfs::itest::BackendName{})
