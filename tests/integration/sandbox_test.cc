// The daemon serves from inside its sandbox (src/sandbox/sandbox.h), seen
// from outside through /proc: every thread has the seccomp filter,
// no_new_privs and only its backend's capabilities; its mount namespace is
// its own and its root is the shared directory (passthrough) or empty
// (memfs); and it still serves. Unprivileged, it gets there through a user
// namespace. The whole suite runs sandboxed too (the default), so every
// other test shows that serving works inside.
#include <linux/capability.h>
#include <sys/xattr.h>

#include "mount_fixture.h"

#ifndef DPFS_BENCH
#error "DPFS_BENCH must name the dpfs-bench binary"
#endif

namespace dpfs::itest {
namespace {

// "Seccomp:\t2" -> "2", from /proc/PID[/task/TID]/status.
std::string status_field(const std::string& status_path, const std::string& name) {
  for (const std::string& line : lines_of(read_text_file(status_path))) {
    if (line.starts_with(name + ":")) {
      const size_t at = line.find_first_not_of(" \t", name.size() + 1);
      return at == std::string::npos ? "" : line.substr(at);
    }
  }
  return "(no " + name + " in " + status_path + ")";
}

std::string hex_caps(std::initializer_list<int> caps) {
  unsigned long long mask = 0;
  for (const int c : caps) mask |= 1ULL << c;
  char text[17];
  std::snprintf(text, sizeof text, "%016llx", mask);
  return text;
}

// What the passthrough backend keeps, as root, under the default host
// policy (src/daemon/serve.cc): no device nodes, user.* xattrs only.
const std::string kPassthroughCaps = hex_caps({CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH,
                                               CAP_FOWNER, CAP_FSETID, CAP_SETUID, CAP_SETGID});
// ... and when the policy lets tenants create device nodes and use the
// trusted.* and security.* namespaces.
const std::string kPassthroughAllCaps =
    hex_caps({CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_SETUID,
              CAP_SETGID, CAP_MKNOD, CAP_SETFCAP, CAP_SYS_ADMIN});
const std::string kNoCaps = hex_caps({});

// Every thread of `pid`: seccomp filter mode (2) or none (0), no_new_privs,
// the effective and bounding sets. Returns "" or what differs.
std::string check_threads(pid_t pid, const std::string& seccomp, const std::string& caps) {
  std::string problems;
  const std::string task = "/proc/" + std::to_string(pid) + "/task";
  size_t threads = 0;
  for (const auto& entry : std::filesystem::directory_iterator(task)) {
    ++threads;
    const std::string status = entry.path().string() + "/status";
    const std::string tid = entry.path().filename().string();
    auto expect = [&](const std::string& name, const std::string& want) {
      const std::string got = status_field(status, name);
      if (got != want)
        problems += "thread " + tid + ": " + name + " " + got + ", want " + want + "\n";
    };
    expect("Seccomp", seccomp);
    expect("NoNewPrivs", "1");
    expect("CapEff", caps);
    expect("CapPrm", caps);
    expect("CapBnd", caps);
  }
  if (threads < 2) problems += "only " + std::to_string(threads) + " thread(s): no workers?\n";
  return problems;
}

std::string ns_of(pid_t pid, const char* ns) {
  std::error_code ec;
  return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/ns/" + ns, ec).string();
}

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

class SandboxTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    export_ = mount_.base() + "/export";
    ASSERT_EQ(::mkdir(export_.c_str(), 0755), 0);
  }
  void TearDown() override {
    if (mount_.pid() > 0) {
      EXPECT_EQ(mount_.stop(), "");
    }
    std::error_code ignored;
    std::filesystem::remove_all(export_, ignored);
  }

  std::string start(const std::string& backend, std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"serve", "--backend", backend, "--fuse-mount", mount_.dir()};
    args.insert(args.end(), extra.begin(), extra.end());
    return mount_.start_dpfs(args);
  }
  std::string proc(const std::string& what) const {
    return "/proc/" + std::to_string(mount_.pid()) + "/" + what;
  }

  Mount mount_;
  std::string export_;
};

