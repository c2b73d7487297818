// memfs through a FuseSession, with hand-built requests as the kernel sends
// them: lookup counts and inode lifetime, readdir cookies under concurrent
// change, rename rules, locks that wait without blocking, limits, and
// tenant-supplied inode numbers and handles that are not valid.
#include "backend/memfs/memfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <sys/xattr.h>

#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fuse/session.h"
#include "session_harness.h"

namespace dpfs {
namespace {

using testing::init_request;
using testing::RequestBuilder;
using testing::TestRequest;

constexpr uint64_t kOffsetMax = INT64_MAX;  // "to the end of the file", as the kernel sends it

struct Listed {
  std::string name;
  uint64_t ino;
  uint64_t off;
  uint32_t type;
};

class MemfsTest : public ::testing::Test {
 protected:
  explicit MemfsTest(MemfsOptions options = {}) : fs(options), session(fs, {}) {
    TestRequest req(init_request());
    session.handle(req);
    EXPECT_EQ(req.error(), 0);
    init_flags = req.payload<fuse_init_out>().flags;
  }
  uint32_t init_flags = 0;

  // A request that must complete now.
  std::unique_ptr<TestRequest> run(const RequestBuilder& b) {
    auto req = start(b);
    EXPECT_EQ(req->completions, 1) << "every request completes exactly once";
    return req;
  }
  // A request that may stay pending (SETLKW).
  std::unique_ptr<TestRequest> start(const RequestBuilder& b) {
    auto req = std::make_unique<TestRequest>(b.bytes());
    session.handle(*req);
    return req;
  }
  int status(const RequestBuilder& b) { return -run(b)->error(); }

  RequestBuilder op(uint32_t opcode, uint64_t nodeid, uint32_t uid = 1000, uint32_t gid = 100) {
    RequestBuilder b(opcode, nodeid, next_unique++);
    b.header().uid = uid;
    b.header().gid = gid;
    return b;
  }

  // Entry of a LOOKUP/MKDIR/..., or the errno as a negative nodeid.
  fuse_entry_out entry(const RequestBuilder& b, int* error = nullptr) {
    auto req = run(b);
    if (error != nullptr) *error = -req->error();
    if (req->error() != 0) return {};
    return req->payload<fuse_entry_out>();
  }
  uint64_t lookup(uint64_t parent, const std::string& name, int* error = nullptr) {
    return entry(op(FUSE_LOOKUP, parent).name(name), error).nodeid;
  }
  uint64_t mkdir(uint64_t parent, const std::string& name, uint32_t mode = 0755,
                 int* error = nullptr) {
    fuse_mkdir_in in{mode, 0};
    return entry(op(FUSE_MKDIR, parent).arg(in).name(name), error).nodeid;
  }
  uint64_t mknod(uint64_t parent, const std::string& name, uint32_t mode, uint32_t rdev = 0,
                 int* error = nullptr) {
    fuse_mknod_in in{mode, rdev, 0, 0};
    return entry(op(FUSE_MKNOD, parent).arg(in).name(name), error).nodeid;
  }
  struct Created {
    uint64_t ino = 0;
    uint64_t fh = 0;
    int error = 0;
  };
  Created create(uint64_t parent, const std::string& name, uint32_t flags = O_RDWR,
                 uint32_t mode = S_IFREG | 0644) {
    fuse_create_in in{flags, mode, 0, 0};
    auto req = run(op(FUSE_CREATE, parent).arg(in).name(name));
    if (req->error() != 0) return {0, 0, -req->error()};
    struct Out {
      fuse_entry_out entry;
      fuse_open_out open;
    };
    const auto& out = req->payload<Out>();
    return {out.entry.nodeid, out.open.fh, 0};
  }
  uint64_t open(uint64_t ino, uint32_t flags, int* error = nullptr) {
    fuse_open_in in{flags, 0};
    auto req = run(op(FUSE_OPEN, ino).arg(in));
    if (error != nullptr) *error = -req->error();
    return req->error() == 0 ? req->payload<fuse_open_out>().fh : 0;
  }
  int64_t write(uint64_t ino, uint64_t fh, uint64_t offset, const std::string& data) {
    fuse_write_in in{};
    in.fh = fh;
    in.offset = offset;
    in.size = uint32_t(data.size());
    auto req = run(op(FUSE_WRITE, ino).arg(in).raw(data));
    if (req->error() != 0) return req->error();
    return req->payload<fuse_write_out>().size;
  }
  std::string read(uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
                   int* error = nullptr) {
    fuse_read_in in{};
    in.fh = fh;
    in.offset = offset;
    in.size = size;
    auto req = run(op(FUSE_READ, ino).arg(in));
    if (error != nullptr) *error = -req->error();
    if (req->error() != 0) return {};
    return std::string(reinterpret_cast<const char*>(req->reply_data()),
                       req->reply_len - sizeof(fuse_out_header));
  }
  int release(uint64_t ino, uint64_t fh, uint64_t lock_owner = 0, bool flock_unlock = false) {
    fuse_release_in in{};
    in.fh = fh;
    in.lock_owner = lock_owner;
    in.release_flags = flock_unlock ? FUSE_RELEASE_FLOCK_UNLOCK : 0;
    return status(op(FUSE_RELEASE, ino).arg(in));
  }
  void forget(uint64_t ino, uint64_t n) {
    fuse_forget_in in{n};
    TestRequest req(op(FUSE_FORGET, ino).arg(in).bytes());
    session.handle(req);
    EXPECT_EQ(req.completions, 1);
  }
  int unlink(uint64_t parent, const std::string& name) {
    return status(op(FUSE_UNLINK, parent).name(name));
  }
  int rmdir(uint64_t parent, const std::string& name) {
    return status(op(FUSE_RMDIR, parent).name(name));
  }
  int rename(uint64_t parent, const std::string& name, uint64_t new_parent,
             const std::string& new_name, uint32_t flags = 0) {
    fuse_rename2_in in{new_parent, flags, 0};
    return status(op(FUSE_RENAME2, parent).arg(in).name(name).name(new_name));
  }
  fuse_attr getattr(uint64_t ino, int* error = nullptr) {
    fuse_getattr_in in{};
    auto req = run(op(FUSE_GETATTR, ino).arg(in));
    if (error != nullptr) *error = -req->error();
    return req->error() == 0 ? req->payload<fuse_attr_out>().attr : fuse_attr{};
  }
  // Inodes alive, from STATFS.
  uint64_t inodes() {
    auto req = run(op(FUSE_STATFS, kRootIno));
    const auto& st = req->payload<fuse_statfs_out>().st;
    return st.files - st.ffree;
  }
  uint64_t opendir(uint64_t ino) {
    fuse_open_in in{O_RDONLY, 0};
    auto req = run(op(FUSE_OPENDIR, ino).arg(in));
    EXPECT_EQ(req->error(), 0);
    return req->payload<fuse_open_out>().fh;
  }
  std::vector<Listed> readdir(uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
                              bool plus = false) {
    fuse_read_in in{};
    in.fh = fh;
    in.offset = offset;
    in.size = size;
    auto req = run(op(plus ? FUSE_READDIRPLUS : FUSE_READDIR, ino).arg(in));
    EXPECT_EQ(req->error(), 0);
    std::vector<Listed> out;
    const uint8_t* p = req->reply_data();
    const uint8_t* end = p + (req->reply_len - sizeof(fuse_out_header));
    while (p < end) {
      const fuse_dirent* d;
      if (plus) {
        const auto* dp = reinterpret_cast<const fuse_direntplus*>(p);
        d = &dp->dirent;
        EXPECT_EQ(dp->entry_out.nodeid, d->ino);
        p += FUSE_DIRENTPLUS_SIZE(dp);
      } else {
        d = reinterpret_cast<const fuse_dirent*>(p);
        p += FUSE_DIRENT_SIZE(d);
      }
      out.push_back({std::string(d->name, d->namelen), d->ino, d->off, d->type});
    }
    return out;
  }
  fuse_lk_in lk(uint64_t fh, uint64_t owner, uint64_t start, uint64_t end, uint32_t type,
                bool flock = false) {
    fuse_lk_in in{};
    in.fh = fh;
    in.owner = owner;
    in.lk = {start, end, type, uint32_t(owner)};
    in.lk_flags = flock ? FUSE_LK_FLOCK : 0;
    return in;
  }

