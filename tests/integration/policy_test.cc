// Host policy through a real FUSE mount, passthrough backend: what a root
// caller on the mount may do to the host directory behind it. Each test
// starts its own daemon with the policy flags it checks; the files are
// inspected on the host, where the policy matters.
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/xattr.h>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

class PolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    mount_ = std::make_unique<Mount>();
    exported_ = mount_->base() + "/export";
    ASSERT_SYS(::mkdir(exported_.c_str(), 0777));
    // Writable by anyone: a squashed root creates files as an unprivileged uid.
    ASSERT_SYS(::chmod(exported_.c_str(), 0777));
  }
  void TearDown() override {
    if (mount_ && mount_->pid() > 0) {
      const std::string p = mount_->stop(SIGTERM);
      EXPECT_EQ(p, "") << "stopping the daemon";
    }
    mount_.reset();
  }

  // Serves the export with these policy flags (and nothing of
  // $DPFS_TEST_SERVE_ARGS: the defaults are what is tested).
  void start(std::vector<std::string> flags = {}) {
    std::vector<std::string> args{
        "serve",     "--backend", "passthrough:" + exported_, "--fuse-mount", mount_->dir(),
        "--threads", "1"};
    args.insert(args.end(), flags.begin(), flags.end());
    const std::string problem = mount_->start_dpfs(args);
    ASSERT_EQ(problem, "");
  }

  std::string m(const std::string& name) const { return mount_->dir() + "/" + name; }
  std::string host(const std::string& name) const { return exported_ + "/" + name; }

  struct stat host_stat(const std::string& name) {
    struct stat st {};
    if (::lstat(host(name).c_str(), &st) != 0) {
      ADD_FAILURE() << "lstat " << host(name) << ": " << errname(errno);
    }
    return st;
  }

  // The owner the tenant is shown.
  static uid_t lst_uid(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0)
      ADD_FAILURE() << "lstat " << path << ": " << errname(errno);
    return st.st_uid;
  }

  std::unique_ptr<Mount> mount_;
  std::string exported_;
};

TEST_F(PolicyTest, MountIsNosuidNodevByDefault) {
  ASSERT_NO_FATAL_FAILURE(start());
  const std::optional<MountInfo> info = find_mount(mount_->dir());
  ASSERT_TRUE(info);
  EXPECT_NE(("," + info->options + ",").find(",nosuid,"), std::string::npos) << info->options;
  EXPECT_NE(("," + info->options + ",").find(",nodev,"), std::string::npos) << info->options;
}

TEST_F(PolicyTest, MountAllowsSuidAndDevWhenAsked) {
  ASSERT_NO_FATAL_FAILURE(start({"--fuse-allow-suid", "--fuse-allow-dev"}));
  const std::optional<MountInfo> info = find_mount(mount_->dir());
  ASSERT_TRUE(info);
  EXPECT_EQ(("," + info->options + ",").find(",nosuid,"), std::string::npos) << info->options;
  EXPECT_EQ(("," + info->options + ",").find(",nodev,"), std::string::npos) << info->options;
}

TEST_F(PolicyTest, DeviceNodesRefusedByDefault) {
  ASSERT_NO_FATAL_FAILURE(start());
  EXPECT_ERRNO(EPERM, ::mknod(m("null").c_str(), S_IFCHR | 0666, makedev(1, 3)));
  EXPECT_ERRNO(EPERM, ::mknod(m("sda").c_str(), S_IFBLK | 0600, makedev(8, 0)));
  EXPECT_ERRNO(ENOENT, ::access(host("null").c_str(), F_OK)) << "nothing made on the host";
  EXPECT_SYS(::mknod(m("fifo").c_str(), S_IFIFO | 0600, 0));
  EXPECT_TRUE(S_ISFIFO(host_stat("fifo").st_mode));
  EXPECT_SYS(::mknod(m("sock").c_str(), S_IFSOCK | 0600, 0));
}

TEST_F(PolicyTest, DeviceNodesWhenAllowed) {
  ASSERT_NO_FATAL_FAILURE(start({"--allow-device-nodes"}));
  ASSERT_SYS(::mknod(m("null").c_str(), S_IFCHR | 0666, makedev(1, 3)));
  const struct stat st = host_stat("null");
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(1, 3));
}

