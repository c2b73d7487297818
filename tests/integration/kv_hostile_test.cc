// The redis backend against a store that lies: a fake Redis on loopback
// that answers the start-up honestly (a formatted file system) and then
// every file system command with something hostile -- wrong types, status
// numbers out of range, arrays too short, lengths it never sends, a closed
// connection, redirections in circles. The tenant gets errnos; the daemon
// neither crashes nor hangs past the URL's timeout, and serves again when
// the store answers sanely.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <atomic>
#include <functional>
#include <mutex>
#include <thread>

#include "mount_fixture.h"

namespace dpfs::itest {
namespace {

// What the fake answers to a command: RESP bytes; "" closes the connection.
using Answer = std::function<std::string(const std::vector<std::string>& argv)>;

std::string bulk(const std::string& s) {
  return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
}

// The root directory's attributes, as the getattr script answers them (a
// status, then ino, mode, uid, gid, nlink, size, rdev, three times in
// seconds and nanoseconds, bytes): what the mount's first look needs.
std::string root_attributes(const std::vector<std::string>&) {
  std::string s = "*15\r\n:0\r\n:1\r\n:16877\r\n";
  for (int i = 0; i < 12; ++i) s += ":0\r\n";
  return s;
}

class FakeRedis {
 public:
  FakeRedis() {
    listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
        ::listen(listen_, 64) == 0 &&
        ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
      port_ = ntohs(a.sin_port);
    }
    thread_ = std::thread([this] { accept_loop(); });
  }
  ~FakeRedis() {
    stop_ = true;
    ::shutdown(listen_, SHUT_RDWR);
    thread_.join();
    ::close(listen_);
    std::vector<std::thread> conns;
    {
      std::lock_guard lock(mu_);
      for (int fd : clients_) ::shutdown(fd, SHUT_RDWR);
      conns.swap(conns_);
    }
    for (std::thread& t : conns) t.join();
    for (int fd : clients_) ::close(fd);
  }
  int port() const { return port_; }
  // How the file system's commands (everything after start-up) are answered.
  void set_answer(Answer a) {
    std::lock_guard lock(mu_);
    hostile_ = std::move(a);
  }
  // The cluster this fake claims to be: CLUSTER SLOTS names it alone.
  void claim_cluster() { cluster_ = true; }

 private:
  void accept_loop() {
    while (!stop_) {
      const int fd = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (stop_) return;
        continue;
      }
      std::lock_guard lock(mu_);
      clients_.push_back(fd);
      conns_.emplace_back([this, fd] { serve(fd); });
    }
  }
  // One command from `in`, consumed; false when it is not whole yet.
  static bool take_command(std::string& in, std::vector<std::string>& argv) {
    argv.clear();
    if (in.empty() || in[0] != '*') return false;
    size_t at = in.find("\r\n");
    if (at == std::string::npos) return false;
    const int n = std::atoi(in.c_str() + 1);
    at += 2;
    for (int i = 0; i < n; ++i) {
      if (at >= in.size() || in[at] != '$') return false;
      const size_t eol = in.find("\r\n", at);
      if (eol == std::string::npos) return false;
      const size_t len = size_t(std::atol(in.c_str() + at + 1));
      if (eol + 2 + len + 2 > in.size()) return false;
      argv.push_back(in.substr(eol + 2, len));
      at = eol + 2 + len + 2;
    }
    in.erase(0, at);
    return true;
  }
  std::string honest(const std::vector<std::string>& argv) {
    const std::string& c = argv[0];
    if (c == "CLUSTER") {
      if (!cluster_) return "-ERR This instance has cluster support disabled\r\n";
      return "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n" + bulk("127.0.0.1") + ":" +
             std::to_string(port_) + "\r\n" + bulk("id") + "";
    }
    if (c == "HMGET") {  // the format record
      return "*4\r\n" + bulk("dpfs-kv") + bulk("2") + bulk("65536") + bulk("0");
    }
    if (c == "HGET" && argv.size() > 1 && argv[1].ends_with("stats")) return bulk("1");
    if (c == "GET") return bulk("1");
    if (c == "INFO") return bulk("used_memory:1000\r\nmaxmemory:1000000\r\n");
    if (c == "ZADD") return ":1\r\n";
    return "";
  }
  void serve(int fd) {
    std::string in;
    char buf[65536];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n <= 0) break;
      in.append(buf, size_t(n));
      std::vector<std::string> argv;
      while (take_command(in, argv)) {
        std::string out = honest(argv);
        if (out.empty()) {
          std::lock_guard lock(mu_);
          out = hostile_(argv);
        }
        if (out.empty() || ::send(fd, out.data(), out.size(), MSG_NOSIGNAL) < 0) {
          ::shutdown(fd, SHUT_RDWR);  // closed by the destructor
          return;
        }
      }
    }
  }

  int listen_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> cluster_{false};
  std::mutex mu_;
  Answer hostile_ = root_attributes;  // guarded by mu_
  std::vector<int> clients_;          // guarded by mu_
  std::vector<std::thread> conns_;    // guarded by mu_
  std::thread thread_;
};

class KvHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string problem = environment_problem();
    ASSERT_TRUE(problem.empty()) << problem;
    ASSERT_NE(fake_.port(), 0);
  }
  std::string start() {
    return m_.start_dpfs({"serve", "--backend",
                          "redis://127.0.0.1:" + std::to_string(fake_.port()) + "/fs?timeout=1",
                          "--fuse-mount", m_.dir(), "--entry-timeout", "0", "--attr-timeout", "0"});
  }
  // A few operations; each must fail with an errno, none may hang. Returns
  // the errnos seen.
  std::vector<int> try_operations() {
    std::vector<int> seen;
    struct stat st {};
    seen.push_back(::stat((m_.dir() + "/f").c_str(), &st) == 0 ? 0 : errno);
    seen.push_back(::mkdir((m_.dir() + "/d").c_str(), 0755) == 0 ? 0 : errno);
    seen.push_back(write_file(m_.dir() + "/g", "data"));
    seen.push_back(list_dir(m_.dir()).empty() ? errno : 0);
    return seen;
  }
  FakeRedis fake_;
  Mount m_;
};

TEST_F(KvHostileTest, LyingRepliesGetErrnosNeverACrash) {
  ASSERT_EQ(start(), "");
  // Each reply in turn for every command, with the daemon checked alive
  // after each.
  const std::vector<std::pair<const char*, std::string>> lies = {
      {"a status instead of an array", "+OK\r\n"},
      {"an integer", ":5\r\n"},
      {"a nil", "$-1\r\n"},
      {"an empty array", "*0\r\n"},
      {"a status that is a string", "*1\r\n" + bulk("0")},
      {"a status out of range", "*1\r\n:999999\r\n"},
      {"a negative status", "*1\r\n:-5\r\n"},
      {"an entry too short", "*2\r\n:0\r\n:7\r\n"},
      {"an entry of wrong types", "*16\r\n:0\r\n" +
                                      [] {
                                        std::string s;
                                        for (int i = 0; i < 15; ++i) s += "*1\r\n$-1\r\n";
                                        return s;
                                      }()},
      {"numbers that are not", "*16\r\n:0\r\n" +
                                   [] {
                                     std::string s;
                                     for (int i = 0; i < 15; ++i)
                                       s += bulk("-99999999999999999999999x");
                                     return s;
                                   }()},
      {"an error", "-ERR no\r\n"},
      {"NOSCRIPT forever", "-NOSCRIPT No matching script\r\n"},
      {"MOVED on a server that is no cluster", "-MOVED 1 127.0.0.1:1\r\n"},
      {"two replies to one command (the second asked for by none)", "*1\r\n:2\r\n:7\r\n"},
      {"a nested array ten deep",
       [] {
         std::string s;
         for (int i = 0; i < 10; ++i) s += "*1\r\n";
         return s + ":0\r\n";
       }()},
  };
  for (const auto& [what, reply] : lies) {
    std::atomic<int> lied{0};
    fake_.set_answer([reply = reply, &lied](const std::vector<std::string>& argv) {
      // The root's getattr (EVALSHA sha 1 key prefix s ns 1) stays true:
      // a root whose type changed is one the kernel gives up on, and the
      // lies after would not reach the daemon.
      if (argv.size() == 8 && argv.back() == "1") return root_attributes(argv);
      ++lied;
      return reply;
    });
    const std::vector<int> seen = try_operations();
    EXPECT_GT(lied.load(), 0) << what << ": no command reached the store";
    EXPECT_EQ(m_.check_alive(), "") << what;
    for (int e : seen) {
      // An errno, or (for a lie that happens to parse) success: never a
      // hang, never a crash, never an errno the kernel would not pass on.
      EXPECT_TRUE(e >= 0 && e < 4096) << what << ": " << e;
    }
  }
  // The daemon still serves: a lookup of a name that is not there, and
  // statfs (INFO) with what the store said.
  fake_.set_answer([](const std::vector<std::string>& argv) {
    return argv.back() == "f" ? std::string("*1\r\n:2\r\n") : root_attributes(argv);
  });
  struct stat st {};
  EXPECT_ERRNO(ENOENT, ::stat((m_.dir() + "/f").c_str(), &st));
  struct statvfs vfs {};
  ASSERT_SYS(::statvfs(m_.dir().c_str(), &vfs));
  EXPECT_EQ(vfs.f_blocks, 1000000u / 4096) << "not what the store said";
  EXPECT_EQ(m_.check_alive(), "");
}

