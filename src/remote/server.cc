#include "remote/server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "fuse/session_stats.h"

namespace dpfs::remote {
namespace {

// Requests one connection may have in flight at once; a peer that sends
// more is broken or hostile.
constexpr size_t kMaxInFlight = 4096;

std::string peer_name(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
    port = ntohs(a->sin_port);
    return fmt::format("{}:{}", host, port);
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
  }
  return fmt::format("[{}]:{}", host, port);
}

bool is_loopback(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET) {
    const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
    return (ntohl(a->sin_addr.s_addr) >> 24) == 127;
  }
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    return IN6_IS_ADDR_LOOPBACK(&a->sin6_addr);
  }
  return false;
}

uint16_t port_of(const sockaddr_storage& addr) {
  if (addr.ss_family == AF_INET)
    return ntohs(reinterpret_cast<const sockaddr_in*>(&addr)->sin_port);
  return ntohs(reinterpret_cast<const sockaddr_in6*>(&addr)->sin6_port);
}

// The source a per-address cap counts: an IPv4 address (also as an
// IPv4-mapped IPv6 one), or an IPv6 /64 -- the least a site is given, so
// one attacker's many addresses there count as one. And its name for logs.
std::pair<std::string, std::string> source_of(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = "?";
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    const auto* b = reinterpret_cast<const char*>(a->sin6_addr.s6_addr);
    if (!IN6_IS_ADDR_V4MAPPED(&a->sin6_addr)) {
      ::inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
      return {std::string(b, 8), fmt::format("{}/64", host)};
    }
    ::inet_ntop(AF_INET, b + 12, host, sizeof(host));
    return {std::string(b + 12, 4), host};
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
  ::inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
  return {std::string(reinterpret_cast<const char*>(&a->sin_addr), 4), host};
}

using Clock = std::chrono::steady_clock;

// A token bucket for log lines a peer can cause: `burst` at once, then one
// per `interval`; the lines held back are counted and reported with the
// next one that goes out. Used by the event loop's thread only.
class LogBudget {
 public:
  LogBudget(double burst, std::chrono::milliseconds interval)
      : burst_(burst), tokens_(burst), interval_(interval) {}
  // Whether a line may go out now; if so, *held_back is the number of lines
  // refused since the last one that went out.
  bool take(uint64_t* held_back) {
    const auto now = Clock::now();
    tokens_ = std::min(burst_, tokens_ + std::chrono::duration<double>(now - last_) /
                                             std::chrono::duration<double>(interval_));
    last_ = now;
    if (tokens_ < 1) {
      ++held_back_;
      return false;
    }
    tokens_ -= 1;
    *held_back = std::exchange(held_back_, 0);
    return true;
  }

 private:
  const double burst_;
  double tokens_;
  const std::chrono::milliseconds interval_;
  Clock::time_point last_ = Clock::now();
  uint64_t held_back_ = 0;
};

std::string held_back_note(uint64_t n) {
  return n == 0 ? "" : fmt::format(" ({} similar line{} held back)", n, n == 1 ? "" : "s");
}

}  // namespace

// The event loop's log lines that peers can cause.
struct Server::LogBudgets {
  // Handshake failures (timeouts, bad frames, wrong proofs): a peer that
  // opens connections in a loop gets a few lines, then one a second.
  LogBudget failures{20, std::chrono::milliseconds(1000)};
  // Refusals at the caps, and accept(2) errors: one line per 10 s.
  LogBudget per_address{1, std::chrono::milliseconds(10000)};
  LogBudget total{1, std::chrono::milliseconds(10000)};
  LogBudget accept{1, std::chrono::milliseconds(10000)};
};

// --- Connection --------------------------------------------------------------

// One accepted connection: its socket, its reader thread, and a pool of
// request objects. A request in flight holds the connection alive (a
// backend may answer after the connection closed: the reply then fails to
// send, harmlessly).
class Server::Connection : public std::enable_shared_from_this<Connection> {
 public:
  // `ch` has completed the handshake: `session` is the one it joined.
  Connection(Server& server, std::unique_ptr<Channel> ch, std::string peer,
             std::shared_ptr<Session> session)
      : server_(server), ch_(std::move(ch)), peer_(std::move(peer)), session_(std::move(session)) {}

  void start() {
    // From here on the reader waits as long as the device stays quiet
    // (read_frame_start); a frame that stalls half-way, or a reply to a
    // device that does not read, may not wait forever.
    ch_->set_timeouts(server_.options_.send_timeout_s, server_.options_.send_timeout_s);
    thread_ = std::thread([self = shared_from_this()] { self->run(); });
  }
  bool done() const { return done_.load(std::memory_order_acquire); }
  // Wakes the reader: it sees EOF and ends.
  void shut() { ch_->shutdown(); }
  void join() {
    if (thread_.joinable()) thread_.join();
  }

