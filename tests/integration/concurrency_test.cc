// Several processes on one mount at once: creating, writing, reading,
// renaming and unlinking in shared and private directories; writers on
// disjoint ranges of one file; O_APPEND writers; a mkdir/rmdir/rename race
// on the same names; fsx-style exercisers side by side. Every byte is
// verified afterwards, and the tree must be consistent (listings agree with
// stat, link counts with subdirectories).
#include <map>
#include <set>

#include "mount_fixture.h"

#ifndef DPFS_EXERCISER
#error "DPFS_EXERCISER must name the dpfs-exerciser binary"
#endif

namespace dpfs::itest {
namespace {

class ConcurrencyTest : public MountTest {
 protected:
  int timeout_seconds() const override { return 240; }
};

// A self-describing file body: "seed=<16 hex>\n" then pattern(seed).
std::string tagged(uint64_t seed, size_t size) {
  char head[32];
  snprintf(head, sizeof head, "seed=%016llx\n", static_cast<unsigned long long>(seed));
  return head + pattern(seed, 0, size);
}
// "" if `data` is a tagged body of some seed (returned in *seed).
std::string check_tagged(const std::string& data, uint64_t* seed = nullptr) {
  if (data.size() < 22 || data.compare(0, 5, "seed=") != 0) {
    return "no tag (" + std::to_string(data.size()) + " bytes)";
  }
  uint64_t s = strtoull(data.c_str() + 5, nullptr, 16);
  if (seed) *seed = s;
  return check_pattern(std::string_view(data).substr(22), s, 0);
}

size_t body_size(uint64_t seed) { return 100 + (seed * 7919) % 150000; }

TEST_P(ConcurrencyTest, ProcessesCreateWriteRenameUnlink) {
  constexpr int kWorkers = 6;
  constexpr int kRounds = 120;
  ASSERT_SYS(mkdir(cpath("shared"), 0777));
  for (int w = 0; w < kWorkers; ++w) ASSERT_SYS(mkdir(cpath("own" + std::to_string(w)), 0755));

  std::vector<std::unique_ptr<Child>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Child>([&, w](Child&) -> std::string {
      const std::string own = path("own" + std::to_string(w));
      const std::string shared = path("shared");
      const std::string W = std::to_string(w);
      for (int i = 0; i < kRounds; ++i) {
        const std::string I = std::to_string(i);
        // Private: write a temp file, rename it into place, read back an older one.
        uint64_t seed = uint64_t(w) * 1000000 + uint64_t(i);
        std::string body = tagged(seed, body_size(seed));
        if (int e = write_file(own + "/tmp", body)) return "write " + own + "/tmp: " + errname(e);
        if (::rename((own + "/tmp").c_str(), (own + "/f" + I).c_str()) != 0) {
          return "rename to f" + I + ": " + errname(errno);
        }
        if (i >= 5) {
          int j = i - 5 + (i % 3);
          auto got = read_file(own + "/f" + std::to_string(j));
          if (!got && j % 4 == 3 && errno == ENOENT) {
            // removed below on purpose
          } else if (!got) {
            return "read f" + std::to_string(j) + ": " + errname(errno);
          } else if (auto bad = check_tagged(*got); !bad.empty()) {
            return own + "/f" + std::to_string(j) + ": " + bad;
          }
        }
        if (i % 4 == 3 && ::unlink((own + "/f" + I).c_str()) != 0) {
          return "unlink f" + I + ": " + errname(errno);
        }
        // Shared: create, rename, remove every other; and all replace "common".
        std::string tmp = shared + "/new-" + W + "-" + I;
        if (int e = write_file(tmp, tagged(seed + 500000, 1000 + i))) {
          return "write " + tmp + ": " + errname(e);
        }
        std::string done = shared + "/done-" + W + "-" + I;
        if (::rename(tmp.c_str(), done.c_str()) != 0)
          return "rename " + tmp + ": " + errname(errno);
        if (i % 2 == 1 && ::unlink(done.c_str()) != 0) {
          return "unlink " + done + ": " + errname(errno);
        }
        std::string mine = shared + "/.common-" + W;
        if (int e = write_file(mine, tagged(seed + 700000, 20000 + 97 * w))) {
          return "write " + mine + ": " + errname(e);
        }
        if (::rename(mine.c_str(), (shared + "/common").c_str()) != 0) {
          return "rename over common: " + errname(errno);
        }
        auto common = read_file(shared + "/common");
        // Another worker may replace it between our rename and our open,
        // but whatever we read must be one whole version.
        if (!common) return "read common: " + errname(errno);
        if (auto bad = check_tagged(*common); !bad.empty()) return "common: " + bad;
      }
      return "";
    }));
  }
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(workers[w]->join(), "") << "worker " << w;

