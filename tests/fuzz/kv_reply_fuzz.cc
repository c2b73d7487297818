// libFuzzer target: what the store's replies do to the redis backend
// (src/backend/kv). The store is foreign (DESIGN.md, Trust): whatever it
// answers, a tenant gets a reply or an errno, and the daemon goes on. The
// first byte chooses one of two halves:
//
// (a) The cluster parsers (cluster.h): parse_cluster_slots on the reply
//     hiredis's own reader makes of fuzz bytes, parse_redirect on fuzz
//     text, key_slot on fuzz keys. Findings: a crash or sanitizer report; a
//     map whose ranges leave 0..16383, run backwards or name a master it
//     does not list, a master at port 0 or past 65535, or at the "?" of a
//     node that does not know its address; a redirection to a slot past
//     16383 or to port 0, or one made of text that is neither MOVED nor
//     ASK; a key whose slot is not its hash tag's.
//
// (b) A KvBackend in this process against a fake Redis on loopback that
//     answers the start-up honestly (a formatted file system on one server)
//     and then every command with the next reply of the fuzz input. A FUSE
//     session over the backend takes a tenant's requests (Tenant: each
//     operation KvBackend has, on the nodes and handles it gave); the
//     fuzzer's thread drives the backend's connection as a transport worker
//     does (its WorkerHook), so that one input always meets its replies in
//     the same order. Findings: a crash, leak or sanitizer report; a
//     request not answered within 10 s, or answered twice; a reply that does
//     not fit its buffer or whose error is not an errno.
//
// Replies are RESP that hiredis reads as exactly one reply (resp_extent()):
// what it refuses, a reply cut short, or more replies than commands are
// connection faults, which KvHostileTest drives (and libhiredis 0.14
// aborts the process on a reply no command asked for).
//
// Input, (b): the mode byte, the length of the request part (a byte), the
// request part (Tenant::run), then the replies (reply_from(), one per
// command the store receives, in order).
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/fuse.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "backend/kv/admin.h"
#include "backend/kv/cluster.h"
#include "backend/kv/kv.h"
#include "backend/kv/url.h"
#include "backend/worker_hook.h"
#include "fuzz_input.h"
#include "fuzz_session.h"

