// passthrough through a FuseSession with hand-built requests, as a hostile
// guest could send them (no kernel in between to resolve symlinks or check
// names): every attempt to reach outside the exported directory must fail,
// and the host directory must hold afterwards exactly what it should.
#include "backend/passthrough/passthrough.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/fuse.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
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
namespace fs = std::filesystem;

// A scratch tree: base/export is served, base/outside holds a secret.
class Scratch {
 public:
  Scratch() {
    char tmpl[] = "/tmp/dpfs-pt-unit.XXXXXX";
    base_ = ::mkdtemp(tmpl);
    fs::create_directories(exported());
    fs::create_directories(outside());
    std::ofstream(outside() + "/secret") << "secret";
  }
  ~Scratch() {
    std::error_code ignored;
    fs::remove_all(base_, ignored);
  }
  std::string exported() const { return base_ + "/export"; }
  std::string outside() const { return base_ + "/outside"; }

 private:
  std::string base_;
};

class PassthroughTest : public ::testing::Test {
 protected:
  explicit PassthroughTest(UringMode io_uring = UringMode::kOff)
      : fs_(options(io_uring)), session_(fs_, {}) {
    TestRequest req(init_request());
    session_.handle(req);
    EXPECT_EQ(req.error(), 0);
  }
  PassthroughOptions options(UringMode io_uring) {
    PassthroughOptions o;
    o.root = scratch_.exported();
    // Off: replies complete inside handle(), no thread to wait for.
    o.io_uring = io_uring;
    o.max_fds = 16;
    return o;
  }

  std::unique_ptr<TestRequest> run(const RequestBuilder& b) {
    auto req = std::make_unique<TestRequest>(b.bytes());
    session_.handle(*req);
    EXPECT_EQ(req->completions, 1);
    return req;
  }
  RequestBuilder op(uint32_t opcode, uint64_t nodeid) {
    RequestBuilder b(opcode, nodeid, next_unique_++);
    b.header().uid = 0;
    b.header().gid = 0;
    return b;
  }
  // The node id, or 0 with *error.
  uint64_t lookup(uint64_t parent, const std::string& name, int* error = nullptr) {
    auto req = run(op(FUSE_LOOKUP, parent).name(name));
    if (error != nullptr) *error = -req->error();
    return req->error() == 0 ? req->payload<fuse_entry_out>().nodeid : 0;
  }
  int open_error(uint64_t ino, uint32_t flags) {
    fuse_open_in in{flags, 0};
    return -run(op(FUSE_OPEN, ino).arg(in))->error();
  }
  int create_error(uint64_t parent, const std::string& name, uint32_t flags) {
    fuse_create_in in{flags, S_IFREG | 0644, 0, 0};
    return -run(op(FUSE_CREATE, parent).arg(in).name(name))->error();
  }
  int mkdir_error(uint64_t parent, const std::string& name) {
    fuse_mkdir_in in{0755, 0};
    return -run(op(FUSE_MKDIR, parent).arg(in).name(name))->error();
  }
  std::string host(const std::string& name) const { return scratch_.exported() + "/" + name; }

  Scratch scratch_;
  Passthrough fs_;
  fuse::FuseSession session_;
  uint64_t next_unique_ = 100;
};

TEST_F(PassthroughTest, DotDotNeverClimbsAboveTheRoot) {
  EXPECT_EQ(lookup(kRootIno, ".."), kRootIno);
  EXPECT_EQ(lookup(kRootIno, "."), kRootIno);
  ASSERT_EQ(mkdir_error(kRootIno, "a"), 0);
  const uint64_t a = lookup(kRootIno, "a");
  ASSERT_NE(a, 0u);
  EXPECT_EQ(lookup(a, ".."), kRootIno);
  EXPECT_EQ(lookup(lookup(a, ".."), ".."), kRootIno);
  int error = 0;
  EXPECT_EQ(lookup(kRootIno, "outside", &error), 0u);
  EXPECT_EQ(error, ENOENT);
  // Names the session would let through to a careless backend.
  EXPECT_NE(mkdir_error(kRootIno, ".."), 0);
  EXPECT_NE(create_error(kRootIno, "..", O_RDWR), 0);
  // Nothing appeared beside the export.
  std::vector<std::string> beside;
  for (const auto& e : fs::directory_iterator(fs::path(scratch_.exported()).parent_path())) {
    beside.push_back(e.path().filename());
  }
  std::sort(beside.begin(), beside.end());
  EXPECT_EQ(beside, (std::vector<std::string>{"export", "outside"}));
}

