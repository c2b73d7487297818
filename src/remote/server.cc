#include "remote/server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <netdb.h>
#include <netinet/in.h>
#include <spdlog/spdlog.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "server/stats.h"

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

// Whether the peer's first bytes (waited for under the socket's receive
// timeout, not consumed) are a dpfs frame's magic: a plain device.
bool starts_with_magic(int fd) {
  uint32_t magic = 0;
  ssize_t n;
  do {
    n = ::recv(fd, &magic, sizeof(magic), MSG_PEEK | MSG_WAITALL);
  } while (n < 0 && errno == EINTR);
  return n == sizeof(magic) && magic == kMagic;
}

bool send_frame(Channel& ch, FrameType type, const void* payload, uint32_t length,
                uint64_t id = 0) {
  FrameHeader h = make_header(type, length, id);
  iovec iov[2] = {{&h, sizeof(h)}, {const_cast<void*>(payload), length}};
  return ch.writev_full(iov);
}

}  // namespace

// --- Connection --------------------------------------------------------------

// One accepted connection: its socket, its reader thread, and a pool of
// request objects. A request in flight holds the connection alive (a
// backend may answer after the connection closed: the reply then fails to
// send, harmlessly).
class Server::Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(Server& server, std::unique_ptr<Channel> ch, std::string peer)
      : server_(server), ch_(std::move(ch)), peer_(std::move(peer)) {}

  void start() {
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
  class ServerRequest final : public fuse::Request {
   public:
    void prepare(uint64_t id, size_t in_len, size_t out_len) {
      id_ = id;
      opcode_ = 0;
      grow(in_buf_, in_cap_, in_len);
      grow(out_buf_, out_cap_, out_len);
      in_iov_ = {in_buf_.get(), in_len};
      out_iov_ = {out_buf_.get(), out_len};
      in = std::span<const iovec>(&in_iov_, 1);
      out = std::span<const iovec>(&out_iov_, 1);
      in_is_private = true;  // a frame read from the socket into our buffer
    }
    char* in_buf() { return in_buf_.get(); }
    // The FUSE opcode, once the request is read (0 if it has no header).
    uint32_t opcode() const { return opcode_; }
    void set_header(uint32_t opcode, uint64_t nodeid) {
      opcode_ = opcode;
      nodeid_ = nodeid;
    }

    void complete(size_t reply_len) override {
      std::shared_ptr<Connection> conn = std::move(owner_);
      conn->session_->ledger.on_reply(
          opcode_, nodeid_, {reinterpret_cast<const uint8_t*>(out_buf_.get()), reply_len});
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
  bool handshake();
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
    iovec iov[2] = {{&h, sizeof(h)}, {const_cast<char*>(data), len}};
    std::lock_guard lock(send_mu_);
    if (broken_) return;
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
};

void Server::Connection::refuse(const std::string& reason, bool tell_peer) {
  spdlog::warn("remote: peer {}: {}; closing the connection", peer_, reason);
  if (tell_peer) {
    const std::string text = reason.substr(0, kMaxErrorText);
    std::lock_guard lock(send_mu_);
    send_frame(*ch_, FrameType::kError, text.data(), uint32_t(text.size()));
  }
}

bool Server::Connection::handshake() {
  const ServerOptions& opt = server_.options_;
  ch_->set_timeouts(opt.handshake_timeout_s, opt.handshake_timeout_s);
  // The peek below waits under SO_RCVTIMEO (a TLS channel keeps its
  // timeouts to itself): a peer that sends nothing cannot hold this thread.
  if (server_.tls_) set_timeouts(ch_->fd(), opt.handshake_timeout_s, opt.handshake_timeout_s);
  if (server_.tls_ && starts_with_magic(ch_->fd())) {
    // A device without TLS: tell it, in the plain format it speaks, so
    // that it stops at start-up with the reason instead of retrying.
    const std::string why = "this server requires TLS (remote.tls_cert, remote.tls_key, remote.tls_ca)";
    refuse("a device without TLS; " + why, false);
    FrameHeader h = make_header(FrameType::kError, uint32_t(why.size()));
    iovec iov[2] = {{&h, sizeof(h)}, {const_cast<char*>(why.data()), why.size()}};
    writev_full(ch_->fd(), iov);
    return false;
  }
  bool fatal = false;
  if (std::string e = ch_->start(opt.handshake_timeout_s, &fatal); !e.empty()) {
    refuse(e, false);
    return false;
  }
  // Reads the frame expected at `stage` into `payload` (its exact size).
  auto read_message = [&](Stage stage, void* payload, uint32_t size) -> bool {
    const char* what = stage == Stage::kHello ? "HELLO" : "AUTH";
    FrameHeader h;
    if (!ch_->read_full(&h, sizeof(h))) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        refuse(fmt::format("no {} within {} s", what, opt.handshake_timeout_s), false);
      } else if (errno != 0) {
        refuse(fmt::format("reading {}: {}", what, ch_->error(errno)), false);
      } else {
        spdlog::info(
            "remote: peer {} left during the handshake (if it is a device: does it "
            "have the same shared secret?)",
            peer_);
      }
      return false;
    }
    if (Refusal bad = check_frame(h, stage); bad.refused()) {
      refuse(bad.reason, bad.tell_peer);
      return false;
    }
    if (!ch_->read_full(payload, size)) {
      refuse(fmt::format("{} cut short", what), false);
      return false;
    }
    return true;
  };

  HelloPayload hello{};
  if (!read_message(Stage::kHello, &hello, sizeof(hello))) return false;
  if (Refusal bad = check_hello(hello); bad.refused()) {
    refuse(bad.reason, bad.tell_peer);
    return false;
  }
  ChallengePayload challenge{};
  random_bytes(challenge.server_nonce.data(), kNonceSize);
  challenge.server_proof = server_proof(opt.secret, hello, challenge.server_nonce);
  if (!send_frame(*ch_, FrameType::kChallenge, &challenge, sizeof(challenge))) return false;
  AuthPayload auth{};
  if (!read_message(Stage::kAuth, &auth, sizeof(auth))) return false;
  if (!same_mac(auth.device_proof, device_proof(opt.secret, hello, challenge.server_nonce))) {
    refuse("authentication failed (wrong or missing shared secret)", true);
    return false;
  }
  std::string why;
  session_ = server_.session_for(hello.session_id, hello.max_write, &why);
  if (session_ == nullptr) {
    refuse(why, true);
    return false;
  }
  WelcomePayload welcome{};
  welcome.flags = session_->fuse->initialized() ? 0 : kWelcomeNeedsInit;
  welcome.max_request = uint32_t(session_->fuse->max_request_size());
  if (!send_frame(*ch_, FrameType::kWelcome, &welcome, sizeof(welcome))) return false;
  // From here on the reader waits as long as the device stays quiet
  // (read_frame_start); a frame that stalls half-way, or a reply to a device
  // that does not read, may not wait forever.
  ch_->set_timeouts(opt.send_timeout_s, opt.send_timeout_s);
  spdlog::info("remote: peer {} connected (session {:016x})", peer_, hello.session_id);
  return true;
}