 private:
  // A request read from the socket: its bytes, a reply buffer, and the
  // frame id the reply must carry.
  class ServerRequest final : public SessionRequest {
   public:
    void prepare(uint64_t id, size_t in_len, size_t out_len) {
      id_ = id;
      opcode_ = 0;
      forget_given();
      grow(in_buf_, in_cap_, in_len);
      grow(out_buf_, out_cap_, out_len);
      in_iov_ = {in_buf_.get(), in_len};
      out_iov_ = {out_buf_.get(), out_len};
      in = std::span<const iovec>(&in_iov_, 1);
      out = std::span<const iovec>(&out_iov_, 1);
      in_is_private = true;  // a frame read from the socket into our buffer
    }
    char* in_buf() { return in_buf_.get(); }
    const char* out_buf() const { return out_buf_.get(); }
    // The FUSE opcode, once the request is read (0 if it has no header).
    uint32_t opcode() const { return opcode_; }
    void set_header(uint32_t opcode, uint64_t nodeid) {
      opcode_ = opcode;
      nodeid_ = nodeid;
    }

    void complete(size_t reply_len) override {
      std::shared_ptr<Connection> conn = std::move(owner_);
      give_to(conn->session_->table, reply_len);
      conn->send_reply(id_, out_buf_.get(), reply_len);
      conn->release(this);
      // `conn` may be the last reference: the pool and this object go with
      // it. Nothing of this object is touched from here on.
    }

    std::shared_ptr<Connection> owner_;

   private:
    static void grow(std::unique_ptr<char[]>& buf, size_t& cap, size_t len) {
      if (len <= cap && buf) return;
      cap = std::max<size_t>(len, 4096);
      buf = std::make_unique_for_overwrite<char[]>(cap);
    }

    uint64_t id_ = 0;
    uint32_t opcode_ = 0;
    uint64_t nodeid_ = 0;
    std::unique_ptr<char[]> in_buf_, out_buf_;
    size_t in_cap_ = 0, out_cap_ = 0;
    iovec in_iov_{}, out_iov_{};
  };

  void run();
  // Reads a frame's MAC trailer and checks it, if this connection's frames
  // carry one; false (after one log line) if it is missing or wrong.
  bool frame_authentic(const FrameHeader& h, const void* payload);
  // A request the session table refused (another session's node id or handle):
  // answered `error` without reaching the session.
  void fence(ServerRequest* r, const FrameHeader& h, const fuse_in_header& in, int error);
  // The device's DESTROY: this session's lookups go back to the backend
  // (the shared backend's destroy() would end every session's), and the
  // session awaits a new INIT.
  void end_session() {
    spdlog::info("remote: peer {}: session {:016x} ended by DESTROY", peer_, session_->id);
    server_.release(session_);
    session_->fuse->reset();
  }
  // Logs why the connection ends (one line) and tells the peer if it can.
  void refuse(const std::string& reason, bool tell_peer);

  ServerRequest* acquire() {
    std::lock_guard lock(pool_mu_);
    if (free_.empty()) {
      if (pool_.size() >= kMaxInFlight) return nullptr;
      pool_.push_back(std::make_unique<ServerRequest>());
      free_.push_back(pool_.back().get());
    }
    ServerRequest* r = free_.back();
    free_.pop_back();
    return r;
  }
  void release(ServerRequest* r) {
    std::lock_guard lock(pool_mu_);
    free_.push_back(r);
  }

  void send_reply(uint64_t id, const char* data, size_t len) {
    FrameHeader h = make_header(FrameType::kReply, uint32_t(len), id);
    Mac mac;
    iovec iov[3] = {{&h, sizeof(h)}, {const_cast<char*>(data), len}, {mac.data(), 0}};
    std::lock_guard lock(send_mu_);
    if (broken_) return;
    // The sequence is the order on the wire: taken under the send lock.
    if (ch_->send_mac) {
      mac = ch_->send_mac->next(h, data);
      iov[2].iov_len = mac.size();
    }
    if (!ch_->writev_full(iov)) {
      // The peer went away or stopped reading: the reader ends too.
      broken_ = true;
      if (!server_.stopping_.load()) {
        spdlog::info("remote: peer {}: sending a reply: {}; closing the connection", peer_,
                     ch_->error(errno));
      }
      shut();
    }
  }

  Server& server_;
  const std::unique_ptr<Channel> ch_;
  const std::string peer_;
  std::shared_ptr<Session> session_;
  std::thread thread_;
  std::atomic<bool> done_{false};

  std::mutex send_mu_;
  bool broken_ = false;  // under send_mu_

  std::mutex pool_mu_;
  std::vector<std::unique_ptr<ServerRequest>> pool_;
  std::vector<ServerRequest*> free_;

  // Requests refused by the session table: one log line, then one per 10 s with a
  // count. Reader only.
  Clock::time_point fenced_logged_{};
  uint64_t fenced_since_ = 0;
};

void Server::Connection::refuse(const std::string& reason, bool tell_peer) {
  spdlog::warn("remote: peer {}: {}; closing the connection", peer_, reason);
  if (tell_peer) {
    const std::string text = reason.substr(0, kMaxErrorText);
    // ERROR frames carry no MAC (wire.h): they only end a connection.
    FrameHeader h = make_header(FrameType::kError, uint32_t(text.size()));
    iovec iov[2] = {{&h, sizeof(h)}, {const_cast<char*>(text.data()), text.size()}};
    std::lock_guard lock(send_mu_);
    ch_->writev_full(iov);
  }
}