namespace {

using dpfs::fuzz::Input;

void require(bool ok, const char* what) {
  if (ok) return;
  std::fprintf(stderr, "kv_reply_fuzz: %s\n", what);
  std::abort();
}

// --- Replies from fuzz bytes -------------------------------------------------

// Bounds on what a reply may hold: hiredis allocates an array's slots when
// it reads its header, so a header of 2^31 elements is 16 GiB before a byte
// more comes (a store can do that; a fuzzer must not, within its memory).
constexpr int64_t kMaxElements = 64;
constexpr int64_t kMaxBulk = 1 << 16;
constexpr int kMaxDepth = 6;  // hiredis reads 7 levels

// The number a RESP header line holds, as hiredis reads it: "0", or an
// optional '-' and digits without a leading zero, within 64 bits.
bool resp_number(std::string_view s, int64_t* out) {
  const bool negative = !s.empty() && s[0] == '-';
  if (negative) s.remove_prefix(1);
  if (s.empty() || s.size() > 18 || (s[0] == '0' && (s.size() > 1 || negative))) return false;
  int64_t v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  *out = negative ? -v : v;
  return true;
}

// The length of the one RESP reply that `s` begins with, when it is whole,
// within the bounds above and hiredis reads it; 0 when not.
size_t resp_extent(std::string_view s, int depth = 0) {
  if (s.empty() || depth > kMaxDepth) return 0;
  const size_t eol = s.find("\r\n");
  if (eol == std::string_view::npos) return 0;
  const std::string_view line = s.substr(1, eol - 1);
  const size_t head = eol + 2;
  int64_t n = 0;
  switch (s[0]) {
    case '+':
    case '-':
      return head;
    case ':':
      return resp_number(line, &n) ? head : 0;
    case '$':
      if (!resp_number(line, &n) || n < -1 || n > kMaxBulk) return 0;
      if (n == -1) return head;
      if (s.size() < head + size_t(n) + 2 || s.substr(head + size_t(n), 2) != "\r\n") return 0;
      return head + size_t(n) + 2;
    case '*': {
      if (!resp_number(line, &n) || n < -1 || n > kMaxElements) return 0;
      size_t at = head;
      for (int64_t i = 0; i < n; ++i) {
        const size_t e = resp_extent(s.substr(at), depth + 1);
        if (e == 0) return 0;
        at += e;
      }
      return at;
    }
    default:
      return 0;
  }
}

std::string bulk(std::string_view s) {
  return "$" + std::to_string(s.size()) + "\r\n" + std::string(s) + "\r\n";
}

// A number the backend may take for a status, a mode, a size or an inode:
// small ones and the values a file system is made of often, any 64 bits
// sometimes.
int64_t number(Input& in) {
  static const int64_t kKnown[] = {
      S_IFREG | 0644,  S_IFDIR | 0755, S_IFLNK | 0777, S_IFIFO | 0600, S_IFCHR | 0600,
      S_IFSOCK | 0600, 04755,          4096,           65536,          1ll << 50,
      (1ll << 50) - 1, 1ll << 53,      INT64_MAX,      INT64_MIN,      -1,
      EAGAIN,          ENOENT,         ESTALE,         4095,           4096 * 4096,
  };
  const uint8_t k = in.byte();
  switch (k % 5) {
    case 0:
      return k / 5;
    case 1:
      return int8_t(in.byte());
    case 2:
      return in.u32();
    case 3:
      return int64_t(in.u64());
    default:
      return kKnown[in.byte() % std::size(kKnown)];
  }
}

// A line for a status or an error: a fuzz byte run without CR or LF.
std::string line_from(Input& in) {
  std::vector<uint8_t> b = in.bytes(in.byte() % 32);
  std::string s(b.begin(), b.end());
  for (char& c : s) {
    if (c == '\r' || c == '\n') c = ' ';
  }
  return s;
}

// The RESP bytes of one reply, shaped by the fuzz input so that most bytes
// make a reply hiredis reads: its type by a tag byte, then its contents.
std::string reply_from(Input& in, int depth = 0) {
  if (in.empty()) return "-ERR the fuzz input is used up\r\n";
  const uint8_t tag = in.byte();
  if (tag == 0xff) {
    // Raw bytes, when they are one reply (else an error in their place).
    const std::vector<uint8_t> raw = in.bytes(in.byte() * 2u);
    const std::string_view s(reinterpret_cast<const char*>(raw.data()), raw.size());
    const size_t e = resp_extent(s, depth);
    return e != 0 ? std::string(s.substr(0, e)) : "-ERR not one reply\r\n";
  }
  switch (tag % 8) {
    case 0:
      return ":" + std::to_string(number(in)) + "\r\n";
    case 1:
      return bulk(std::to_string(number(in)));  // a number as Lua gives some
    case 2: {
      const std::vector<uint8_t> b = in.bytes(in.byte());
      return bulk(std::string_view(reinterpret_cast<const char*>(b.data()), b.size()));
    }
    case 3:
      return (tag & 8) ? "*-1\r\n" : "$-1\r\n";
    case 4:
      return "+" + line_from(in) + "\r\n";
    case 5: {
      static const char* const kErrors[] = {
          "ERR fuzz",
          "NOSCRIPT No matching script",
          "MOVED 1 127.0.0.1:1",
          "ASK 1 127.0.0.1:1",
          "TRYAGAIN",
          "CLUSTERDOWN",
          "OOM command not allowed",
      };
      const uint8_t which = in.byte();
      return "-" +
             (which & 1 ? line_from(in) : std::string(kErrors[which / 2 % std::size(kErrors)])) +
             "\r\n";
    }
    case 6:
    case 7: {
      // An array; case 7 as a script answers, its status first (0 mostly).
      const size_t n = in.byte() % 17;
      if (depth >= kMaxDepth) return "*0\r\n";
      std::string out;
      size_t count = n;
      if (tag % 8 == 7) {
        out = ":" + std::to_string((tag & 8) ? number(in) : 0) + "\r\n";
        ++count;
      }
      for (size_t i = 0; i < n; ++i) out += reply_from(in, depth + 1);
      return "*" + std::to_string(count) + "\r\n" + out;
    }
  }
  return ":0\r\n";
}

// --- (a) the cluster parsers -------------------------------------------------

void fuzz_parsers(Input& in) {
  using namespace dpfs::kv;
  const uint8_t flags = in.byte();
  const Endpoint asked{(flags & 1) ? "" : "10.0.0.1", 7000};

  // CLUSTER SLOTS: a reply hiredis's reader made of the bytes.
  const std::string bytes = reply_from(in);
  redisReader* reader = redisReaderCreate();
  require(reader != nullptr, "redisReaderCreate");
  redisReaderFeed(reader, bytes.data(), bytes.size());
  void* parsed = nullptr;
  const int rc = redisReaderGetReply(reader, &parsed);
  // reply_from() gives only what hiredis reads, whole.
  require(rc == REDIS_OK && parsed != nullptr, "hiredis refused a reply resp_extent() took");
  const auto* reply = static_cast<const redisReply*>(parsed);
  if (const std::optional<SlotMap> map = parse_cluster_slots(reply, asked)) {
    for (const SlotMap::Range& r : map->ranges) {
      require(r.first <= r.last && r.last < kSlots, "a slot range out of order or bounds");
      require(r.node < map->masters.size(), "a range names a master not listed");
    }
    for (const Endpoint& m : map->masters) {
      require(m.port > 0 && m.port <= 65535, "a master's port out of range");
      require(m.host != "?", "a master the node does not know the address of");
      require(!m.host.empty() || asked.host.empty(), "a master's empty host not the asked one's");
    }
    (void)map->complete();
    if (!map->masters.empty()) (void)master_of(*map, uint16_t(in.u16() % kSlots));
  }
  freeReplyObject(parsed);
  redisReaderFree(reader);

  // MOVED and ASK: an error's text.
  std::vector<uint8_t> text = in.bytes(in.byte());
  std::string error(text.begin(), text.end());
  if (flags & 2) error = ((flags & 4) ? "ASK " : "MOVED ") + error;
  if (const std::optional<Redirect> to = parse_redirect(error, asked)) {
    require(to->slot < kSlots, "a redirection to a slot past 16383");
    require(to->to.port > 0 && to->to.port <= 65535, "a redirection to a port out of range");
    require(to->ask == error.starts_with("ASK "), "ASK and MOVED mixed up");
    require(error.starts_with("ASK ") || error.starts_with("MOVED "), "a redirection of nothing");
  }

  // Hash slots: a key's is its hash tag's, when it has one.
  std::vector<uint8_t> k = in.bytes(in.n);
  const std::string key(k.begin(), k.end());
  const uint16_t slot = key_slot(key);
  require(slot < kSlots, "a slot past 16383");
  const size_t open = key.find('{');
  const size_t close = open == std::string::npos ? open : key.find('}', open + 1);
  if (close != std::string::npos && close > open + 1) {
    require(slot == key_slot(key.substr(open + 1, close - open - 1)),
            "a key not in its tag's slot");
  }
}

// --- (b) the backend against a fake store -------------------------------------

// A Redis on loopback, on a thread of its own: the start-up's commands
// answered as one server holding a formatted file system, ZADD (the lock
// lease's heartbeat, on a timer) with 1, every other command with the next
// reply of the current input.
class FakeStore {
 public:
  static constexpr uint64_t kChunkSize = 4096;

