#include "remote/forwarder.h"

#include <fmt/format.h>
#include <linux/fuse.h>
#include <netdb.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <optional>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "fuse/session.h"
#include "util/unique_fd.h"

namespace dpfs::remote {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kFirstBackoff = std::chrono::milliseconds(100);
constexpr auto kMaxBackoff = std::chrono::seconds(5);
constexpr auto kTick = std::chrono::milliseconds(100);
// The INIT kept for replay: fuse_in_header + fuse_init_in is well below this.
constexpr size_t kMaxSavedInit = 4096;

// The bytes a request's frame carries: its private copy and, for a WRITE,
// the payload.
size_t forwarded_length(const fuse::Request& req) {
  const fuse::CapturedRequest& cap = req.captured;
  return sizeof(fuse_in_header) + cap.args().size() + cap.payload_length();
}

// Sent requests that timed out and whose late replies are dropped when they
// come; past this many the link is assumed dead and reconnected.
constexpr size_t kMaxExpired = 4096;

// Requests that change nothing on the server: sending one twice is the same
// as once, so they survive a broken link. (LOOKUP is not here: each answer
// adds to the inode's lookup count.)
bool idempotent(uint32_t opcode) {
  switch (opcode) {
    case FUSE_GETATTR:
    case FUSE_READLINK:
    case FUSE_READ:
    case FUSE_STATFS:
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
    case FUSE_ACCESS:
    case FUSE_READDIR:
    case FUSE_READDIRPLUS:
    case FUSE_LSEEK:
    case FUSE_GETLK:
      return true;
    default:
      return false;
  }
}

// Reads a frame's MAC trailer and checks it against `h` and the payload
// just read into `payload`, if `ch`'s frames carry one.
bool authentic(Channel& ch, const FrameHeader& h, std::span<const iovec> payload) {
  if (!ch.receive_mac) return true;
  Mac trailer;
  return ch.read_full(trailer.data(), trailer.size()) &&
         same_mac(trailer, ch.receive_mac->next(h, payload));
}
bool authentic(Channel& ch, const FrameHeader& h, std::span<char> payload) {
  const iovec v{payload.data(), payload.size()};
  return authentic(ch, h, std::span<const iovec>(&v, 1));
}

}  // namespace

// --- Link --------------------------------------------------------------------

// One TCP connection to the server, and the requests sent or waiting on it.
// Three kinds of threads touch it: transport workers (submit), its receiver
// (replies) and its supervisor (connects, resends, expires). `mu_` guards
// the table of pending requests and the current socket; `send_mu_` keeps
// frames whole on the socket. A thread never waits for `send_mu_` while
// holding `mu_`, and the receiver never takes `send_mu_`: a sender blocked
// by a full socket cannot stop the replies that would drain it.
class Forwarder::Link {
 public:
  Link(Forwarder& fw, unsigned index) : fw_(fw), index_(index) {}

  // Connects once; "" on success. `*fatal` says whether retrying is useless.
  std::string connect_once(bool* fatal);

  void start() {
    receiver_ = std::thread([this] { receive_loop(); });
    supervisor_ = std::thread([this] { supervise_loop(); });
  }