  // Verify everything, from the parent.
  for (int w = 0; w < kWorkers; ++w) {
    std::string own = path("own" + std::to_string(w));
    std::set<std::string> want;
    for (int i = 0; i < kRounds; ++i) {
      if (i % 4 != 3) want.insert("f" + std::to_string(i));
    }
    auto names = list_dir(own);
    EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), want) << own;
    EXPECT_EQ(names.size(), want.size()) << "duplicates in " << own;
    for (const auto& n : want) {
      auto got = read_file(own + "/" + n);
      ASSERT_TRUE(got) << own << "/" << n << ": " << errname(errno);
      uint64_t seed = 0;
      EXPECT_EQ(check_tagged(*got, &seed), "") << own << "/" << n;
      uint64_t want_seed = uint64_t(w) * 1000000 + std::stoull(n.substr(1));
      EXPECT_EQ(seed, want_seed) << own << "/" << n << " holds another file's data";
      EXPECT_EQ(got->size(), 22 + body_size(want_seed)) << own << "/" << n;
    }
  }
  std::set<std::string> want_shared{"common"};
  for (int w = 0; w < kWorkers; ++w) {
    for (int i = 0; i < kRounds; i += 2) {
      want_shared.insert("done-" + std::to_string(w) + "-" + std::to_string(i));
    }
  }
  auto names = list_dir(path("shared"));
  EXPECT_EQ(std::set<std::string>(names.begin(), names.end()), want_shared);
  EXPECT_EQ(names.size(), want_shared.size());
  for (const auto& n : want_shared) {
    auto got = read_file(path("shared/" + n));
    ASSERT_TRUE(got) << n << ": " << errname(errno);
    EXPECT_EQ(check_tagged(*got), "") << n;
  }
}

TEST_P(ConcurrencyTest, WritersOnDisjointRangesOfOneFile) {
  constexpr int kWorkers = 4;
  constexpr int kStripes = 48;
  constexpr size_t kStripe = 64 * 1024 + 13;  // not page aligned: neighbours share pages
  int fd = open(cpath("f"), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  close(fd);
  std::vector<std::unique_ptr<Child>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Child>([&, w](Child&) -> std::string {
      int wfd = ::open(path("f").c_str(), O_WRONLY);
      if (wfd < 0) return "open: " + errname(errno);
      for (int k = 0; k < kStripes; ++k) {
        off_t off = off_t((k * kWorkers + w) * kStripe);
        std::string data = pattern(uint64_t(w + 1), uint64_t(off), kStripe);
        if (int e = pwrite_all(wfd, data.data(), data.size(), off)) return "pwrite: " + errname(e);
      }
      ::close(wfd);
      return "";
    }));
  }
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(workers[w]->join(), "") << "writer " << w;
  auto got = read_file(path("f"));
  ASSERT_TRUE(got);
  ASSERT_EQ(got->size(), kWorkers * kStripes * kStripe);
  for (int s = 0; s < kWorkers * kStripes; ++s) {
    int w = s % kWorkers;
    size_t off = s * kStripe;
    std::string bad = check_pattern(std::string_view(*got).substr(off, kStripe), w + 1, off);
    if (!bad.empty()) {
      ADD_FAILURE() << "stripe " << s << " (writer " << w << "): " << bad;
      break;
    }
  }
}