TEST_F(KvHostileTest, LengthsNeverSentAndClosedConnectionsAreEioWithinTheTimeout) {
  ASSERT_EQ(start(), "");
  for (const char* reply : {"$999999999\r\nshort", "*2147483647\r\n:0\r\n", ""}) {
    fake_.set_answer(
        [reply = std::string(reply)](const std::vector<std::string>&) { return reply; });
    const auto t0 = std::chrono::steady_clock::now();
    struct stat st {};
    EXPECT_ERRNO(EIO, ::stat((m_.dir() + "/f").c_str(), &st)) << "reply: " << reply;
    const double took =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    // Within a few timeouts (1 s each: the kernel may ask more than once,
    // and sanitizers slow everything), where a hang would be forever.
    EXPECT_LT(took, 15.0) << "reply: " << reply;
    EXPECT_EQ(m_.check_alive(), "");
  }
}

TEST_F(KvHostileTest, RedirectionsInCirclesEndInEio) {
  fake_.claim_cluster();
  const std::string moved = "-MOVED 5 127.0.0.1:" + std::to_string(fake_.port()) + "\r\n";
  const std::string ask = "-ASK 5 127.0.0.1:" + std::to_string(fake_.port()) + "\r\n";
  ASSERT_EQ(start(), "");
  std::atomic<int> asked{0};
  for (const std::string& reply :
       {moved, ask, std::string("-TRYAGAIN later\r\n"), std::string("-MOVED 5 127.0.0.1:1\r\n"),
        std::string("-MOVED 99999 nowhere\r\n")}) {
    fake_.set_answer([reply, &asked](const std::vector<std::string>& argv) {
      if (argv[0] == "ASKING") {
        ++asked;
        return std::string("+OK\r\n");
      }
      return reply;
    });
    struct stat st {};
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_ERRNO(EIO, ::stat((m_.dir() + "/f").c_str(), &st)) << reply;
    EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 15.0)
        << reply;
    EXPECT_EQ(m_.check_alive(), "") << reply;
  }
  EXPECT_GT(asked.load(), 0) << "ASK was not followed with ASKING";
}

}  // namespace
}  // namespace dpfs::itest