  void stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
      if (sock_) sock_->shutdown();
    }
    cv_.notify_all();
    if (receiver_.joinable()) receiver_.join();
    if (supervisor_.joinable()) supervisor_.join();
    std::vector<Pending> left;
    {
      std::lock_guard lock(mu_);
      for (auto& [id, p] : pending_) left.push_back(p);
      pending_.clear();
    }
    for (Pending& p : left) fail(p, EIO);
  }

  bool up() {
    std::lock_guard lock(mu_);
    return sock_ != nullptr;
  }

  void submit(fuse::Request& req, uint64_t unique, uint32_t opcode);

 private:
  enum class State { kQueued, kSending, kSent };
  struct Pending {
    fuse::Request* req = nullptr;
    uint64_t unique = 0;
    uint32_t opcode = 0;
    Clock::time_point deadline;
    State state = State::kQueued;
    // Set while kSending, for the sender to act on once its write returns.
    int abandon_error = 0;
    bool requeue = false;
  };

  void send(uint64_t id, fuse::Request& req, const std::shared_ptr<Channel>& sock, uint64_t gen);
  void break_link(uint64_t gen, const std::string& why);
  void publish(std::unique_ptr<Channel> channel);
  void resend_queued();
  void expire();
  void receive_loop();
  // Reads one reply on `sock`; false when the link must end.
  bool receive_one(const std::shared_ptr<Channel>& sock, uint64_t gen);
  void supervise_loop();
  void fail(Pending& p, int error);

  Forwarder& fw_;
  const unsigned index_;

  std::mutex mu_;
  std::condition_variable cv_;
  // The connection, shared by the threads using it so that its socket is
  // not closed while one of them still reads or writes it; null while down.
  std::shared_ptr<Channel> sock_;
  uint64_t generation_ = 0;  // bumped by every connect and break
  std::unordered_map<uint64_t, Pending> pending_;
  std::unordered_set<uint64_t> expired_;
  uint64_t next_id_ = kInitReplayId + 1;
  uint32_t max_request_ = 0;  // the server's WELCOME
  bool stopping_ = false;
  unsigned failures_ = 0;  // connection attempts failed in a row (supervisor only)

  std::mutex send_mu_;
  std::vector<iovec> send_iov_;  // under send_mu_

  std::thread receiver_, supervisor_;
};

void Forwarder::Link::fail(Pending& p, int error) {
  fw_.counters_.failed.fetch_add(1, std::memory_order_relaxed);
  if (p.opcode == FUSE_INIT) fw_.init_in_flight_.store(false);
  size_t len = 0;
  if (opcode_takes_reply(p.opcode)) len = fuse::encode_error(p.req->out, p.unique, error);
  p.req->complete(len);
}

void Forwarder::Link::submit(fuse::Request& req, uint64_t unique, uint32_t opcode) {
  Pending p;
  p.req = &req;
  p.unique = unique;
  p.opcode = opcode;
  p.deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                  std::chrono::duration<double>(fw_.options_.timeout_s));
  std::unique_lock lock(mu_);
  const uint64_t id = next_id_++;
  if (max_request_ != 0 && forwarded_length(req) > max_request_) {
    lock.unlock();
    fw_.tenant_log_.warn("remote: a {}-byte {} request exceeds the server's limit of {} bytes",
                         forwarded_length(req), fuse::opcode_name(opcode), max_request_);
    fail(p, EIO);
    return;
  }
  std::shared_ptr<Channel> sock = sock_;
  const uint64_t gen = generation_;
  p.state = sock ? State::kSending : State::kQueued;
  pending_.emplace(id, p);
  lock.unlock();
  if (sock) send(id, req, sock, gen);
}

