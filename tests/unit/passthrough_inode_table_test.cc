// passthrough's InodeTable on its own, over a scratch directory: node ids
// (hard links are one, forgotten ones answer ESTALE and are never reused),
// the bound on cached descriptors and the budget they are paid from, the
// clock that picks what to evict, and all of it from several threads at once.
#include "backend/passthrough/inode_table.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "util/fd_budget.h"

namespace dpfs::passthrough {
namespace {

namespace fs = std::filesystem;

class ScratchDir {
 public:
  ScratchDir() {
    char tmpl[] = "/tmp/dpfs-inode-table.XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~ScratchDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // A regular file `name`, made if missing.
  std::string make(const std::string& name) const {
    std::ofstream(file(name)) << name;
    return file(name);
  }
  UniqueFd root() const {
    return UniqueFd(::open(path_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  }

 private:
  std::string path_;
};

// add_lookup of the host file `path`, as LOOKUP does it: the node id, or 0
// and *error.
uint64_t lookup(InodeTable& table, const std::string& path, int* error = nullptr) {
  int ignored = 0;
  if (error == nullptr) error = &ignored;
  UniqueFd fd(::open(path.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  struct stat st {};
  if (!fd || ::fstat(fd.get(), &st) != 0) {
    *error = errno;
    return 0;
  }
  return table.add_lookup(std::move(fd), true, st, error);
}

ino_t host_ino(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// The host inode behind `ino`'s descriptor; 0 and *error when get() fails.
ino_t host_ino_of(InodeTable& table, uint64_t ino, int* error) {
  PathRef path = table.get(ino, error);
  if (!path) return 0;
  struct stat st {};
  if (::fstat(path->get(), &st) != 0) {
    *error = errno;
    return 0;
  }
  return st.st_ino;
}

class PassthroughInodeTable : public ::testing::Test {
 protected:
  void SetUp() override {
    InodeTable probe(dir_.root(), 16);
    if (!probe.has_handles()) GTEST_SKIP() << dir_.path() << " gives no file handles";
  }
  ScratchDir dir_;
};

TEST_F(PassthroughInodeTable, HardLinksAreOneNodeIdAndForgottenIdsAreNeverReused) {
  InodeTable table(dir_.root(), 16);
  const std::string a = dir_.make("a");
  ASSERT_EQ(::link(a.c_str(), dir_.file("b").c_str()), 0);
  const uint64_t ia = lookup(table, a);
  ASSERT_NE(ia, 0u);
  EXPECT_EQ(lookup(table, dir_.file("b")), ia) << "two names of one host file";
  EXPECT_EQ(table.size(), 2u);
  EXPECT_EQ(lookup(table, dir_.path()), kRootIno) << "the root, uncounted";

  table.forget(ia, 1);
  int error = 0;
  EXPECT_EQ(host_ino_of(table, ia, &error), host_ino(a)) << "one lookup left";
  table.forget(ia, 1);
  EXPECT_EQ(host_ino_of(table, ia, &error), 0u);
  EXPECT_EQ(error, ESTALE);
  EXPECT_EQ(table.size(), 1u);
  EXPECT_EQ(table.cached_fds(), 1u);

  const uint64_t again = lookup(table, a);
  EXPECT_GT(again, ia) << "a new node id, never the forgotten one";
  EXPECT_EQ(host_ino_of(table, 12345, &error), 0u);
  EXPECT_EQ(error, ESTALE) << "an id never given";
}

TEST_F(PassthroughInodeTable, RootIsNeverForgottenNorEvicted) {
  InodeTable table(dir_.root(), 1);  // no place but the root's
  const uint64_t f = lookup(table, dir_.make("f"));
  ASSERT_NE(f, 0u);
  EXPECT_EQ(table.cached_fds(), 1u) << "f starts out evicted";
  int error = 0;
  EXPECT_EQ(host_ino_of(table, f, &error), host_ino(dir_.file("f"))) << "reopened by handle";
  EXPECT_EQ(table.cached_fds(), 1u);
  table.forget(kRootIno, 1);
  table.forget_all();
  EXPECT_EQ(host_ino_of(table, kRootIno, &error), host_ino(dir_.path())) << strerror(error);
  EXPECT_EQ(host_ino_of(table, f, &error), 0u);
  EXPECT_EQ(error, ESTALE);
  EXPECT_EQ(table.size(), 1u);
}

TEST_F(PassthroughInodeTable, BoundHoldsAndASpentBudgetIsEmfile) {
  util::FdBudget budget(4);
  InodeTable table(dir_.root(), 3, &budget);  // the root and two more
  std::vector<uint64_t> inos;
  for (int i = 0; i < 10; ++i) {
    inos.push_back(lookup(table, dir_.make("f" + std::to_string(i))));
    ASSERT_NE(inos.back(), 0u);
    EXPECT_LE(table.cached_fds(), 3u);
  }
  EXPECT_EQ(budget.used(), 2u) << "the root is not paid for";
  // Open files take what is left, and what cached descriptors held.
  std::vector<util::FdCharge> open;
  for (util::FdCharge charge; table.take_fd(&charge);) open.push_back(std::move(charge));
  EXPECT_EQ(open.size(), 4u);
  EXPECT_EQ(table.cached_fds(), 1u) << "evicted to make room";
  int error = 0;
  EXPECT_EQ(host_ino_of(table, inos[0], &error), 0u);
  EXPECT_EQ(error, EMFILE) << "nothing left to evict";
  open.pop_back();
  EXPECT_EQ(host_ino_of(table, inos[0], &error), host_ino(dir_.file("f0")));
}

// CLOCK: a descriptor used between evictions keeps its place while files
// looked up once (a scan) go through the others.
TEST_F(PassthroughInodeTable, UsedDescriptorOutlivesAScan) {
  InodeTable table(dir_.root(), 4);
  const uint64_t hot = lookup(table, dir_.make("hot"));
  int error = 0;
  const PathRef first = table.get(hot, &error);
  ASSERT_NE(first, nullptr);
  for (int i = 0; i < 100; ++i) {
    ASSERT_NE(lookup(table, dir_.make("scan" + std::to_string(i))), 0u);
    ASSERT_EQ(table.get(hot, &error), first) << "evicted and reopened after " << i << " lookups";
    EXPECT_LE(table.cached_fds(), 4u);
  }
}

// What went wrong in the threads, for one report at the end.
class Failures {
 public:
  void add(std::string what) {
    count_.fetch_add(1);
    std::lock_guard lock(mu_);
    if (first_.size() < 10) first_.push_back(std::move(what));
  }
  int count() const { return count_.load(); }
  std::string report() {
    std::lock_guard lock(mu_);
    std::string s;
    for (const auto& f : first_) s += "\n  " + f;
    return s;
  }

 private:
  std::atomic<int> count_{0};
  std::mutex mu_;
  std::vector<std::string> first_;
};

// Several threads look up, use and forget the same few files (two names for
// half of them) while another takes descriptors from the budget, and a
// bound of 4 evicts all the time. At every step: the bound holds, a node id
// a thread holds a lookup of is alive and is its file (its descriptor may
// only be refused for a spent budget), two names of one file are one id; at
// the end nothing is left and no id served two files. Each of these breaks
// if forget() stops rechecking the count under both locks (ESTALE for a
// held id), takes the locks out of order (deadlock), or the bound is
// checked and then taken in two steps (5 descriptors cached).
TEST_F(PassthroughInodeTable, ThreadsRacingLookupsGetsForgetsAndEvictionsKeepTheInvariants) {
  constexpr int kFiles = 6;
  constexpr size_t kMaxFds = 4;
  constexpr int kWorkers = 3;
  std::vector<std::string> names;
  std::vector<int> twin;  // the other name of the same file, or -1
  for (int i = 0; i < kFiles; ++i) {
    const int first = int(names.size());
    names.push_back(dir_.make("f" + std::to_string(i)));
    twin.push_back(-1);
    if (i % 2 == 0) {
      names.push_back(dir_.file("link" + std::to_string(i)));
      ASSERT_EQ(::link(names[size_t(first)].c_str(), names.back().c_str()), 0);
      twin[size_t(first)] = first + 1;
      twin.push_back(first);
    }
  }
  std::vector<ino_t> host;
  for (const auto& n : names) host.push_back(host_ino(n));

  // The opener below holds up to kOpen of kBudget descriptors, so that
  // with the cached ones the budget runs out: take_fd() evicts to make room,
  // and a get() now and then finds it spent (EMFILE, as it should then).
  constexpr size_t kBudget = 24;
  constexpr size_t kOpen = kBudget - 2;
  util::FdBudget budget(kBudget);
  InodeTable table(dir_.root(), kMaxFds, &budget);
  Failures failures;
  std::mutex seen_mu;
  std::map<uint64_t, ino_t> seen;  // every node id given, and its file
  std::atomic<bool> stop{false};
  std::atomic<int> gets{0};
  std::atomic<int> spent{0};  // gets that found the budget spent

  auto check_bound = [&] {
    if (const size_t n = table.cached_fds(); n > kMaxFds) {
      failures.add(std::to_string(n) + " descriptors cached, bound " + std::to_string(kMaxFds));
    }
  };
  auto worker = [&](unsigned seed) {
    std::mt19937 rng(seed);
    std::map<uint64_t, uint64_t> held;  // node id -> lookups this thread holds
    std::map<uint64_t, ino_t> mine;     // node id -> its file, as this thread saw it
    auto record = [&](uint64_t ino, size_t name) {
      auto [it, added] = mine.emplace(ino, host[name]);
      if (it->second != host[name]) {
        failures.add("node id " + std::to_string(ino) + " given for two files");
      }
      ++held[ino];
    };
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(1500);
    for (int i = 0; i < 200000 && (i < 5000 || std::chrono::steady_clock::now() < deadline); ++i) {
      const size_t name = rng() % names.size();
      const unsigned what = rng() % 4;
      if (what <= 1 || held.empty()) {
        int error = 0;
        const uint64_t ino = lookup(table, names[name], &error);
        if (ino == 0) {
          failures.add("lookup " + names[name] + ": " + strerror(error));
          continue;
        }
        record(ino, name);
        if (twin[name] >= 0) {
          // This thread holds `ino`: the other name must lead to it.
          const uint64_t other = lookup(table, names[size_t(twin[name])], &error);
          if (other != ino) {
            failures.add("hard link is node " + std::to_string(other) + ", not " +
                         std::to_string(ino) + " (" + strerror(error) + ")");
          }
          if (other != 0) record(other, size_t(twin[name]));
        }
      } else {
        auto it = held.begin();
        std::advance(it, rng() % held.size());
        if (what == 2) {
          int error = 0;
          const ino_t got = host_ino_of(table, it->first, &error);
          gets.fetch_add(1);
          if (got == 0 && error == EMFILE) {
            spent.fetch_add(1);
          } else if (got != mine[it->first]) {
            failures.add("get of held node " + std::to_string(it->first) + ": " +
                         (got == 0 ? strerror(error) : "another file"));
          }
        } else {
          // All of them as often as not (as the kernel forgets), so that
          // files often drop to no lookups while others look them up.
          const uint64_t n = rng() % 2 ? it->second : 1 + rng() % it->second;
          table.forget(it->first, n);
          it->second -= n;
          if (it->second == 0) held.erase(it);
        }
      }
      check_bound();
    }
    for (const auto& [ino, n] : held) table.forget(ino, n);
    std::lock_guard lock(seen_mu);
    for (const auto& [ino, file] : mine) {
      if (auto [it, added] = seen.emplace(ino, file); it->second != file) {
        failures.add("node id " + std::to_string(ino) + " reused for another file");
      }
    }
  };

  std::atomic<int> finished{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < kWorkers; ++w) {
    threads.emplace_back([&, w] {
      worker(unsigned(w) + 1);
      finished.fetch_add(1);
    });
  }
  // Open files come and go: take_fd() evicts when the budget is short.
  std::thread opener([&] {
    std::vector<util::FdCharge> open;
    while (!stop.load()) {
      util::FdCharge charge;
      if (table.take_fd(&charge)) open.push_back(std::move(charge));
      if (open.size() >= kOpen) open.clear();
      check_bound();
    }
  });
  // A lock-order mistake deadlocks: say so rather than hang the suite.
  const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (finished.load() < kWorkers) {
    if (std::chrono::steady_clock::now() > limit) {
      std::fprintf(stderr, "%s: threads still running after 60 s: deadlock?\n",
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
      std::abort();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop = true;
  opener.join();
  for (auto& t : threads) t.join();

  EXPECT_EQ(failures.count(), 0) << failures.report();
  EXPECT_EQ(table.size(), 1u) << "every lookup forgotten: the root alone";
  EXPECT_EQ(table.cached_fds(), 1u);
  EXPECT_EQ(budget.used(), 0u) << "every descriptor given back";
  EXPECT_FALSE(seen.empty());
  EXPECT_LT(spent.load() * 10, gets.load()) << "most gets find a descriptor to spare";
}

}  // namespace
}  // namespace dpfs::passthrough
