// A real Redis server for the tests of the redis backend: Debian's
// redis-server on 127.0.0.1, a port of its own, no persistence, started,
// stopped and restarted by the test itself; and a real Redis Cluster of six
// of them (RedisCluster).
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

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mount_fixture.h"

namespace dpfs::itest {

class RedisServer {
 public:
  static constexpr const char* kRedis = "/usr/bin/redis-server";

  // `extra`: more redis-server options ("--cluster-enabled", "yes", ...).
  explicit RedisServer(std::vector<std::string> extra = {}) : extra_(std::move(extra)) {
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
    std::vector<std::string> args{
        kRedis, "--port", port,  "--bind",    "127.0.0.1",         "--save",
        "",     "--dir",  base_, "--logfile", base_ + "/redis.log"};
    if (std::find(extra_.begin(), extra_.end(), "--appendonly") == extra_.end()) {
      args.insert(args.end(), {"--appendonly", "no"});
    }
    args.insert(args.end(), extra_.begin(), extra_.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::execv(kRedis, argv.data());
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
  // A port below the kernel's ephemeral range (32768 up), where outgoing
  // connections never take it, whose cluster bus port (10000 higher, as
  // Redis Cluster fixes it) is free too.
  static int free_port() {
    static std::atomic<uint32_t> next{uint32_t(::getpid()) * 7919u};
    for (int tries = 0; tries < 1000; ++tries) {
      const int port = 10000 + int(next.fetch_add(7919u) % 12000u);
      if (can_bind(port) && can_bind(port + 10000)) return port;
    }
    return 0;
  }
  static bool can_bind(int port) {
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(uint16_t(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    ::close(s);
    return ok;
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

  std::vector<std::string> extra_;
  std::string base_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// "redis-cli -p PORT ARGS...": its output, or "" when it failed.
inline std::string redis_cli(int port, const std::vector<std::string>& args) {
  std::vector<std::string> full{"/usr/bin/redis-cli", "-p", std::to_string(port)};
  full.insert(full.end(), args.begin(), args.end());
  const RunResult r = run(full, 10s);
  return r.exit_code() == 0 ? r.out : "";
}

// A Redis Cluster of six redis-servers on loopback: three masters with a
// replica each, made by `redis-cli --cluster create`. A node that stops
// answering for a second is failed over (cluster-node-timeout 1000).
class RedisCluster {
 public:
  static constexpr int kNodes = 6;

  RedisCluster() {
    for (int i = 0; i < kNodes; ++i) {
      nodes_.push_back(std::make_unique<RedisServer>(
          std::vector<std::string>{"--cluster-enabled", "yes", "--cluster-node-timeout", "1000",
                                   "--cluster-config-file", "nodes.conf"}));
    }
  }

  // The one cluster of this test process (each test on it formats a file
  // system of its own), started on first use.
  static RedisCluster& shared(std::string* problem) {
    static RedisCluster cluster;
    *problem = cluster.made_ ? "" : cluster.start();
    return cluster;
  }

  // Starts the nodes, makes the cluster and waits until it is whole; "" or
  // why not.
  std::string start() {
    std::vector<std::string> create{"/usr/bin/redis-cli", "--cluster", "create"};
    for (auto& n : nodes_) {
      if (std::string p = n->start(); !p.empty()) return p;
      create.push_back(n->address());
    }
    create.insert(create.end(), {"--cluster-replicas", "1", "--cluster-yes"});
    const RunResult r = run(create, 60s);
    if (r.exit_code() != 0) return "redis-cli --cluster create failed: " + r.describe();
    made_ = true;
    return wait_whole(60s);
  }

  // Until every slot is served and every master has a replica in sync.
  std::string wait_whole(std::chrono::seconds limit) {
    const auto until = std::chrono::steady_clock::now() + limit;
    std::string last;
    while (std::chrono::steady_clock::now() < until) {
      last = whole();
      if (last.empty()) return "";
      std::this_thread::sleep_for(100ms);
    }
    return "the redis cluster is not whole after " + std::to_string(limit.count()) + " s: " + last;
  }

  // "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3": seeds for a URL.
  std::string seeds() const {
    return nodes_[0]->address() + "," + nodes_[1]->address() + "," + nodes_[2]->address();
  }
  RedisServer& node(int i) { return *nodes_[size_t(i)]; }

  // The node that is master of `key`'s slot now, or -1.
  int master_of(const std::string& key) {
    for (int i = 0; i < kNodes; ++i) {
      if (!nodes_[size_t(i)]->running()) continue;
      const std::string slot = redis_cli(nodes_[size_t(i)]->port(), {"cluster", "keyslot", key});
      if (slot.empty()) continue;
      const int s = std::atoi(slot.c_str());
      for (const Line& l : cluster_nodes(i)) {
        if (l.master && !l.failed && s >= l.first && s <= l.last) return index_of(l.port);
      }
    }
    return -1;
  }

 private:
  struct Line {
    int port = 0;
    bool master = false;
    bool failed = false;
    bool linked = false;
    int first = -1, last = -1;  // the first slot range it serves
  };
  // CLUSTER NODES as node `i` sees it.
  std::vector<Line> cluster_nodes(int i) {
    std::vector<Line> lines;
    std::istringstream in(redis_cli(nodes_[size_t(i)]->port(), {"cluster", "nodes"}));
    std::string text;
    while (std::getline(in, text)) {
      std::istringstream words(text);
      std::vector<std::string> w;
      for (std::string x; words >> x;) w.push_back(x);
      if (w.size() < 8) continue;
      Line l;
      const size_t colon = w[1].find(':');
      if (colon == std::string::npos) continue;
      l.port = std::atoi(w[1].c_str() + colon + 1);
      l.master = w[2].find("master") != std::string::npos;
      l.failed = w[2].find("fail") != std::string::npos;
      l.linked = w[7] == "connected";
      if (w.size() > 8) {
        l.first = std::atoi(w[8].c_str());
        const size_t dash = w[8].find('-');
        l.last = dash == std::string::npos ? l.first : std::atoi(w[8].c_str() + dash + 1);
      }
      lines.push_back(l);
    }
    return lines;
  }
  int index_of(int port) const {
    for (int i = 0; i < kNodes; ++i) {
      if (nodes_[size_t(i)]->port() == port) return i;
    }
    return -1;
  }
  // "" when whole, else what is missing.
  std::string whole() {
    int masters = 0;
    for (int i = 0; i < kNodes; ++i) {
      if (!nodes_[size_t(i)]->running()) continue;
      const int port = nodes_[size_t(i)]->port();
      if (redis_cli(port, {"cluster", "info"}).find("cluster_state:ok") == std::string::npos) {
        return nodes_[size_t(i)]->address() + " says the cluster is not ok";
      }
      const std::string repl = redis_cli(port, {"info", "replication"});
      if (repl.find("role:master") != std::string::npos) {
        ++masters;
        if (repl.find("connected_slaves:1") == std::string::npos) {
          return nodes_[size_t(i)]->address() + " has no replica";
        }
      } else if (repl.find("master_link_status:up") == std::string::npos) {
        return nodes_[size_t(i)]->address() + " is a replica out of sync";
      }
    }
    return masters == 3 ? "" : std::to_string(masters) + " masters";
  }

  std::vector<std::unique_ptr<RedisServer>> nodes_;
  bool made_ = false;
};

// Formats `url` with `dpfs kv format`: `url`, or "" and *problem.
inline std::string format_test_fs(const std::string& url, std::string* problem) {
  const RunResult r = run({dpfs_binary(), "kv", "format", url});
  if (r.timed_out || !WIFEXITED(r.status) || WEXITSTATUS(r.status) != 0) {
    *problem = "dpfs kv format " + url + " failed: " + r.err;
    return "";
  }
  return url;
}

// "redis://127.0.0.1:PORT/NAME": a fresh file system, formatted, in the
// shared server. "" and *problem if it cannot be had.
inline std::string redis_test_fs(const std::string& hint, std::string* problem) {
  RedisServer& server = RedisServer::shared(problem);
  if (!problem->empty()) return "";
  return format_test_fs("redis://" + server.address() + "/" + server.fresh_name(hint), problem);
}

// The same in the shared cluster: "redis://SEED,SEED,SEED/NAME".
inline std::string redis_cluster_test_fs(const std::string& hint, std::string* problem) {
  RedisCluster& cluster = RedisCluster::shared(problem);
  if (!problem->empty()) return "";
  return format_test_fs("redis://" + cluster.seeds() + "/" + cluster.node(0).fresh_name(hint),
                        problem);
}

}  // namespace dpfs::itest