void Forwarder::Link::send(uint64_t id, fuse::Request& req, const std::shared_ptr<Channel>& sock,
                           uint64_t gen) {
  // What goes out is the private copy the forwarder decided from (header
  // and arguments), and a WRITE's payload in place: the server sees the very
  // bytes this side looked at, whatever the tenant rewrites meanwhile.
  const fuse::CapturedRequest& cap = req.captured;
  const size_t len = forwarded_length(req);
  const size_t capacity = std::min<size_t>(iov_length(req.out), kMaxPayload);
  FrameHeader h = make_header(FrameType::kRequest, uint32_t(len), id, uint32_t(capacity));
  fuse_in_header in_header = cap.header();
  bool ok;
  {
    std::lock_guard lock(send_mu_);
    send_iov_.clear();
    send_iov_.push_back({&h, sizeof(h)});
    send_iov_.push_back({&in_header, sizeof(in_header)});
    if (!cap.args().empty()) {
      send_iov_.push_back({const_cast<char*>(cap.args().data()), cap.args().size()});
    }
    send_iov_.insert(send_iov_.end(), cap.payload().begin(), cap.payload().end());
    // The sequence is the order on the wire: taken under the send lock. (A
    // WRITE payload is still the tenant's memory: a tenant that rewrites it
    // while it goes out only gets its own link broken by the server's check.)
    Mac mac;
    if (sock->send_mac) {
      mac = sock->send_mac->next(h, std::span<const iovec>(send_iov_).subspan(1));
      send_iov_.push_back({mac.data(), mac.size()});
    }
    ok = sock->writev_full(send_iov_);
  }
  const int send_errno = errno;
  fw_.counters_.forwarded.fetch_add(1, std::memory_order_relaxed);
  // From here `req` may already be answered (the reply raced us): only the
  // table says whether it is still ours.
  std::optional<Pending> failed;
  bool resend = false;
  {
    std::lock_guard lock(mu_);
    auto it = pending_.find(id);
    if (it != pending_.end() && it->second.state == State::kSending) {
      Pending& p = it->second;
      // The link we wrote to broke (and maybe came back) while we wrote.
      const bool gone = gen != generation_;
      if (p.abandon_error != 0) {
        failed = p;
        pending_.erase(it);
      } else if (p.requeue || (gone && idempotent(p.opcode))) {
        p.state = State::kQueued;
        p.requeue = false;
        fw_.counters_.resent.fetch_add(1, std::memory_order_relaxed);
        resend = sock_ != nullptr;  // a newer link is up already
      } else if (gone) {
        failed = p;
        failed->abandon_error = EIO;
        pending_.erase(it);
      } else {
        p.state = State::kSent;  // if !ok, break_link below decides
      }
    }
  }
  if (failed) fail(*failed, failed->abandon_error);
  if (!ok) {
    break_link(gen, "sending: " + sock->error(send_errno));
  }
  if (resend) resend_queued();
}

void Forwarder::Link::break_link(uint64_t gen, const std::string& why) {
  std::vector<Pending> failed;
  {
    std::lock_guard lock(mu_);
    if (gen != generation_ || !sock_) return;
    if (!stopping_) {
      spdlog::warn("remote: link {} to {}: {}; reconnecting", index_,
                   format_endpoint(fw_.options_.server), why);
    }
    sock_->shutdown();
    sock_.reset();
    ++generation_;
    expired_.clear();
    for (auto it = pending_.begin(); it != pending_.end();) {
      Pending& p = it->second;
      const bool again = idempotent(p.opcode);
      if (p.state == State::kSending) {
        if (again) {
          p.requeue = true;
        } else {
          p.abandon_error = EIO;
        }
      } else if (p.state == State::kSent) {
        if (again) {
          p.state = State::kQueued;
          fw_.counters_.resent.fetch_add(1, std::memory_order_relaxed);
        } else {
          failed.push_back(p);
          it = pending_.erase(it);
          continue;
        }
      }
      ++it;
    }
  }
  cv_.notify_all();
  for (Pending& p : failed) fail(p, EIO);
}