bool Server::Connection::frame_authentic(const FrameHeader& h, const void* payload) {
  if (!ch_->receive_mac) return true;
  Mac trailer;
  if (!ch_->read_full(trailer.data(), trailer.size())) {
    refuse("a frame cut short before its MAC", false);
    return false;
  }
  if (!same_mac(trailer, ch_->receive_mac->next(h, payload))) {
    refuse(fmt::format("a frame (#{}) that fails its MAC check: altered, replayed or reordered "
                       "in transit",
                       ch_->receive_mac->sequence() - 1),
           false);
    return false;
  }
  return true;
}

void Server::Connection::fence(ServerRequest* r, const FrameHeader& h, const fuse_in_header& in,
                               int error) {
  ++fenced_since_;
  const auto now = Clock::now();
  if (now - fenced_logged_ >= std::chrono::seconds(10)) {
    spdlog::warn(
        "remote: peer {}: session {:016x}: {} names a {} this session was not given (node id "
        "{}); answered {} ({} such request{} since the last line)",
        peer_, session_->id, fuse::opcode_name(in.opcode),
        error == EBADF ? "file handle" : "node id", in.nodeid, error == EBADF ? "EBADF" : "ESTALE",
        fenced_since_, fenced_since_ == 1 ? "" : "s");
    fenced_logged_ = now;
    fenced_since_ = 0;
  }
  const size_t len = fuse::encode_error(r->out, in.unique, error);
  send_reply(h.id, r->out_buf(), len);
  release(r);
}

void Server::Connection::run() {
  {
    fuse::FuseSession& fuse = *session_->fuse;
    const uint32_t max_request = uint32_t(fuse.max_request_size());
    const uint32_t max_reply = uint32_t(fuse.max_reply_size());
    for (;;) {
      FrameHeader h;
      if (!ch_->read_frame_start(&h, sizeof(h))) {
        if (errno != 0 && !server_.stopping_.load()) {
          spdlog::info("remote: peer {}: {}; closing the connection", peer_, ch_->error(errno));
        } else {
          spdlog::info("remote: peer {} disconnected", peer_);
        }
        break;
      }
      if (Refusal bad = check_frame(h, Stage::kRequests, max_request); bad.refused()) {
        refuse(bad.reason, bad.tell_peer);
        break;
      }
      ServerRequest* r = acquire();
      if (r == nullptr) {
        refuse(fmt::format("more than {} requests in flight", kMaxInFlight), true);
        break;
      }
      r->prepare(h.id, h.length, std::min(h.reply_capacity, max_reply));
      if (!ch_->read_full(r->in_buf(), h.length)) {
        release(r);
        refuse("a request cut short", false);
        break;
      }
      if (!frame_authentic(h, r->in_buf())) {
        release(r);
        break;
      }
      // From here on everything is decided from r's buffer, which the
      // session parses too: a private copy the device cannot change.
      const std::span<uint8_t> bytes(reinterpret_cast<uint8_t*>(r->in_buf()), h.length);
      fuse_in_header in{};
      std::memcpy(&in, r->in_buf(), std::min<size_t>(h.length, sizeof(in)));
      if (h.length >= sizeof(in)) r->set_header(in.opcode, in.nodeid);
      // A replayed INIT that lost the race with another connection's, or
      // this session's end: answered here (header-only success).
      const bool replayed_init = h.id == kInitReplayId && fuse.initialized();
      if (replayed_init || r->opcode() == FUSE_DESTROY) {
        if (!replayed_init) end_session();
        const fuse_out_header out{sizeof(fuse_out_header), 0, in.unique};
        send_reply(h.id, reinterpret_cast<const char*>(&out), sizeof(out));
        release(r);
        continue;
      }
      // Only this session's node ids and handles (session_table.h).
      if (const int error = session_->table.check(bytes); error != 0) {
        fence(r, h, in, error);
        continue;
      }
      if (r->opcode() == FUSE_FORGET || r->opcode() == FUSE_BATCH_FORGET) {
        session_->table.on_forget(bytes);
      }
      if (r->opcode() == FUSE_RELEASE || r->opcode() == FUSE_RELEASEDIR) {
        session_->table.on_release(bytes);
      }
      r->owner_ = shared_from_this();
      // No WorkerHook here (RequestHandler::attach_worker): this thread
      // sleeps in a blocking read of its socket, so a backend's I/O is
      // started per request and reaped by the backend's own fallback (the
      // passthrough backend's reaper thread), not batched.
      fuse.handle(*r);
    }
  }
  {
    std::lock_guard lock(send_mu_);
    broken_ = true;
  }
  shut();
  done_.store(true, std::memory_order_release);
}

// --- Server ------------------------------------------------------------------