// The host moves a directory the tenant holds out of the export: its ".."
// is outside now, and the tenant must not get it.
TEST_F(PassthroughTest, DotDotOfADirectoryMovedOutIsRefused) {
  ASSERT_EQ(mkdir_error(kRootIno, "a"), 0);
  const uint64_t a = lookup(kRootIno, "a");
  ASSERT_EQ(mkdir_error(a, "b"), 0);
  const uint64_t b = lookup(a, "b");
  ASSERT_NE(b, 0u);
  EXPECT_EQ(lookup(b, ".."), a);
  ASSERT_EQ(::rename(host("a").c_str(), (scratch_.outside() + "/a").c_str()), 0);
  EXPECT_EQ(lookup(b, ".."), a) << "still the directory the tenant knows";
  int error = 0;
  EXPECT_EQ(lookup(a, "..", &error), 0u);
  EXPECT_EQ(error, EACCES);
}

TEST_F(PassthroughTest, SymlinksAreNeverFollowedOnTheHost) {
  ASSERT_EQ(::symlink("/", host("to-root").c_str()), 0);
  ASSERT_EQ(::symlink("../outside", host("to-outside").c_str()), 0);
  ASSERT_EQ(::symlink("../outside/secret", host("to-secret").c_str()), 0);
  for (const char* name : {"to-root", "to-outside"}) {
    const uint64_t link = lookup(kRootIno, name);
    ASSERT_NE(link, 0u) << name;
    int error = 0;
    EXPECT_EQ(lookup(link, "secret", &error), 0u) << name;
    EXPECT_EQ(error, ENOTDIR) << name;
    EXPECT_EQ(lookup(link, "etc", &error), 0u) << name;
    EXPECT_EQ(error, ENOTDIR) << name;
    EXPECT_EQ(mkdir_error(link, "planted"), ENOTDIR) << name;
    EXPECT_EQ(create_error(link, "planted", O_RDWR), ENOTDIR) << name;
    fuse_open_in in{O_RDONLY, 0};
    EXPECT_EQ(-run(op(FUSE_OPENDIR, link).arg(in))->error(), ENOTDIR) << name;
  }
  const uint64_t secret = lookup(kRootIno, "to-secret");
  ASSERT_NE(secret, 0u);
  EXPECT_EQ(open_error(secret, O_RDONLY), ENXIO) << "a symlink is never opened";
  // CREATE over a symlink does not write through it.
  EXPECT_NE(create_error(kRootIno, "to-secret", O_RDWR | O_TRUNC), 0);
  std::ifstream in(scratch_.outside() + "/secret");
  std::string content;
  in >> content;
  EXPECT_EQ(content, "secret");
  EXPECT_FALSE(fs::exists(scratch_.outside() + "/planted"));
}

