// The sandbox's pieces, each entered by a forked child (a sandbox is for
// the life of a process): the seccomp filter kills on a call outside its
// list and lets the list through, capabilities shrink to what is kept, the
// namespace's root is the shared directory (or empty), and an unprivileged
// process gets there through a user namespace.
//
// Children report through their exit status: 0 is success, any other value
// names the check that failed (see each test).
#include "sandbox/sandbox.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "sandbox/capabilities.h"
#include "sandbox/error.h"
#include "sandbox/proc_fd.h"

namespace dpfs::sandbox {
namespace {

// Runs `body` in a forked child and returns its wait status. Exceptions
// become exit code 99.
int in_child(const std::function<int()>& body) {
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    int rc = 99;
    try {
      rc = body();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
    }
    ::_exit(rc);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exit " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by ") + sigabbrev_np(WTERMSIG(status));
  return "status " + std::to_string(status);
}

// A line of /proc/self/status ("CapEff:\t0000000000000001" -> the value).
// Inside a sandbox, whose working directory is /proc/self/fd: "../status".
std::string status_field(const std::string& name, const char* path = "/proc/self/status") {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.starts_with(name + ":")) {
      const size_t at = line.find_first_not_of(" \t", name.size() + 1);
      return at == std::string::npos ? "" : line.substr(at);
    }
  }
  return "";
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/dpfs-sandbox-test-XXXXXX";
    path_ = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool same_file(const struct stat& a, const struct stat& b) {
  return a.st_dev == b.st_dev && a.st_ino == b.st_ino;
}

TEST(Seccomp, ParsesItsActions) {
  EXPECT_EQ(parse_seccomp_action("kill"), SeccompAction::kKill);
  EXPECT_EQ(parse_seccomp_action("log"), SeccompAction::kLog);
  EXPECT_EQ(parse_seccomp_action("none"), SeccompAction::kNone);
  EXPECT_THROW(parse_seccomp_action("trap"), std::invalid_argument);
  EXPECT_EQ(parse_sandbox_mode("namespace"), SandboxMode::kNamespace);
  EXPECT_EQ(parse_sandbox_mode("chroot"), SandboxMode::kChroot);
  EXPECT_EQ(parse_sandbox_mode("none"), SandboxMode::kNone);
  EXPECT_THROW(parse_sandbox_mode("jail"), std::invalid_argument);
}

TEST(Seccomp, KillModeKillsOnACallOutsideTheList) {
  // mount(2): what a sandboxed process must never do again.
  const int status = in_child([] {
    set_no_new_privs();
    install_seccomp_filter(SeccompAction::kKill);
    ::syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, nullptr);
    return 1;  // still alive
  });
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) << describe(status);
}

TEST(Seccomp, KillModeForbidsNewProcessesButNotThreads) {
  // 1: a thread could not be made; 2: fork returned in the parent.
  const int status = in_child([] {
    set_no_new_privs();
    install_seccomp_filter(SeccompAction::kKill);
    int value = 0;
    std::thread([&] { value = 1; }).join();
    if (value != 1) return 1;
    // clone3 answers ENOSYS (glibc falls back to clone); clone without
    // CLONE_THREAD is a new process: killed.
    if (::syscall(SYS_clone3, nullptr, 0) != -1 || errno != ENOSYS) return 3;
    if (::fork() >= 0) return 2;
    return 4;
  });
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS) << describe(status);
}