std::string Forwarder::Link::connect_once(bool* fatal) {
  *fatal = false;
  const ForwarderOptions& opt = fw_.options_;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(opt.server.port);
  if (const int rc = ::getaddrinfo(opt.server.host.c_str(), port.c_str(), &hints, &found);
      rc != 0) {
    return fmt::format("resolving {}: {}", opt.server.host, gai_strerror(rc));
  }
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, ::freeaddrinfo);
  util::UniqueFd fd(::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) return fmt::format("socket: {}", std::strerror(errno));
  // SO_SNDTIMEO bounds connect(2) too.
  const double hs = std::min(opt.timeout_s, 5.0);
  set_timeouts(fd.get(), hs, hs);
  if (::connect(fd.get(), found->ai_addr, found->ai_addrlen) != 0) {
    return fmt::format("connect: {}", errno == EINPROGRESS ? "timed out" : std::strerror(errno));
  }
  tune_socket(fd.get(), unsigned(std::max(1.0, opt.timeout_s)));
  std::unique_ptr<Channel> ch =
      fw_.tls_ ? fw_.tls_->channel(std::move(fd), opt.server.host) : plain_channel(std::move(fd));
  ch->set_timeouts(hs, hs);
  if (std::string e = ch->start(hs, fatal); !e.empty()) return e;

  // A TLS error (the server refused our certificate) will not go away.
  auto io_error = [&](const char* what) {
    const int err = errno;
    if (err == EPROTO) *fatal = true;
    return fmt::format("{}: {}", what, ch->error(err));
  };
  // Reads the frame expected at `stage` into `payload` (its exact size);
  // an ERROR frame's text becomes the failure.
  auto read_message = [&](Stage stage, void* payload, uint32_t size) -> std::string {
    FrameHeader h;
    if (!ch->read_full(&h, sizeof(h))) return io_error("handshake");
    if (Refusal bad = check_frame(h, stage); bad.refused()) {
      *fatal = true;
      return bad.reason;
    }
    if (h.type == uint8_t(FrameType::kError)) {
      uint8_t text[kMaxErrorText];
      ch->read_full(text, h.length);
      *fatal = true;
      return "the server refused: " + error_text({text, h.length});
    }
    if (!ch->read_full(payload, size)) return io_error("handshake");
    return "";
  };
  // After AUTH, in shared-secret mode, with the frame's MAC.
  auto send_message = [&](FrameType type, void* payload, uint32_t size, uint64_t id = 0,
                          uint32_t capacity = 0) {
    FrameHeader h = make_header(type, size, id, capacity);
    Mac mac;
    iovec iov[3] = {{&h, sizeof(h)}, {payload, size}, {mac.data(), 0}};
    if (ch->send_mac) {
      mac = ch->send_mac->next(h, payload);
      iov[2].iov_len = mac.size();
    }
    return ch->writev_full(iov);
  };

  // One handshake at a time: a link that finds no session makes one, and
  // the next joins it.
  std::unique_lock handshake_lock(fw_.handshake_mu_);
  const SessionCredentials creds = fw_.credentials();
  HelloPayload hello{};
  random_bytes(hello.device_nonce.data(), kNonceSize);
  hello.session_id = creds.joined ? creds.id : 0;
  hello.flags = creds.joined ? kHelloJoin : 0;
  hello.max_write = opt.max_write;
  if (!send_message(FrameType::kHello, &hello, sizeof(hello))) return io_error("handshake");
  ChallengePayload challenge{};
  if (std::string e = read_message(Stage::kChallenge, &challenge, sizeof(challenge)); !e.empty()) {
    return e;
  }
  if (!same_mac(challenge.server_proof, server_proof(opt.secret, hello, challenge.server_nonce))) {
    *fatal = true;
    return "the server did not prove the shared secret (a different secret, or none)";
  }
  AuthPayload auth{device_proof(opt.secret, hello, challenge.server_nonce), Mac{}};
  if (creds.joined) auth.session_proof = session_proof(creds.token, hello, challenge.server_nonce);
  if (!send_message(FrameType::kAuth, &auth, sizeof(auth))) return io_error("handshake");
  if (frames_authenticated(!opt.secret.empty(), fw_.tls_ != nullptr)) {
    const FrameKeys keys = frame_keys(opt.secret, hello, challenge.server_nonce);
    ch->send_mac = std::make_unique<FrameMac>(keys.device_to_server);
    ch->receive_mac = std::make_unique<FrameMac>(keys.server_to_device);
  }
  WelcomePayload welcome{};
  if (std::string e = read_message(Stage::kWelcome, &welcome, sizeof(welcome)); !e.empty()) {
    return e;
  }
  if (ch->receive_mac) {
    Mac trailer;
    if (!ch->read_full(trailer.data(), trailer.size())) return io_error("handshake");
    if (!same_mac(trailer, ch->receive_mac->next(make_header(FrameType::kWelcome, sizeof(welcome)),
                                                 &welcome))) {
      return "a WELCOME that fails its MAC check (altered in transit?)";
    }
  }
  if (Refusal bad = check_welcome(welcome); bad.refused()) {
    *fatal = true;
    return bad.reason;
  }
  fw_.set_credentials(welcome.session_id,
                      seal_token(opt.secret, hello, challenge.server_nonce, welcome.sealed_token));
  if (creds.joined && (welcome.flags & kWelcomeNewSession)) {
    spdlog::info("remote: link {}: the server no longer has session {:016x}; now {:016x}", index_,
                 creds.id, welcome.session_id);
  }

  // Not while the tenant's own INIT is on its way on another link (at
  // start-up): that one negotiates the session.
  if (welcome.flags & kWelcomeNeedsInit) {
    std::vector<char> init = fw_.init_to_replay();
    if (!init.empty()) {
      // The server lost our session (it restarted): negotiate it again with
      // the tenant's own INIT before anything else goes out on this link.
      char reply[512];
      if (!send_message(FrameType::kRequest, init.data(), uint32_t(init.size()), kInitReplayId,
                        sizeof(reply))) {
        return io_error("replaying INIT");
      }
      FrameHeader h;
      if (!ch->read_full(&h, sizeof(h))) return io_error("replaying INIT");
      const iovec reply_iov{reply, sizeof(reply)};
      fuse_in_header in{};
      std::memcpy(&in, init.data(), std::min(init.size(), sizeof(in)));
      Mac trailer;
      if (check_frame(h, Stage::kReplies).refused() || h.type != uint8_t(FrameType::kReply) ||
          h.id != kInitReplayId || check_reply_fits(h, sizeof(reply)).refused() ||
          !ch->read_full(reply, h.length) ||
          (ch->receive_mac && (!ch->read_full(trailer.data(), trailer.size()) ||
                               !same_mac(trailer, ch->receive_mac->next(h, reply)))) ||
          check_reply({&reply_iov, 1}, h.length, in.unique, FUSE_INIT) != ReplyCheck::kValid) {
        return "replaying INIT: no valid reply";
      }
      fuse_out_header out{};
      std::memcpy(&out, reply, sizeof(out));
      if (out.error != 0) return fmt::format("replaying INIT: the server answered {}", out.error);
      spdlog::info("remote: link {}: the server had lost the session; INIT replayed", index_);
    }
  }
  // Replies may take as long as the server needs to start sending them
  // (receive_one waits without a timeout for a frame to begin); a frame
  // that stalls half-way, or a send that cannot proceed, may not.
  ch->set_timeouts(opt.timeout_s, opt.timeout_s);
  {
    std::lock_guard lock(mu_);
    max_request_ = welcome.max_request;
  }
  handshake_lock.unlock();
  publish(std::move(ch));
  return "";
}