TEST_F(PassthroughTest, DeviceNodesAndFifosAreNeverOpened) {
  ASSERT_EQ(::mknod(host("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), 0);
  ASSERT_EQ(::mkfifo(host("fifo").c_str(), 0666), 0);
  for (const char* name : {"null", "fifo"}) {
    const uint64_t ino = lookup(kRootIno, name);
    ASSERT_NE(ino, 0u) << name;
    // An open of the FIFO for writing would block the worker forever.
    EXPECT_EQ(open_error(ino, O_WRONLY), ENXIO) << name;
    EXPECT_EQ(open_error(ino, O_RDONLY), ENXIO) << name;
    EXPECT_EQ(create_error(kRootIno, name, O_WRONLY), ENXIO) << name;
  }
}

TEST_F(PassthroughTest, ForgedNodeIdsAndHandlesAreRefused) {
  int error = 0;
  EXPECT_EQ(lookup(12345, "x", &error), 0u);
  EXPECT_EQ(error, ESTALE);
  EXPECT_EQ(-run(op(FUSE_GETATTR, 999).arg(fuse_getattr_in{}))->error(), ESTALE);
  fuse_link_in link{999};
  EXPECT_EQ(-run(op(FUSE_LINK, kRootIno).arg(link).name("l"))->error(), ESTALE);
  ASSERT_EQ(mkdir_error(kRootIno, "d"), 0);
  const uint64_t d = lookup(kRootIno, "d");
  fuse_link_in dir_link{d};
  EXPECT_EQ(-run(op(FUSE_LINK, kRootIno).arg(dir_link).name("d2"))->error(), EPERM);
  fuse_read_in read{};
  read.fh = 4242;
  read.size = 10;
  EXPECT_EQ(-run(op(FUSE_READ, kRootIno).arg(read))->error(), EBADF);
}

// A second thread swaps "d" between a directory and a symlink to the
// outside, as fast as it can, while requests go through "d": none may ever
// find the secret or plant a file outside.
TEST_F(PassthroughTest, RenameRaceNeverLeadsOutside) {
  ASSERT_EQ(::mkdir(host("d").c_str(), 0755), 0);
  ASSERT_EQ(::symlink(scratch_.outside().c_str(), host("s").c_str()), 0);
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    while (!stop.load()) {
      ::renameat2(AT_FDCWD, host("d").c_str(), AT_FDCWD, host("s").c_str(), RENAME_EXCHANGE);
    }
  });
  int reached = 0;
  // 3000 rounds, or as many as 3 s allow (a sanitizer build is ~10x
  // slower), but at least 100 whatever the machine's load.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
  int rounds = 0;
  for (int i = 0; i < 3000 && (i < 100 || std::chrono::steady_clock::now() < deadline);
       ++i, ++rounds) {
    int error = 0;
    const uint64_t d = lookup(kRootIno, i % 2 ? "d" : "s", &error);
    if (d == 0) continue;
    if (lookup(d, "secret", &error) != 0) ++reached;
    if (create_error(d, "planted", O_RDWR) == 0) {
      // Inside the real directory, wherever its name went.
      EXPECT_FALSE(fs::exists(scratch_.outside() + "/planted"));
    }
    run(op(FUSE_FORGET, d).arg(fuse_forget_in{1}));
  }
  stop = true;
  swapper.join();
  EXPECT_EQ(reached, 0) << "looked the secret up through a swapped symlink";
  EXPECT_FALSE(fs::exists(scratch_.outside() + "/planted"));
}

TEST_F(PassthroughTest, DescriptorCacheStaysBoundedAndReopensByHandle) {
  constexpr int kFiles = 200;
  std::vector<uint64_t> inos;
  for (int i = 0; i < kFiles; ++i) {
    std::ofstream(host("f" + std::to_string(i))) << i;
    inos.push_back(lookup(kRootIno, "f" + std::to_string(i)));
    ASSERT_NE(inos.back(), 0u);
    EXPECT_LE(fs_.cached_fds(), 16u);
  }
  // Every inode still works: its descriptor comes back from the handle.
  for (int i = 0; i < kFiles; ++i) {
    auto req = run(op(FUSE_GETATTR, inos[size_t(i)]).arg(fuse_getattr_in{}));
    ASSERT_EQ(req->error(), 0) << i;
    EXPECT_EQ(req->payload<fuse_attr_out>().attr.size, std::to_string(i).size());
  }
  EXPECT_LE(fs_.cached_fds(), 16u);
}

// squash_uid/gid: files are created as the squashed ids, whoever asks; the
// open-file bound answers ENFILE past max_fds.
TEST(PassthroughOptionsTest, SquashAndOpenFileBound) {
  Scratch scratch;
  PassthroughOptions o;
  o.root = scratch.exported();
  o.io_uring = UringMode::kOff;
  o.max_fds = 16;
  o.squash_uid = 4242;
  o.squash_gid = 4343;
  Passthrough fs(o);
  fuse::FuseSession session(fs, {});
  TestRequest init(init_request());
  session.handle(init);
  ASSERT_EQ(init.error(), 0);
  ::chmod(scratch.exported().c_str(), 0777);  // the squashed uid creates in it
  uint64_t unique = 10;
  auto create = [&](const std::string& name) {
    RequestBuilder b(FUSE_CREATE, kRootIno, unique++);
    b.header().uid = 1000;
    b.header().gid = 1000;
    fuse_create_in in{O_RDWR, S_IFREG | 0644, 0, 0};
    TestRequest req(b.arg(in).name(name).bytes());
    session.handle(req);
    return -req.error();
  };
  ASSERT_EQ(create("f0"), 0);
  struct stat st {};
  ASSERT_EQ(::stat((scratch.exported() + "/f0").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 4242u);
  EXPECT_EQ(st.st_gid, 4343u);
  // f0 is open; 15 more fill the bound.
  for (int i = 1; i < 16; ++i) ASSERT_EQ(create("f" + std::to_string(i)), 0) << i;
  EXPECT_EQ(create("f16"), ENFILE);
  EXPECT_EQ(fs.open_files(), 16u);
  EXPECT_FALSE(fs::exists(scratch.exported() + "/f16")) << "refused before creating";
}

// The io_uring data path as a transport worker drives it (WorkerHook): READs
// handled during a batch are prepared, not started, until flush() -- then
// all of them go in one submit, and come back with the file's bytes; the
// hook's destructor starts and finishes what is still prepared; a thread
// without a hook is served on its own. (`always`: every READ goes through
// the ring here; with `on` the page cache's are served at once, which
// PassthroughCachedReadTest checks.)
class PassthroughUringTest : public PassthroughTest {
 protected:
  explicit PassthroughUringTest(UringMode mode = UringMode::kAlways) : PassthroughTest(mode) {}

  static constexpr size_t kBlock = 4096;
  static constexpr int kReads = 16;

  void SetUp() override {
    content_.resize(kReads * kBlock);
    for (size_t i = 0; i < content_.size(); ++i)
      content_[i] = char('a' + (i * 7 + i / kBlock) % 26);
    std::ofstream(host("f")) << content_;
    ino_ = lookup(kRootIno, "f");
    ASSERT_NE(ino_, 0u);
    fuse_open_in in{O_RDONLY, 0};
    auto req = run(op(FUSE_OPEN, ino_).arg(in));
    ASSERT_EQ(req->error(), 0);
    fh_ = req->payload<fuse_open_out>().fh;
  }
  std::unique_ptr<TestRequest> start_read(int block) {
    fuse_read_in in{};
    in.fh = fh_;
    in.offset = uint64_t(block) * kBlock;
    in.size = kBlock;
    auto req = std::make_unique<TestRequest>(op(FUSE_READ, ino_).arg(in).bytes());
    session_.handle(*req);
    return req;
  }
  // "" if `req` was answered once with block `block` of the file.
  std::string check_read(const TestRequest& req, int block) const {
    if (req.completions != 1) return "answered " + std::to_string(req.completions) + " times";
    if (req.error() != 0) return "error " + std::to_string(req.error());
    if (req.reply_len != sizeof(fuse_out_header) + kBlock) {
      return "reply of " + std::to_string(req.reply_len) + " bytes";
    }
    const std::string got(reinterpret_cast<const char*>(req.reply_data()), kBlock);
    return got == content_.substr(size_t(block) * kBlock, kBlock) ? "" : "wrong bytes";
  }
  std::string stats() const { return fs_.stats().empty() ? "" : fs_.stats().front(); }

  std::string content_;
  uint64_t ino_ = 0;
  uint64_t fh_ = 0;
};

TEST_F(PassthroughUringTest, WorkerBatchIsOneSubmitAndReadsTheFile) {
  std::unique_ptr<WorkerHook> hook = session_.attach_worker();
  ASSERT_NE(hook, nullptr) << "io_uring unavailable?";
  ASSERT_GE(hook->fd(), 0);
  std::vector<std::unique_ptr<TestRequest>> reads;
  for (int b = 0; b < kReads; ++b) {
    reads.push_back(start_read(b));
    ASSERT_EQ(reads.back()->completions, 0) << "block " << b << " answered before flush()";
  }
  EXPECT_NE(stats().find("16 operations, 0 submits"), std::string::npos) << stats();
  hook->flush();
  // From the page cache they complete inline; anything later signals fd().
  for (int i = 0; i < 500; ++i) {
    if (std::all_of(reads.begin(), reads.end(), [](const auto& r) { return r->completions; }))
      break;
    pollfd pfd{hook->fd(), POLLIN, 0};
    if (::poll(&pfd, 1, 10) > 0) hook->on_readable();
  }
  for (int b = 0; b < kReads; ++b) EXPECT_EQ(check_read(*reads[size_t(b)], b), "") << b;
  EXPECT_NE(stats().find("16 operations, 1 submits"), std::string::npos) << stats();
  EXPECT_NE(stats().find("1 worker rings, 0 fallback rings"), std::string::npos) << stats();

  // Prepared and never flushed: the hook's end starts it and waits for it.
  auto last = start_read(3);
  EXPECT_EQ(last->completions, 0);
  hook.reset();
  EXPECT_EQ(check_read(*last, 3), "");
}

TEST_F(PassthroughUringTest, ThreadWithoutHookIsServedByItself) {
  std::unique_ptr<TestRequest> req;
  std::thread([&] { req = start_read(5); }).join();
  std::atomic_ref<int> completions(req->completions);
  for (int i = 0; i < 500 && completions.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(check_read(*req, 5), "");
  EXPECT_NE(stats().find("0 worker rings, 1 fallback rings"), std::string::npos) << stats();
}

// With the ring and data in the page cache (as the file just written is),
// a READ is answered at once inside handle(), before any flush(), and never
// reaches the ring. A READ that runs past the end gets a short count from the
// non-blocking read, which may mean "not cached": the ring reads it again,
// and its answer (the bytes up to the end) comes after flush().
class PassthroughCachedReadTest : public PassthroughUringTest {
 protected:
  PassthroughCachedReadTest() : PassthroughUringTest(UringMode::kOn) {}
};

TEST_F(PassthroughCachedReadTest, CachedReadsAreAnsweredAtOnceAndTheTailGoesThroughTheRing) {
  std::unique_ptr<WorkerHook> hook = session_.attach_worker();
  ASSERT_NE(hook, nullptr) << "io_uring unavailable?";
  std::vector<std::unique_ptr<TestRequest>> reads;
  for (int b = 0; b < kReads; ++b) {
    reads.push_back(start_read(b));
    EXPECT_EQ(check_read(*reads.back(), b), "") << "block " << b << " not answered at once";
  }
  EXPECT_NE(stats().find("0 operations, 0 submits"), std::string::npos) << stats();
  EXPECT_NE(stats().find("16 reads and 0 writes done at once"), std::string::npos) << stats();

  // Half a block before the end, a block long: 2048 bytes, then the end.
  fuse_read_in in{};
  in.fh = fh_;
  in.offset = kReads * kBlock - kBlock / 2;
  in.size = kBlock;
  TestRequest tail(op(FUSE_READ, ino_).arg(in).bytes());
  session_.handle(tail);
  EXPECT_EQ(tail.completions, 0) << "a short non-blocking read taken for the end of the file";
  hook->flush();
  for (int i = 0; i < 500 && tail.completions == 0; ++i) {
    pollfd pfd{hook->fd(), POLLIN, 0};
    if (::poll(&pfd, 1, 10) > 0) hook->on_readable();
  }
  ASSERT_EQ(tail.completions, 1);
  ASSERT_EQ(tail.error(), 0);
  EXPECT_EQ(tail.reply_len, sizeof(fuse_out_header) + kBlock / 2);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(tail.reply_data()), kBlock / 2),
            content_.substr(content_.size() - kBlock / 2));
  EXPECT_NE(stats().find("1 operations, 1 submits"), std::string::npos) << stats();

  // A WRITE into the page cache is done at once too: with RWF_NOWAIT where
  // the file system has it, else (ext4) as a plain write, never by the ring.
  fuse_open_in rw{O_RDWR, 0};
  auto opened = run(op(FUSE_OPEN, ino_).arg(rw));
  ASSERT_EQ(opened->error(), 0);
  fuse_write_in w{};
  w.fh = opened->payload<fuse_open_out>().fh;
  w.size = 5;
  TestRequest write(op(FUSE_WRITE, ino_).arg(w).raw("HELLO").bytes());
  session_.handle(write);
  ASSERT_EQ(write.completions, 1) << "a write into the page cache waited for the ring";
  EXPECT_EQ(write.error(), 0);
  EXPECT_EQ(write.payload<fuse_write_out>().size, 5u);
  EXPECT_NE(stats().find("1 operations, 1 submits"), std::string::npos) << stats();
  EXPECT_NE(stats().find("and 1 writes done at once"), std::string::npos) << stats();
  std::ifstream in_host(host("f"));
  std::string head(5, '\0');
  in_host.read(head.data(), 5);
  EXPECT_EQ(head, "HELLO");
}

TEST(PassthroughStart, MissingDirectoryIsOneLine) {
  PassthroughOptions o;
  o.root = "/nonexistent/dpfs-export";
  try {
    Passthrough p(o);
    FAIL() << "constructed over a missing directory";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()),
              "passthrough: cannot open directory /nonexistent/dpfs-export: No such file or "
              "directory");
  }
}

}  // namespace
}  // namespace dpfs
