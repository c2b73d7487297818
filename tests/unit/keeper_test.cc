// The supervisor's keeper (src/daemon/keeper.h): what a device process
// sends to be kept for a successor, and what the supervisor does with
// records a subverted device process could send instead.
#include "daemon/keeper.h"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "util/unix_listener.h"

namespace dpfs::daemon {
namespace {

class KeeperTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { spdlog::set_level(spdlog::level::off); }
  static void TearDownTestSuite() { spdlog::set_level(spdlog::level::info); }
  KeeperTest() {
    int sv[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
    supervisor_end.reset(sv[0]);
    device_end.reset(sv[1]);
    link.emplace(device_end.get());
  }
  // A raw record, as a subverted device process could send it.
  void send_raw(const std::string& bytes, std::vector<int> fds = {}) {
    const iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
    ASSERT_EQ(util::send_with_fds(device_end.get(), std::span(&iov, 1), fds),
              ssize_t(bytes.size()));
  }
  static util::UniqueFd eventfd() { return util::UniqueFd(::eventfd(0, EFD_CLOEXEC)); }
  static ino_t inode(int fd) {
    struct stat st {};
    ::fstat(fd, &st);
    return st.st_ino;
  }

  util::UniqueFd supervisor_end, device_end;
  std::optional<KeeperLink> link;
  Kept kept;
};

TEST_F(KeeperTest, AConnectionItsJournalAndInitAreKeptThenDroppedWhenItEnds) {
  util::UniqueFd conn = eventfd(), kick = eventfd();
  link->connection(conn.get());
  std::vector<util::UniqueFd> fds;
  fds.emplace_back(::dup(kick.get()));
  link->request(std::vector<uint8_t>{1, 2, 3}, std::move(fds));
  link->request(std::vector<uint8_t>{4}, {});
  link->init(fuse::InitState{38, 1 << 20, 0x1234});
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  ASSERT_TRUE(kept.resumable());
  EXPECT_EQ(inode(kept.connection.get()), inode(conn.get())) << "the same connection";
  ASSERT_EQ(kept.journal.size(), 2u);
  EXPECT_EQ(kept.journal[0].bytes, (std::vector<uint8_t>{1, 2, 3}));
  ASSERT_EQ(kept.journal[0].fds.size(), 1u);
  EXPECT_EQ(inode(kept.journal[0].fds[0].get()), inode(kick.get()));
  EXPECT_EQ(kept.journal[1].bytes, (std::vector<uint8_t>{4}));
  ASSERT_TRUE(kept.init);
  EXPECT_EQ(kept.init->proto_minor, 38u);
  EXPECT_EQ(kept.init->flags, 0x1234u);

  link->ended();
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  EXPECT_FALSE(kept.resumable());
  EXPECT_TRUE(kept.journal.empty());
  EXPECT_FALSE(kept.init);

  // The other end gone: false.
  device_end.reset();
  link.reset();
  EXPECT_FALSE(take_records(supervisor_end.get(), kept, "test"));
}

TEST_F(KeeperTest, AJournalPastItsBoundsIsNotKept) {
  util::UniqueFd conn = eventfd();
  link->connection(conn.get());
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  for (size_t i = 0; i <= kMaxKeptRequests; ++i) {
    link->request(std::vector<uint8_t>{uint8_t(i)}, {});
    if (i % 64 == 0) {
      ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
    }
  }
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  EXPECT_TRUE(kept.overflow);
  EXPECT_FALSE(kept.resumable());
  EXPECT_TRUE(kept.journal.empty()) << "its memory and descriptors given back";
  // A new connection starts afresh.
  link->connection(conn.get());
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  EXPECT_TRUE(kept.resumable());
}

TEST_F(KeeperTest, MalformedRecordsAreDroppedNotKept) {
  util::UniqueFd a = eventfd(), b = eventfd();
  send_raw("M\x01\x02");              // a request before any connection
  send_raw("C");                      // a connection without its fd
  send_raw("C", {a.get(), b.get()});  // with two
  send_raw("I\x01\x02\x03");          // INIT of the wrong size
  send_raw("Z", {a.get()});           // an unknown kind (its fd closed)
  send_raw(std::string(1, '\0'));     // another
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  EXPECT_FALSE(kept.connection);
  EXPECT_TRUE(kept.journal.empty());
  EXPECT_FALSE(kept.init);
  // Too long for any record: cut short, so nothing of this connection is
  // kept from then on.
  send_raw("C", {a.get()});
  send_raw("M" + std::string(8192, 'x'));
  send_raw("M\x01");
  ASSERT_TRUE(take_records(supervisor_end.get(), kept, "test"));
  EXPECT_FALSE(kept.resumable());
  EXPECT_TRUE(kept.journal.empty());
}

}  // namespace
}  // namespace dpfs::daemon