Server::Server(ServerOptions options, std::unique_ptr<Backend> backend)
    : options_(std::move(options)), backend_(std::move(backend)) {
  const Endpoint& want = options_.listen;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(want.port);
  if (const int rc = ::getaddrinfo(want.host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    throw ListenError(
        fmt::format("--listen tcp://{}: {}", format_endpoint(want), gai_strerror(rc)));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
  sockaddr_storage addr{};
  std::memcpy(&addr, found->ai_addr, found->ai_addrlen);
  if (!is_loopback(addr) && options_.secret.empty() && !options_.tls.enabled()) {
    throw ListenError(fmt::format(
        "--listen tcp://{} is not a loopback address: set remote.secret_file "
        "(--remote-secret-file FILE) or TLS (remote.tls_cert, remote.tls_key, remote.tls_ca) so "
        "that only peers that prove who they are are served",
        format_endpoint(want)));
  }
  if (options_.tls.enabled()) {
    try {
      tls_ = std::make_unique<TlsContext>(options_.tls, TlsContext::Role::kServer);
    } catch (const std::invalid_argument& e) {
      throw ListenError(e.what());
    }
  }
  // Non-blocking: the loop accepts until EAGAIN, and a connection reset
  // between the wake-up and the accept must not block it.
  listen_fd_.reset(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd_) throw ListenError(fmt::format("socket: {}", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listen_fd_.get(), found->ai_addr, found->ai_addrlen) != 0 ||
      ::listen(listen_fd_.get(), 128) != 0) {
    throw ListenError(
        fmt::format("--listen tcp://{}: {}", format_endpoint(want), std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  bound_ = Endpoint{want.host, port_of(addr)};

  epoll_fd_.reset(::epoll_create1(EPOLL_CLOEXEC));
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!epoll_fd_ || !wake_fd_) throw ListenError(fmt::format("epoll: {}", std::strerror(errno)));
  for (const int fd : {listen_fd_.get(), wake_fd_.get()}) {
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = fd;
    if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, fd, &ev) != 0) {
      throw ListenError(fmt::format("epoll_ctl: {}", std::strerror(errno)));
    }
  }
  random_bytes(session_key_.data(), session_key_.size());
  budgets_ = std::make_unique<LogBudgets>();
}

Server::~Server() { stop(); }

void Server::start() {
  loop_ = std::thread([this] { loop(); });
  spdlog::info("remote: listening on tcp://{}{}{}", format_endpoint(bound_),
               tls_ ? " (TLS: peers need a certificate from " + options_.tls.ca + ")" : "",
               options_.secret.empty()
                   ? (tls_ ? "" : " (no shared secret: loopback only)")
                   : (tls_ ? " (peers must prove the shared secret)"
                           : " (peers must prove the shared secret; frames authenticated)"));
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  const uint64_t one = 1;
  if (wake_fd_ && ::write(wake_fd_.get(), &one, sizeof(one)) < 0) {
    // Only EAGAIN (the counter is full: a wake-up is pending anyway).
  }
  if (loop_.joinable()) loop_.join();
  reap(true);
  // Pending replies (a lock waiter) are answered by the backend's
  // destructor, into their connections, which they keep alive; the
  // sessions they report to go after it.
  backend_.reset();
}

void Server::reap(bool all) {
  util::MutexLock lock(connections_mu_);
  // One look at done() per connection: a connection that ends between a
  // join pass and an erase pass would be dropped unjoined (std::terminate,
  // in whichever thread let go of it last).
  std::erase_if(connections_, [all](const auto& c) {
    if (all) {
      c->shut();
    } else if (!c->done()) {
      return false;
    }
    c->join();
    return true;
  });
}

// --- Handshakes --------------------------------------------------------------

// One connection in the handshake, driven by the event loop without
// waiting: each step reads or writes what the socket takes now and
// returns when it would block; the deadline ends it otherwise.
struct Server::Handshake {
  enum class Step {
    kSniff,      // TLS server: a plain dpfs frame instead of a ClientHello?
    kTls,        // the TLS handshake
    kHello,      // reading HELLO
    kChallenge,  // writing CHALLENGE
    kAuth,       // reading AUTH
    kWelcome,    // writing WELCOME: then the connection is handed over
    kError,      // writing an ERROR: then the connection is closed
  };
  std::unique_ptr<Channel> ch;
  std::string peer;
  std::string source, source_name;  // source_of()
  Clock::time_point deadline;
  uint64_t order = 0;  // accepted as the n-th: the oldest goes first
  Step step = Step::kHello;
  // The frame being read: its header, then its payload.
  alignas(8) uint8_t in[sizeof(FrameHeader) + sizeof(AuthPayload)];
  size_t in_have = 0;
  // The frame being written, and how much of it went.
  std::vector<uint8_t> out;
  size_t out_done = 0;
  bool out_raw = false;  // written on the socket, not through TLS
  HelloPayload hello{};
  Nonce server_nonce{};
  std::shared_ptr<Session> session;

  int fd() const { return ch->fd(); }
  void put(FrameType type, const void* payload, uint32_t length, const Mac* mac = nullptr) {
    const FrameHeader h = make_header(type, length);
    out.resize(sizeof(h) + length + (mac ? kMacSize : 0));
    std::memcpy(out.data(), &h, sizeof(h));
    std::memcpy(out.data() + sizeof(h), payload, length);
    if (mac) std::memcpy(out.data() + sizeof(h) + length, mac->data(), kMacSize);
    out_done = 0;
  }
};

void Server::loop() {
  pthread_setname_np(pthread_self(), "dpfs-remote");
  auto next_tick = Clock::now();
  epoll_event events[64];
  while (!stopping_.load()) {
    // Wakes by the earliest deadline, and at least once a second to end
    // sessions past their grace.
    auto wake = Clock::now() + std::chrono::seconds(1);
    for (const auto& [fd, hs] : handshakes_) wake = std::min(wake, hs->deadline);
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wake - Clock::now());
    const int n = ::epoll_wait(epoll_fd_.get(), events, 64,
                               int(std::clamp<int64_t>(wait.count() + 1, 0, 1000)));
    for (int i = 0; i < n && !stopping_.load(); ++i) {
      const int fd = events[i].data.fd;
      if (fd == listen_fd_.get()) {
        accept_all();
      } else if (fd != wake_fd_.get()) {
        const auto it = handshakes_.find(fd);
        if (it != handshakes_.end() && !advance(*it->second)) drop_handshake(fd);
      }
    }
    const auto now = Clock::now();
    std::vector<int> late;
    for (const auto& [fd, hs] : handshakes_) {
      if (now >= hs->deadline) late.push_back(fd);
    }
    for (const int fd : late) {
      uint64_t held = 0;
      if (budgets_->failures.take(&held)) {
        spdlog::warn("remote: peer {}: no handshake within {} s; closing the connection{}",
                     handshakes_[fd]->peer, options_.handshake_timeout_s, held_back_note(held));
      }
      drop_handshake(fd);
    }
    if (now >= next_tick) {
      next_tick = now + std::chrono::seconds(1);
      reap(false);  // connections that ended let go of their sessions
      expire_sessions();
      // Accepting again after running out of descriptors (accept_all()).
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = listen_fd_.get();
      ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, listen_fd_.get(), &ev);
    }
  }
  std::vector<int> all;
  for (const auto& [fd, hs] : handshakes_) all.push_back(fd);
  for (const int fd : all) drop_handshake(fd);
}