void Forwarder::Link::publish(std::unique_ptr<Channel> channel) {
  {
    std::lock_guard lock(mu_);
    sock_ = std::move(channel);
    ++generation_;
  }
  fw_.counters_.connects.fetch_add(1, std::memory_order_relaxed);
  cv_.notify_all();
  resend_queued();
}

void Forwarder::Link::resend_queued() {
  std::vector<std::pair<uint64_t, fuse::Request*>> batch;
  std::shared_ptr<Channel> sock;
  uint64_t gen;
  {
    std::lock_guard lock(mu_);
    if (!sock_) return;
    sock = sock_;
    gen = generation_;
    for (auto& [id, p] : pending_) {
      if (p.state != State::kQueued) continue;
      p.state = State::kSending;
      batch.emplace_back(id, p.req);
    }
  }
  for (auto& [id, req] : batch) send(id, *req, sock, gen);
}

void Forwarder::Link::expire() {
  std::vector<Pending> late;
  bool too_many = false;
  uint64_t gen;
  {
    std::lock_guard lock(mu_);
    gen = generation_;
    const auto now = Clock::now();
    for (auto it = pending_.begin(); it != pending_.end();) {
      Pending& p = it->second;
      // Waiting for a lock is what SETLKW is for, as long as the server is there.
      const bool exempt = p.opcode == FUSE_SETLKW && p.state == State::kSent && sock_;
      if (now < p.deadline || exempt) {
        ++it;
        continue;
      }
      if (p.state == State::kSending) {
        p.abandon_error = ETIMEDOUT;
        ++it;
        continue;
      }
      if (p.state == State::kSent) expired_.insert(it->first);
      late.push_back(p);
      it = pending_.erase(it);
    }
    too_many = expired_.size() > kMaxExpired;
  }
  if (!late.empty()) {
    spdlog::warn("remote: link {}: {} request{} got no reply within {} s; answered ETIMEDOUT",
                 index_, late.size(), late.size() == 1 ? "" : "s", fw_.options_.timeout_s);
  }
  for (Pending& p : late) fail(p, ETIMEDOUT);
  if (too_many) break_link(gen, "too many requests without a reply");
}