TEST_P(ConcurrencyTest, AppendersDoNotOverwriteEachOther) {
  constexpr int kWorkers = 4;
  constexpr int kRecords = 400;
  constexpr size_t kRecord = 128;
  ASSERT_EQ(write_file(path("log"), ""), 0);
  std::vector<std::unique_ptr<Child>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Child>([&, w](Child&) -> std::string {
      int afd = ::open(path("log").c_str(), O_WRONLY | O_APPEND);
      if (afd < 0) return "open: " + errname(errno);
      for (int r = 0; r < kRecords; ++r) {
        std::string rec(kRecord, char('a' + w));
        snprintf(rec.data(), 16, "w%d r%05d", w, r);
        rec[kRecord - 1] = '\n';
        if (::write(afd, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) {
          return "write: " + errname(errno);
        }
      }
      ::close(afd);
      return "";
    }));
  }
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(workers[w]->join(), "") << "appender " << w;
  auto got = read_file(path("log"));
  ASSERT_TRUE(got);
  ASSERT_EQ(got->size(), kWorkers * kRecords * kRecord) << "appended records were lost";
  std::vector<int> next(kWorkers, 0);
  for (size_t off = 0; off < got->size(); off += kRecord) {
    std::string rec = got->substr(off, kRecord);
    int w = -1, r = -1;
    if (sscanf(rec.c_str(), "w%d r%d", &w, &r) != 2 || w < 0 || w >= kWorkers) {
      FAIL() << "garbled record at " << off << ": " << rec.substr(0, 20);
    }
    EXPECT_EQ(r, next[w]) << "writer " << w << "'s records out of order at " << off;
    next[w] = r + 1;
    EXPECT_EQ(rec.find_first_not_of(char('a' + w), 16), kRecord - 1)
        << "record at " << off << " is mixed with another";
  }
}

// mkdir, rmdir and rename of directories racing on the same few names.
// Only the errors the races allow may happen; the tree must end consistent.
TEST_P(ConcurrencyTest, MkdirRmdirRenameRace) {
  constexpr int kWorkers = 4;
  constexpr int kOps = 600;
  constexpr int kNames = 6;
  ASSERT_SYS(mkdir(cpath("race"), 0755));
  std::vector<std::unique_ptr<Child>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Child>([&, w](Child&) -> std::string {
      uint64_t x = 88172645463325252ull + uint64_t(w) * 977;
      auto rnd = [&](int n) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return int(x % uint64_t(n));
      };
      auto name = [&](int k) { return path("race/d" + std::to_string(k)); };
      for (int op = 0; op < kOps; ++op) {
        int k = rnd(kNames);
        int what = rnd(6);
        int rc = 0;
        std::set<int> allowed;
        std::string desc;
        switch (what) {
          case 0:
          case 1:
            rc = ::mkdir(name(k).c_str(), 0755);
            allowed = {EEXIST};
            desc = "mkdir d" + std::to_string(k);
            break;
          case 2:
            rc = ::rmdir(name(k).c_str());
            allowed = {ENOENT, ENOTEMPTY};
            desc = "rmdir d" + std::to_string(k);
            break;
          case 3:
            rc = ::mkdir((name(k) + "/sub").c_str(), 0755);
            allowed = {EEXIST, ENOENT};
            desc = "mkdir d" + std::to_string(k) + "/sub";
            break;
          case 4:
            rc = ::rmdir((name(k) + "/sub").c_str());
            allowed = {ENOENT};
            desc = "rmdir d" + std::to_string(k) + "/sub";
            break;
          case 5: {
            int j = rnd(kNames);
            rc = ::rename(name(k).c_str(), name(j).c_str());
            allowed = {ENOENT, ENOTEMPTY, EEXIST};
            desc = "rename d" + std::to_string(k) + " d" + std::to_string(j);
            break;
          }
        }
        if (rc != 0 && !allowed.count(errno)) return desc + ": " + errname(errno);
      }
      return "";
    }));
  }
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(workers[w]->join(), "") << "worker " << w;

  // The listing agrees with stat, and link counts with subdirectories.
  int err = 0;
  auto names = list_dir(path("race"), &err);
  EXPECT_EQ(err, 0) << errname(err);
  std::set<std::string> listed(names.begin(), names.end());
  EXPECT_EQ(listed.size(), names.size()) << "an entry is listed twice";
  for (int k = 0; k < kNames; ++k) {
    std::string n = "d" + std::to_string(k);
    struct stat st;
    bool exists = ::lstat(cpath("race/" + n), &st) == 0;
    EXPECT_EQ(exists, listed.count(n) == 1)
        << n << (exists ? " exists but is not listed" : " is listed but lstat fails: ")
        << (exists ? "" : errname(errno));
    if (!exists) continue;
    EXPECT_TRUE(S_ISDIR(st.st_mode)) << n;
    auto inner = list_dir(path("race/" + n));
    std::set<std::string> subs(inner.begin(), inner.end());
    EXPECT_TRUE(inner.empty() || (inner.size() == 1 && subs.count("sub")))
        << n << " holds unexpected entries";
    EXPECT_EQ(st.st_nlink, 2 + subs.size()) << n << ": nlink vs subdirectories";
    if (subs.count("sub")) {
      EXPECT_EQ(lst(path("race/" + n + "/sub")).st_nlink, 2u);
      EXPECT_EQ(lst(path("race/" + n + "/sub/..")).st_ino, st.st_ino) << n << "/sub/..";
    }
  }
  for (const auto& n : listed) {
    EXPECT_TRUE(n.size() == 2 && n[0] == 'd' && n[1] >= '0' && n[1] < '0' + kNames)
        << "unexpected entry " << n;
  }
  EXPECT_EQ(lst(path("race")).st_nlink, 2 + listed.size()) << "race: nlink vs subdirectories";
  // The tree can be removed completely.
  for (const auto& n : listed) {
    ::rmdir(cpath("race/" + n + "/sub"));
    EXPECT_SYS(rmdir(cpath("race/" + n)));
  }
  EXPECT_SYS(rmdir(cpath("race")));
}

