// Directory reading through the kernel: every entry exactly once in large
// directories, d_type and d_ino, telldir/seekdir, readdir while entries are
// removed (by this process and by another), READDIRPLUS-style stat of all
// entries, and fsyncdir.
#include <map>
#include <set>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class ReaddirTest : public MountTest {};

struct Listed {
  std::string name;
  ino_t ino;
  unsigned char type;
};

// All entries (with "." and ".."), in order; errors are test failures.
std::vector<Listed> read_all(const std::string& dir) {
  std::vector<Listed> out;
  DIR* d = opendir(dir.c_str());
  if (!d) {
    ADD_FAILURE() << "opendir " << dir << ": " << errname(errno);
    return out;
  }
  errno = 0;
  while (dirent* de = readdir(d)) out.push_back({de->d_name, de->d_ino, de->d_type});
  if (errno) ADD_FAILURE() << "readdir " << dir << ": " << errname(errno);
  closedir(d);
  return out;
}

// "" if every name of `want` is listed exactly once and nothing else is.
std::string compare_listing(const std::vector<Listed>& got, std::set<std::string> want) {
  std::map<std::string, int> seen;
  for (const auto& e : got) seen[e.name]++;
  std::ostringstream o;
  int shown = 0;
  for (const auto& [name, n] : seen) {
    if (n > 1 && shown++ < 10) o << "listed " << n << " times: " << name << "\n";
    if (!want.count(name) && shown++ < 10) o << "unexpected entry: " << name << "\n";
  }
  for (const auto& name : want) {
    if (!seen.count(name) && shown++ < 10) o << "missing entry: " << name << "\n";
  }
  return o.str();
}

std::string fname(int i) {
  char buf[32];
  snprintf(buf, sizeof buf, "file-%05d", i);
  return buf;
}

TEST_P(ReaddirTest, EmptyDirectoryHasDotAndDotDot) {
  ASSERT_SYS(mkdir(cpath("e"), 0755));
  auto got = read_all(path("e"));
  EXPECT_EQ(compare_listing(got, {".", ".."}), "");
  for (const auto& e : got) {
    if (e.name == ".") {
      EXPECT_EQ(e.ino, lst(path("e")).st_ino);
    }
    EXPECT_EQ(e.type, DT_DIR) << e.name;
  }
}

TEST_P(ReaddirTest, FiveThousandEntriesExactlyOnceWithTypes) {
  constexpr int kFiles = 5000;
  std::set<std::string> want{".", ".."};
  std::map<std::string, unsigned char> types;
  for (int i = 0; i < kFiles; ++i) {
    std::string n = fname(i);
    int fd = open(cpath("big/" + n), O_CREAT | O_WRONLY, 0644);
    if (fd < 0 && errno == ENOENT && i == 0) {
      ASSERT_SYS(mkdir(cpath("big"), 0755));
      fd = open(cpath("big/" + n), O_CREAT | O_WRONLY, 0644);
    }
    ASSERT_SYS(fd) << n;
    close(fd);
    want.insert(n);
    types[n] = DT_REG;
  }
  for (int i = 0; i < 20; ++i) {
    std::string d = "dir-" + std::to_string(i), l = "link-" + std::to_string(i),
                p = "fifo-" + std::to_string(i);
    ASSERT_SYS(mkdir(cpath("big/" + d), 0755));
    ASSERT_SYS(symlink("target", cpath("big/" + l)));
    ASSERT_SYS(mkfifo(cpath("big/" + p), 0644));
    want.insert({d, l, p});
    types[d] = DT_DIR;
    types[l] = DT_LNK;
    types[p] = DT_FIFO;
  }
  ASSERT_SYS(mknod(cpath("big/chr"), S_IFCHR | 0600, makedev(1, 3)));
  ASSERT_SYS(mknod(cpath("big/sock"), S_IFSOCK | 0600, 0));
  want.insert({"chr", "sock"});
  types["chr"] = DT_CHR;
  types["sock"] = DT_SOCK;

  auto got = read_all(path("big"));
  EXPECT_EQ(got.size(), want.size());
  EXPECT_EQ(compare_listing(got, want), "");
  int bad_types = 0, bad_inos = 0;
  for (const auto& e : got) {
    if (e.name == "." || e.name == "..") continue;
    auto it = types.find(e.name);
    if (it == types.end()) continue;
    if (e.type != it->second && bad_types++ < 5) {
      ADD_FAILURE() << e.name << ": d_type " << int(e.type) << ", expected " << int(it->second);
    }
    struct stat st;
    if (lstat(cpath("big/" + e.name), &st) != 0) {
      ADD_FAILURE() << "lstat " << e.name << ": " << errname(errno);
    } else if (st.st_ino != e.ino && bad_inos++ < 5) {
      ADD_FAILURE() << e.name << ": d_ino " << e.ino << " but st_ino " << st.st_ino;
    }
  }
  // Reading it again gives the same set (no state left behind by the first pass).
  EXPECT_EQ(compare_listing(read_all(path("big")), want), "");
}