void Server::accept_all() {
  for (;;) {
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    util::UniqueFd fd(
        ::accept4(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len, SOCK_CLOEXEC));
    if (!fd) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      uint64_t held = 0;
      if (budgets_->accept.take(&held)) {
        spdlog::error("remote: accept: {}{}", std::strerror(errno), held_back_note(held));
      }
      // Out of descriptors: the pending connection would wake us at once
      // again. Not listened to until the next tick.
      epoll_event ev{};
      ev.data.fd = listen_fd_.get();
      ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_MOD, listen_fd_.get(), &ev);
      return;
    }
    admit(std::move(fd), addr);
  }
}

void Server::admit(util::UniqueFd fd, const sockaddr_storage& addr) {
  auto [source, source_name] = source_of(addr);
  const auto counted = handshakes_by_source_.find(source);
  const unsigned from_source = counted == handshakes_by_source_.end() ? 0 : counted->second;
  if (from_source >= options_.max_handshakes_per_address) {
    // One line per 10 s for every flooder together, with the count.
    uint64_t held = 0;
    if (budgets_->per_address.take(&held)) {
      spdlog::warn(
          "remote: refusing a connection from {}: {} handshakes pending from it already "
          "(remote.max_handshakes_per_address){}",
          source_name, from_source, held_back_note(held));
    }
    return;  // closed
  }
  if (handshakes_.size() >= options_.max_handshakes) {
    // Full: the oldest handshake of the source with the most makes room, if
    // that source has more than this one's -- a crowd from a few addresses
    // cannot keep a newcomer from elsewhere out.
    const auto most =
        std::max_element(handshakes_by_source_.begin(), handshakes_by_source_.end(),
                         [](const auto& a, const auto& b) { return a.second < b.second; });
    int oldest = -1;
    if (most != handshakes_by_source_.end() && most->second > from_source) {
      uint64_t order = UINT64_MAX;
      for (const auto& [hfd, hs] : handshakes_) {
        if (hs->source == most->first && hs->order < order) {
          order = hs->order;
          oldest = hfd;
        }
      }
    }
    uint64_t held = 0;
    if (budgets_->total.take(&held)) {
      spdlog::warn(
          "remote: {} handshakes pending (remote.max_handshakes); {}{}", handshakes_.size(),
          oldest >= 0 ? fmt::format("dropping the oldest from {}", handshakes_[oldest]->source_name)
                      : fmt::format("refusing a connection from {}", source_name),
          held_back_note(held));
    }
    if (oldest < 0) return;
    drop_handshake(oldest);
  }
  tune_socket(fd.get(), unsigned(std::max(1.0, options_.send_timeout_s)));
  auto hs = std::make_unique<Handshake>();
  hs->peer = peer_name(addr);
  hs->source = source;
  hs->source_name = source_name;
  hs->deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                    std::chrono::duration<double>(options_.handshake_timeout_s));
  hs->order = accepted_++;
  hs->step = tls_ ? Handshake::Step::kSniff : Handshake::Step::kHello;
  hs->ch = tls_ ? tls_->channel(std::move(fd)) : plain_channel(std::move(fd));
  const int hfd = hs->fd();
  // Edge-triggered: a step that would block waits for the socket's next
  // change, so a peer that sends a byte and stops costs no spinning.
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
  ev.data.fd = hfd;
  if (::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_ADD, hfd, &ev) != 0) {
    spdlog::error("remote: epoll_ctl: {}", std::strerror(errno));
    return;
  }
  ++handshakes_by_source_[source];
  handshakes_.emplace(hfd, std::move(hs));
  handshakes_count_.store(handshakes_.size());
}

