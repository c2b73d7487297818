// The redis backend beyond the conformance suites (which run on it as
// */redis): making and inspecting file systems, two daemons serving one
// namespace, and a store that stops answering. Against a real
// redis-server the tests start (redis_server.h).
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <atomic>
#include <thread>

#include "mount_fixture.h"
#include "redis_server.h"

namespace dpfs::itest {
namespace {

// `dpfs serve` of `url` at `m`, with no kernel caching of names and
// attributes: what one daemon changes, the other's kernel asks again.
std::vector<std::string> serve(const std::string& url, const Mount& m) {
  return {"serve", "--backend",      url, "--fuse-mount", m.dir(), "--entry-timeout",
          "0",     "--attr-timeout", "0"};
}

RunResult dpfs(const std::vector<std::string>& args) {
  std::vector<std::string> full{dpfs_binary()};
  full.insert(full.end(), args.begin(), args.end());
  return run(full);
}
int exit_code(const RunResult& r) { return WIFEXITED(r.status) ? WEXITSTATUS(r.status) : -1; }

class KvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    std::string p;
    server_ = &RedisServer::shared(&p);
    ASSERT_TRUE(p.empty()) << p;
  }
  // A name nobody formatted yet.
  std::string fresh_url() {
    return "redis://" + server_->address() + "/" +
           server_->fresh_name(::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  std::string formatted_url() {
    std::string problem;
    std::string url = redis_test_fs("kv", &problem);
    EXPECT_TRUE(problem.empty()) << problem;
    return url;
  }
  RedisServer* server_ = nullptr;
};

TEST_F(KvTest, FormatMakesOneFileSystemAndInfoDescribesIt) {
  const std::string url = fresh_url();
  RunResult r = dpfs({"kv", "info", url});
  EXPECT_EQ(exit_code(r), 1);
  EXPECT_NE(r.err.find("make one with: dpfs kv format"), std::string::npos) << r.err;

  r = dpfs({"kv", "format", url, "--chunk-size", "3000"});
  EXPECT_EQ(exit_code(r), 1) << r.out;
  EXPECT_NE(r.err.find("power of two"), std::string::npos) << r.err;

  r = dpfs({"kv", "format", url, "--chunk-size", "16K"});
  ASSERT_EQ(exit_code(r), 0) << r.err;
  r = dpfs({"kv", "info", url});
  ASSERT_EQ(exit_code(r), 0) << r.err;
  EXPECT_NE(r.out.find("format version 2"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("chunk size 16384 bytes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("inodes 1 "), std::string::npos) << r.out;

  r = dpfs({"kv", "format", url});
  EXPECT_EQ(exit_code(r), 1) << "a second format must be refused";
  EXPECT_NE(r.err.find("formatted already"), std::string::npos) << r.err;
  EXPECT_NE(dpfs({"kv", "info", url}).out.find("chunk size 16384 bytes"), std::string::npos)
      << "the refused format changed the file system";

  r = dpfs({"kv", "info", "redis://" + server_->address() + "/bad{name}"});
  EXPECT_EQ(exit_code(r), 2) << "a bad URL is a usage error";
}

TEST_F(KvTest, AnUnformattedNameIsAClearStartUpError) {
  Mount m;
  const std::string url = fresh_url();
  const std::string problem = m.start_dpfs(serve(url, m), 5s);
  ASSERT_FALSE(problem.empty()) << "dpfs served a file system nobody formatted";
  EXPECT_NE(problem.find("dpfs kv format"), std::string::npos) << problem;
}

// Each worker drives a lane of connections itself: its commands go out and
// their answers come back on the worker, with no thread in between. A lane
// no worker took keeps a loop thread of its own.
TEST_F(KvTest, ConnectionsAreDrivenByTheWorkers) {
  Mount m;
  const std::string socket = m.base() + "/stats.sock";
  std::vector<std::string> args = serve(formatted_url(), m);
  for (const char* a : {"--threads", "2", "--redis-connections", "3", "--stats-socket"}) {
    args.push_back(a);
  }
  args.push_back(socket);
  ASSERT_EQ(m.start_dpfs(args), "");
  // A lane runs its own loop thread until a worker takes it (the workers
  // start with the mount, and may take a while to on a busy machine).
  const std::vector<std::string> untaken{"dpfs-redis-2"};
  for (int i = 0; i < 500 && threads_named(m.pid(), "dpfs-redis-") != untaken; ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(threads_named(m.pid(), "dpfs-redis-"), untaken);

  // Work from several processes, so that both workers take requests.
  std::vector<std::thread> writers;
  std::atomic<int> failures{0};
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      const std::string data(64 << 10, char('a' + t));
      for (int i = 0; i < 10; ++i) {
        const std::string name = m.dir() + "/f" + std::to_string(t) + "-" + std::to_string(i);
        if (write_file(name, data) != 0 || read_file(name).value_or("") != data) ++failures;
      }
    });
  }
  for (auto& w : writers) w.join();
  EXPECT_EQ(failures.load(), 0);

  RunResult r = run({dpfs_binary(), "stats", socket}, 10s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  auto lane = [&](int index) -> std::pair<std::string, uint64_t> {
    const std::string head = "redis lane " + std::to_string(index) + ": ";
    const size_t at = r.out.find(head);
    if (at == std::string::npos) return {"", 0};
    const std::string line =
        r.out.substr(at + head.size(), r.out.find('\n', at) - at - head.size());
    const size_t comma = line.find(", ");
    return {line.substr(0, comma), std::stoull(line.substr(comma + 2))};
  };
  const auto [driver0, answered0] = lane(0);
  const auto [driver1, answered1] = lane(1);
  const auto [driver2, answered2] = lane(2);
  EXPECT_EQ(driver0, "driven by a worker") << r.out;
  EXPECT_EQ(driver1, "driven by a worker") << r.out;
  EXPECT_EQ(driver2, "own loop thread") << r.out;
  EXPECT_GT(answered0 + answered1, 200u) << r.out;
  // Only the daemon's own threads (the lock leases' heartbeat) use it.
  EXPECT_LT(answered2, 20u) << "workers handed their commands to a loop thread\n" << r.out;

  // Workers give their lanes back as they end; the daemon stops cleanly.
  EXPECT_TRUE(m.stop(SIGTERM, 20s).empty());
}

TEST_F(KvTest, TwoDaemonsServeOneNamespace) {
  const std::string url = formatted_url();
  Mount a, b;
  ASSERT_EQ(a.start_dpfs(serve(url, a)), "");
  ASSERT_EQ(b.start_dpfs(serve(url, b)), "");
  const std::string A = a.dir(), B = b.dir();

  // Written and closed on one, read whole at the next open on the other.
  const std::string first = pattern(1, 0, 300000);
  ASSERT_EQ(write_file(A + "/f", first), 0);
  EXPECT_EQ(read_file(B + "/f").value_or("<error>"), first);
  const std::string second = pattern(2, 0, 300000);
  ASSERT_EQ(write_file(B + "/f", second), 0);
  EXPECT_EQ(read_file(A + "/f").value_or("<error>"), second);

  // Names: made, renamed and removed on one, seen so on the other.
  ASSERT_SYS(::mkdir((B + "/d").c_str(), 0750));
  struct stat st {};
  ASSERT_SYS(::stat((A + "/d").c_str(), &st));
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  ASSERT_SYS(::rename((A + "/f").c_str(), (A + "/d/g").c_str()));
  EXPECT_ERRNO(ENOENT, ::stat((B + "/f").c_str(), &st));
  EXPECT_EQ(read_file(B + "/d/g").value_or("<error>"), second);
  ASSERT_SYS(::link((B + "/d/g").c_str(), (B + "/h").c_str()));
  ASSERT_SYS(::stat((A + "/h").c_str(), &st));
  EXPECT_EQ(st.st_nlink, 2u);
  ASSERT_SYS(::unlink((A + "/d/g").c_str()));
  EXPECT_ERRNO(ENOENT, ::stat((B + "/d/g").c_str(), &st));
  ASSERT_SYS(::stat((B + "/h").c_str(), &st));
  EXPECT_EQ(st.st_nlink, 1u);
  EXPECT_EQ(list_dir(A + "/d"), std::vector<std::string>{});
  EXPECT_EQ(list_dir(B), (std::vector<std::string>{"d", "h"}));

  // One inode, one number, on both.
  struct stat sa {
  }, sb{};
  ASSERT_SYS(::stat((A + "/h").c_str(), &sa));
  ASSERT_SYS(::stat((B + "/h").c_str(), &sb));
  EXPECT_EQ(sa.st_ino, sb.st_ino);
}

// POSIX and flock locks hold between devices: what one device's tenant
// locks, the other's cannot, until it is unlocked.
TEST_F(KvTest, LocksHoldBetweenDevices) {
  const std::string url = formatted_url() + "?locks=shared";
  Mount a, b;
  ASSERT_EQ(a.start_dpfs(serve(url, a)), "");
  ASSERT_EQ(b.start_dpfs(serve(url, b)), "");
  ASSERT_EQ(write_file(a.dir() + "/f", std::string(4096, 'x')), 0);
  Fd fa(::open((a.dir() + "/f").c_str(), O_RDWR | O_CLOEXEC));
  Fd fb(::open((b.dir() + "/f").c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(fa.valid() && fb.valid()) << errname(errno);

  auto lock = [](int fd, int cmd, short type, off_t start, off_t len) {
    struct flock l {};
    l.l_type = type;
    l.l_whence = SEEK_SET;
    l.l_start = start;
    l.l_len = len;
    return ::fcntl(fd, cmd, &l) == 0 ? 0 : errno;
  };
  ASSERT_EQ(lock(fa.get(), F_SETLK, F_WRLCK, 0, 100), 0);
  EXPECT_EQ(lock(fb.get(), F_SETLK, F_RDLCK, 50, 10), EAGAIN)
      << "device b took a lock device a holds";
  EXPECT_EQ(lock(fb.get(), F_SETLK, F_WRLCK, 100, 10), 0) << "past a's range";
  struct flock probe {};
  probe.l_type = F_WRLCK;
  probe.l_whence = SEEK_SET;
  probe.l_start = 0;
  probe.l_len = 0;
  ASSERT_SYS(::fcntl(fb.get(), F_GETLK, &probe));
  EXPECT_EQ(probe.l_type, F_WRLCK);
  EXPECT_EQ(probe.l_start, 0);
  EXPECT_EQ(probe.l_len, 100);
  EXPECT_EQ(probe.l_pid, ::getpid());

  // A waiter on b is granted once a lets go.
  Child waiter([&](Child&) -> std::string {
    Fd fd(::open((b.dir() + "/f").c_str(), O_RDWR | O_CLOEXEC));
    if (!fd.valid()) return "open: " + errname(errno);
    struct flock l {};
    l.l_type = F_WRLCK;
    l.l_whence = SEEK_SET;
    l.l_start = 0;
    l.l_len = 10;
    return ::fcntl(fd.get(), F_SETLKW, &l) == 0 ? "" : "F_SETLKW: " + errname(errno);
  });
  ASSERT_EQ(lock(fa.get(), F_SETLK, F_UNLCK, 0, 0), 0);
  EXPECT_EQ(waiter.join(), "");

  // flock: whole files, between devices too; close lets go.
  ASSERT_SYS(::flock(fa.get(), LOCK_EX | LOCK_NB));
  EXPECT_EQ(::flock(fb.get(), LOCK_SH | LOCK_NB) == 0 ? 0 : errno, EWOULDBLOCK);
  fa = Fd();
  // FUSE releases a flock with the RELEASE that follows the close, which the
  // kernel sends without waiting for it: poll until it has come.
  int got = -1;
  for (int i = 0; i < 200 && got != 0; ++i) {
    got = ::flock(fb.get(), LOCK_EX | LOCK_NB) == 0 ? 0 : errno;
    if (got != 0) std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(got, 0) << "a's flock outlived its close: " << errname(got);
}

// A store that stops answering: the tenant gets EIO after the URL's timeout
// (not a hang), and is served again once the store answers again.
// A file's chunks are found through its chunk index, not by counting up
// to its size: a sparse file ending near 2^50 bytes is truncated and
// unlinked at once, leaving no key behind (walking its 2^34 possible
// indexes would take the daemon's memory and hours). Chunks fallocate
// made past the end go with it too.
TEST_F(KvTest, SparseHugeFilesAndPreallocationLeaveNoChunkBehind) {
  const std::string url = formatted_url();
  const std::string name = url.substr(url.rfind('/') + 1);
  Mount m;
  ASSERT_EQ(m.start_dpfs(serve(url, m)), "");
  auto chunks = [&] {
    return redis_cli(server_->port(), {"--scan", "--pattern", "dpfs:" + name + ":c:*"});
  };
  auto index_keys = [&] {
    return redis_cli(server_->port(), {"--scan", "--pattern", "dpfs:{" + name + "}:k:*"});
  };
  const std::string f = m.dir() + "/sparse";
  const off_t far = off_t(1) << 49;
  int fd = ::open(f.c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  ASSERT_EQ(::pwrite(fd, "x", 1, far), 1);
  ASSERT_EQ(::pwrite(fd, "y", 1, 0), 1);
  EXPECT_NE(chunks(), "");
  // Down to one byte: the far chunk goes, the first keeps its byte.
  ASSERT_SYS(::ftruncate(fd, 1));
  char c = 0;
  EXPECT_EQ(::pread(fd, &c, 1, 0), 1);
  EXPECT_EQ(c, 'y');
  std::string left = chunks();
  EXPECT_EQ(std::count(left.begin(), left.end(), '\n'), 1) << left;
  // Allocated past the end (KEEP_SIZE), then unlinked while open, closed.
  ASSERT_SYS(::fallocate(fd, FALLOC_FL_KEEP_SIZE, far, 100000));
  ASSERT_SYS(::pwrite(fd, "x", 1, far / 2));
  ASSERT_SYS(::unlink(f.c_str()));
  ASSERT_SYS(::close(fd));
  // The last close frees the inode; its chunks go after the answer.
  for (int i = 0; i < 500 && (chunks() != "" || index_keys() != ""); ++i) {
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(chunks(), "") << "chunks left behind";
  EXPECT_EQ(index_keys(), "") << "a chunk index left behind";

  // fallocate cannot take more than the store has.
  fd = ::open((m.dir() + "/big").c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_SYS(fd);
  EXPECT_ERRNO(ENOSPC, ::fallocate(fd, 0, 0, off_t(1) << 48));
  struct stat st {};
  ASSERT_SYS(::fstat(fd, &st));
  EXPECT_EQ(st.st_size, 0) << "a refused fallocate changed the size";
  ::close(fd);
}

TEST_F(KvTest, AStoreThatStopsAnsweringIsEioThenServedAgain) {
  std::string problem;
  const std::string base = redis_test_fs("stall", &problem);
  ASSERT_EQ(problem, "");
  const std::string url = base + "?timeout=1";
  Mount m;
  ASSERT_EQ(m.start_dpfs(serve(url, m)), "");
  ASSERT_EQ(write_file(m.dir() + "/before", "kept"), 0);

  server_->pause();
  const auto t0 = std::chrono::steady_clock::now();
  struct stat st {};
  const int rc = ::stat((m.dir() + "/before").c_str(), &st);
  const int err = errno;
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  server_->resume();
  EXPECT_EQ(rc, -1);
  EXPECT_EQ(err, EIO) << errname(err);
  EXPECT_GE(waited, 0.9) << "answered before the timeout";
  EXPECT_LT(waited, 5.0) << "the tenant waited far past the timeout";

  // Served again: the connection is made anew within a few 100 ms ticks.
  std::optional<std::string> got;
  for (int i = 0; i < 100 && !got; ++i) {
    got = read_file(m.dir() + "/before");
    if (!got) std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(got.value_or("<error>"), "kept") << m.log();
  EXPECT_NE(m.log().find("reconnecting"), std::string::npos) << m.log();
}

// --- Redis Cluster ------------------------------------------------------------

class KvClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
  }
};

// One file system over three masters: the metadata on its tag's slot, the
// data spread over all of them, the same namespace for daemons given the
// seeds in any order.
TEST_F(KvClusterTest, DataSpreadsOverEveryMasterAndDaemonsShareTheNamespace) {
  std::string problem;
  const std::string url = redis_cluster_test_fs("spread", &problem);
  ASSERT_EQ(problem, "");
  RedisCluster& cluster = RedisCluster::shared(&problem);
  RunResult r = dpfs({"kv", "info", url});
  ASSERT_EQ(exit_code(r), 0) << r.err;
  EXPECT_NE(r.out.find("a redis cluster of 3 masters"), std::string::npos) << r.out;

  // The seeds in another order, one of them a replica's address.
  const std::string name = url.substr(url.rfind('/') + 1);
  const std::string other =
      "redis://" + cluster.node(5).address() + "," + cluster.node(2).address() + "/" + name;
  Mount a, b;
  ASSERT_EQ(a.start_dpfs(serve(url, a)), "");
  ASSERT_EQ(b.start_dpfs(serve(other, b)), "");
  // 64 chunks of 64 KiB: every master gets some.
  const std::string data = pattern(7, 0, 64 * 65536);
  ASSERT_EQ(write_file(a.dir() + "/big", data), 0);
  EXPECT_EQ(read_file(b.dir() + "/big").value_or("<error>"), data);
  int masters_with_chunks = 0;
  for (int i = 0; i < RedisCluster::kNodes; ++i) {
    const std::string role = redis_cli(cluster.node(i).port(), {"role"});
    if (!role.starts_with("master")) continue;
    const std::string keys =
        redis_cli(cluster.node(i).port(), {"--scan", "--pattern", "dpfs:" + name + ":c:*"});
    if (!keys.empty()) ++masters_with_chunks;
  }
  EXPECT_EQ(masters_with_chunks, 3) << "the chunks are not spread over the cluster";

  ASSERT_SYS(::rename((b.dir() + "/big").c_str(), (b.dir() + "/moved").c_str()));
  ASSERT_SYS(::truncate((a.dir() + "/moved").c_str(), 100000));
  EXPECT_EQ(read_file(b.dir() + "/moved").value_or("<error>"), data.substr(0, 100000));
  struct statvfs vfs {};
  ASSERT_SYS(::statvfs(a.dir().c_str(), &vfs));
  EXPECT_GT(vfs.f_blocks, 0u);
  ASSERT_SYS(::unlink((a.dir() + "/moved").c_str()));
  // a's kernel still has the old name "big" of the inode cached; looking it
  // up drops it, and with it the kernel's last hold on the inode.
  struct stat gone {};
  EXPECT_ERRNO(ENOENT, ::stat((a.dir() + "/big").c_str(), &gone));
  // The data goes with the last name, once the kernel that removed it
  // forgets the inode (FORGET comes after the unlink, on its own): no chunk
  // is left on any master.
  std::string left;
  for (int tries = 0; tries < 100; ++tries) {
    left.clear();
    for (int i = 0; i < RedisCluster::kNodes; ++i) {
      if (!redis_cli(cluster.node(i).port(), {"role"}).starts_with("master")) continue;
      left += redis_cli(cluster.node(i).port(), {"--scan", "--pattern", "dpfs:" + name + ":c:*"});
    }
    if (left.empty()) break;
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(left, "") << "chunks outlived their file";
}

// A slot moved from one master to another under a tenant (what `redis-cli
// --cluster reshard` does, one slot): while it migrates, the old master
// answers ASK for the keys that left, and the daemon sends that command
// to the new one after ASKING; once moved, MOVED, and the map is read
// again. The tenant sees its data throughout.
TEST_F(KvClusterTest, ASlotMovedUnderATenantIsFollowed) {
  std::string problem;
  const std::string url = redis_cluster_test_fs("reshard", &problem);
  ASSERT_EQ(problem, "");
  RedisCluster& cluster = RedisCluster::shared(&problem);
  ASSERT_EQ(problem, "");
  const std::string name = url.substr(url.rfind('/') + 1);
  Mount a, b;
  const std::string stats = b.base() + "/stats.sock";
  std::vector<std::string> args = serve(url, b);
  args.insert(args.end(), {"--stats-socket", stats});
  ASSERT_EQ(a.start_dpfs(serve(url, a)), "");
  ASSERT_EQ(b.start_dpfs(args), "");
  const std::string first = pattern(1, 0, 4 * 65536);
  ASSERT_EQ(write_file(a.dir() + "/f", first), 0);
  struct stat st {};
  ASSERT_SYS(::stat((a.dir() + "/f").c_str(), &st));

  // The slot of the file's first chunk, its master and another one.
  const std::string key = "dpfs:" + name + ":c:" + std::to_string(st.st_ino) + ":0";
  const int from = cluster.master_of(key);
  ASSERT_GE(from, 0);
  int to = -1;
  std::vector<int> masters;
  for (int i = 0; i < RedisCluster::kNodes; ++i) {
    if (!redis_cli(cluster.node(i).port(), {"role"}).starts_with("master")) continue;
    masters.push_back(i);
    if (i != from && to < 0) to = i;
  }
  ASSERT_GE(to, 0);
  auto line = [](std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  };
  const std::string slot = line(redis_cli(cluster.node(from).port(), {"cluster", "keyslot", key}));
  auto id = [&](int i) { return line(redis_cli(cluster.node(i).port(), {"cluster", "myid"})); };
  auto cli = [&](int i, std::vector<std::string> words) {
    return redis_cli(cluster.node(i).port(), words);
  };
  ASSERT_NE(cli(to, {"cluster", "setslot", slot, "importing", id(from)}).find("OK"),
            std::string::npos);
  ASSERT_NE(cli(from, {"cluster", "setslot", slot, "migrating", id(to)}).find("OK"),
            std::string::npos);
  ASSERT_NE(
      cli(from, {"migrate", "127.0.0.1", std::to_string(cluster.node(to).port()), key, "0", "5000"})
          .find("OK"),
      std::string::npos);

  // Migrating: the chunk is on the new master, the old one says ASK.
  EXPECT_EQ(read_file(b.dir() + "/f").value_or("<error>"), first);
  std::string second = first;
  const std::string head = pattern(2, 0, 65536);
  second.replace(0, head.size(), head);
  {
    Fd fd(::open((a.dir() + "/f").c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_TRUE(fd.valid());
    ASSERT_EQ(pwrite_all(fd, head.data(), head.size(), 0), 0);
  }
  EXPECT_EQ(read_file(b.dir() + "/f").value_or("<error>"), second);
  EXPECT_NE(cli(to, {"exists", key}).find('1'), std::string::npos)
      << "the write did not go to the importing master";

  // Moved: every master names the new owner; the old one says MOVED.
  for (const int i : masters) {
    ASSERT_NE(cli(i, {"cluster", "setslot", slot, "node", id(to)}).find("OK"), std::string::npos);
  }
  EXPECT_EQ(read_file(b.dir() + "/f").value_or("<error>"), second);
  ASSERT_EQ(write_file(a.dir() + "/f", first), 0);
  EXPECT_EQ(read_file(b.dir() + "/f").value_or("<error>"), first);

  RunResult r = run({dpfs_binary(), "stats", stats}, 10s);
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const size_t at = r.out.find(" map refreshes, ");
  ASSERT_NE(at, std::string::npos) << r.out;
  EXPECT_GT(std::stoull(r.out.substr(at + 16)), 0u) << "no redirection followed\n" << r.out;
}

// A master killed while a tenant writes: its replica is promoted, the
// daemon finds the new map and goes on, and with durability=replica every
// byte whose fsync returned is there afterwards. The killed node comes back
// as a replica, as an operator would bring it back.
TEST_F(KvClusterTest, AMasterKilledDuringWritesFailsOverAndKeepsWhatWasSynced) {
  RedisCluster cluster;  // its own: this one is broken on purpose
  ASSERT_EQ(cluster.start(), "");
  std::string problem;
  const std::string url = format_test_fs("redis://" + cluster.seeds() + "/failover", &problem) +
                          "?durability=replica&timeout=20";
  ASSERT_EQ(problem, "");
  Mount m;
  ASSERT_EQ(m.start_dpfs(serve(url, m)), "");

  // The writer: file after file, each written, fsync'ed and closed; one
  // whose fsync failed is written again.
  constexpr int kFiles = 40;
  std::atomic<int> synced{0};
  std::vector<int> failures(kFiles, 0);
  std::thread writer([&] {
    for (int i = 0; i < kFiles; ++i) {
      const std::string path = m.dir() + "/f" + std::to_string(i);
      for (int attempt = 0; attempt < 5; ++attempt) {
        const std::string data = pattern(uint64_t(i), 0, 200000);
        Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
        const bool ok = fd.valid() && pwrite_all(fd, data.data(), data.size(), 0) == 0 &&
                        ::fsync(fd.get()) == 0 && ::close(fd.release()) == 0;
        if (ok) break;
        ++failures[size_t(i)];
      }
      synced.store(i + 1);
    }
  });
  // Kill the master of the metadata slot (every operation needs it) a few
  // files in.
  while (synced.load() < 5) std::this_thread::sleep_for(10ms);
  const int victim = cluster.master_of("dpfs:{failover}:format");
  ASSERT_GE(victim, 0);
  cluster.node(victim).stop(SIGKILL);
  // Back (empty: no persistence) once the cluster has promoted its
  // replica, so that it rejoins as the new master's replica.
  int promoted = -1;
  for (int i = 0; i < 300 && (promoted < 0 || promoted == victim); ++i) {
    std::this_thread::sleep_for(100ms);
    promoted = cluster.master_of("dpfs:{failover}:format");
  }
  ASSERT_TRUE(promoted >= 0 && promoted != victim) << "no replica was promoted";
  ASSERT_EQ(cluster.node(victim).start(), "");
  writer.join();
  ASSERT_EQ(cluster.wait_whole(60s), "");

  int rewritten = 0;
  for (int i = 0; i < kFiles; ++i) {
    EXPECT_LT(failures[size_t(i)], 5) << "f" << i << " never synced";
    rewritten += failures[size_t(i)];
    const std::optional<std::string> got = read_file(m.dir() + "/f" + std::to_string(i));
    ASSERT_TRUE(got) << "f" << i << ": " << errname(errno) << "\n" << m.log();
    EXPECT_EQ(check_pattern(*got, uint64_t(i), 0), "") << "f" << i;
    EXPECT_EQ(got->size(), 200000u) << "f" << i;
  }
  EXPECT_LE(rewritten, 5) << "the failover cost more than a few files";
  EXPECT_NE(m.log().find("connection lost"), std::string::npos)
      << "the master died without the daemon noticing?\n"
      << m.log();
}

}  // namespace
}  // namespace dpfs::itest
