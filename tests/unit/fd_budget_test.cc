// Descriptor budgets: util::FdBudget, how the daemon divides its limit
// between devices (daemon/fd_limits.h), and two passthrough devices side by
// side, one of which opens everything it can: it gets EMFILE, its neighbour
// keeps opening.
#include "util/fd_budget.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "backend/passthrough/passthrough.h"
#include "daemon/fd_limits.h"
#include "fuse/session.h"
#include "session_harness.h"

namespace dpfs {
namespace {

using testing::init_request;
using testing::RequestBuilder;
using testing::TestRequest;
namespace fs = std::filesystem;

TEST(FdBudget, GrantsUpToItsLimitAndTakesBack) {
  util::FdBudget budget(3);
  EXPECT_TRUE(budget.try_take());
  EXPECT_TRUE(budget.try_take(2));
  EXPECT_FALSE(budget.try_take());
  EXPECT_EQ(budget.used(), 3u);
  {
    util::FdCharge charge(&budget);  // as if taken: given back when it goes
  }
  EXPECT_EQ(budget.used(), 2u);
  EXPECT_TRUE(budget.try_take());
  EXPECT_FALSE(budget.try_take(1));
  util::FdBudget unlimited;
  for (int i = 0; i < 1000; ++i) ASSERT_TRUE(unlimited.try_take());
}

TEST(FdLimits, DividesWhatTheReserveLeaves) {
  using daemon::FdPlan;
  // Two endpoints, both with a budget: 256 + 2 * 256 kept.
  FdPlan p = daemon::divide_fd_limit(20000, 0, 2, 2);
  EXPECT_EQ(p.reserve, 768u);
  EXPECT_EQ(p.per_device, (20000u - 768u) / 2);
  // Only budgeted devices share; the others still count in the reserve.
  p = daemon::divide_fd_limit(20000, 0, 3, 1);
  EXPECT_EQ(p.reserve, 1024u);
  EXPECT_EQ(p.per_device, 20000u - 1024u);
  p = daemon::divide_fd_limit(20000, 0, 1, 0);
  EXPECT_EQ(p.per_device, 0u);
  // A configured share that fits is taken as it is.
  EXPECT_EQ(daemon::divide_fd_limit(20000, 5000, 2, 2).per_device, 5000u);
  // One that does not, or a limit too low for any, is one clear line.
  EXPECT_THROW(daemon::divide_fd_limit(20000, 10000, 2, 2), std::invalid_argument);
  EXPECT_THROW(daemon::divide_fd_limit(790, 0, 2, 2), std::invalid_argument);
}

// One tenant: a directory served by passthrough with a budget, and its session.
class Tenant {
 public:
  Tenant(const std::string& dir, size_t budget)
      : fs_(options(dir, budget)), session_(fs_, fuse::SessionOptions{}) {
    TestRequest req(init_request());
    session_.handle(req);
    EXPECT_EQ(req.error(), 0);
  }
  static PassthroughOptions options(const std::string& dir, size_t budget) {
    PassthroughOptions o;
    o.root = dir;
    o.io_uring = UringMode::kOff;  // replies inside handle()
    o.fd_budget = budget;
    return o;
  }
  // CREATE of `name`, kept open: 0 or the errno.
  // Requests as root, who may create in the scratch directories.
  RequestBuilder op(uint32_t opcode, uint64_t nodeid) {
    RequestBuilder b(opcode, nodeid, unique_++);
    b.header().uid = 0;
    b.header().gid = 0;
    return b;
  }
  int create(const std::string& name) {
    fuse_create_in in{O_RDWR, S_IFREG | 0644, 0, 0};
    TestRequest req(op(FUSE_CREATE, kRootIno).arg(in).name(name).bytes());
    session_.handle(req);
    struct CreateOut {
      fuse_entry_out entry;
      fuse_open_out open;
    };
    if (req.error() == 0) {
      handles_.push_back({req.payload<CreateOut>().entry.nodeid, req.payload<CreateOut>().open.fh});
    }
    return -req.error();
  }
  // LOOKUP then OPEN of an existing `name`, kept open: 0 or the errno.
  int open(const std::string& name) {
    TestRequest look(op(FUSE_LOOKUP, kRootIno).name(name).bytes());
    session_.handle(look);
    if (look.error() != 0) return -look.error();
    fuse_open_in in{O_RDONLY, 0};
    const uint64_t ino = look.payload<fuse_entry_out>().nodeid;
    TestRequest req(op(FUSE_OPEN, ino).arg(in).bytes());
    session_.handle(req);
    if (req.error() == 0) handles_.push_back({ino, req.payload<fuse_open_out>().fh});
    return -req.error();
  }
  int release_one() {
    const auto [ino, fh] = handles_.back();
    handles_.pop_back();
    fuse_release_in in{};
    in.fh = fh;
    TestRequest req(op(FUSE_RELEASE, ino).arg(in).bytes());
    session_.handle(req);
    return -req.error();
  }
  size_t open_files() const { return fs_.open_files(); }
  size_t cached_fds() const { return fs_.cached_fds(); }

 private:
  Passthrough fs_;
  fuse::FuseSession session_;
  uint64_t unique_ = 10;
  std::vector<std::pair<uint64_t, uint64_t>> handles_;  // node id, file handle
};

class TwoTenants : public ::testing::Test {
 protected:
  TwoTenants() {
    char tmpl[] = "/tmp/dpfs-fd-budget.XXXXXX";
    base_ = ::mkdtemp(tmpl);
    fs::create_directories(base_ + "/a");
    fs::create_directories(base_ + "/b");
    for (int i = 0; i < 8; ++i) std::ofstream(base_ + "/b/f" + std::to_string(i)) << "b";
  }
  ~TwoTenants() override {
    std::error_code ignored;
    fs::remove_all(base_, ignored);
  }
  std::string base_;
};

TEST_F(TwoTenants, OneSpendsItsBudgetAndGetsEmfileTheOtherOpensOn) {
  constexpr size_t kBudget = 64;
  Tenant greedy(base_ + "/a", kBudget);
  Tenant neighbour(base_ + "/b", kBudget);
  int error = 0;
  int opened = 0;
  while ((error = greedy.create("g" + std::to_string(opened))) == 0) {
    ASSERT_LT(++opened, 10 * int(kBudget)) << "the budget never ran out";
  }
  EXPECT_EQ(error, EMFILE) << "a spent budget is the tenant's own EMFILE";
  // Cached inode descriptors were closed to make room for open files: every
  // descriptor but the few in use went to open files.
  EXPECT_GE(greedy.open_files(), kBudget - 2);
  EXPECT_LE(greedy.open_files() + greedy.cached_fds() - 1, kBudget) << "the root is not counted";
  EXPECT_FALSE(fs::exists(base_ + "/a/g" + std::to_string(opened))) << "refused before creating";

  for (int i = 0; i < 8; ++i) {
    EXPECT_EQ(neighbour.open("f" + std::to_string(i)), 0) << "the neighbour's open " << i;
  }
  EXPECT_EQ(neighbour.create("new"), 0);

  // Closing one gives it back.
  ASSERT_EQ(greedy.release_one(), 0);
  EXPECT_EQ(greedy.create("again"), 0);
  EXPECT_EQ(greedy.create("again2"), EMFILE);
}

}  // namespace
}  // namespace dpfs