  Memfs fs;
  fuse::FuseSession session;
  uint64_t next_unique = 100;
};

// --- Files ------------------------------------------------------------------

TEST_F(MemfsTest, WriteReadBackWithHoles) {
  Created f = create(kRootIno, "f");
  ASSERT_EQ(f.error, 0);
  EXPECT_EQ(write(f.ino, f.fh, 10000, "hello"), 5);
  EXPECT_EQ(read(f.ino, f.fh, 9998, 100), std::string(2, '\0') + "hello");
  const fuse_attr a = getattr(f.ino);
  EXPECT_EQ(a.size, 10005u);
  EXPECT_EQ(a.blocks, 8u) << "one 4 KiB chunk allocated";
  EXPECT_EQ(a.mode, uint32_t(S_IFREG | 0644));
  EXPECT_EQ(a.uid, 1000u);
  EXPECT_EQ(a.gid, 100u);
  EXPECT_EQ(a.nlink, 1u);
}

TEST_F(MemfsTest, OpenTruncAndReadOnlyHandles) {
  Created f = create(kRootIno, "f");
  ASSERT_EQ(write(f.ino, f.fh, 0, "data"), 4);
  const uint64_t ro = open(f.ino, O_RDONLY);
  EXPECT_EQ(write(f.ino, ro, 0, "x"), -EBADF) << "a read-only handle does not write";
  const uint64_t tr = open(f.ino, O_WRONLY | O_TRUNC);
  EXPECT_EQ(getattr(f.ino).size, 0u);
  EXPECT_EQ(release(f.ino, tr), 0);
  EXPECT_EQ(release(f.ino, ro), 0);
  EXPECT_EQ(release(f.ino, ro), EBADF) << "released twice";
}

TEST_F(MemfsTest, UnknownInodesAndHandlesAreRefused) {
  int error = 0;
  getattr(987654, &error);
  EXPECT_EQ(error, ESTALE);
  lookup(987654, "x", &error);
  EXPECT_EQ(error, ESTALE);
  Created f = create(kRootIno, "f");
  read(f.ino, f.fh + 1000, 0, 10, &error);
  EXPECT_EQ(error, EBADF);
  Created g = create(kRootIno, "g");
  read(f.ino, g.fh, 0, 10, &error);
  EXPECT_EQ(error, EBADF) << "a handle of another inode";
  lookup(f.ino, "x", &error);
  EXPECT_EQ(error, ENOTDIR);
}

// --- Inode lifetime ---------------------------------------------------------

TEST_F(MemfsTest, InodeLivesUntilUnlinkedForgottenAndClosed) {
  const uint64_t base = inodes();
  Created f = create(kRootIno, "f");        // one lookup, one handle
  ASSERT_EQ(lookup(kRootIno, "f"), f.ino);  // two lookups
  ASSERT_EQ(write(f.ino, f.fh, 0, "still here"), 10);
  ASSERT_EQ(unlink(kRootIno, "f"), 0);
  EXPECT_EQ(getattr(f.ino).nlink, 0u);
  forget(f.ino, 2);
  EXPECT_EQ(inodes(), base + 1) << "an open handle keeps it";
  EXPECT_EQ(read(f.ino, f.fh, 0, 100), "still here");
  EXPECT_EQ(release(f.ino, f.fh), 0);
  EXPECT_EQ(inodes(), base);
  int error = 0;
  getattr(f.ino, &error);
  EXPECT_EQ(error, ESTALE) << "a freed inode number is stale";
  Created g = create(kRootIno, "g");
  EXPECT_GT(g.ino, f.ino) << "inode numbers are not reused";
}

TEST_F(MemfsTest, ForgetMoreThanLookedUpIsHarmless) {
  const uint64_t base = inodes();
  const uint64_t d = mkdir(kRootIno, "d");
  forget(d, 1000);
  forget(kRootIno, 5);
  EXPECT_EQ(inodes(), base + 1) << "a linked inode stays";
  EXPECT_EQ(rmdir(kRootIno, "d"), 0);
  EXPECT_EQ(inodes(), base);
  forget(d, 1);
  EXPECT_EQ(getattr(kRootIno).nlink, 2u);
}

TEST_F(MemfsTest, TmpfileLivesWhileOpenAndCanBeLinked) {
  const uint64_t base = inodes();
  fuse_create_in in{O_RDWR, S_IFREG | 0600, 0, 0};
  auto req = run(op(FUSE_TMPFILE, kRootIno).arg(in).name("/"));
  ASSERT_EQ(req->error(), 0);
  const auto& e = req->payload<fuse_entry_out>();
  const uint64_t ino = e.nodeid;
  const uint64_t fh =
      reinterpret_cast<const fuse_open_out*>(req->reply_data() + sizeof(fuse_entry_out))->fh;
  EXPECT_EQ(e.attr.nlink, 0u);
  EXPECT_EQ(write(ino, fh, 0, "tmp"), 3);
  fuse_link_in li{ino};
  ASSERT_EQ(entry(op(FUSE_LINK, kRootIno).arg(li).name("named")).nodeid, ino);
  EXPECT_EQ(getattr(ino).nlink, 1u);
  ASSERT_EQ(unlink(kRootIno, "named"), 0);
  int error = 0;
  entry(op(FUSE_LINK, kRootIno).arg(li).name("again"), &error);
  EXPECT_EQ(error, ENOENT) << "once linked and unlinked, no longer linkable";
  forget(ino, 2);
  EXPECT_EQ(release(ino, fh), 0);
  EXPECT_EQ(inodes(), base);
}

// --- Directories ------------------------------------------------------------

TEST_F(MemfsTest, ReaddirListsDotsWithInodesAndTypes) {
  const uint64_t d = mkdir(kRootIno, "d");
  mknod(d, "fifo", S_IFIFO | 0644);
  mkdir(d, "sub");
  const uint64_t fh = opendir(d);
  std::map<std::string, Listed> seen;
  for (const Listed& l : readdir(d, fh, 0, 4096)) seen[l.name] = l;
  ASSERT_EQ(seen.size(), 4u);
  EXPECT_EQ(seen["."].ino, d);
  EXPECT_EQ(seen[".."].ino, kRootIno);
  EXPECT_EQ(seen["fifo"].type, uint32_t(DT_FIFO));
  EXPECT_EQ(seen["sub"].type, uint32_t(DT_DIR));
  EXPECT_EQ(getattr(d).nlink, 3u);
}

TEST_F(MemfsTest, ReaddirCookiesSurviveChangesBetweenPages) {
  const uint64_t d = mkdir(kRootIno, "d");
  std::set<std::string> originals;
  for (int i = 0; i < 300; ++i) {
    const std::string name = "file" + std::to_string(i);
    ASSERT_EQ(create(d, name).error, 0);
    originals.insert(name);
  }
  const uint64_t fh = opendir(d);
  std::multiset<std::string> seen;
  std::set<std::string> removed;
  uint64_t offset = 0;
  for (int page = 0;; ++page) {
    std::vector<Listed> got = readdir(d, fh, offset, 512);
    if (got.empty()) break;
    for (const Listed& l : got) seen.insert(l.name);
    offset = got.back().off;
    // Between pages: remove one name listed and one not yet listed, add new ones.
    const std::string listed = got.front().name;
    if (originals.contains(listed) && !removed.contains(listed)) {
      ASSERT_EQ(unlink(d, listed), 0);
      removed.insert(listed);
    }
    const std::string later = "file" + std::to_string(299 - page);
    if (!removed.contains(later) && !seen.contains(later)) {
      ASSERT_EQ(unlink(d, later), 0);
      removed.insert(later);
    }
    if (page < 10) {
      ASSERT_EQ(create(d, "new" + std::to_string(page)).error, 0);
    }
  }
  for (const std::string& name : originals) {
    if (removed.contains(name) && !seen.contains(name)) continue;  // removed before listed
    EXPECT_EQ(seen.count(name), 1u) << name << " must be listed exactly once";
  }
  EXPECT_EQ(seen.count("."), 1u);
  EXPECT_EQ(seen.count(".."), 1u);
  for (int page = 0; page < 10; ++page) {
    EXPECT_EQ(seen.count("new" + std::to_string(page)), 1u) << "added after the listing began";
  }
}

TEST_F(MemfsTest, ReaddirplusCountsALookupOnlyForEntriesReturned) {
  const uint64_t d = mkdir(kRootIno, "d");
  for (int i = 0; i < 40; ++i) {
    Created f = create(d, "f" + std::to_string(i));
    forget(f.ino, 1);
    ASSERT_EQ(release(f.ino, f.fh), 0);
  }
  const uint64_t base = inodes();  // the 40 files included
  const uint64_t fh = opendir(d);
  // A small buffer: only some entries fit.
  std::vector<Listed> got = readdir(d, fh, 0, 1024, /*plus=*/true);
  std::vector<uint64_t> returned;
  for (const Listed& l : got) {
    if (l.name != "." && l.name != "..") returned.push_back(l.ino);
  }
  ASSERT_FALSE(returned.empty());
  ASSERT_LT(returned.size(), 40u);
  for (int i = 0; i < 40; ++i) ASSERT_EQ(unlink(d, "f" + std::to_string(i)), 0);
  EXPECT_EQ(inodes(), base - 40 + returned.size())
      << "entries returned by READDIRPLUS hold a lookup; the others were freed";
  for (uint64_t ino : returned) forget(ino, 1);
  EXPECT_EQ(inodes(), base - 40);
  EXPECT_EQ(getattr(d).nlink, 2u) << "\".\" and \"..\" took no lookup";
}

TEST_F(MemfsTest, SetgidDirectoryPassesGroupAndBit) {
  const uint64_t d = mkdir(kRootIno, "d", 02775);
  EXPECT_EQ(getattr(d).mode & 07777, 0775u) << "mkdir(2) drops S_ISGID from the mode (Linux)";
  fuse_setattr_in sa{};
  sa.valid = FATTR_MODE;
  sa.mode = S_IFDIR | 02775;
  ASSERT_EQ(status(op(FUSE_SETATTR, d).arg(sa)), 0);
  sa.valid = FATTR_GID;
  sa.gid = 4242;
  ASSERT_EQ(status(op(FUSE_SETATTR, d).arg(sa)), 0);
  EXPECT_EQ(getattr(d).mode & 07777, 02775u) << "a directory keeps S_ISGID on chown";
  const uint64_t sub = mkdir(d, "sub", 0755);
  EXPECT_EQ(getattr(sub).gid, 4242u);
  EXPECT_EQ(getattr(sub).mode & 07777, 02755u);
  Created f = create(d, "f");
  EXPECT_EQ(getattr(f.ino).gid, 4242u);
  EXPECT_EQ(getattr(f.ino).mode & 07777, 0644u);
}

// --- Rename -----------------------------------------------------------------

TEST_F(MemfsTest, RenameRules) {
  const uint64_t a = mkdir(kRootIno, "a");
  const uint64_t b = mkdir(a, "b");
  mkdir(kRootIno, "full");
  create(lookup(kRootIno, "full"), "x");
  mkdir(kRootIno, "empty");
  create(kRootIno, "file");
  EXPECT_EQ(rename(kRootIno, "a", b, "a2"), EINVAL) << "into its own subtree";
  EXPECT_EQ(rename(kRootIno, "a", a, "self"), EINVAL);
  EXPECT_EQ(rename(kRootIno, "empty", kRootIno, "full"), ENOTEMPTY);
  EXPECT_EQ(rename(kRootIno, "file", kRootIno, "empty"), EISDIR);
  EXPECT_EQ(rename(kRootIno, "empty", kRootIno, "file"), ENOTDIR);
  EXPECT_EQ(rename(kRootIno, "missing", kRootIno, "x"), ENOENT);
  EXPECT_EQ(rename(kRootIno, "file", kRootIno, "file"), 0) << "same name: nothing to do";
  EXPECT_EQ(rename(kRootIno, "file", kRootIno, "empty", RENAME_NOREPLACE), EEXIST);
  EXPECT_EQ(rename(kRootIno, "file", kRootIno, "nothere", RENAME_EXCHANGE), ENOENT);
  EXPECT_EQ(rename(kRootIno, "file", kRootIno, "x", RENAME_WHITEOUT), EINVAL);

  // Moving a directory: nlink of both parents, and its "..".
  const uint32_t root_links = getattr(kRootIno).nlink;
  EXPECT_EQ(rename(a, "b", kRootIno, "b"), 0);
  EXPECT_EQ(getattr(a).nlink, 2u);
  EXPECT_EQ(getattr(kRootIno).nlink, root_links + 1);
  EXPECT_EQ(lookup(b, ".."), kRootIno);
  // Over an empty directory: it goes, and the parent loses its link.
  EXPECT_EQ(rename(kRootIno, "b", kRootIno, "empty"), 0);
  EXPECT_EQ(getattr(kRootIno).nlink, root_links);
  EXPECT_EQ(lookup(kRootIno, "empty"), b);
}

TEST_F(MemfsTest, RenameOverHardLinkOfItselfKeepsBoth) {
  Created f = create(kRootIno, "f");
  fuse_link_in li{f.ino};
  ASSERT_EQ(entry(op(FUSE_LINK, kRootIno).arg(li).name("g")).nodeid, f.ino);
  EXPECT_EQ(rename(kRootIno, "f", kRootIno, "g"), 0);
  EXPECT_EQ(lookup(kRootIno, "f"), f.ino);
  EXPECT_EQ(lookup(kRootIno, "g"), f.ino);
  EXPECT_EQ(getattr(f.ino).nlink, 2u);
}

TEST_F(MemfsTest, RenameExchangeSwapsDirectoryAndFileAcrossParents) {
  const uint64_t p = mkdir(kRootIno, "p");
  const uint64_t q = mkdir(kRootIno, "q");
  const uint64_t dir = mkdir(p, "dir");
  Created file = create(q, "file");
  EXPECT_EQ(rename(p, "dir", q, "file", RENAME_EXCHANGE), 0);
  EXPECT_EQ(lookup(p, "dir"), file.ino);
  EXPECT_EQ(lookup(q, "file"), dir);
  EXPECT_EQ(lookup(dir, ".."), q);
  EXPECT_EQ(getattr(p).nlink, 2u);
  EXPECT_EQ(getattr(q).nlink, 3u);
  const uint64_t fh = opendir(p);
  for (const Listed& l : readdir(p, fh, 0, 4096)) {
    if (l.name == "dir") {
      EXPECT_EQ(l.type, uint32_t(DT_REG)) << "the entry's type moves too";
    }
  }
  ASSERT_EQ(create(dir, "x").error, 0);
  EXPECT_EQ(rename(kRootIno, "q", dir, "x", RENAME_EXCHANGE), EINVAL)
      << "exchanging a directory with something inside it";
}

// --- Attributes and xattrs --------------------------------------------------

TEST_F(MemfsTest, ChownClearsSetuidAndSetattrUpdatesCtime) {
  Created f = create(kRootIno, "f", O_RDWR, S_IFREG | 06755);
  ASSERT_EQ(getattr(f.ino).mode & 07777, 06755u);
  fuse_setattr_in sa{};
  sa.valid = FATTR_UID;
  sa.uid = 7;
  auto req = run(op(FUSE_SETATTR, f.ino).arg(sa));
  ASSERT_EQ(req->error(), 0);
  EXPECT_EQ(req->payload<fuse_attr_out>().attr.mode & 07777, 0755u);
  EXPECT_EQ(req->payload<fuse_attr_out>().attr.uid, 7u);
  // Explicit times; ctime moves to now.
  sa = {};
  sa.valid = FATTR_ATIME | FATTR_MTIME;
  sa.atime = 1000;
  sa.atimensec = 5;
  sa.mtime = 2000;
  sa.mtimensec = 999999999;
  req = run(op(FUSE_SETATTR, f.ino).arg(sa));
  const fuse_attr a = req->payload<fuse_attr_out>().attr;
  EXPECT_EQ(a.atime, 1000u);
  EXPECT_EQ(a.atimensec, 5u);
  EXPECT_EQ(a.mtime, 2000u);
  EXPECT_EQ(a.mtimensec, 999999999u);
  EXPECT_GT(a.ctime, 2000u);
  // Size on a directory.
  sa = {};
  sa.valid = FATTR_SIZE;
  EXPECT_EQ(status(op(FUSE_SETATTR, kRootIno).arg(sa)), EISDIR);
}

// FUSE_HANDLE_KILLPRIV_V2: the kernel tells memfs when to drop set-id bits
// instead of asking for security.capability before every write.
TEST_F(MemfsTest, KillprivV2DropsSetIdBitsAndCapabilities) {
  EXPECT_TRUE(init_flags & FUSE_HANDLE_KILLPRIV_V2);
  Created f = create(kRootIno, "f", O_RDWR, S_IFREG | 06755);
  auto mode = [&] { return getattr(f.ino).mode & 07777; };
  auto set_cap = [&] {
    fuse_setxattr_in in{};
    in.size = 4;
    return status(op(FUSE_SETXATTR, f.ino, 0, 0).arg(in).name("security.capability").raw("caps"));
  };
  auto has_cap = [&] {
    fuse_getxattr_in in{};
    in.size = 64;
    return status(op(FUSE_GETXATTR, f.ino).arg(in).name("security.capability")) == 0;
  };
  ASSERT_EQ(set_cap(), 0);
  // A write by a caller with CAP_FSETID: bits stay, the capability goes.
  ASSERT_EQ(write(f.ino, f.fh, 0, "a"), 1);
  EXPECT_EQ(mode(), 06755u);
  EXPECT_FALSE(has_cap()) << "every write drops security.capability";
  // A write flagged FUSE_WRITE_KILL_SUIDGID.
  fuse_write_in w{};
  w.fh = f.fh;
  w.size = 1;
  w.write_flags = FUSE_WRITE_KILL_SUIDGID;
  ASSERT_EQ(run(op(FUSE_WRITE, f.ino).arg(w).raw("b"))->error(), 0);
  EXPECT_EQ(mode(), 0755u);
  // Set-group-ID without group execute marks mandatory locking and stays.
  fuse_setattr_in sa{};
  sa.valid = FATTR_MODE;
  sa.mode = 06745;
  ASSERT_EQ(status(op(FUSE_SETATTR, f.ino).arg(sa)), 0);
  ASSERT_EQ(run(op(FUSE_WRITE, f.ino).arg(w).raw("c"))->error(), 0);
  EXPECT_EQ(mode(), 02745u);
  // Truncation flagged FATTR_KILL_SUIDGID.
  sa.mode = 06755;
  ASSERT_EQ(status(op(FUSE_SETATTR, f.ino).arg(sa)), 0);
  ASSERT_EQ(set_cap(), 0);
  sa = {};
  sa.valid = FATTR_SIZE | FATTR_KILL_SUIDGID;
  ASSERT_EQ(status(op(FUSE_SETATTR, f.ino).arg(sa)), 0);
  EXPECT_EQ(mode(), 0755u);
  EXPECT_FALSE(has_cap()) << "truncation drops security.capability";
  // OPEN with O_TRUNC: only when the kernel says so.
  sa = {};
  sa.valid = FATTR_MODE;
  sa.mode = 06755;
  ASSERT_EQ(status(op(FUSE_SETATTR, f.ino).arg(sa)), 0);
  fuse_open_in in{uint32_t(O_WRONLY | O_TRUNC), 0};
  auto req = run(op(FUSE_OPEN, f.ino).arg(in));
  ASSERT_EQ(req->error(), 0);
  EXPECT_EQ(mode(), 06755u) << "a caller with CAP_FSETID keeps the bits";
  in.open_flags = FUSE_OPEN_KILL_SUIDGID;
  req = run(op(FUSE_OPEN, f.ino).arg(in));
  ASSERT_EQ(req->error(), 0);
  EXPECT_EQ(mode(), 0755u);
  // CREATE of an existing name with O_TRUNC, flagged.
  ASSERT_EQ(status(op(FUSE_SETATTR, f.ino).arg(sa)), 0);
  fuse_create_in c{uint32_t(O_WRONLY | O_TRUNC), S_IFREG | 0644, 0, FUSE_OPEN_KILL_SUIDGID};
  ASSERT_EQ(run(op(FUSE_CREATE, kRootIno).arg(c).name("f"))->error(), 0);
  EXPECT_EQ(mode(), 0755u);
}

TEST_F(MemfsTest, XattrFlagsAndNamespaces) {
  Created f = create(kRootIno, "f");
  auto set = [&](const std::string& name, const std::string& value, uint32_t flags) {
    fuse_setxattr_in in{};
    in.size = uint32_t(value.size());
    in.flags = flags;
    return status(op(FUSE_SETXATTR, f.ino).arg(in).name(name).raw(value));
  };
  auto get = [&](const std::string& name, int* error) {
    fuse_getxattr_in in{};
    in.size = 65536;
    auto req = run(op(FUSE_GETXATTR, f.ino).arg(in).name(name));
    *error = -req->error();
    return std::string(reinterpret_cast<const char*>(req->reply_data()),
                       req->error() ? 0 : req->reply_len - sizeof(fuse_out_header));
  };
  int error = 0;
  EXPECT_EQ(set("user.a", "1", XATTR_REPLACE), ENODATA);
  EXPECT_EQ(set("user.a", "1", XATTR_CREATE), 0);
  EXPECT_EQ(set("user.a", "2", XATTR_CREATE), EEXIST);
  EXPECT_EQ(set("user.a", "3", XATTR_REPLACE), 0);
  EXPECT_EQ(get("user.a", &error), "3");
  get("user.none", &error);
  EXPECT_EQ(error, ENODATA);
  EXPECT_EQ(set("trusted.t", "t", 0), 0);
  EXPECT_EQ(set("other.x", "x", 0), EOPNOTSUPP);
  EXPECT_EQ(set("user.", "x", 0), EINVAL);
  EXPECT_EQ(set("user.empty", "", 0), 0);
  EXPECT_EQ(get("user.empty", &error), "");
  EXPECT_EQ(error, 0);
  fuse_getxattr_in in{};
  in.size = 4096;
  auto list = [&](uint32_t uid) {
    auto req = run(op(FUSE_LISTXATTR, f.ino, uid).arg(in));
    return std::string(reinterpret_cast<const char*>(req->reply_data()),
                       req->reply_len - sizeof(fuse_out_header));
  };
  EXPECT_EQ(list(0), std::string("trusted.t\0user.a\0user.empty\0", 28));
  EXPECT_EQ(list(1000), std::string("user.a\0user.empty\0", 18)) << "trusted.* is for root";
  EXPECT_EQ(status(op(FUSE_REMOVEXATTR, f.ino).name("user.a")), 0);
  EXPECT_EQ(status(op(FUSE_REMOVEXATTR, f.ino).name("user.a")), ENODATA);
}

TEST_F(MemfsTest, AccessChecksModeBits) {
  Created f = create(kRootIno, "f", O_RDWR, S_IFREG | 0640);
  auto access = [&](uint32_t mask, uint32_t uid, uint32_t gid) {
    fuse_access_in in{mask, 0};
    return status(op(FUSE_ACCESS, f.ino, uid, gid).arg(in));
  };
  EXPECT_EQ(access(R_OK | W_OK, 1000, 100), 0) << "owner";
  EXPECT_EQ(access(X_OK, 1000, 100), EACCES);
  EXPECT_EQ(access(R_OK, 2000, 100), 0) << "group";
  EXPECT_EQ(access(W_OK, 2000, 100), EACCES);
  EXPECT_EQ(access(R_OK, 2000, 200), EACCES) << "other";
  EXPECT_EQ(access(F_OK, 2000, 200), 0);
  EXPECT_EQ(access(R_OK | W_OK, 0, 0), 0) << "root";
  EXPECT_EQ(access(X_OK, 0, 0), EACCES) << "root executes only what someone may";
}

// --- Limits -----------------------------------------------------------------

class SmallMemfsTest : public MemfsTest {
 protected:
  SmallMemfsTest() : MemfsTest(MemfsOptions{64 * 1024, 8, 1.0, 1.0}) {}
};

TEST_F(SmallMemfsTest, CapacityAndInodeLimit) {
  Created f = create(kRootIno, "f");
  const std::string big(100 * 1024, 'x');
  const int64_t n = write(f.ino, f.fh, 0, big);
  EXPECT_GT(n, 0);
  EXPECT_LT(n, 64 * 1024) << "a write past capacity is short";
  EXPECT_EQ(write(f.ino, f.fh, uint64_t(n), "more"), -ENOSPC);
  auto req = run(op(FUSE_STATFS, kRootIno));
  EXPECT_EQ(req->payload<fuse_statfs_out>().st.bfree, 0u);
  EXPECT_EQ(req->payload<fuse_statfs_out>().st.blocks, 16u);
  fuse_setattr_in sa{};
  sa.valid = FATTR_SIZE;
  ASSERT_EQ(status(op(FUSE_SETATTR, f.ino).arg(sa)), 0);
  EXPECT_EQ(write(f.ino, f.fh, 0, "fits again"), 10);

  int error = 0;
  for (int i = 0; i < 6; ++i) ASSERT_NE(mkdir(kRootIno, "d" + std::to_string(i)), 0u);
  mkdir(kRootIno, "one too many", 0755, &error);
  EXPECT_EQ(error, ENOSPC) << "8 inodes: root, f and 6 directories";
  EXPECT_EQ(create(kRootIno, "g").error, ENOSPC);
}

// --- Locks ------------------------------------------------------------------

TEST_F(MemfsTest, PosixLocksConflictSplitAndReport) {
  Created f = create(kRootIno, "f");
  fuse_lk_in in = lk(f.fh, 1, 0, 99, F_WRLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 2, 50, 60, F_RDLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), EAGAIN);
  // Owner 1 unlocks the middle: [0,39] and [70,99] remain.
  in = lk(f.fh, 1, 40, 69, F_UNLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 2, 50, 60, F_RDLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 3, 65, 75, F_RDLCK);
  auto req = run(op(FUSE_GETLK, f.ino).arg(in));
  ASSERT_EQ(req->error(), 0);
  const fuse_file_lock got = req->payload<fuse_lk_out>().lk;
  EXPECT_EQ(got.type, uint32_t(F_WRLCK));
  EXPECT_EQ(got.start, 70u);
  EXPECT_EQ(got.end, 99u);
  EXPECT_EQ(got.pid, 1u);
  in = lk(f.fh, 3, 40, 49, F_WRLCK);
  req = run(op(FUSE_GETLK, f.ino).arg(in));
  EXPECT_EQ(req->payload<fuse_lk_out>().lk.type, uint32_t(F_UNLCK));
  // flush of owner 1 drops its locks.
  fuse_flush_in fl{};
  fl.fh = f.fh;
  fl.lock_owner = 1;
  EXPECT_EQ(status(op(FUSE_FLUSH, f.ino).arg(fl)), 0);
  in = lk(f.fh, 3, 0, 39, F_WRLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
}

TEST_F(MemfsTest, SetlkwWaitsWithoutBlockingAndIsGrantedOnUnlock) {
  Created f = create(kRootIno, "f");
  fuse_lk_in in = lk(f.fh, 1, 0, kOffsetMax, F_WRLCK);
  ASSERT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 2, 10, 20, F_WRLCK);
  auto waiting = start(op(FUSE_SETLKW, f.ino).arg(in));
  EXPECT_EQ(waiting->completions, 0) << "the worker is not blocked; the reply waits";
  in = lk(f.fh, 1, 0, kOffsetMax, F_UNLCK);
  ASSERT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  EXPECT_EQ(waiting->completions, 1) << "granted when the lock went away";
  EXPECT_EQ(waiting->error(), 0);
  in = lk(f.fh, 1, 15, 15, F_RDLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), EAGAIN) << "owner 2 now holds it";
}