TEST_F(SandboxTest, PassthroughServesFromInsideItsDirectory) {
  ASSERT_EQ(start("passthrough:" + export_), "");
  // Serving works: a file written through the mount is on the host, and
  // the other way round.
  ASSERT_EQ(write_file(mount_.dir() + "/through-mount", "tenant"), 0);
  EXPECT_EQ(read_text_file(export_ + "/through-mount"), "tenant");
  ASSERT_EQ(write_file(export_ + "/from-host", "host"), 0);
  EXPECT_EQ(read_text_file(mount_.dir() + "/from-host"), "host");
  // xattrs and chmod go through the held /proc/self/fd.
  EXPECT_SYS(::setxattr((mount_.dir() + "/through-mount").c_str(), "user.k", "v", 1, 0));
  EXPECT_SYS(::chmod((mount_.dir() + "/through-mount").c_str(), 0600));
  struct stat st {};
  ASSERT_SYS(::stat((export_ + "/through-mount").c_str(), &st));
  EXPECT_EQ(st.st_mode & 07777, 0600u);

  EXPECT_EQ(check_threads(mount_.pid(), "2", kPassthroughCaps), "");
  EXPECT_NE(ns_of(mount_.pid(), "mnt"), ns_of(::getpid(), "mnt"));
  EXPECT_NE(ns_of(mount_.pid(), "net"), ns_of(::getpid(), "net")) << "passthrough needs no network";
  EXPECT_NE(ns_of(mount_.pid(), "ipc"), ns_of(::getpid(), "ipc"));
  // Its root is the shared directory: what it names "/" is the export.
  EXPECT_TRUE(same_file(proc("root"), export_));
  EXPECT_TRUE(same_file(proc("root") + "/..", export_)) << "'..' at its root leaves the export";
  EXPECT_TRUE(same_file(proc("cwd"), proc("fd"))) << "its working directory is /proc/self/fd";
  EXPECT_NE(mount_.log().find("sandbox: namespace (root " + export_ + ")"), std::string::npos)
      << mount_.log();
  // Stopping unmounts, although the daemon cannot see the mount point.
  EXPECT_EQ(mount_.stop(), "");
  EXPECT_FALSE(find_mount(mount_.dir()));
}

TEST_F(SandboxTest, PassthroughKeepsWhatThePolicyAllowsTenants) {
  ASSERT_EQ(start("passthrough:" + export_,
                  {"--allow-device-nodes", "--xattr-namespaces", "user,trusted,security"}),
            "");
  EXPECT_EQ(check_threads(mount_.pid(), "2", kPassthroughAllCaps), "");
  // What the capabilities are for: trusted.* needs CAP_SYS_ADMIN.
  const std::string f = mount_.dir() + "/f";
  ASSERT_EQ(write_file(f, "x"), 0);
  EXPECT_SYS(::setxattr(f.c_str(), "trusted.k", "v", 1, 0));
  char value[8] = {};
  EXPECT_EQ(::getxattr((export_ + "/f").c_str(), "trusted.k", value, sizeof value), 1);
}

TEST_F(SandboxTest, MemfsGetsAnEmptyRootAndNoCapabilities) {
  ASSERT_EQ(start("memfs"), "");
  ASSERT_EQ(write_file(mount_.dir() + "/f", "x"), 0);
  EXPECT_EQ(read_text_file(mount_.dir() + "/f"), "x");
  EXPECT_EQ(check_threads(mount_.pid(), "2", kNoCaps), "");
  EXPECT_NE(ns_of(mount_.pid(), "mnt"), ns_of(::getpid(), "mnt"));
  EXPECT_NE(ns_of(mount_.pid(), "net"), ns_of(::getpid(), "net"));
  EXPECT_EQ(names_in(proc("root")), std::vector<std::string>{});
  EXPECT_FALSE(same_file(proc("root"), "/"));
}