void Server::drop_handshake(int fd) {
  const auto it = handshakes_.find(fd);
  if (it == handshakes_.end()) return;
  ::epoll_ctl(epoll_fd_.get(), EPOLL_CTL_DEL, fd, nullptr);
  if (const auto s = handshakes_by_source_.find(it->second->source);
      s != handshakes_by_source_.end() && --s->second == 0) {
    handshakes_by_source_.erase(s);
  }
  handshakes_.erase(it);  // closes it, unless handed over
  handshakes_count_.store(handshakes_.size());
}

bool Server::advance(Handshake& hs) {
  using Step = Handshake::Step;
  using Io = Channel::Io;
  // Ends the handshake with one (budgeted) log line; `tell_peer`: an ERROR
  // frame first.
  auto refuse = [&](const std::string& reason, bool tell_peer, bool raw = false) {
    uint64_t held = 0;
    if (budgets_->failures.take(&held)) {
      spdlog::warn("remote: peer {}: {}; closing the connection{}", hs.peer, reason,
                   held_back_note(held));
    }
    if (!tell_peer) return false;
    const std::string text = reason.substr(0, kMaxErrorText);
    hs.put(FrameType::kError, text.data(), uint32_t(text.size()));
    hs.out_raw = raw;
    hs.step = Step::kError;
    return true;
  };
  auto io_failed = [&](Io io, const char* what) {
    if (io == Io::kEof) {
      uint64_t held = 0;
      if (budgets_->failures.take(&held)) {
        spdlog::info(
            "remote: peer {} left during the handshake (if it is a device: does it have the "
            "same shared secret?){}",
            hs.peer, held_back_note(held));
      }
      return false;
    }
    return refuse(fmt::format("{}: {}", what, hs.ch->error(errno)), false);
  };
  for (;;) {
    switch (hs.step) {
      case Step::kSniff: {
        // A device without TLS: told in the plain format it speaks, so
        // that it stops at start-up with the reason instead of retrying.
        uint32_t magic = 0;
        const ssize_t n = ::recv(hs.fd(), &magic, sizeof(magic), MSG_PEEK | MSG_DONTWAIT);
        if (n == 0) return io_failed(Io::kEof, "");
        if (n < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return true;
          return refuse(fmt::format("reading: {}", std::strerror(errno)), false);
        }
        if (size_t(n) < sizeof(magic)) return true;  // the rest wakes us
        if (magic == kMagic) {
          if (!refuse("a device without TLS; this server requires TLS (remote.tls_cert, "
                      "remote.tls_key, remote.tls_ca)",
                      true, true)) {
            return false;
          }
          break;
        }
        hs.step = Step::kTls;
        break;
      }
      case Step::kTls: {
        std::string why;
        const Io io = hs.ch->start_some(&why);
        if (io == Io::kWantRead || io == Io::kWantWrite) return true;
        if (io != Io::kDone) return refuse(why, false);
        hs.step = Step::kHello;
        break;
      }
      case Step::kHello:
      case Step::kAuth: {
        const Stage stage = hs.step == Step::kHello ? Stage::kHello : Stage::kAuth;
        const char* what = stage == Stage::kHello ? "HELLO" : "AUTH";
        const uint32_t size = stage == Stage::kHello ? sizeof(HelloPayload) : sizeof(AuthPayload);
        // The header, judged before its payload is read.
        size_t want = sizeof(FrameHeader);
        if (hs.in_have >= sizeof(FrameHeader)) want += size;
        while (hs.in_have < want) {
          size_t got = 0;
          const Io io = hs.ch->read_some(hs.in + hs.in_have, want - hs.in_have, &got);
          if (io == Io::kWantRead || io == Io::kWantWrite) return true;
          if (io != Io::kDone) return io_failed(io, fmt::format("reading {}", what).c_str());
          hs.in_have += got;
          if (hs.in_have == sizeof(FrameHeader)) {
            const FrameHeader h = decode_header({hs.in, sizeof(FrameHeader)});
            if (Refusal bad = check_frame(h, stage); bad.refused()) {
              if (!refuse(bad.reason, bad.tell_peer)) return false;
              want = 0;
              break;
            }
            want += size;
          }
        }
        if (hs.step == Step::kError) break;
        hs.in_have = 0;
        if (stage == Stage::kHello) {
          std::memcpy(&hs.hello, hs.in + sizeof(FrameHeader), sizeof(hs.hello));
          if (Refusal bad = check_hello(hs.hello); bad.refused()) {
            if (!refuse(bad.reason, bad.tell_peer)) return false;
            break;
          }
          ChallengePayload challenge{};
          random_bytes(challenge.server_nonce.data(), kNonceSize);
          hs.server_nonce = challenge.server_nonce;
          challenge.server_proof = server_proof(options_.secret, hs.hello, hs.server_nonce);
          hs.put(FrameType::kChallenge, &challenge, sizeof(challenge));
          hs.step = Step::kChallenge;
        } else {
          AuthPayload auth;
          std::memcpy(&auth, hs.in + sizeof(FrameHeader), sizeof(auth));
          if (!welcome(hs, auth)) return false;
        }
        break;
      }
      case Step::kChallenge:
      case Step::kWelcome:
      case Step::kError: {
        while (hs.out_done < hs.out.size()) {
          const void* p = hs.out.data() + hs.out_done;
          const size_t left = hs.out.size() - hs.out_done;
          size_t sent = 0;
          Io io;
          if (hs.out_raw) {
            const ssize_t n = ::send(hs.fd(), p, left, MSG_DONTWAIT | MSG_NOSIGNAL);
            io = n > 0 ? Io::kDone
                       : (n < 0 && (errno == EAGAIN || errno == EINTR) ? Io::kWantWrite
                                                                       : Io::kFailed);
            sent = n > 0 ? size_t(n) : 0;
          } else {
            io = hs.ch->write_some(p, left, &sent);
          }
          if (io == Io::kWantRead || io == Io::kWantWrite) return true;
          if (io != Io::kDone) return hs.step == Step::kError ? false : io_failed(io, "writing");
          hs.out_done += sent;
        }
        if (hs.step == Step::kError) return false;
        if (hs.step == Step::kChallenge) {
          hs.step = Step::kAuth;
          break;
        }
        // WELCOME is out: the connection is the device's, with a reader.
        auto conn =
            std::make_shared<Connection>(*this, std::move(hs.ch), hs.peer, std::move(hs.session));
        {
          util::MutexLock lock(connections_mu_);
          connections_.push_back(conn);
        }
        conn->start();
        return false;
      }
    }
  }
}