TEST_F(MemfsTest, SetlkwInterruptedAnswersEINTR) {
  Created f = create(kRootIno, "f");
  fuse_lk_in in = lk(f.fh, 1, 0, 10, F_WRLCK);
  ASSERT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 2, 0, 10, F_RDLCK);
  RequestBuilder b = op(FUSE_SETLKW, f.ino).arg(in);
  const uint64_t unique = b.header().unique;
  auto waiting = start(b);
  ASSERT_EQ(waiting->completions, 0);
  fuse_interrupt_in intr{unique};
  TestRequest ireq(op(FUSE_INTERRUPT, 0).arg(intr).bytes());
  session.handle(ireq);
  EXPECT_EQ(waiting->completions, 1);
  EXPECT_EQ(waiting->error(), -EINTR);
  // An interrupt that overtakes its request (another worker) still applies.
  fuse_interrupt_in early{next_unique + 1};  // the SETLKW after this INTERRUPT
  TestRequest ereq(op(FUSE_INTERRUPT, 0).arg(early).bytes());
  session.handle(ereq);
  auto late = start(op(FUSE_SETLKW, f.ino).arg(in));
  EXPECT_EQ(late->completions, 1);
  EXPECT_EQ(late->error(), -EINTR);
}

TEST_F(MemfsTest, SetlkwThatWouldDeadlockIsEDEADLK) {
  Created f = create(kRootIno, "f");
  fuse_lk_in in = lk(f.fh, 1, 0, 0, F_WRLCK);
  ASSERT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 2, 1, 1, F_WRLCK);
  ASSERT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(f.fh, 1, 1, 1, F_WRLCK);
  auto waiting = start(op(FUSE_SETLKW, f.ino).arg(in));  // 1 waits for 2
  ASSERT_EQ(waiting->completions, 0);
  in = lk(f.fh, 2, 0, 0, F_WRLCK);
  EXPECT_EQ(status(op(FUSE_SETLKW, f.ino).arg(in)), EDEADLK) << "2 would wait for 1";
  // Releasing the file's handle cancels what waits through it.
  EXPECT_EQ(release(f.ino, f.fh), 0);
  EXPECT_EQ(waiting->completions, 1);
  EXPECT_EQ(waiting->error(), -EBADF);
}