TEST_F(SandboxTest, ChrootModeRootsItInTheDirectory) {
  ASSERT_EQ(start("passthrough:" + export_, {"--sandbox", "chroot"}), "");
  ASSERT_EQ(write_file(mount_.dir() + "/f", "x"), 0);
  EXPECT_EQ(read_text_file(export_ + "/f"), "x");
  EXPECT_EQ(check_threads(mount_.pid(), "2", kPassthroughCaps), "");
  EXPECT_EQ(ns_of(mount_.pid(), "mnt"), ns_of(::getpid(), "mnt"));
  EXPECT_TRUE(same_file(proc("root"), export_));
  EXPECT_EQ(mount_.stop(), "");
  EXPECT_FALSE(find_mount(mount_.dir()));
}

TEST_F(SandboxTest, NoneModeKeepsTheHostViewButNotThePrivileges) {
  ASSERT_EQ(start("passthrough:" + export_, {"--sandbox", "none", "--seccomp", "none"}), "");
  ASSERT_EQ(write_file(mount_.dir() + "/f", "x"), 0);
  EXPECT_EQ(read_text_file(export_ + "/f"), "x");
  EXPECT_EQ(check_threads(mount_.pid(), "0", kPassthroughCaps), "");
  EXPECT_EQ(ns_of(mount_.pid(), "mnt"), ns_of(::getpid(), "mnt"));
  EXPECT_TRUE(same_file(proc("root"), "/"));
}

TEST(SandboxUnprivileged, MemfsDeviceServesAsNobodyInAUserNamespace) {
  const std::string problem = environment_problem();
  ASSERT_TRUE(problem.empty()) << problem;
  char tmpl[] = "/tmp/dpfs-sandbox-itest.XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  ASSERT_EQ(::chown(dir.c_str(), 65534, 65534), 0);
  const std::string socket = dir + "/dev.sock";
  std::string error;
  const pid_t pid = spawn_logged(
      {"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", dpfs_binary(),
       "serve", "--backend", "memfs", "--vhost-user", socket, "--threads", "1"},
      dir + "/log", &error);
  ASSERT_GT(pid, 0) << error;
  // Up once it logs how to boot a guest: after the sandbox (the socket
  // exists before).
  bool up = false;
  for (int i = 0; i < 500 && !up; ++i) {
    up = read_text_file(dir + "/log").find("in the guest: mount") != std::string::npos;
    if (!up) std::this_thread::sleep_for(10ms);
    if (::waitpid(pid, nullptr, WNOHANG) == pid) break;
  }
  ASSERT_TRUE(up) << read_text_file(dir + "/log");
  // The device's process (the supervisor's child): a user namespace of its
  // own, the filter on every thread, and it serves.
  const pid_t device = served_by(read_text_file(dir + "/log"), "vhost-user ");
  ASSERT_GT(device, 0) << read_text_file(dir + "/log");
  EXPECT_NE(ns_of(device, "user"), ns_of(::getpid(), "user"));
  EXPECT_NE(ns_of(device, "mnt"), ns_of(::getpid(), "mnt"));
  EXPECT_EQ(status_field("/proc/" + std::to_string(device) + "/status", "Seccomp"), "2");
  EXPECT_EQ(status_field("/proc/" + std::to_string(device) + "/status", "Uid"),
            "65534\t65534\t65534\t65534");
  const RunResult r = run({DPFS_BENCH, "--socket", socket, "--workload", "getattr", "--duration",
                           "0.2", "--warmup", "0.05", "--json"},
                          30s);
  EXPECT_EQ(r.exit_code(), 0) << r.describe() << read_text_file(dir + "/log");
  EXPECT_NE(r.out.find("\"errors\": 0"), std::string::npos) << r.out;
  ::kill(pid, SIGTERM);
  int status = 0;
  ::waitpid(pid, &status, 0);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status << "\n"
                                                             << read_text_file(dir + "/log");
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dpfs::itest