TEST(Seccomp, TheListServesFilesSocketsAndEvents) {
  // What a serving process does: open and write a file relative to a
  // directory, reopen it through /proc/self/fd, a socket.
  TempDir dir;
  const std::string path = dir.path();
  const int status = in_child([&] {
    const int dirfd = ::open(path.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    set_no_new_privs();
    install_seccomp_filter(SeccompAction::kKill);
    const int fd = ::openat(dirfd, "f", O_CREAT | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0 || ::write(fd, "x", 1) != 1) return 1;
    const int again = ::open(proc_fd_path(fd).c_str(), O_RDONLY | O_CLOEXEC);
    char c = 0;
    if (again < 0 || ::read(again, &c, 1) != 1 || c != 'x') return 2;
    const int sock = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || ::shutdown(sock, SHUT_RDWR) == 0 || errno != ENOTCONN) return 3;
    if (::mkdirat(dirfd, "d", 0755) != 0 || ::unlinkat(dirfd, "d", AT_REMOVEDIR) != 0) return 4;
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Seccomp, LogModeLetsTheCallThrough) {
  const int status = in_child([] {
    set_no_new_privs();
    install_seccomp_filter(SeccompAction::kLog);
    // personality(0xffffffff) only asks; not on the list.
    return ::syscall(SYS_personality, 0xffffffffUL) == -1 ? 1 : 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Capabilities, OnlyWhatIsKeptRemains) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  // 1: CapEff, 2: CapPrm, 3: CapBnd, 4: CapInh/CapAmb, 5: NoNewPrivs.
  const int status = in_child([] {
    const int keep[] = {CAP_CHOWN, CAP_SETUID};
    limit_capabilities(keep);
    set_no_new_privs();
    char expect[17];
    std::snprintf(expect, sizeof expect, "%016llx", (1ULL << CAP_CHOWN) | (1ULL << CAP_SETUID));
    if (status_field("CapEff") != expect) return 1;
    if (status_field("CapPrm") != expect) return 2;
    if (status_field("CapBnd") != expect) return 3;
    if (status_field("CapInh") != "0000000000000000" ||
        status_field("CapAmb") != "0000000000000000")
      return 4;
    if (status_field("NoNewPrivs") != "1") return 5;
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Namespace, TheSharedDirectoryIsTheRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  TempDir dir;
  std::ofstream(dir.path() + "/inside") << "x";
  struct stat shared {};
  ASSERT_EQ(::stat(dir.path().c_str(), &shared), 0);
  // 1: "/" is not the directory, 2: ".." climbs out, 3: a host path is
  // visible, 4: the mount namespace is the host's, 5: proc_fd_path fails,
  // 6: confine returned another path, 7: the network is the host's.
  const std::string host_ns = std::filesystem::read_symlink("/proc/self/ns/mnt");
  const std::string host_net = std::filesystem::read_symlink("/proc/self/ns/net");
  const int status = in_child([&] {
    const std::string own_ns = std::filesystem::read_symlink("/proc/self/ns/mnt");
    if (own_ns != host_ns) return 10;
    ConfineOptions o;
    o.shared_dirs = {dir.path()};
    const std::vector<std::string> inside = confine(o);
    if (inside != std::vector<std::string>{"/"}) return 6;
    struct stat root {
    }, up{}, file{};
    if (::stat("/", &root) != 0 || !same_file(root, shared)) return 1;
    if (::stat("/..", &up) != 0 || !same_file(up, shared)) return 2;
    if (::stat("/inside", &file) != 0) return 1;
    if (::access((dir.path() + "/inside").c_str(), F_OK) == 0) return 3;
    if (::access("/etc/passwd", F_OK) == 0) return 3;
    // The held /proc/self/fd: our own namespaces, and the magic links.
    if (std::filesystem::read_symlink("../ns/mnt").string() == host_ns) return 4;
    if (std::filesystem::read_symlink("../ns/net").string() == host_net) return 7;
    const int fd = ::open("/inside", O_PATH | O_CLOEXEC);
    const int rd = ::open(proc_fd_path(fd).c_str(), O_RDONLY | O_CLOEXEC);
    char c = 0;
    if (rd < 0 || ::read(rd, &c, 1) != 1 || c != 'x') return 5;
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Namespace, OtherBackendsGetAnEmptyReadOnlyRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  // 1: "/" lists something, 2: "/" is writable, 3: /etc/hosts missing
  // (asked for), 4: the network namespace is not the host's (asked for).
  const std::string host_net = std::filesystem::read_symlink("/proc/self/ns/net");
  const int status = in_child([&] {
    ConfineOptions o;
    o.network = true;
    o.read_only_files = {"/etc/hosts"};
    confine(o);
    DIR* root = ::opendir("/");
    if (root == nullptr) return 1;
    std::vector<std::string> names;
    while (const dirent* e = ::readdir(root)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) {
        names.push_back(e->d_name);
      }
    }
    if (names != std::vector<std::string>{"etc"}) return 1;
    if (::mkdir("/x", 0755) == 0 || errno != EROFS) return 2;
    if (::access("/etc/hosts", R_OK) != 0) return 3;
    if (::open("/etc/hosts", O_WRONLY | O_CLOEXEC) >= 0) return 2;
    if (std::filesystem::read_symlink("../ns/net").string() != host_net) return 4;
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Namespace, SeveralDirectoriesAreBoundUnderAnEmptyRoot) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  TempDir a, b;
  struct stat sa {
  }, sb{};
  ASSERT_EQ(::stat(a.path().c_str(), &sa), 0);
  ASSERT_EQ(::stat(b.path().c_str(), &sb), 0);
  const int status = in_child([&] {
    ConfineOptions o;
    o.shared_dirs = {a.path(), b.path()};
    const std::vector<std::string> inside = confine(o);
    if (inside != std::vector<std::string>{"/1", "/2"}) return 1;
    struct stat s1 {
    }, s2{};
    if (::stat("/1", &s1) != 0 || !same_file(s1, sa)) return 2;
    if (::stat("/2", &s2) != 0 || !same_file(s2, sb)) return 3;
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Namespace, RefusedOnceAThreadRuns) {
  const int status = in_child([] {
    std::thread([] { ::pause(); }).detach();
    try {
      confine(ConfineOptions{});
    } catch (const std::logic_error&) {
      return 0;
    }
    return 1;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

TEST(Chroot, EmptyRootIsADeletedDirectory) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root";
  // 1: "/" lists something, 2: a file can be created there, 3: proc fd.
  const int status = in_child([] {
    ConfineOptions o;
    o.mode = SandboxMode::kChroot;
    confine(o);
    DIR* root = ::opendir("/");
    if (root == nullptr) return 1;
    while (const dirent* e = ::readdir(root)) {
      if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) return 1;
    }
    if (::open("/f", O_CREAT | O_WRONLY | O_CLOEXEC, 0600) >= 0) return 2;
    const int fd = ::open("/", O_PATH | O_CLOEXEC);
    if (::open(proc_fd_path(fd).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC) < 0) return 3;
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

// Drops to an unprivileged uid (nobody) for the rest of the child. Dumpable
// again, as after an exec: else its /proc/self files stay root's and it
// could not write its own uid_map.
bool become_nobody() {
  return ::setgroups(0, nullptr) == 0 && ::setresgid(65534, 65534, 65534) == 0 &&
         ::setresuid(65534, 65534, 65534) == 0 && ::prctl(PR_SET_DUMPABLE, 1) == 0;
}

TEST(Unprivileged, EntersThroughAUserNamespace) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  // A directory the user owns is served as its root; the files it creates
  // there are the user's. 1: dropping, 2: confine, 3: root, 4: create,
  // 5: owner, 6: the whole sandbox (capabilities, seccomp).
  TempDir dir;
  ASSERT_EQ(::chown(dir.path().c_str(), 65534, 65534), 0);
  struct stat shared {};
  ASSERT_EQ(::stat(dir.path().c_str(), &shared), 0);
  const int status = in_child([&] {
    if (!become_nobody()) return 1;
    SandboxOptions o;
    o.view.shared_dirs = {dir.path()};
    try {
      enter_sandbox(o);
    } catch (const SandboxError& e) {
      std::fprintf(stderr, "child: %s\n", e.what());
      return 2;
    }
    struct stat root {};
    if (::stat("/", &root) != 0 || !same_file(root, shared)) return 3;
    const int fd = ::open("/mine", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0) return 4;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || st.st_uid != 65534) return 5;
    if (status_field("Seccomp", "../status") != "2" ||
        status_field("NoNewPrivs", "../status") != "1") {
      return 6;
    }
    return 0;
  });
  EXPECT_EQ(describe(status), "exit 0");
  struct stat st {};
  EXPECT_EQ(::stat((dir.path() + "/mine").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
}

TEST(Unprivileged, ChrootIsRefusedWithWhatToDo) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to become another user";
  TempDir dir;
  ASSERT_EQ(::chmod(dir.path().c_str(), 0755), 0);
  const int status = in_child([&] {
    if (!become_nobody()) return 1;
    ConfineOptions o;
    o.mode = SandboxMode::kChroot;
    o.shared_dirs = {dir.path()};
    try {
      confine(o);
    } catch (const SandboxError& e) {
      return std::string(e.what()).find("--sandbox namespace or none") != std::string::npos ? 0 : 3;
    }
    return 2;
  });
  EXPECT_EQ(describe(status), "exit 0");
}

}  // namespace
}  // namespace dpfs::sandbox