bool Server::welcome(Handshake& hs, const AuthPayload& auth) {
  auto refuse = [&](const std::string& reason) {
    uint64_t held = 0;
    if (budgets_->failures.take(&held)) {
      spdlog::warn("remote: peer {}: {}; closing the connection{}", hs.peer, reason,
                   held_back_note(held));
    }
    const std::string text = reason.substr(0, kMaxErrorText);
    hs.put(FrameType::kError, text.data(), uint32_t(text.size()));
    hs.step = Handshake::Step::kError;
    return true;
  };
  if (!same_mac(auth.device_proof, device_proof(options_.secret, hs.hello, hs.server_nonce))) {
    return refuse("authentication failed (wrong or missing shared secret)");
  }
  reap(false);
  {
    util::MutexLock lock(connections_mu_);
    if (connections_.size() >= options_.max_connections) {
      return refuse(fmt::format("already {} connections (max_connections)", connections_.size()));
    }
  }
  bool created = false;
  std::string why;
  hs.session = session_for(hs.hello, auth.session_proof, hs.server_nonce, &created, &why);
  if (hs.session == nullptr) return refuse(why);
  Session& session = *hs.session;
  WelcomePayload welcome{};
  welcome.flags =
      (session.fuse->initialized() ? 0 : kWelcomeNeedsInit) | (created ? kWelcomeNewSession : 0);
  welcome.max_request = uint32_t(session.fuse->max_request_size());
  welcome.session_id = session.id;
  welcome.sealed_token = seal_token(options_.secret, hs.hello, hs.server_nonce,
                                    session_token(session_key_, session.id));
  Mac mac;
  if (frames_authenticated(!options_.secret.empty(), tls_ != nullptr)) {
    const FrameKeys keys = frame_keys(options_.secret, hs.hello, hs.server_nonce);
    hs.ch->send_mac = std::make_unique<FrameMac>(keys.server_to_device);
    hs.ch->receive_mac = std::make_unique<FrameMac>(keys.device_to_server);
    const FrameHeader h = make_header(FrameType::kWelcome, sizeof(welcome));
    mac = hs.ch->send_mac->next(h, &welcome);
  }
  hs.put(FrameType::kWelcome, &welcome, sizeof(welcome), hs.ch->send_mac ? &mac : nullptr);
  hs.step = Handshake::Step::kWelcome;
  spdlog::info("remote: peer {} connected (session {:016x}{})", hs.peer, session.id,
               created ? ", new" : "");
  return true;
}