void Forwarder::Link::supervise_loop() {
  pthread_setname_np(pthread_self(), fmt::format("dpfs-link-{}", index_).substr(0, 15).c_str());
  auto backoff = Clock::duration(kFirstBackoff);
  for (;;) {
    {
      std::unique_lock lock(mu_);
      if (stopping_) return;
    }
    expire();
    if (up()) {
      backoff = kFirstBackoff;
      failures_ = 0;
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, kTick, [&] { return stopping_ || !sock_; });
      continue;
    }
    bool fatal = false;
    const std::string e = connect_once(&fatal);
    if (e.empty()) {
      spdlog::info("remote: link {} connected to {}", index_, format_endpoint(fw_.options_.server));
      continue;
    }
    if (failures_++ % 20 == 0) {
      spdlog::warn("remote: link {} to {}: {}; retrying", index_,
                   format_endpoint(fw_.options_.server), e);
    }
    // Jitter, so that the links of many devices do not reconnect in step.
    uint16_t r = 0;
    random_bytes(&r, sizeof(r));
    const auto wait = backoff + backoff * r / 65536 / 4;
    const auto until = Clock::now() + wait;
    while (Clock::now() < until) {
      std::unique_lock lock(mu_);
      if (cv_.wait_for(lock, kTick, [&] { return stopping_; })) return;
      lock.unlock();
      expire();
    }
    backoff = std::min<Clock::duration>(backoff * 2, kMaxBackoff);
  }
}

void Forwarder::Link::receive_loop() {
  pthread_setname_np(pthread_self(), fmt::format("dpfs-recv-{}", index_).substr(0, 15).c_str());
  for (;;) {
    std::shared_ptr<Channel> sock;
    uint64_t gen;
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || sock_; });
      if (stopping_) return;
      sock = sock_;
      gen = generation_;
    }
    while (receive_one(sock, gen)) {
    }
  }
}

bool Forwarder::Link::receive_one(const std::shared_ptr<Channel>& sock, uint64_t gen) {
  Channel& ch = *sock;
  auto io_error = [&] {
    return errno == EAGAIN ? std::string("a reply stalled") : ch.error(errno);
  };
  FrameHeader h;
  if (!ch.read_frame_start(&h, sizeof(h))) {
    break_link(gen, io_error());
    return false;
  }
  if (Refusal bad = check_frame(h, Stage::kReplies); bad.refused()) {
    break_link(gen, bad.reason);
    return false;
  }
  if (h.type == uint8_t(FrameType::kError)) {
    uint8_t text[kMaxErrorText];
    ch.read_full(text, h.length);
    break_link(gen, "the server closed the connection: " + error_text({text, h.length}));
    return false;
  }
  Pending p;
  {
    std::unique_lock lock(mu_);
    // A reply still buffered on a socket that broke belongs to a request
    // that has been answered EIO or sent again: not to be matched here.
    if (gen != generation_) return false;
    auto it = pending_.find(h.id);
    if (it == pending_.end() || it->second.state == State::kQueued) {
      const bool late = expired_.erase(h.id) > 0;
      lock.unlock();
      if (!late) {
        break_link(gen, fmt::format("a reply for unknown request id {}", h.id));
        return false;
      }
      // A reply that came after its request timed out: drop it.
      std::vector<char> sink(h.length);
      if (!ch.read_full(sink.data(), sink.size())) {
        break_link(gen, "a reply cut short");
        return false;
      }
      if (!authentic(ch, h, {sink.data(), sink.size()})) {
        break_link(gen, "a reply that fails its MAC check (altered in transit?)");
        return false;
      }
      return true;
    }
    if (Refusal bad = check_reply_fits(h, iov_length(it->second.req->out)); bad.refused()) {
      lock.unlock();
      break_link(gen, bad.reason);
      return false;
    }
    p = it->second;
    pending_.erase(it);
  }
  // The reply is ours now: read it straight into the tenant's buffers.
  if (!ch.readv_full(p.req->out, h.length)) {
    const std::string why = io_error();
    fail(p, EIO);
    break_link(gen, why);
    return false;
  }
  if (!authentic(ch, h, p.req->out)) {
    fail(p, EIO);
    break_link(gen, "a reply that fails its MAC check (altered in transit?)");
    return false;
  }
  // The tenant checks the reply too; these checks keep a confused server
  // from answering one request with another's reply, or with nothing.
  switch (check_reply(p.req->out, h.length, p.unique, p.opcode)) {
    case ReplyCheck::kValid:
      break;
    case ReplyCheck::kEmpty:
      fail(p, EIO);
      return true;
    case ReplyCheck::kMalformed:
      fail(p, EIO);
      break_link(gen, fmt::format("a malformed reply to {}", fuse::opcode_name(p.opcode)));
      return false;
  }
  if (p.opcode == FUSE_INIT) fw_.init_in_flight_.store(false);
  p.req->complete(h.length);
  return true;
}