void Server::Connection::run() {
  if (handshake()) {
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
      if (r->opcode() == FUSE_FORGET || r->opcode() == FUSE_BATCH_FORGET) {
        session_->ledger.on_forget({reinterpret_cast<uint8_t*>(r->in_buf()), h.length});
      }
      if (r->opcode() == FUSE_RELEASE || r->opcode() == FUSE_RELEASEDIR) {
        session_->ledger.on_release({reinterpret_cast<const uint8_t*>(r->in_buf()), h.length});
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
  // Non-blocking: accept_loop() polls it, and a connection reset between the
  // poll and the accept must not block the loop.
  listen_fd_.reset(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!listen_fd_) throw ListenError(fmt::format("socket: {}", std::strerror(errno)));
  const int one = 1;
  ::setsockopt(listen_fd_.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (::bind(listen_fd_.get(), found->ai_addr, found->ai_addrlen) != 0 ||
      ::listen(listen_fd_.get(), 64) != 0) {
    throw ListenError(
        fmt::format("--listen tcp://{}: {}", format_endpoint(want), std::strerror(errno)));
  }
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len);
  bound_ = Endpoint{want.host, port_of(addr)};
}

Server::~Server() { stop(); }

void Server::start() {
  acceptor_ = std::thread([this] { accept_loop(); });
  spdlog::info("remote: listening on tcp://{}{}{}", format_endpoint(bound_),
               tls_ ? " (TLS: peers need a certificate from " + options_.tls.ca + ")" : "",
               options_.secret.empty()
                   ? (tls_ ? "" : " (no shared secret: loopback only)")
                   : " (peers must prove the shared secret)");
}

void Server::stop() {
  if (stopping_.exchange(true)) return;
  // Linux: shutdown(2) on a listening socket wakes a thread blocked in accept(2).
  ::shutdown(listen_fd_.get(), SHUT_RDWR);
  if (acceptor_.joinable()) acceptor_.join();
  reap(true);
  // Pending replies (a lock waiter) are answered by the backend's
  // destructor, into their connections, which they keep alive; the
  // sessions they report to go after it.
  backend_.reset();
}

void Server::reap(bool all) {
  std::lock_guard lock(connections_mu_);
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

void Server::accept_loop() {
  pthread_setname_np(pthread_self(), "dpfs-remote-acc");
  while (!stopping_.load()) {
    // Wakes at least once a second to end sessions past their grace.
    pollfd pfd{listen_fd_.get(), POLLIN, 0};
    const int ready = ::poll(&pfd, 1, 1000);
    reap(false);  // connections that ended let go of their sessions
    expire_sessions();
    if (ready <= 0) continue;
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    transport::UniqueFd fd(
        ::accept4(listen_fd_.get(), reinterpret_cast<sockaddr*>(&addr), &len, SOCK_CLOEXEC));
    if (!fd) {
      if (stopping_.load()) break;
      if (errno == EINTR || errno == ECONNABORTED || errno == EAGAIN) continue;
      spdlog::error("remote: accept: {}", std::strerror(errno));
      if (errno == EMFILE || errno == ENFILE) std::this_thread::sleep_for(std::chrono::seconds(1));
      continue;
    }
    reap(false);
    const std::string peer = peer_name(addr);
    {
      std::lock_guard lock(connections_mu_);
      if (connections_.size() >= options_.max_connections) {
        spdlog::warn("remote: peer {}: already {} connections; refusing it", peer,
                     connections_.size());
        continue;
      }
    }
    tune_socket(fd.get(), unsigned(std::max(1.0, options_.send_timeout_s)));
    // The TLS handshake, if any, runs on the connection's own thread.
    std::unique_ptr<Channel> ch = tls_ ? tls_->channel(std::move(fd)) : plain_channel(std::move(fd));
    auto conn = std::make_shared<Connection>(*this, std::move(ch), peer);
    {
      std::lock_guard lock(connections_mu_);
      connections_.push_back(conn);
    }
    conn->start();
  }
}

std::shared_ptr<Server::Session> Server::session_for(uint64_t id, uint32_t max_write,
                                                     std::string* why) {
  std::lock_guard lock(sessions_mu_);
  if (auto it = sessions_.find(id); it != sessions_.end()) return it->second;
  if (sessions_.size() >= options_.max_sessions) {
    *why = fmt::format("already {} device sessions on this server", sessions_.size());
    return nullptr;
  }
  fuse::SessionOptions opt = options_.session;
  opt.max_write = std::min(opt.max_write, max_write);
  opt.name = fmt::format("remote session {:016x}", id);
  auto session = std::make_shared<Session>();
  session->fuse = std::make_unique<fuse::FuseSession>(*backend_, opt);
  session->id = id;
  sessions_.emplace(id, session);
  return session;
}

namespace {

// A RELEASE (or RELEASEDIR) the server makes up for a session that ended
// with a handle open, handled by that session like the device's own. Its
// reply goes nowhere; it frees itself, and keeps the session until then.
class LeftOpenRelease final : public fuse::Request {
 public:
  LeftOpenRelease(std::shared_ptr<Server::Session> session, const LookupLedger::OpenHandle& open,
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
  const auto open = session->ledger.take_handles();
  if (!open.empty()) {
    spdlog::info("remote: session {:016x}: closing {} handle{} its device left open", session->id,
                 open.size(), open.size() == 1 ? "" : "s");
  }
  uint64_t unique = uint64_t(1) << 63;  // not the device's: its requests carry its kernel's
  for (const auto& handle : open) (new LeftOpenRelease(session, handle, ++unique))->start();
  for (const auto& [ino, n] : session->ledger.take_all()) backend_->forget(ino, n);
}

void Server::expire_sessions() {
  std::vector<std::shared_ptr<Session>> ended;
  const auto now = std::chrono::steady_clock::now();
  const auto grace = std::chrono::duration<double>(options_.session_grace_s);
  {
    std::lock_guard lock(sessions_mu_);
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
        s->id, options_.session_grace_s, s->ledger.inodes(), s->ledger.inodes() == 1 ? "" : "s");
    release(s);
  }
}

size_t Server::sessions() const {
  std::lock_guard lock(sessions_mu_);
  return sessions_.size();
}

std::vector<std::string> Server::stats() const {
  std::vector<std::string> lines;
  std::lock_guard lock(sessions_mu_);
  for (const auto& [id, session] : sessions_) {
    for (const std::string& line : server::format_stats(*session->fuse)) {
      lines.push_back(fmt::format("session {:016x}: {}", id, line));
    }
  }
  return lines;
}

}  // namespace dpfs::remote