  FakeStore() {
    listen_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    require(::bind(listen_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                ::listen(listen_, 64) == 0 &&
                ::getsockname(listen_, reinterpret_cast<sockaddr*>(&a), &len) == 0,
            "the fake store cannot listen");
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { loop(); });
    thread_.detach();  // serves until the process ends
  }
  int port() const { return port_; }

  // Answers from now on: the start-up's honestly until started(), then
  // from `data` (which must stay valid until finished()).
  void replies(const uint8_t* data, size_t size) {
    std::lock_guard lock(mu_);
    replies_ = Input{data, size};
    start_up_ = true;
  }
  void started() {
    std::lock_guard lock(mu_);
    start_up_ = false;
  }
  // The input is over: its bytes go. Returns once every connection is
  // closed and forgotten here, so that what the input allocated is freed
  // by its end (libFuzzer's leak check counts every thread's allocations).
  void finished() {
    {
      std::lock_guard lock(mu_);
      replies_ = Input{nullptr, 0};
    }
    // A connection of our own, answered once the fake took it: it took
    // every connection the backend made before (the listen queue is in
    // order), and sees each closed.
    const int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(uint16_t(port_));
    static constexpr char kPing[] = "*1\r\n$4\r\nPING\r\n";
    char pong[8];
    require(::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                ::send(s, kPing, sizeof(kPing) - 1, MSG_NOSIGNAL) == ssize_t(sizeof(kPing) - 1) &&
                ::read(s, pong, sizeof(pong)) > 0,
            "the fake store does not answer");
    ::close(s);
    std::unique_lock lock(mu_);
    const bool closed =
        idle_.wait_for(lock, std::chrono::seconds(10), [this] { return connections_ == 0; });
    require(closed, "the backend left a connection to the store open");
  }