TEST_F(PolicyTest, PrivilegedXattrsRefusedByDefault) {
  ASSERT_NO_FATAL_FAILURE(start());
  ASSERT_EQ(write_file(m("f"), "x"), 0);
  EXPECT_ERRNO(EPERM, ::setxattr(m("f").c_str(), "trusted.x", "1", 1, 0));
  const char cap[20] = {0, 0, 0, 2};  // VFS_CAP_REVISION_2, no capabilities
  EXPECT_ERRNO(EPERM, ::setxattr(m("f").c_str(), "security.capability", cap, sizeof cap, 0));
  EXPECT_ERRNO(ENODATA, ::getxattr(host("f").c_str(), "trusted.x", nullptr, 0))
      << "nothing set on the host";
  EXPECT_SYS(::setxattr(m("f").c_str(), "user.x", "1", 1, 0));
  // A trusted.* set on the host is neither shown nor removable through the mount.
  ASSERT_SYS(::setxattr(host("f").c_str(), "trusted.host", "h", 1, 0));
  EXPECT_ERRNO(ENODATA, ::getxattr(m("f").c_str(), "trusted.host", nullptr, 0));
  EXPECT_ERRNO(EPERM, ::removexattr(m("f").c_str(), "trusted.host"));
  char names[1024];
  const ssize_t n = ::listxattr(m("f").c_str(), names, sizeof names);
  ASSERT_SYS(n);
  EXPECT_EQ(std::string(names, size_t(n)), std::string("user.x\0", 7));
}

TEST_F(PolicyTest, TrustedXattrsWhenAllowed) {
  ASSERT_NO_FATAL_FAILURE(start({"--xattr-namespaces", "user,trusted"}));
  ASSERT_EQ(write_file(m("f"), "x"), 0);
  ASSERT_SYS(::setxattr(m("f").c_str(), "trusted.x", "1", 1, 0));
  char v[8] = {};
  EXPECT_EQ(::getxattr(host("f").c_str(), "trusted.x", v, sizeof v), 1);
  EXPECT_EQ(v[0], '1');
  EXPECT_ERRNO(EPERM, ::setxattr(m("f").c_str(), "security.x", "1", 1, 0)) << "security stays off";
}

TEST_F(PolicyTest, SquashedRootCreatesFilesAsTheSquashId) {
  ASSERT_NO_FATAL_FAILURE(start({"--squash", "root"}));
  ASSERT_EQ(write_file(m("f"), "x"), 0);
  ASSERT_SYS(::mkdir(m("d").c_str(), 0755));
  for (const char* name : {"f", "d"}) {
    const struct stat st = host_stat(name);
    EXPECT_EQ(st.st_uid, 65534u) << name;
    EXPECT_EQ(st.st_gid, 65534u) << name;
  }
  // chown to root is chown to the squash id: no root-owned file on the host.
  EXPECT_SYS(::chown(m("f").c_str(), 0, 0));
  EXPECT_EQ(host_stat("f").st_uid, 65534u);
  // Other callers act as themselves.
  EXPECT_SYS(as_user(kUser1, [&] { return ::mkdir(m("u").c_str(), 0755); }));
  EXPECT_EQ(host_stat("u").st_uid, kUser1.uid);
}

TEST_F(PolicyTest, TranslatedIdsBothWays) {
  ASSERT_NO_FATAL_FAILURE(
      start({"--translate-uid", "map:1000:200000:1", "--translate-uid",
             "forbid-guest:1001:1,map:1005:200005:1", "--translate-gid", "map:1000:300000:10"}));
  ASSERT_SYS(as_user(kUser1, [&] { return ::mkdir(m("u").c_str(), 0755); }));
  EXPECT_EQ(host_stat("u").st_uid, 200000u);
  EXPECT_EQ(host_stat("u").st_gid, 300000u);
  EXPECT_EQ(lst_uid(m("u")), kUser1.uid) << "the tenant sees its own id";
  EXPECT_ERRNO(EPERM, as_user(kUser2, [&] { return ::mkdir(m("v").c_str(), 0755); }))
      << "forbid-guest";
  ASSERT_SYS(::chown(m("u").c_str(), 1005, 1005));
  EXPECT_EQ(host_stat("u").st_uid, 200005u);
  EXPECT_EQ(host_stat("u").st_gid, 300005u);
  EXPECT_EQ(lst_uid(m("u")), 1005u);
}

