// Real guests over virtio-fs: a dpfs daemon serving memfs on a vhost-user
// socket, and QEMU guests (tests/guest/run-guest.sh: Debian's kernel, a
// busybox initramfs, TCG) that mount it and run workloads.
//
// What is checked: the guest's exit status and its output (every workload
// check passed); what the guest wrote, from the host's side (the md5 of
// pattern files the host can produce itself, read back by the guest that
// wrote them and by a later guest on a new connection); the daemon's log
// (connections, disconnects) and its clean exit (status 0, socket removed).
//
// Needs qemu-system-x86_64, a guest kernel (/boot/vmlinuz-*), busybox-static
// and cpio (scripts/deps.sh installs them). Without them every test FAILS,
// it does not skip: a CI that cannot boot a guest must not report green.
// Takes about 2.5 minutes under TCG on 2 idle cores (3.5 when others load them).
//
// DPFS_TEST_BINARY=path runs another build of the daemon (as the FUSE tests).
#include <arpa/inet.h>
#include <fcntl.h>
#include <glob.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "guest_harness.h"

#ifndef DPFS_BINARY
#error "DPFS_BINARY must name the dpfs daemon binary"
#endif
#ifndef DPFS_EXERCISER
#error "DPFS_EXERCISER must name the dpfs-exerciser binary"
#endif
#ifndef DPFS_SOURCE_DIR
#error "DPFS_SOURCE_DIR must name the source tree (for tests/guest)"
#endif