 private:
  void loop() {
    std::map<int, std::string> clients;  // fd -> bytes not yet a command
    std::vector<pollfd> fds;
    for (;;) {
      fds.assign(1, pollfd{listen_, POLLIN, 0});
      for (const auto& [fd, in] : clients) fds.push_back(pollfd{fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), -1) < 0) continue;
      if (fds[0].revents & POLLIN) {
        const int fd = ::accept4(listen_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) clients[fd];
      }
      for (size_t i = 1; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        const int fd = fds[i].fd;
        char buf[65536];
        const ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n <= 0 || !serve(fd, clients[fd].append(buf, size_t(n)))) {
          ::close(fd);
          clients.erase(fd);
        }
      }
      std::lock_guard lock(mu_);
      connections_ = clients.size();
      if (connections_ == 0) idle_.notify_all();
    }
  }

  // Answers every whole command in `in`, which keeps the rest; false when
  // the connection broke.
  bool serve(int fd, std::string& in) {
    std::vector<std::string> argv;
    std::string out;
    while (take_command(in, argv)) out += answer(argv);
    for (size_t at = 0; at < out.size();) {
      const ssize_t n = ::send(fd, out.data() + at, out.size() - at, MSG_NOSIGNAL);
      if (n <= 0) return false;
      at += size_t(n);
    }
    return true;
  }

  // One command (an array of bulk strings, as hiredis sends them) from
  // `in`, consumed; false when it is not whole yet.
  static bool take_command(std::string& in, std::vector<std::string>& argv) {
    argv.clear();
    if (in.empty() || in[0] != '*') return false;
    size_t at = in.find("\r\n");
    if (at == std::string::npos) return false;
    const long n = std::atol(in.c_str() + 1);
    at += 2;
    for (long i = 0; i < n; ++i) {
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

  std::string answer(const std::vector<std::string>& argv) {
    const std::string& c = argv.empty() ? std::string() : argv[0];
    if (c == "ZADD") return ":1\r\n";
    if (c == "PING") return "+PONG\r\n";  // finished()'s
    std::lock_guard lock(mu_);
    if (!start_up_) return reply_from(replies_);
    if (c == "CLUSTER") return "-ERR This instance has cluster support disabled\r\n";
    if (c == "HMGET") {
      return "*4\r\n" + bulk("dpfs-kv") + bulk(std::to_string(dpfs::kv::kFormatVersion)) +
             bulk(std::to_string(kChunkSize)) + bulk("0");
    }
    if (c == "HGET" || c == "GET") return bulk("1");
    if (c == "INFO") return bulk("used_memory:1000\r\nmaxmemory:1000000\r\n");
    return "-ERR not a start-up command\r\n";
  }

  int listen_ = -1;
  int port_ = 0;
  std::mutex mu_;
  Input replies_{nullptr, 0};  // guarded by mu_
  bool start_up_ = true;       // guarded by mu_
  size_t connections_ = 0;     // guarded by mu_
  std::condition_variable idle_;
  std::thread thread_;
};

FakeStore& fake_store() {
  static FakeStore* store = new FakeStore();  // its thread runs until the end
  return *store;
}

// The tenant of (b): FUSE requests for what KvBackend does, one at a time,
// each waited for as the worker that adopted the backend's connection
// would (its WorkerHook). An operation comes from a table, its arguments
// from a few bytes; the node ids and handles it names are mostly ones the
// backend gave earlier in the input, so that a READ meets the handle an
// OPEN made and the reply handling behind it.
class Tenant {
 public:
  Tenant(dpfs::fuse::FuseSession& session, dpfs::Backend& backend, dpfs::WorkerHook& hook)
      : session_(session), backend_(backend), hook_(hook) {}

  // Requests until the input is used up (at most 64).
  void run(Input& in) {
    for (int i = 0; i < 64 && !in.empty(); ++i) one(in);
  }

 private:
  struct Answer {
    int error = 0;
    std::vector<uint8_t> payload;
  };

  template <typename T>
  static std::string raw(const T& v) {
    return std::string(reinterpret_cast<const char*>(&v), sizeof(v));
  }
  static std::string cstr(const std::string& s) { return s + '\0'; }

  // Sends one request and waits for its answer.
  Answer call(uint32_t opcode, uint64_t node, const std::string& args) {
    fuse_in_header h{};
    h.len = uint32_t(sizeof(h) + args.size());
    h.opcode = opcode;
    h.unique = unique_++;
    h.nodeid = node;
    h.pid = 1;
    std::string bytes = raw(h) + args;
    std::vector<uint8_t>& reply = dpfs::fuzz::reply_buffer();
    std::memset(reply.data(), 0, sizeof(fuse_out_header));  // FORGET writes none
    iovec in_iov{bytes.data(), bytes.size()};
    iovec out_iov{reply.data(), reply.size()};
    dpfs::fuzz::FuzzRequest req;
    req.in = {&in_iov, 1};
    req.out = {&out_iov, 1};
    session_.handle(req);
    // A SETLKW that finds the lock taken would wait for it, tried again from
    // the backend's lock thread as time goes by: interrupted at once, it is
    // answered by its first try, at a point of the input that never moves.
    if (opcode == FUSE_SETLKW) backend_.interrupt(h.unique);
    hook_.flush();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (req.completions.load(std::memory_order_acquire) == 0) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "kv_reply_fuzz: opcode %u not answered within 10 s\n", opcode);
        std::abort();
      }
      pollfd p{hook_.fd(), POLLIN, 0};
      ::poll(&p, 1, 100);
      hook_.on_readable();
    }
    Answer a;
    fuse_out_header out{};
    std::memcpy(&out, reply.data(), sizeof(out));
    if (out.len < sizeof(out)) return a;  // FORGET: no reply
    a.error = -out.error;
    a.payload.assign(reply.data() + sizeof(out), reply.data() + out.len);
    return a;
  }

  // A node id: mostly one the backend named, else the root or any.
  uint64_t node(Input& in) {
    const uint8_t b = in.byte();
    if (b < 0xf0 && !nodes_.empty()) return nodes_[b % nodes_.size()];
    return b == 0xff ? in.u64() : b & 7;
  }
  // A handle and its node: mostly one the backend gave.
  std::pair<uint64_t, uint64_t> handle(Input& in) {
    const uint8_t b = in.byte();
    if (b < 0xf0 && !handles_.empty()) return handles_[b % handles_.size()];
    return {node(in), b & 3};
  }
  static std::string name(Input& in) {
    static const char* const kNames[] = {"a", "b", "c", "d", "e", ".", "..", ""};
    const uint8_t b = in.byte();
    if (b < 0xf0) return kNames[b % std::size(kNames)];
    const std::vector<uint8_t> n = in.bytes(b & 15);
    return std::string(n.begin(), n.end());
  }
  static std::string xattr_name(Input& in) {
    static const char* const kNames[] = {"user.a", "trusted.b", "security.capability", "system.x",
                                         "other.y"};
    return kNames[in.byte() % std::size(kNames)];
  }
  // An offset or size: small ones often, up to 2^51 sometimes.
  static uint64_t offset(Input& in) {
    const uint8_t b = in.byte();
    switch (b % 4) {
      case 0:
        return b / 4;
      case 1:
        return uint64_t(in.byte()) * 1000;
      case 2:
        return uint64_t(b / 4 + 1) * FakeStore::kChunkSize - 1;  // a chunk's last byte
      default:
        return in.u64() & ((1ull << 51) - 1);
    }
  }

  void learn_entry(const Answer& a) {
    if (a.error != 0 || a.payload.size() < sizeof(fuse_entry_out)) return;
    fuse_entry_out e;
    std::memcpy(&e, a.payload.data(), sizeof(e));
    if (nodes_.size() < 16) nodes_.push_back(e.nodeid);
  }
  void learn_handle(uint64_t node, const Answer& a, size_t at) {
    if (a.error != 0 || a.payload.size() < at + sizeof(fuse_open_out)) return;
    fuse_open_out o;
    std::memcpy(&o, a.payload.data() + at, sizeof(o));
    if (handles_.size() < 16) handles_.emplace_back(node, o.fh);
  }

  void one(Input& in) {
    switch (in.byte() % 31) {
      case 0:
        return learn_entry(call(FUSE_LOOKUP, node(in), cstr(name(in))));
      case 1: {
        fuse_forget_in f{};
        f.nlookup = in.byte() % 3;
        call(FUSE_FORGET, node(in), raw(f));
        return;
      }
      case 2: {
        fuse_getattr_in g{};
        call(FUSE_GETATTR, node(in), raw(g));
        return;
      }
      case 3: {
        fuse_setattr_in a{};
        const uint8_t v = in.byte();
        a.valid = (v & 1 ? FATTR_MODE : 0) | (v & 2 ? FATTR_UID | FATTR_GID : 0) |
                  (v & 4 ? FATTR_SIZE : 0) | (v & 8 ? FATTR_ATIME | FATTR_MTIME : 0) |
                  (v & 16 ? FATTR_ATIME_NOW | FATTR_MTIME_NOW : 0) | (v & 32 ? FATTR_CTIME : 0) |
                  (v & 64 ? FATTR_KILL_SUIDGID : 0);
        a.size = offset(in);
        a.mode = S_IFREG | (in.u16() & 07777);
        a.uid = in.byte();
        a.gid = in.byte();
        a.atime = in.u32();
        a.mtime = in.u32();
        call(FUSE_SETATTR, node(in), raw(a));
        return;
      }
      case 4:
        call(FUSE_READLINK, node(in), "");
        return;
      case 5: {
        const uint64_t parent = node(in);
        const std::string n = name(in);
        std::string target = in.byte() & 1 ? "t" : std::string(in.byte(), 'T');
        return learn_entry(call(FUSE_SYMLINK, parent, cstr(n) + cstr(target)));
      }
      case 6: {
        fuse_mknod_in m{};
        static const uint32_t kTypes[] = {S_IFREG, S_IFIFO, S_IFCHR, S_IFSOCK, S_IFDIR};
        m.mode = kTypes[in.byte() % std::size(kTypes)] | 0644;
        m.rdev = in.byte();
        const uint64_t parent = node(in);
        return learn_entry(call(FUSE_MKNOD, parent, raw(m) + cstr(name(in))));
      }
      case 7: {
        fuse_mkdir_in m{};
        m.mode = 0755;
        m.umask = 022;
        const uint64_t parent = node(in);
        return learn_entry(call(FUSE_MKDIR, parent, raw(m) + cstr(name(in))));
      }
      case 8: {
        const uint64_t parent = node(in);
        call(FUSE_UNLINK, parent, cstr(name(in)));
        return;
      }
      case 9: {
        const uint64_t parent = node(in);
        call(FUSE_RMDIR, parent, cstr(name(in)));
        return;
      }
      case 10: {
        fuse_rename2_in r{};
        const uint64_t parent = node(in);
        r.newdir = node(in);
        static const uint32_t kFlags[] = {0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT};
        r.flags = kFlags[in.byte() % std::size(kFlags)];
        const std::string from = name(in);
        call(FUSE_RENAME2, parent, raw(r) + cstr(from) + cstr(name(in)));
        return;
      }
      case 11: {
        fuse_link_in l{};
        l.oldnodeid = node(in);
        const uint64_t parent = node(in);
        return learn_entry(call(FUSE_LINK, parent, raw(l) + cstr(name(in))));
      }
      case 12:
      case 13: {
        fuse_open_in o{};
        const uint8_t b = in.byte();
        o.flags = O_RDWR | (b & 1 ? O_TRUNC : 0);
        const uint64_t n = node(in);
        if (b & 2) return learn_handle(n, call(FUSE_OPENDIR, n, raw(o)), 0);
        return learn_handle(n, call(FUSE_OPEN, n, raw(o)), 0);
      }
      case 14: {
        fuse_create_in c{};
        const uint8_t b = in.byte();
        c.flags = O_RDWR | O_CREAT | (b & 1 ? O_TRUNC : 0) | (b & 2 ? O_EXCL : 0);
        c.mode = S_IFREG | 0644;
        c.umask = 022;
        const uint64_t parent = node(in);
        const Answer a = call(FUSE_CREATE, parent, raw(c) + cstr(name(in)));
        learn_entry(a);
        if (a.error == 0 && a.payload.size() >= sizeof(fuse_entry_out)) {
          fuse_entry_out e;
          std::memcpy(&e, a.payload.data(), sizeof(e));
          learn_handle(e.nodeid, a, sizeof(fuse_entry_out));
        }
        return;
      }
      case 15:
      case 16: {
        const auto [n, fh] = handle(in);
        fuse_read_in r{};
        r.fh = fh;
        r.offset = offset(in);
        r.size = uint32_t(std::min<uint64_t>(offset(in) + 1, 1 << 20));
        call(FUSE_READ, n, raw(r));
        return;
      }
      case 17: {
        const auto [n, fh] = handle(in);
        fuse_write_in w{};
        w.fh = fh;
        w.offset = offset(in);
        w.size = uint32_t(in.byte()) * 67;
        w.write_flags = in.byte() & 1 ? FUSE_WRITE_KILL_SUIDGID : 0;
        call(FUSE_WRITE, n, raw(w) + std::string(w.size, 'w'));
        return;
      }
      case 18:
        call(FUSE_STATFS, node(in), "");
        return;
      case 19: {
        const auto [n, fh] = handle(in);
        const uint8_t b = in.byte();
        if (b % 3 == 0) {
          fuse_flush_in f{};
          f.fh = fh;
          f.lock_owner = b / 3 % 3;
          call(FUSE_FLUSH, n, raw(f));
        } else {
          fuse_fsync_in f{};
          f.fh = fh;
          call(b % 3 == 1 ? FUSE_FSYNC : FUSE_FSYNCDIR, n, raw(f));
        }
        return;
      }
      case 20: {
        const auto [n, fh] = handle(in);
        fuse_release_in r{};
        r.fh = fh;
        const uint8_t b = in.byte();
        r.release_flags = b & 1 ? FUSE_RELEASE_FLOCK_UNLOCK : 0;
        r.lock_owner = b / 2 % 3;
        call(b & 2 ? FUSE_RELEASEDIR : FUSE_RELEASE, n, raw(r));
        return;
      }
      case 21:
      case 22: {
        const auto [n, fh] = handle(in);
        fuse_read_in r{};
        r.fh = fh;
        r.offset = in.byte() % 8;
        static const uint32_t kSizes[] = {4096, 100, 65536, 48};
        r.size = kSizes[in.byte() % std::size(kSizes)];
        call(FUSE_READDIR, n, raw(r));
        return;
      }
      case 23: {
        // SETXATTR's short argument: INIT left out FUSE_SETXATTR_EXT.
        const uint64_t n = node(in);
        const std::string x = xattr_name(in);
        const std::string value(in.byte(), 'v');
        const uint32_t arg[2] = {uint32_t(value.size()), uint32_t(in.byte() % 4)};
        call(FUSE_SETXATTR, n,
             std::string(reinterpret_cast<const char*>(arg), sizeof(arg)) + cstr(x) + value);
        return;
      }
      case 24:
      case 25: {
        fuse_getxattr_in g{};
        static const uint32_t kSizes[] = {0, 4, 4096, 65536};
        g.size = kSizes[in.byte() % std::size(kSizes)];
        const uint64_t n = node(in);
        if (in.byte() & 1) {
          call(FUSE_LISTXATTR, n, raw(g));
        } else {
          call(FUSE_GETXATTR, n, raw(g) + cstr(xattr_name(in)));
        }
        return;
      }
      case 26: {
        const uint64_t n = node(in);
        call(FUSE_REMOVEXATTR, n, cstr(xattr_name(in)));
        return;
      }
      case 27:
      case 28: {
        const auto [n, fh] = handle(in);
        fuse_lk_in l{};
        l.fh = fh;
        const uint8_t b = in.byte();
        l.owner = b % 3;
        l.lk.start = offset(in);
        l.lk.end = in.byte() & 1 ? l.lk.start + offset(in) : INT64_MAX;
        static const uint32_t kTypes[] = {F_RDLCK, F_WRLCK, F_UNLCK, 7};
        l.lk.type = kTypes[b / 3 % std::size(kTypes)];
        l.lk.pid = 1;
        l.lk_flags = b & 0x80 ? FUSE_LK_FLOCK : 0;
        static const uint32_t kOps[] = {FUSE_GETLK, FUSE_SETLK, FUSE_SETLKW};
        call(kOps[in.byte() % std::size(kOps)], n, raw(l));
        return;
      }
      case 29: {
        fuse_interrupt_in i{};
        i.unique = unique_ - 1 - in.byte() % 4;
        call(FUSE_INTERRUPT, 0, raw(i));
        return;
      }
      case 30: {
        const auto [n, fh] = handle(in);
        fuse_fallocate_in f{};
        f.fh = fh;
        f.offset = offset(in);
        f.length = offset(in);
        static const uint32_t kModes[] = {0, FALLOC_FL_KEEP_SIZE,
                                          FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE,
                                          FALLOC_FL_ZERO_RANGE, FALLOC_FL_COLLAPSE_RANGE};
        f.mode = kModes[in.byte() % std::size(kModes)];
        call(FUSE_FALLOCATE, n, raw(f));
        return;
      }
    }
  }

  dpfs::fuse::FuseSession& session_;
  dpfs::Backend& backend_;
  dpfs::WorkerHook& hook_;
  uint64_t unique_ = 2;
  std::vector<uint64_t> nodes_{1};
  std::vector<std::pair<uint64_t, uint64_t>> handles_;  // (node id, fh)
};

