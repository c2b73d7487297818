// A real Redis server for the tests of the redis backend: Debian's
// redis-server on 127.0.0.1, a port of its own, no persistence, started,
// stopped and restarted by the test itself.
//
// RedisServer::shared() is the one server of this test process, started on
// first use and stopped at exit. Each mount gets a file system of its own
// (redis_test_fs(): a fresh FSNAME, formatted with `dpfs kv format`), so
// tests stay apart in one store.
//
// Needs /usr/bin/redis-server (apt: redis-server): without it start()
// returns what is missing, and the tests using it FAIL.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "mount_fixture.h"

namespace dpfs::itest {

class RedisServer {
 public:
  static constexpr const char* kRedis = "/usr/bin/redis-server";

  RedisServer() {
    char tmpl[] = "/tmp/dpfs-redis.XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) base_ = tmpl;
  }
  RedisServer(const RedisServer&) = delete;
  RedisServer& operator=(const RedisServer&) = delete;
  ~RedisServer() {
    stop(SIGKILL);
    std::error_code ignored;
    if (!base_.empty()) std::filesystem::remove_all(base_, ignored);
  }

  static RedisServer& shared(std::string* problem) {
    static RedisServer server;
    *problem = server.running() ? "" : server.start();
    return server;
  }

  bool running() const { return pid_ > 0; }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  std::string log() const { return read_text_file(base_ + "/redis.log"); }

  // Starts the server (on the port it had, if it ran before) and waits
  // until it answers; "" or why not.
  std::string start() {
    if (::access(kRedis, X_OK) != 0) return std::string(kRedis) + " is missing (apt: redis-server)";
    if (base_.empty()) return "no directory for redis";
    if (port_ == 0) port_ = free_port();
    if (port_ == 0) return "no free TCP port";
    const std::string port = std::to_string(port_);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::execl(kRedis, kRedis, "--port", port.c_str(), "--bind", "127.0.0.1", "--save", "",
              "--appendonly", "no", "--dir", base_.c_str(), "--logfile",
              (base_ + "/redis.log").c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    // Ready when it accepts a connection and answers PING.
    for (int i = 0; i < 500; ++i) {
      if (ping()) return "";
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return "redis-server exited at start-up; its log:\n" + log();
      }
      std::this_thread::sleep_for(10ms);
    }
    return "redis-server did not answer within 5 s; its log:\n" + log();
  }

  // The server stops answering (SIGSTOP), as a hung or partitioned store
  // would; resume() lets it go on with everything it held.
  void pause() {
    if (pid_ > 0) ::kill(pid_, SIGSTOP);
  }
  void resume() {
    if (pid_ > 0) ::kill(pid_, SIGCONT);
  }

  void stop(int sig = SIGTERM) {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGCONT);
    ::kill(pid_, sig);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

  // A name for a new file system, never used before in this process.
  std::string fresh_name(const std::string& hint) {
    static std::atomic<int> n{0};
    std::string name;
    for (char c : hint) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '-';
    return name + "-" + std::to_string(::getpid()) + "-" + std::to_string(n.fetch_add(1));
  }

 private:
  static int free_port() {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    int port = 0;
    if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
      port = ntohs(a.sin_port);
    }
    ::close(s);
    return port;
  }
  bool ping() const {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = false;
    if (::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
      const char ping[] = "PING\r\n";
      char buf[16] = {};
      timeval tv{1, 0};
      ::setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ok = ::write(s, ping, sizeof(ping) - 1) == ssize_t(sizeof(ping) - 1) &&
           ::read(s, buf, sizeof(buf) - 1) > 0 && std::string(buf).starts_with("+PONG");
    }
    ::close(s);
    return ok;
  }

  std::string base_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// "redis://127.0.0.1:PORT/NAME": a fresh file system, formatted, in the
// shared server. "" and *problem if it cannot be had.
inline std::string redis_test_fs(const std::string& hint, std::string* problem) {
  RedisServer& server = RedisServer::shared(problem);
  if (!problem->empty()) return "";
  const std::string url = "redis://" + server.address() + "/" + server.fresh_name(hint);
  const RunResult r = run({dpfs_binary(), "kv", "format", url});
  if (r.timed_out || !WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
    *problem = "dpfs kv format " + url + " failed: " + r.err;
    return "";
  }
  return url;
}

}  // namespace dpfs::itest