std::shared_ptr<Server::Session> Server::session_for(const HelloPayload& hello, const Mac& proof,
                                                     const Nonce& server_nonce, bool* created,
                                                     std::string* why) {
  util::MutexLock lock(sessions_mu_);
  *created = false;
  if (hello.flags & kHelloJoin) {
    if (auto it = sessions_.find(hello.session_id); it != sessions_.end()) {
      const Mac token = session_token(session_key_, hello.session_id);
      if (!same_mac(proof, session_proof(token, hello, server_nonce))) {
        *why = fmt::format("a wrong token for session {:016x}: not this device's to join",
                           hello.session_id);
        return nullptr;
      }
      return it->second;
    }
    // Gone (past its grace, or this server restarted): a new session. A
    // token cannot be checked against a key of a server's former life, and
    // need not be: the new session is nobody else's.
  }
  if (sessions_.size() >= options_.max_sessions) {
    *why = fmt::format("already {} device sessions on this server", sessions_.size());
    return nullptr;
  }
  uint64_t id = 0;
  while (id == 0 || sessions_.contains(id)) random_bytes(&id, sizeof(id));
  fuse::SessionOptions opt = options_.session;
  opt.max_write = std::min(opt.max_write, hello.max_write);
  opt.name = fmt::format("remote session {:016x}", id);
  auto session = std::make_shared<Session>();
  session->fuse = std::make_unique<fuse::FuseSession>(*backend_, opt);
  session->id = id;
  sessions_.emplace(id, session);
  *created = true;
  return session;
}

namespace {

// A RELEASE (or RELEASEDIR) the server makes up for a session that ended
// with a handle open, handled by that session like the device's own. Its
// reply goes nowhere; it frees itself, and keeps the session until then.
class LeftOpenRelease final : public fuse::Request {
 public:
  LeftOpenRelease(std::shared_ptr<Server::Session> session, const SessionTable::OpenHandle& open,
                  uint64_t unique)
      : session_(std::move(session)) {
    fuse_in_header h{};
    h.len = sizeof(in_);
    h.opcode = open.directory ? FUSE_RELEASEDIR : FUSE_RELEASE;
    h.unique = unique;
    h.nodeid = open.ino;
    fuse_release_in a{};
    a.fh = open.fh;
    std::memcpy(in_, &h, sizeof(h));
    std::memcpy(in_ + sizeof(h), &a, sizeof(a));
    in_iov_ = {in_, sizeof(in_)};
    out_iov_ = {out_, sizeof(out_)};
    in = std::span<const iovec>(&in_iov_, 1);
    out = std::span<const iovec>(&out_iov_, 1);
  }
  void start() { session_->fuse->handle(*this); }
  void complete(size_t) override { delete this; }

 private:
  std::shared_ptr<Server::Session> session_;
  alignas(8) char in_[sizeof(fuse_in_header) + sizeof(fuse_release_in)];
  alignas(8) char out_[sizeof(fuse_out_header)];
  iovec in_iov_{}, out_iov_{};
};

}  // namespace

void Server::release(const std::shared_ptr<Session>& session) {
  // Handles first, as a kernel releases before it forgets.
  const auto open = session->table.take_handles();
  if (!open.empty()) {
    spdlog::info("remote: session {:016x}: closing {} handle{} its device left open", session->id,
                 open.size(), open.size() == 1 ? "" : "s");
  }
  uint64_t unique = uint64_t(1) << 63;  // not the device's: its requests carry its kernel's
  for (const auto& handle : open) (new LeftOpenRelease(session, handle, ++unique))->start();
  for (const auto& [ino, n] : session->table.take_all()) backend_->forget(ino, n);
}

void Server::expire_sessions() {
  std::vector<std::shared_ptr<Session>> ended;
  const auto now = std::chrono::steady_clock::now();
  const auto grace = std::chrono::duration<double>(options_.session_grace_s);
  {
    util::MutexLock lock(sessions_mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      Session& s = *it->second;
      // Users only come through session_for(), under sessions_mu_: a count of
      // one (the map's) stays one while we hold the lock.
      if (it->second.use_count() > 1) {
        s.idle_since.reset();
      } else if (!s.idle_since) {
        s.idle_since = now;
      } else if (now - *s.idle_since >= grace) {
        ended.push_back(std::move(it->second));
        it = sessions_.erase(it);
        continue;
      }
      ++it;
    }
  }
  for (const auto& s : ended) {
    spdlog::info(
        "remote: session {:016x}: its device has been gone for {} s; ended, lookups on {} "
        "inode{} given back",
        s->id, options_.session_grace_s, s->table.inodes(), s->table.inodes() == 1 ? "" : "s");
    release(s);
  }
}

size_t Server::sessions() const {
  util::MutexLock lock(sessions_mu_);
  return sessions_.size();
}

std::vector<std::string> Server::stats() const {
  std::vector<std::string> lines;
  util::MutexLock lock(sessions_mu_);
  for (const auto& [id, session] : sessions_) {
    for (const std::string& line : fuse::format_stats(*session->fuse)) {
      lines.push_back(fmt::format("session {:016x}: {}", id, line));
    }
  }
  return lines;
}

}  // namespace dpfs::remote
