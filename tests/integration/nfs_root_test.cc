// The NFS backend at the edge of its export, in-process against the real
// ganesha (nfs_server.h): the export is a sub-directory of what the server
// exports, beside a sibling with a known name. ".." of the export's root
// must be the root itself: the server would answer the directory above
// (NFSv3 LOOKUP "..", NFSv4 LOOKUPP), where the sibling is. A kernel sends
// LOOKUP ".." only for NFS-exported FUSE mounts; a hostile tenant sends it
// whenever it likes, so the requests are built here by hand. And the
// backend's own wall: "." and ".." are never created, removed or renamed.
#include <linux/fuse.h>
#include <sys/stat.h>

#include <cstring>
#include <future>
#include <map>

#include "../unit/session_harness.h"
#include "backend/nfs/nfs.h"
#include "fuse/session.h"
#include "nfs_server.h"

namespace dpfs::itest {
namespace {

using testing::init_request;
using testing::RequestBuilder;

// A request answered on the NFS connection's thread: waited for.
class AsyncRequest final : public fuse::Request {
 public:
  explicit AsyncRequest(std::vector<uint8_t> bytes)
      : bytes_(std::move(bytes)), out_buf_(1 << 16), done_(promise_.get_future()) {
    in_iov_ = {bytes_.data(), bytes_.size()};
    out_iov_ = {out_buf_.data(), out_buf_.size()};
    in = {&in_iov_, 1};
    out = {&out_iov_, 1};
  }
  void complete(size_t len) override {
    reply_len = len;
    promise_.set_value();
  }
  bool wait() { return done_.wait_for(30s) == std::future_status::ready; }
  int error() const { return reinterpret_cast<const fuse_out_header*>(out_buf_.data())->error; }
  template <typename T>
  const T& payload() const {
    return *reinterpret_cast<const T*>(out_buf_.data() + sizeof(fuse_out_header));
  }
  const uint8_t* reply_data() const { return out_buf_.data() + sizeof(fuse_out_header); }

  size_t reply_len = 0;

 private:
  std::vector<uint8_t> bytes_;
  std::vector<uint8_t> out_buf_;
  iovec in_iov_{}, out_iov_{};
  std::promise<void> promise_;
  std::future<void> done_;
};

class NfsRootTest : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override {
    std::string problem;
    NfsServer& server = NfsServer::shared(&problem);
    ASSERT_TRUE(problem.empty()) << problem;
    above_ = server.fresh_dir("root-v" + std::to_string(GetParam()));
    ASSERT_FALSE(above_.empty());
    exported_ = above_ + "/export";
    ASSERT_EQ(::mkdir(exported_.c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((above_ + "/sibling-secret").c_str(), 0755), 0);
    ASSERT_EQ(::mkdir((exported_ + "/sub").c_str(), 0755), 0);
    NfsOptions o;
    o.url = nfs::parse_nfs_url(NfsServer::url(exported_, GetParam()));
    o.timeout = std::chrono::milliseconds(10000);
    backend_ = std::make_unique<NfsBackend>(o);
    session_ = std::make_unique<fuse::FuseSession>(*backend_, fuse::SessionOptions{});
    AsyncRequest init(init_request());
    session_->handle(init);
    ASSERT_TRUE(init.wait());
    ASSERT_EQ(init.error(), 0);
  }

  // Sends `b` and waits for the answer.
  std::unique_ptr<AsyncRequest> send(RequestBuilder b) {
    b.header().uid = 0;
    b.header().gid = 0;
    auto req = std::make_unique<AsyncRequest>(b.bytes());
    session_->handle(*req);
    EXPECT_TRUE(req->wait()) << "no answer within 30 s";
    return req;
  }
  // LOOKUP: the entry, or the errno in *error.
  fuse_entry_out lookup(uint64_t parent, const std::string& name, int* error) {
    auto req = send(RequestBuilder(FUSE_LOOKUP, parent, next_unique_++).name(name));
    *error = -req->error();
    return *error == 0 ? req->payload<fuse_entry_out>() : fuse_entry_out{};
  }
  int status(RequestBuilder b) { return -send(std::move(b))->error(); }
  // READDIR of the root, from the start: each name's d_ino.
  std::map<std::string, uint64_t> list_root() {
    fuse_open_in open{O_RDONLY, 0};
    auto dir = send(RequestBuilder(FUSE_OPENDIR, kRootIno, next_unique_++).arg(open));
    EXPECT_EQ(dir->error(), 0);
    fuse_read_in read{};
    read.fh = dir->payload<fuse_open_out>().fh;
    read.size = 16384;
    auto list = send(RequestBuilder(FUSE_READDIR, kRootIno, next_unique_++).arg(read));
    EXPECT_EQ(list->error(), 0);
    std::map<std::string, uint64_t> names;
    const size_t len = list->reply_len - sizeof(fuse_out_header);
    for (size_t at = 0; at + FUSE_NAME_OFFSET <= len;) {
      fuse_dirent d;
      std::memcpy(&d, list->reply_data() + at, FUSE_NAME_OFFSET);
      names[std::string(reinterpret_cast<const char*>(list->reply_data() + at + FUSE_NAME_OFFSET),
                        d.namelen)] = d.ino;
      at += FUSE_DIRENT_SIZE(&d);
    }
    fuse_release_in release{};
    release.fh = read.fh;
    send(RequestBuilder(FUSE_RELEASEDIR, kRootIno, next_unique_++).arg(release));
    return names;
  }
  ino_t host_ino(const std::string& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_ino;
  }