TEST_F(PolicyTest, WriteByANonOwnerDropsSetuidOnTheHost) {
  ASSERT_NO_FATAL_FAILURE(start());
  ASSERT_EQ(write_file(m("f"), "x", 0777), 0);
  ASSERT_SYS(::chmod(m("f").c_str(), 04777));
  ASSERT_EQ(host_stat("f").st_mode & 07777, 04777u);
  EXPECT_SYS(as_user(kUser1, [&] {
    const int fd = ::open(m("f").c_str(), O_WRONLY);
    if (fd < 0) return -1;
    const ssize_t n = ::write(fd, "y", 1);
    ::close(fd);
    return n == 1 ? 0 : -1;
  }));
  EXPECT_EQ(host_stat("f").st_mode & 07777, 0777u);
}

TEST_F(PolicyTest, WriteBySquashedRootDropsSetuidOnTheHost) {
  // The tenant's root has CAP_FSETID in its kernel, which therefore asks
  // nothing dropped; squashed, it has no such right on the host.
  ASSERT_NO_FATAL_FAILURE(start({"--squash", "root"}));
  ASSERT_EQ(write_file(m("f"), "x", 0755), 0);
  ASSERT_SYS(::chmod(m("f").c_str(), 04755));
  ASSERT_EQ(host_stat("f").st_mode & 07777, 04755u);
  const int fd = ::open(m("f").c_str(), O_WRONLY);
  ASSERT_SYS(fd);
  EXPECT_EQ(::write(fd, "y", 1), 1);
  ::close(fd);
  EXPECT_EQ(host_stat("f").st_mode & 07777, 0755u);
}

// --- Sockets ------------------------------------------------------------------

// Starts `dpfs serve` with a vhost-user socket and waits until it accepts
// (listen() comes after the mode is set).
std::string start_vhost_user(Mount& mount, const std::string& socket,
                             std::vector<std::string> flags, pid_t* pid) {
  std::vector<std::string> args{dpfs_binary(), "serve",        "--backend",
                                "memfs",       "--vhost-user", socket};
  args.insert(args.end(), flags.begin(), flags.end());
  std::string error;
  *pid = spawn_logged(args, mount.base() + "/vu.log", &error);
  if (*pid < 0) return error;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", socket.c_str());
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    Fd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) return "";
    int status = 0;
    if (::waitpid(*pid, &status, WNOHANG) == *pid) {
      *pid = -1;
      return "dpfs exited: " + read_text_file(mount.base() + "/vu.log");
    }
    std::this_thread::sleep_for(10ms);
  }
  return "the socket never accepted: " + read_text_file(mount.base() + "/vu.log");
}

void stop(pid_t pid) {
  if (pid <= 0) return;
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST_F(PolicyTest, VhostUserSocketIsOwnerOnly) {
  const std::string socket = mount_->base() + "/vu.sock";
  const mode_t old = ::umask(0);  // the mode must not come from the umask
  pid_t pid = -1;
  const std::string problem = start_vhost_user(*mount_, socket, {}, &pid);
  ::umask(old);
  ASSERT_EQ(problem, "");
  struct stat st {};
  EXPECT_SYS(::stat(socket.c_str(), &st));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  stop(pid);
}

TEST_F(PolicyTest, VhostUserSocketGroup) {
  const std::string socket = mount_->base() + "/vu.sock";
  pid_t pid = -1;
  ASSERT_EQ(start_vhost_user(*mount_, socket, {"--socket-group", "4242"}, &pid), "");
  struct stat st {};
  EXPECT_SYS(::stat(socket.c_str(), &st));
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, 4242u);
  stop(pid);
}

}  // namespace
}  // namespace dpfs::itest