TEST_P(ReaddirTest, LongNamesAcrossManyBuffers) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  std::set<std::string> want{".", ".."};
  for (int i = 0; i < 400; ++i) {
    std::string n = fname(i) + std::string(190 + i % 56, "abcdefghij"[i % 10]);  // 200..255
    ASSERT_EQ(write_file(path("d/" + n), ""), 0) << n.size();
    want.insert(n);
  }
  EXPECT_EQ(compare_listing(read_all(path("d")), want), "");
}

TEST_P(ReaddirTest, TelldirSeekdirRewinddir) {
  constexpr int kFiles = 3000;
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  for (int i = 0; i < kFiles; ++i) {
    int fd = open(cpath("d/" + fname(i)), O_CREAT | O_WRONLY, 0644);
    ASSERT_SYS(fd);
    close(fd);
  }
  DIR* d = opendir(cpath("d"));
  ASSERT_NE(d, nullptr) << errname(errno);
  std::string first = readdir(d)->d_name;
  // Remember positions at several points; entries after each must repeat.
  std::vector<std::pair<long, std::vector<std::string>>> marks;
  int read_count = 1;
  for (int stop : {1, 500, 1234, 2999}) {
    while (read_count < stop) {
      ASSERT_NE(readdir(d), nullptr) << "entry " << read_count;
      ++read_count;
    }
    long pos = telldir(d);
    ASSERT_NE(pos, -1) << errname(errno);
    std::vector<std::string> next;
    for (int k = 0; k < 5; ++k) {
      dirent* de = readdir(d);
      if (!de) break;
      next.push_back(de->d_name);
      ++read_count;
    }
    marks.push_back({pos, next});
  }
  for (auto it = marks.rbegin(); it != marks.rend(); ++it) {
    seekdir(d, it->first);
    std::vector<std::string> again;
    for (size_t k = 0; k < it->second.size(); ++k) {
      dirent* de = readdir(d);
      if (!de) break;
      again.push_back(de->d_name);
    }
    EXPECT_EQ(again, it->second) << "after seekdir to " << it->first;
  }
  rewinddir(d);
  dirent* de = readdir(d);
  ASSERT_NE(de, nullptr);
  EXPECT_EQ(first, de->d_name) << "rewinddir starts over";
  // After rewind, a full pass still lists everything once.
  std::set<std::string> seen{de->d_name};
  int n = 1;
  while ((de = readdir(d))) {
    EXPECT_TRUE(seen.insert(de->d_name).second) << "listed twice: " << de->d_name;
    ++n;
  }
  EXPECT_EQ(n, kFiles + 2);
  closedir(d);
}

// The `rm -rf` pattern: read an entry, remove it, read on. Every entry must
// be seen once (a backend whose offsets are indexes into a shifting list
// skips entries here).
TEST_P(ReaddirTest, UnlinkEachEntryWhileReading) {
  constexpr int kFiles = 2000;
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  std::set<std::string> want{".", ".."};
  for (int i = 0; i < kFiles; ++i) {
    ASSERT_EQ(write_file(path("d/" + fname(i)), ""), 0);
    want.insert(fname(i));
  }
  DIR* d = opendir(cpath("d"));
  ASSERT_NE(d, nullptr);
  std::vector<Listed> got;
  while (dirent* de = readdir(d)) {
    got.push_back({de->d_name, de->d_ino, de->d_type});
    std::string n = de->d_name;
    if (n != "." && n != "..") {
      EXPECT_SYS(unlink(cpath("d/" + n)));
    }
  }
  closedir(d);
  EXPECT_EQ(compare_listing(got, want), "");
  EXPECT_TRUE(list_dir(path("d")).empty()) << list_dir(path("d")).size() << " entries left";
  EXPECT_SYS(rmdir(cpath("d")));
}