TEST_F(MemfsTest, FlockLocksAreSeparateFromPosixAndDropOnRelease) {
  Created f = create(kRootIno, "f");
  const uint64_t fh2 = open(f.ino, O_RDWR);
  fuse_lk_in in = lk(f.fh, 11, 0, kOffsetMax, F_WRLCK, /*flock=*/true);
  ASSERT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0);
  in = lk(fh2, 22, 0, kOffsetMax, F_RDLCK, /*flock=*/true);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), EAGAIN);
  in = lk(fh2, 22, 0, 10, F_WRLCK);
  EXPECT_EQ(status(op(FUSE_SETLK, f.ino).arg(in)), 0) << "POSIX locks do not see flock ones";
  in = lk(fh2, 22, 0, kOffsetMax, F_RDLCK, /*flock=*/true);
  auto waiting = start(op(FUSE_SETLKW, f.ino).arg(in));
  ASSERT_EQ(waiting->completions, 0);
  EXPECT_EQ(release(f.ino, f.fh, /*lock_owner=*/11, /*flock_unlock=*/true), 0);
  EXPECT_EQ(waiting->completions, 1);
  EXPECT_EQ(waiting->error(), 0);
}

// --- Concurrency --------------------------------------------------------------

TEST_F(MemfsTest, WorkersChangingOneDirectoryConcurrently) {
  const uint64_t d = mkdir(kRootIno, "d");
  const uint64_t base = inodes();
  // Each worker's names are its own: every step must succeed, whatever the
  // others do to the directory at the same time.
  std::mutex mu;
  std::vector<std::string> failures;
  auto expect_ok = [&](const TestRequest& r, const char* what, const std::string& name) {
    if (r.error() == 0) return true;
    std::lock_guard lock(mu);
    failures.push_back(std::string(what) + " " + name + ": " + std::strerror(-r.error()));
    return false;
  };
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < 300; ++i) {
        const std::string name = "t" + std::to_string(t) + "_" + std::to_string(i % 7);
        RequestBuilder b(FUSE_CREATE, d, 1000000 + t * 10000 + i);
        fuse_create_in in{O_RDWR, S_IFREG | 0644, 0, 0};
        TestRequest cr(b.arg(in).name(name).bytes());
        session.handle(cr);
        if (!expect_ok(cr, "CREATE", name)) continue;
        const uint64_t ino = cr.payload<fuse_entry_out>().nodeid;
        const uint64_t fh =
            reinterpret_cast<const fuse_open_out*>(cr.reply_data() + sizeof(fuse_entry_out))->fh;
        fuse_write_in w{};
        w.fh = fh;
        w.size = 5;
        TestRequest wr(RequestBuilder(FUSE_WRITE, ino).arg(w).raw("hello").bytes());
        session.handle(wr);
        expect_ok(wr, "WRITE", name);
        fuse_rename2_in rn{kRootIno, 0, 0};
        TestRequest mv(RequestBuilder(FUSE_RENAME2, d).arg(rn).name(name).name(name).bytes());
        session.handle(mv);
        expect_ok(mv, "RENAME", name);
        fuse_read_in rd{};
        rd.size = 2048;
        TestRequest ls(RequestBuilder(FUSE_READDIRPLUS, d).arg(rd).bytes());
        session.handle(ls);  // no handle: EBADF, but it races with the rest
        TestRequest un(RequestBuilder(FUSE_UNLINK, kRootIno).name(name).bytes());
        session.handle(un);
        expect_ok(un, "UNLINK", name);
        fuse_release_in rl{};
        rl.fh = fh;
        TestRequest rel(RequestBuilder(FUSE_RELEASE, ino).arg(rl).bytes());
        session.handle(rel);
        expect_ok(rel, "RELEASE", name);
        fuse_forget_in fg{1};
        TestRequest fo(RequestBuilder(FUSE_FORGET, ino).arg(fg).bytes());
        session.handle(fo);
      }
    });
  }
  for (std::thread& w : workers) w.join();
  EXPECT_EQ(failures, std::vector<std::string>{});
  EXPECT_EQ(inodes(), base) << "every inode created was freed";
}

}  // namespace
}  // namespace dpfs