// Same-name create/unlink race on files: O_CREAT|O_EXCL grants each name to
// exactly one process at a time.
TEST_P(ConcurrencyTest, ExclusiveCreateIsExclusive) {
  constexpr int kWorkers = 4;
  constexpr int kNames = 50;
  ASSERT_SYS(mkdir(cpath("x"), 0777));
  std::vector<std::unique_ptr<Child>> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.push_back(std::make_unique<Child>([&, w](Child&) -> std::string {
      std::string won;
      for (int k = 0; k < kNames; ++k) {
        std::string p = path("x/n" + std::to_string(k));
        int fd = ::open(p.c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) {
          if (errno != EEXIST) return "create " + p + ": " + errname(errno);
          continue;
        }
        std::string me = "winner " + std::to_string(w);
        if (int e = pwrite_all(fd, me.data(), me.size(), 0)) return "write: " + errname(e);
        ::close(fd);
      }
      return "";
    }));
  }
  for (int w = 0; w < kWorkers; ++w) EXPECT_EQ(workers[w]->join(), "") << "worker " << w;
  auto names = list_dir(path("x"));
  EXPECT_EQ(names.size(), size_t(kNames));
  for (int k = 0; k < kNames; ++k) {
    auto got = read_file(path("x/n" + std::to_string(k)));
    ASSERT_TRUE(got) << errname(errno);
    EXPECT_TRUE(got->size() == 8 && got->starts_with("winner "))
        << "n" << k << " holds '" << *got << "': two creators both won";
  }
}

TEST_P(ConcurrencyTest, ExercisersSideBySide) {
  if (::access(DPFS_EXERCISER, X_OK) != 0) {
    FAIL() << DPFS_EXERCISER << " is not built: " << errname(errno);
  }
  std::vector<std::unique_ptr<Child>> runs;
  for (int k = 0; k < 3; ++k) {
    runs.push_back(std::make_unique<Child>([&, k](Child&) -> std::string {
      RunResult r = run({DPFS_EXERCISER, "-N", "4000", "-S", std::to_string(1000 + k),
                         path("ex" + std::to_string(k))},
                        180s);
      if (r.exit_code() != 0) return "exerciser " + std::to_string(k) + ": " + r.describe();
      return "";
    }));
  }
  for (auto& r : runs) EXPECT_EQ(r->join(), "");
}

DPFS_CONFORMANCE_SUITE(ConcurrencyTest);

}  // namespace
}  // namespace dpfs::itest