  std::string above_, exported_;
  std::unique_ptr<NfsBackend> backend_;
  std::unique_ptr<fuse::FuseSession> session_;
  uint64_t next_unique_ = 10;
};

TEST_P(NfsRootTest, DotDotOfTheExportRootIsTheRoot) {
  int error = 0;
  const fuse_entry_out up = lookup(kRootIno, "..", &error);
  ASSERT_EQ(error, 0);
  EXPECT_EQ(up.nodeid, kRootIno) << "\"..\" of the root must be the root";
  EXPECT_EQ(up.attr.ino, host_ino(exported_)) << "not the directory above the export";
  EXPECT_NE(up.attr.ino, host_ino(above_));
  // Nothing above is reachable through it.
  lookup(up.nodeid, "sibling-secret", &error);
  EXPECT_EQ(error, ENOENT);
  lookup(lookup(up.nodeid, "..", &error).nodeid, "sibling-secret", &error);
  EXPECT_EQ(error, ENOENT);

  const fuse_entry_out self = lookup(kRootIno, ".", &error);
  ASSERT_EQ(error, 0);
  EXPECT_EQ(self.nodeid, kRootIno);

  // Nor does the root's listing name the directory above as its "..".
  const auto names = list_root();
  ASSERT_EQ(names.count(".."), 1u);
  EXPECT_EQ(names.at(".."), host_ino(exported_));
  EXPECT_EQ(names.at("."), host_ino(exported_));
  EXPECT_EQ(names.count("sub"), 1u);

  // Below the root ".." still climbs, to the root.
  const fuse_entry_out sub = lookup(kRootIno, "sub", &error);
  ASSERT_EQ(error, 0);
  const fuse_entry_out sub_up = lookup(sub.nodeid, "..", &error);
  ASSERT_EQ(error, 0);
  EXPECT_EQ(sub_up.attr.ino, host_ino(exported_));
}

TEST_P(NfsRootTest, DotNamesAreNeverCreatedRemovedOrRenamed) {
  int error = 0;
  const uint64_t sub = lookup(kRootIno, "sub", &error).nodeid;
  ASSERT_EQ(error, 0);
  fuse_mkdir_in mk{0755, 0};
  EXPECT_EQ(status(RequestBuilder(FUSE_MKDIR, sub, next_unique_++).arg(mk).name("..")), EINVAL);
  EXPECT_EQ(status(RequestBuilder(FUSE_RMDIR, sub, next_unique_++).name("..")), EINVAL);
  EXPECT_EQ(status(RequestBuilder(FUSE_RMDIR, sub, next_unique_++).name(".")), EINVAL);
  EXPECT_EQ(status(RequestBuilder(FUSE_UNLINK, kRootIno, next_unique_++).name("..")), EINVAL);
  fuse_rename_in rn{};
  rn.newdir = kRootIno;
  EXPECT_EQ(status(RequestBuilder(FUSE_RENAME, sub, next_unique_++).arg(rn).name("..").name("x")),
            EINVAL);
  EXPECT_EQ(
      status(RequestBuilder(FUSE_RENAME, kRootIno, next_unique_++).arg(rn).name("sub").name("..")),
      EINVAL);
  // A name longer than NAME_MAX never reaches the server.
  lookup(kRootIno, std::string(NAME_MAX + 1, 'n'), &error);
  EXPECT_EQ(error, ENAMETOOLONG);
  // What is above the export, and the export, are as they were.
  struct stat st {};
  EXPECT_EQ(::stat((above_ + "/sibling-secret").c_str(), &st), 0);
  EXPECT_EQ(::stat((exported_ + "/sub").c_str(), &st), 0);
  EXPECT_NE(::stat((exported_ + "/x").c_str(), &st), 0);
}

INSTANTIATE_TEST_SUITE_P(Versions, NfsRootTest, ::testing::Values(3, 4),
                         [](const auto& info) { return "v" + std::to_string(info.param); });

}  // namespace
}  // namespace dpfs::itest