// Another process removes half of the entries while this one reads: no
// crash, no entry twice, and every entry not removed is listed (POSIX: only
// entries added or removed meanwhile may be missed).
TEST_P(ReaddirTest, ReadWhileAnotherProcessUnlinks) {
  constexpr int kFiles = 3000;
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kFiles; ++i) {
      int fd = open(cpath("d/" + fname(i)), O_CREAT | O_WRONLY, 0644);
      ASSERT_SYS(fd);
      close(fd);
    }
    Child unlinker([&](Child& self) -> std::string {
      self.signal();
      // Odd entries, from both ends towards the middle.
      for (int lo = 1, hi = kFiles - 1; lo <= hi; lo += 2, hi -= 2) {
        for (int i : {lo, hi}) {
          if (::unlink(path("d/" + fname(i)).c_str()) != 0 && errno != ENOENT) {
            return "unlink " + fname(i) + ": " + errname(errno);
          }
        }
      }
      return "";
    });
    ASSERT_TRUE(unlinker.wait()) << "the unlinking child did not start";
    std::vector<Listed> got = read_all(path("d"));
    EXPECT_EQ(unlinker.join(), "");
    std::map<std::string, int> seen;
    for (const auto& e : got) seen[e.name]++;
    int problems = 0;
    for (const auto& [name, n] : seen) {
      if (n > 1 && problems++ < 10)
        ADD_FAILURE() << "round " << round << ": listed twice: " << name;
    }
    for (int i = 0; i < kFiles; i += 2) {
      if (!seen.count(fname(i)) && problems++ < 10) {
        ADD_FAILURE() << "round " << round << ": entry never removed is missing: " << fname(i);
      }
    }
    // Afterwards the listing is exactly the even entries.
    std::set<std::string> evens{".", ".."};
    for (int i = 0; i < kFiles; i += 2) evens.insert(fname(i));
    EXPECT_EQ(compare_listing(read_all(path("d")), evens), "");
    for (int i = 0; i < kFiles; i += 2) ASSERT_SYS(unlink(cpath("d/" + fname(i))));
  }
}

// `ls -l`: readdir, then stat every entry; types and sizes agree.
TEST_P(ReaddirTest, StatEveryEntryAfterReaddir) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  constexpr int kFiles = 400;
  for (int i = 0; i < kFiles; ++i) {
    ASSERT_EQ(write_file(path("d/" + fname(i)), std::string(static_cast<size_t>(i * 7), 'x'),
                         0600 | (i % 8)),
              0);
  }
  ASSERT_SYS(mkdir(cpath("d/sub"), 0700));
  ASSERT_SYS(symlink("file-00001", cpath("d/ln")));
  std::vector<Listed> got = read_all(path("d"));
  EXPECT_EQ(got.size(), static_cast<size_t>(kFiles + 4));
  int checked = 0;
  for (const auto& e : got) {
    if (e.name == "." || e.name == "..") continue;
    struct stat st;
    ASSERT_SYS(fstatat(AT_FDCWD, cpath("d/" + e.name), &st, AT_SYMLINK_NOFOLLOW)) << e.name;
    EXPECT_EQ(IFTODT(st.st_mode), e.type) << e.name;
    EXPECT_EQ(st.st_ino, e.ino) << e.name;
    if (e.name.starts_with("file-")) {
      int i = atoi(e.name.c_str() + 5);
      EXPECT_EQ(st.st_size, i * 7) << e.name;
      EXPECT_EQ(st.st_mode, S_IFREG | 0600u | static_cast<unsigned>(i % 8)) << e.name;
      EXPECT_EQ(st.st_nlink, 1u) << e.name;
      ++checked;
    } else if (e.name == "ln") {
      EXPECT_EQ(st.st_size, 10);
    }
  }
  EXPECT_EQ(checked, kFiles);
  // And a real `ls -l` agrees on the count.
  RunResult r = run({"/bin/sh", "-c", "ls -la '" + path("d") + "' | wc -l"});
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_EQ(atoi(r.out.c_str()), kFiles + 4 + 1) << r.describe();  // + the "total" line
}

TEST_P(ReaddirTest, RemovedDirectoryReadsEmpty) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  DIR* d = opendir(cpath("d"));
  ASSERT_NE(d, nullptr);
  ASSERT_SYS(rmdir(cpath("d")));
  errno = 0;
  int n = 0;
  while (readdir(d)) ++n;
  EXPECT_EQ(errno, 0) << errname(errno);
  EXPECT_EQ(n, 0) << "a removed directory lists nothing, not even '.'";
  closedir(d);
}

TEST_P(ReaddirTest, ReaddirPermissions) {
  ASSERT_SYS(mkdir(cpath("d"), 0711));
  ASSERT_SYS(chmod(cpath("d"), 0711));
  ASSERT_EQ(write_file(path("d/f"), "x", 0644), 0);
  EXPECT_ERRNO(EACCES, as_user(kUser1, [&] { return open(cpath("d"), O_RDONLY | O_DIRECTORY); }))
      << "listing needs read permission";
  EXPECT_SYS(as_user(kUser1, [&] { return open(cpath("d/f"), O_RDONLY); }))
      << "search permission alone reaches known names";
}

TEST_P(ReaddirTest, FsyncDir) {
  ASSERT_SYS(mkdir(cpath("d"), 0755));
  ASSERT_EQ(write_file(path("d/f"), "x"), 0);
  int fd = open(cpath("d"), O_RDONLY | O_DIRECTORY);
  ASSERT_SYS(fd);
  EXPECT_SYS(fsync(fd));
  EXPECT_SYS(fdatasync(fd));
  EXPECT_EQ(close(fd), 0);
}

DPFS_CONFORMANCE_SUITE(ReaddirTest);

}  // namespace
}  // namespace dpfs::itest