// --- Forwarder ---------------------------------------------------------------

Forwarder::Forwarder(ForwarderOptions options) : options_(std::move(options)) {
  if (options_.tls_context) {
    tls_ = options_.tls_context;
  } else if (options_.tls.enabled()) {
    try {
      tls_ = std::make_shared<TlsContext>(options_.tls, TlsContext::Role::kDevice);
    } catch (const std::invalid_argument& e) {
      throw RemoteError(e.what());
    }
  }
  const unsigned n = std::max(1u, options_.connections);
  for (unsigned i = 0; i < n; ++i) links_.push_back(std::make_unique<Link>(*this, i));
  bool fatal = false;
  const std::string e = links_[0]->connect_once(&fatal);
  if (fatal) {
    throw RemoteError(fmt::format("remote server {}: {}", format_endpoint(options_.server), e));
  }
  if (e.empty()) {
    spdlog::info("remote: link 0 connected to {}", format_endpoint(options_.server));
  } else {
    spdlog::warn(
        "remote: cannot reach {} yet ({}); requests wait up to {} s while the links "
        "keep trying",
        format_endpoint(options_.server), e, options_.timeout_s);
  }
  for (auto& link : links_) link->start();
}

Forwarder::~Forwarder() { stop(); }

void Forwarder::stop() {
  for (auto& link : links_) link->stop();
}

std::vector<char> Forwarder::init_to_replay() const {
  util::MutexLock lock(init_mu_);
  if (init_in_flight_.load()) return {};
  return init_;
}

void Forwarder::forward(fuse::Request& req) {
  // Read once: what is decided here (INIT, DESTROY) and what is forwarded
  // are the same bytes.
  fuse::CapturedRequest& cap = req.captured;
  cap.capture(req.in, req.in_is_private);  // no header: a zero one, which the server refuses
  const fuse_in_header& hdr = cap.header();
  if (hdr.opcode == FUSE_INIT) {
    const size_t len = std::min({sizeof(hdr) + cap.args().size(), size_t(hdr.len), kMaxSavedInit});
    util::MutexLock lock(init_mu_);
    init_.resize(len);
    std::memcpy(init_.data(), &hdr, std::min(len, sizeof(hdr)));
    if (len > sizeof(hdr))
      std::memcpy(init_.data() + sizeof(hdr), cap.args().data(), len - sizeof(hdr));
    init_in_flight_.store(true);
  }
  // Round robin over the links that are up; any link while none is.
  const size_t n = links_.size();
  const size_t start = next_link_.fetch_add(1, std::memory_order_relaxed) % n;
  Link* chosen = links_[start].get();
  for (size_t i = 0; i < n; ++i) {
    Link* l = links_[(start + i) % n].get();
    if (l->up()) {
      chosen = l;
      break;
    }
  }
  chosen->submit(req, hdr.unique, hdr.opcode);
}

Forwarder::SessionCredentials Forwarder::credentials() const {
  util::MutexLock lock(session_mu_);
  return session_;
}

void Forwarder::set_credentials(uint64_t id, const Mac& token) {
  util::MutexLock lock(session_mu_);
  session_.joined = true;
  session_.id = id;
  session_.token = token;
}

}  // namespace dpfs::remote