namespace dpfs::itest {
namespace {

// (a) basic.sh with one request queue; (d) a second and a third QEMU on the
// same socket after the first exits: the daemon accepts each in turn, and
// memfs keeps what every earlier guest wrote.
TEST_F(GuestTest, BasicWorkloadThenLaterGuestsReadItBack) {
  Daemon daemon(dir_.path(), "vu1", {"--request-queues", "1"});
  ASSERT_TRUE(daemon.ready());

  const GuestRun basic = run_guest(dir_.path(), daemon.socket(), "vu1", "basic.sh", {}, "basic");
  ASSERT_TRUE(basic.ok()) << basic.describe() << "\n----- dpfs log -----\n"
                          << tail(daemon.log(), 40);
  expect_basic_passed(basic, 1);

  const GuestRun second =
      run_guest(dir_.path(), daemon.socket(), "vu1", "readback.sh", {}, "second-guest");
  ASSERT_TRUE(second.ok()) << second.describe() << "\n----- dpfs log -----\n"
                           << tail(daemon.log(), 40);
  EXPECT_NE(second.console.find("readback: basic's"), std::string::npos) << second.describe();
  EXPECT_NE(second.console.find("files intact"), std::string::npos) << second.describe();
  expect_patterns(second, "write");

  const GuestRun third =
      run_guest(dir_.path(), daemon.socket(), "vu1", "readback.sh", {}, "third-guest");
  ASSERT_TRUE(third.ok()) << third.describe() << "\n----- dpfs log -----\n"
                          << tail(daemon.log(), 40);
  EXPECT_NE(third.console.find("files intact"), std::string::npos) << third.describe();
  expect_patterns(third, "verify");

  const std::string log = daemon.log();
  EXPECT_EQ(count(log, "front-end connected"), 3u) << log;
  EXPECT_EQ(count(log, "waiting for the next front-end"), 3u) << log;
  expect_clean_exit(daemon);
}

// (b) Two request queues offered and set up; Debian 12's 6.1 guest sends
// everything on the first, which must still work.
TEST_F(GuestTest, TwoRequestQueues) {
  Daemon daemon(dir_.path(), "vu2", {"--request-queues", "2"});
  ASSERT_TRUE(daemon.ready());
  const GuestRun run =
      run_guest(dir_.path(), daemon.socket(), "vu2", "basic.sh", {"--queues", "2"}, "two-queues");
  ASSERT_TRUE(run.ok()) << run.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_basic_passed(run, 1);
  const std::string log = daemon.log();
  EXPECT_NE(log.find("2 request queues"), std::string::npos) << log;
  // QEMU sets up every queue it offers, used or not (VirtioFsDevice's log line).
  EXPECT_NE(log.find("queue 2 (requests) started"), std::string::npos) << log;
  expect_clean_exit(daemon);
  // Per-queue statistics at shutdown: the 6.1 guest sends everything on the
  // first request queue.
  const std::string final_log = daemon.log();
  const size_t at = final_log.find("queue 1 (requests): ");
  ASSERT_NE(at, std::string::npos) << final_log;
  const std::string line = final_log.substr(at, final_log.find('\n', at) - at);
  EXPECT_GT(std::stoull(line.substr(20)), 1000u) << line;
  // The basic workload checks errno values: some replies are errors.
  const size_t errors = line.find(" requests, ");
  ASSERT_NE(errors, std::string::npos) << line;
  EXPECT_GT(std::stoull(line.substr(errors + 11)), 10u) << line;
  EXPECT_NE(line.find("latency mean "), std::string::npos) << line;
  EXPECT_NE(line.find(" p99 "), std::string::npos) << line;
  EXPECT_NE(final_log.find("queue 2 (requests): 0 requests, 0 errors,"), std::string::npos)
      << final_log;
}

// dpfs-exerciser (tools/exerciser.cc, fsx-style, every byte verified) in the
// guest on the virtio-fs mount, once with mmap and once with --no-mmap
// (workloads/exerciser.sh). 8000 ops a run: about 13 s each under TCG, the
// whole test about 32 s on 2 idle cores.
TEST_F(GuestTest, FileExerciserInGuest) {
  Daemon daemon(dir_.path(), "vu8", {});
  ASSERT_TRUE(daemon.ready());
  const GuestRun run =
      run_guest(dir_.path(), daemon.socket(), "vu8", "exerciser.sh",
                {"--bin", DPFS_EXERCISER, "--append", "exerciser.ops=8000"}, "exerciser");
  ASSERT_TRUE(run.ok()) << run.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  EXPECT_EQ(count(run.console, "8000 ops, 0 failures"), 2u) << run.describe();
  EXPECT_EQ(count(run.console, "ops, 0 failures"), 2u) << run.describe();
  EXPECT_NE(run.console.find("exerciser no-mmap: 8000 ops, 0 failures"), std::string::npos)
      << run.describe();
  expect_clean_exit(daemon);
}

// Packed virtqueues (VIRTIO_F_RING_PACKED, QEMU's packed=on): the same
// workload passes over PackedVirtqueue on every queue.
TEST_F(GuestTest, PackedVirtqueues) {
  Daemon daemon(dir_.path(), "vu7", {});
  ASSERT_TRUE(daemon.ready());
  const GuestRun run =
      run_guest(dir_.path(), daemon.socket(), "vu7", "basic.sh", {"--packed"}, "packed");
  ASSERT_TRUE(run.ok()) << run.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_basic_passed(run, 1);
  const std::string log = daemon.log();
  EXPECT_NE(log.find("ring_packed=true"), std::string::npos) << log;
  EXPECT_NE(log.find("queue 1 (requests) started"), std::string::npos) << log;
  EXPECT_NE(log.find(", packed, worker"), std::string::npos) << log;
  expect_clean_exit(daemon);
  const std::string final_log = daemon.log();
  const size_t at = final_log.find("queue 1 (requests): ");
  ASSERT_NE(at, std::string::npos) << final_log;
  EXPECT_GT(std::stoull(final_log.substr(at + 20)), 1000u) << final_log.substr(at, 80);
}

// (c) The guest reboots (same QEMU, same vhost-user connection, the device
// reset by the guest): boot 2 finds boot 1's files and runs again.
TEST_F(GuestTest, DeviceSurvivesGuestReboot) {
  Daemon daemon(dir_.path(), "vu3", {});
  ASSERT_TRUE(daemon.ready());
  const GuestRun run =
      run_guest(dir_.path(), daemon.socket(), "vu3", "basic.sh", {"--reboot"}, "reboot");
  ASSERT_TRUE(run.ok()) << run.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_basic_passed(run, 2);
  EXPECT_NE(run.console.find("boot 1's"), std::string::npos) << run.describe();
  EXPECT_NE(run.console.find("files intact after reboot"), std::string::npos) << run.describe();
  const std::string log = daemon.log();
  EXPECT_EQ(count(log, "front-end connected"), 1u) << "a reboot keeps the connection\n" << log;
  expect_clean_exit(daemon);
}

// --on-disconnect exit: once the only front-end is gone, the daemon exits 0
// by itself and removes its socket.
TEST_F(GuestTest, OnDisconnectExit) {
  Daemon daemon(dir_.path(), "vu4", {"--on-disconnect", "exit"});
  ASSERT_TRUE(daemon.ready());
  const GuestRun run = run_guest(dir_.path(), daemon.socket(), "vu4", "", {}, "mount-only");
  ASSERT_TRUE(run.ok()) << run.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  const int status = daemon.reap(20s);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "dpfs after the front-end left: " << describe_status(status) << "\n"
      << tail(daemon.log(), 40);
  EXPECT_FALSE(fs::exists(daemon.socket()));
}

// Waits up to `timeout` until `text()` holds `what` `n` times.
template <typename F>
bool wait_until_logged(F&& text, const std::string& what, size_t n, std::chrono::seconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (count(text(), what) < n) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(100ms);
  }
  return true;
}

// Front-ends that go away with requests in flight: QEMU terminated in the
// middle of basic.sh (the daemon must notice, stop the queues and accept the
// next guest, which works), then SIGTERM to the daemon while a guest is busy
// (it must exit 0 at once and remove its socket).
TEST_F(GuestTest, FrontEndsVanishMidWorkload) {
  Daemon daemon(dir_.path(), "vu5", {});
  ASSERT_TRUE(daemon.ready());
  auto log = [&] { return daemon.log(); };

  const pid_t vanishing =
      start_guest(dir_.path(), daemon.socket(), "vu5", "basic.sh", {}, "vanishing-guest");
  ASSERT_GT(vanishing, 0);
  ASSERT_TRUE(wait_until_logged(log, "session up", 1, 90s)) << daemon.log();
  std::this_thread::sleep_for(4s);  // into basic.sh's data section
  ::kill(vanishing, SIGTERM);       // run-guest.sh terminates its QEMU
  EXPECT_NE(wait_for(vanishing, 30s), -1) << "run-guest.sh did not stop";
  ASSERT_TRUE(wait_until_logged(log, "front-end disconnected (connection 1", 1, 20s))
      << daemon.log();

  const GuestRun next =
      run_guest(dir_.path(), daemon.socket(), "vu5", "readback.sh", {}, "after-vanished");
  ASSERT_TRUE(next.ok()) << next.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_patterns(next, "write");

  const pid_t busy =
      start_guest(dir_.path(), daemon.socket(), "vu5", "basic.sh", {}, "guest-at-shutdown");
  ASSERT_GT(busy, 0);
  ASSERT_TRUE(wait_until_logged(log, "session up", 3, 90s)) << daemon.log();
  std::this_thread::sleep_for(3s);
  const auto t0 = std::chrono::steady_clock::now();
  const int status = daemon.terminate(10s);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "dpfs on SIGTERM with a busy guest: " << describe_status(status) << "\n"
      << tail(daemon.log(), 40);
  EXPECT_LT(secs, 5.0) << "shutdown took " << secs << " s";
  EXPECT_FALSE(fs::exists(daemon.socket()));
  EXPECT_NE(daemon.log().find("disconnected by shutdown"), std::string::npos) << daemon.log();
  // The guest lost its device and may hang on its requests: end it.
  ::kill(busy, SIGTERM);
  EXPECT_NE(wait_for(busy, 30s), -1) << "run-guest.sh did not stop";
}

// Several tenants in one daemon ([[device]] tables): each device has its own
// backend (a guest on one does not see the other's files), and a front-end
// that breaks the protocol on one socket leaves the other serving.
TEST_F(GuestTest, TenantsAreIndependent) {
  const fs::path a = dir_.path() / "tenant-a.sock";
  const fs::path b = dir_.path() / "tenant-b.sock";
  const fs::path config = dir_.path() / "tenants.toml";
  std::ofstream(config) << "[[device]]\nsocket = \"" << a.string()
                        << "\"\ntag = \"tenant-a\"\n[device.backend]\ntype = \"memfs\"\n\n"
                        << "[[device]]\nsocket = \"" << b.string()
                        << "\"\ntag = \"tenant-b\"\npoll = true\n[device.backend]\ntype = "
                           "\"memfs\"\n";
  Daemon daemon(Daemon::kArgs, b, dir_.path() / "tenants.dpfs.log", {"--config", config.string()});
  daemon.start();
  ASSERT_TRUE(daemon.ready());
  ASSERT_TRUE(fs::exists(a)) << daemon.log();

  // A broken front-end on tenant A: a message header with a bad version.
  {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ASSERT_GE(fd, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, a.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
        << std::strerror(errno);
    const uint32_t header[3] = {1 /* GET_FEATURES */, 0x7 /* version 3 */, 0};
    ASSERT_EQ(::write(fd, header, sizeof(header)), ssize_t(sizeof(header)));
    char byte;
    EXPECT_EQ(::read(fd, &byte, 1), 0) << "dpfs should close a connection that breaks the protocol";
    ::close(fd);
  }

  // Tenant B (busy-polling workers) serves a guest meanwhile.
  const GuestRun on_b =
      run_guest(dir_.path(), b.string(), "tenant-b", "readback.sh", {}, "tenant-b");
  ASSERT_TRUE(on_b.ok()) << on_b.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_patterns(on_b, "write");
  // Tenant A serves the next front-end, with a file system of its own: B's
  // files are not there, so this guest writes them afresh.
  const GuestRun on_a =
      run_guest(dir_.path(), a.string(), "tenant-a", "readback.sh", {}, "tenant-a");
  ASSERT_TRUE(on_a.ok()) << on_a.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_patterns(on_a, "write");

  const std::string log = daemon.log();
  EXPECT_EQ(count(log, "vhost-user tenant-a (" + a.string() + "): front-end connected"), 2u) << log;
  EXPECT_NE(log.find("busy-polling"), std::string::npos) << log;
  expect_clean_exit(daemon);
  EXPECT_FALSE(fs::exists(a));
}

// basic.sh on a passthrough backend: the guest's files land in the host
// directory, where the host checks them against the guest's manifest.
TEST_F(GuestTest, BasicWorkloadOnPassthrough) {
  const fs::path exported = dir_.path() / "export";
  fs::create_directories(exported);
  const fs::path socket = dir_.path() / "pt.sock";
  Daemon daemon(Daemon::kArgs, socket, dir_.path() / "pt.dpfs.log",
                {"--backend", "passthrough:" + exported.string(), "--vhost-user", socket.string(),
                 "--tag", "pt"});
  daemon.start();
  ASSERT_TRUE(daemon.ready());
  const GuestRun run = run_guest(dir_.path(), daemon.socket(), "pt", "basic.sh", {}, "basic");
  ASSERT_TRUE(run.ok()) << run.describe() << "\n----- dpfs log -----\n" << tail(daemon.log(), 40);
  expect_basic_passed(run, 1);
  const fs::path written = exported / "dpfs-basic";
  ASSERT_TRUE(fs::exists(written / "MANIFEST.md5")) << "nothing of the guest's in " << exported;
  const std::string check = "cd '" + written.string() + "' && md5sum --quiet -c MANIFEST.md5";
  EXPECT_EQ(std::system(check.c_str()), 0) << "the host's copy differs from the guest's: " << check;
  expect_clean_exit(daemon);
}

// A socket path that cannot be used: one line, nonzero exit, at once.
TEST_F(GuestTest, UnusableSocketPathIsOneLine) {
  const fs::path log = dir_.path() / "bad.log";
  const pid_t pid = spawn(
      {daemon_binary(), "serve", "--vhost-user", (dir_.path() / "no-such-dir" / "x.sock").string()},
      log);
  ASSERT_GT(pid, 0);
  const int status = wait_for(pid, 10s);
  ASSERT_NE(status, -1) << "dpfs did not exit";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << describe_status(status);
  const std::string text = read_text(log);
  EXPECT_EQ(count(text, "\n"), 1u) << text;
  EXPECT_NE(text.find("dpfs: vhost-user socket "), std::string::npos) << text;
  EXPECT_NE(text.find("does not exist"), std::string::npos) << text;
}

// The DPU split (src/remote): the virtio-fs device forwards every request
// over TCP to a second dpfs that runs the session and memfs. The guest's
// workload passes as it does on a local backend.
TEST_F(GuestTest, DeviceForwardsToARemoteServer) {
  // A free port: bound once by the kernel's choice, then given to the server.
  int port = 0;
  {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    port = ntohs(a.sin_port);
    ::close(fd);
  }
  const std::string addr = "127.0.0.1:" + std::to_string(port);
  // The server also serves a (unused) vhost-user socket: ready() waits for it.
  Daemon server(Daemon::kArgs, dir_.path() / "srv.sock", dir_.path() / "server.log",
                {"--listen", "tcp://" + addr, "--backend", "memfs", "--vhost-user",
                 (dir_.path() / "srv.sock").string()});
  server.start();
  ASSERT_TRUE(server.ready());
  Daemon device(Daemon::kArgs, dir_.path() / "vr.sock", dir_.path() / "vr.dpfs.log",
                {"--backend", "remote://" + addr, "--vhost-user",
                 (dir_.path() / "vr.sock").string(), "--tag", "vr"});
  device.start();
  ASSERT_TRUE(device.ready());

  const GuestRun basic = run_guest(dir_.path(), device.socket(), "vr", "basic.sh", {}, "remote");
  ASSERT_TRUE(basic.ok()) << basic.describe() << "\n----- device log -----\n"
                          << tail(device.log(), 40) << "\n----- server log -----\n"
                          << tail(server.log(), 40);
  expect_basic_passed(basic, 1);
  EXPECT_NE(device.log().find("serving remote://" + addr), std::string::npos) << device.log();
  EXPECT_NE(server.log().find("session up"), std::string::npos) << server.log();
  expect_clean_exit(device);
  expect_clean_exit(server);
}

}  // namespace
}  // namespace dpfs::itest
