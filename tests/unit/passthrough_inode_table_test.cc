// passthrough's InodeTable on its own, over a scratch directory: node ids
// (hard links are one, forgotten ones answer ESTALE and are never reused),
// the bound on cached descriptors and the budget they are paid from, and
// what is evicted first.
#include "backend/passthrough/inode_table.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
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

// A descriptor used between evictions keeps its place while files
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

}  // namespace
}  // namespace dpfs::passthrough