void fuzz_backend(Input& in) {
  FakeStore& store = fake_store();
  const size_t request_bytes = std::min<size_t>(in.byte(), in.n);
  Input requests{in.p, request_bytes};
  in.p += request_bytes;
  in.n -= request_bytes;
  store.replies(in.p, in.n);
  struct Finish {
    FakeStore& store;
    ~Finish() { store.finished(); }
  } finish{store};  // after the backend is gone (declared before it)

  dpfs::KvOptions options;
  options.url = dpfs::kv::parse_kv_url("redis://127.0.0.1:" + std::to_string(store.port()) +
                                       "/fuzz?timeout=2");
  options.connections = 1;  // one connection: the replies keep the commands' order
  dpfs::KvBackend backend(options);
  store.started();
  {
    dpfs::fuse::FuseSession session(backend, {});
    std::unique_ptr<dpfs::WorkerHook> hook = session.attach_worker();
    require(hook != nullptr, "no lane for the fuzzer's thread to drive");
    dpfs::fuzz::init_session(session, ~uint32_t(FUSE_SETXATTR_EXT));
    Tenant(session, backend, *hook).run(requests);
    hook.reset();  // answers what is still in flight (FORGETs, frees)
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Input in{data, size};
  if (in.byte() & 1) {
    fuzz_backend(in);
  } else {
    fuzz_parsers(in);
  }
  return 0;
}
