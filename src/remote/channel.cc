#include "remote/channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "remote/wire.h"

namespace dpfs::remote {

std::string Channel::error(int err) const {
  if (err == 0) return "the peer closed the connection";
  if (err == EAGAIN) return "timed out";
  return std::strerror(err);
}

void Channel::shutdown() { ::shutdown(fd_.get(), SHUT_RDWR); }

namespace {

// --- Plain TCP ---------------------------------------------------------------

class PlainChannel final : public Channel {
 public:
  using Channel::Channel;
  std::string start(double, bool*) override { return ""; }
  bool read_full(void* dst, size_t len) override { return remote::read_full(fd(), dst, len); }
  bool readv_full(std::span<const iovec> iov, size_t len) override {
    return remote::readv_full(fd(), iov, len);
  }
  bool read_frame_start(void* dst, size_t len) override {
    return remote::read_frame_start(fd(), dst, len);
  }
  bool writev_full(std::span<iovec> iov) override { return remote::writev_full(fd(), iov); }
  void set_timeouts(double receive_s, double send_s) override {
    remote::set_timeouts(fd(), receive_s, send_s);
  }
  Io start_some(std::string*) override { return Io::kDone; }
  // MSG_DONTWAIT: the socket itself stays blocking for the reader that
  // takes it over after the handshake.
  Io read_some(void* dst, size_t len, size_t* n) override {
    return result(::recv(fd(), dst, len, MSG_DONTWAIT), Io::kWantRead, n);
  }
  Io write_some(const void* src, size_t len, size_t* n) override {
    return result(::send(fd(), src, len, MSG_DONTWAIT | MSG_NOSIGNAL), Io::kWantWrite, n);
  }

 private:
  static Io result(ssize_t rc, Io want, size_t* n) {
    *n = 0;
    if (rc > 0) {
      *n = size_t(rc);
      return Io::kDone;
    }
    if (rc == 0) return Io::kEof;
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return want;
    return Io::kFailed;
  }
};

// --- TLS ---------------------------------------------------------------------

// The first error on OpenSSL's queue of this thread, as text (and the queue
// cleared).
std::string ssl_error_text() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  // "error:0A000086:SSL routines::certificate verify failed": the reason
  // is the last field.
  const char* reason = std::strrchr(buf, ':');
  return reason != nullptr ? reason + 1 : buf;
}

// Whether OpenSSL's reason for a failed handshake means that the peer sent
// something other than TLS.
bool not_tls(const std::string& why) {
  for (const char* reason : {"wrong version number", "packet length too long",
                             "record layer failure", "http request", "unknown protocol"}) {
    if (why.find(reason) != std::string::npos) return true;
  }
  return false;
}

// A TLS record carries at most this much (RFC 8446 §5.1).
constexpr size_t kRecord = 16384;

class TlsChannel final : public Channel {
 public:
  TlsChannel(util::UniqueFd fd, SSL* ssl) : Channel(std::move(fd)), ssl_(ssl) {}
  ~TlsChannel() override { SSL_free(ssl_); }

  std::string start(double timeout_s, bool* fatal) override;
  Io start_some(std::string* why) override;
  Io read_some(void* dst, size_t len, size_t* n) override { return some(Op::kRead, dst, len, n); }
  Io write_some(const void* src, size_t len, size_t* n) override {
    return some(Op::kWrite, const_cast<void*>(src), len, n);
  }
  bool read_full(void* dst, size_t len) override { return read(dst, len, receive_s_); }
  bool readv_full(std::span<const iovec> iov, size_t len) override {
    for (const iovec& v : iov) {
      if (len == 0) break;
      const size_t take = std::min(len, v.iov_len);
      if (!read(v.iov_base, take, receive_s_)) return false;
      len -= take;
    }
    return len == 0;
  }
  bool read_frame_start(void* dst, size_t len) override {
    // The first byte may take as long as the peer is idle.
    auto* p = static_cast<char*>(dst);
    size_t n = 0;
    if (!transfer(Op::kRead, p, len, -1, &n)) return false;
    return read(p + n, len - n, receive_s_);
  }
  bool writev_full(std::span<iovec> iov) override;
  void set_timeouts(double receive_s, double send_s) override {
    receive_s_ = receive_s;
    send_s_ = send_s;
  }
  std::string error(int err) const override {
    if (err == EPROTO) {
      std::lock_guard lock(mu_);
      return "TLS: " + ssl_error_;
    }
    return Channel::error(err);
  }

 private:
  enum class Op { kRead, kWrite };
  // One SSL_read_ex/SSL_write_ex of up to `len` bytes (at least one),
  // waiting as OpenSSL asks, at most `timeout_s` per wait (< 0: forever;
  // 0 = forever too, as for SO_RCVTIMEO). False with errno set on failure.
  bool transfer(Op op, void* buf, size_t len, double timeout_s, size_t* done);
  bool read(void* dst, size_t len, double timeout_s) {
    auto* p = static_cast<char*>(dst);
    while (len > 0) {
      size_t n = 0;
      if (!transfer(Op::kRead, p, len, timeout_s, &n)) return false;
      p += n;
      len -= n;
    }
    return true;
  }
  bool write(const void* src, size_t len) {
    const auto* p = static_cast<const char*>(src);
    while (len > 0) {
      size_t n = 0;
      if (!transfer(Op::kWrite, const_cast<char*>(p), len, send_s_, &n)) return false;
      p += n;
      len -= n;
    }
    return true;
  }
  // Waits until the socket is ready for `events`; false (errno EAGAIN) on
  // timeout.
  bool wait(short events, double timeout_s);
  // One SSL_read_ex/SSL_write_ex without waiting.
  Io some(Op op, void* buf, size_t len, size_t* n);
  bool make_nonblocking();

  SSL* const ssl_;
  // Guards ssl_ (OpenSSL objects are not for two threads at once) and
  // ssl_error_; never held while waiting for the socket.
  mutable std::mutex mu_;
  std::string ssl_error_;
  double receive_s_ = 0, send_s_ = 0;
  std::vector<char> gather_;  // the writer's: small frames gathered into one record
};

bool TlsChannel::wait(short events, double timeout_s) {
  pollfd pfd{fd(), events, 0};
  const int ms = timeout_s <= 0 ? -1 : int(std::ceil(timeout_s * 1000));
  for (;;) {
    const int rc = ::poll(&pfd, 1, ms);
    if (rc > 0) return true;
    if (rc == 0) {
      errno = EAGAIN;
      return false;
    }
    if (errno != EINTR) return false;
  }
}

bool TlsChannel::transfer(Op op, void* buf, size_t len, double timeout_s, size_t* done) {
  for (;;) {
    std::unique_lock lock(mu_);
    ERR_clear_error();
    errno = 0;
    const int ok =
        op == Op::kRead ? SSL_read_ex(ssl_, buf, len, done) : SSL_write_ex(ssl_, buf, len, done);
    if (ok == 1) return true;
    const int err = SSL_get_error(ssl_, ok);
    const int saved_errno = errno;
    short events = 0;
    switch (err) {
      case SSL_ERROR_WANT_READ:
        events = POLLIN;
        break;
      case SSL_ERROR_WANT_WRITE:
        events = POLLOUT;
        break;
      case SSL_ERROR_ZERO_RETURN:  // the peer's close_notify
        errno = 0;
        return false;
      case SSL_ERROR_SYSCALL:
        ssl_error_ = ssl_error_text();
        // An EOF without close_notify is still the end of the peer.
        errno = saved_errno != 0 ? saved_errno : (ssl_error_.empty() ? 0 : EPROTO);
        if (errno == EPROTO && ssl_error_.find("unexpected eof") != std::string::npos) errno = 0;
        return false;
      default:
        ssl_error_ = ssl_error_text();
        if (ssl_error_.find("unexpected eof") != std::string::npos) {
          errno = 0;
        } else {
          errno = EPROTO;
        }
        return false;
    }
    lock.unlock();
    if (!wait(events, timeout_s)) return false;
  }
}

bool TlsChannel::writev_full(std::span<iovec> iov) {
  // Small pieces (a frame header, a FUSE header, a metadata request) are
  // gathered into one record; a large payload is encrypted straight from
  // its buffers once the gathered record is topped up from its start.
  gather_.clear();
  for (const iovec& v : iov) {
    const char* p = static_cast<const char*>(v.iov_base);
    size_t len = v.iov_len;
    const size_t top_up = std::min(len, kRecord - gather_.size());
    gather_.insert(gather_.end(), p, p + top_up);
    p += top_up;
    len -= top_up;
    if (gather_.size() < kRecord) continue;
    if (!write(gather_.data(), gather_.size())) return false;
    gather_.clear();
    // Whole records straight from the caller's buffer; the tail is gathered.
    const size_t whole = len - len % kRecord;
    if (whole > 0 && !write(p, whole)) return false;
    gather_.insert(gather_.end(), p + whole, p + len);
  }
  return gather_.empty() || write(gather_.data(), gather_.size());
}

bool TlsChannel::make_nonblocking() {
  const int flags = ::fcntl(fd(), F_GETFL);
  return flags >= 0 && ((flags & O_NONBLOCK) || ::fcntl(fd(), F_SETFL, flags | O_NONBLOCK) == 0);
}

Channel::Io TlsChannel::start_some(std::string* why) {
  if (!make_nonblocking()) {
    *why = fmt::format("fcntl: {}", std::strerror(errno));
    return Io::kFailed;
  }
  std::lock_guard lock(mu_);
  ERR_clear_error();
  errno = 0;
  const int rc = SSL_do_handshake(ssl_);
  if (rc == 1) return Io::kDone;
  const int err = SSL_get_error(ssl_, rc);
  const int saved_errno = errno;
  if (err == SSL_ERROR_WANT_READ) return Io::kWantRead;
  if (err == SSL_ERROR_WANT_WRITE) return Io::kWantWrite;
  std::string text = ssl_error_text();
  const long verify = SSL_get_verify_result(ssl_);
  if (verify != X509_V_OK) text += fmt::format(" ({})", X509_verify_cert_error_string(verify));
  if (text.empty()) {
    *why = fmt::format("TLS handshake: {}", saved_errno != 0 ? std::strerror(saved_errno)
                                                             : "the peer closed the connection");
    errno = saved_errno;
    return saved_errno != 0 ? Io::kFailed : Io::kEof;
  }
  if (not_tls(text)) text += " (is the peer speaking TLS?)";
  *why = "TLS handshake failed: " + text;
  errno = EPROTO;
  return Io::kFailed;
}

Channel::Io TlsChannel::some(Op op, void* buf, size_t len, size_t* n) {
  *n = 0;
  std::lock_guard lock(mu_);
  ERR_clear_error();
  errno = 0;
  const int ok = op == Op::kRead ? SSL_read_ex(ssl_, buf, len, n) : SSL_write_ex(ssl_, buf, len, n);
  if (ok == 1) return Io::kDone;
  const int err = SSL_get_error(ssl_, ok);
  const int saved_errno = errno;
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return Io::kWantRead;
    case SSL_ERROR_WANT_WRITE:
      return Io::kWantWrite;
    case SSL_ERROR_ZERO_RETURN:
      return Io::kEof;
    default:
      ssl_error_ = ssl_error_text();
      if ((ssl_error_.empty() && saved_errno == 0) ||
          ssl_error_.find("unexpected eof") != std::string::npos) {
        return Io::kEof;
      }
      errno = saved_errno != 0 ? saved_errno : EPROTO;
      return Io::kFailed;
  }
}

std::string TlsChannel::start(double timeout_s, bool* fatal) {
  *fatal = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  for (;;) {
    std::string why;
    const Io io = start_some(&why);
    if (io == Io::kDone) return "";
    if (io == Io::kEof || io == Io::kFailed) {
      // A refused certificate or a peer that does not speak TLS will not change.
      *fatal = errno == EPROTO;
      return why;
    }
    const double left =
        std::chrono::duration<double>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0 || !wait(io == Io::kWantRead ? POLLIN : POLLOUT, left)) {
      return errno == EAGAIN || left <= 0 ? "TLS handshake: timed out"
                                          : fmt::format("TLS handshake: {}", std::strerror(errno));
    }
  }
}

}  // namespace

std::unique_ptr<Channel> plain_channel(util::UniqueFd fd) {
  return std::make_unique<PlainChannel>(std::move(fd));
}

// --- TlsContext --------------------------------------------------------------

struct TlsContext::Impl {
  // Freed here, not in ~TlsContext: a constructor that throws half-way runs
  // no destructor of its own, but its members' do.
  ~Impl() { SSL_CTX_free(ctx); }
  SSL_CTX* ctx = nullptr;
  Role role;
};

TlsContext::TlsContext(const TlsFiles& files, Role role) : impl_(std::make_unique<Impl>()) {
  impl_->role = role;
  auto fail = [&](const std::string& what) {
    const std::string why = ssl_error_text();
    throw std::invalid_argument(why.empty() ? what : fmt::format("{}: {}", what, why));
  };
  if (files.cert.empty() || files.key.empty() || files.ca.empty()) {
    throw std::invalid_argument("TLS needs remote.tls_cert, remote.tls_key and remote.tls_ca");
  }
  impl_->ctx = SSL_CTX_new(role == Role::kServer ? TLS_server_method() : TLS_client_method());
  if (impl_->ctx == nullptr) fail("SSL_CTX_new");
  SSL_CTX* ctx = impl_->ctx;
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, files.cert.c_str()) != 1) {
    fail(fmt::format("remote.tls_cert {}: not a PEM certificate", files.cert));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, files.key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1) {
    const std::string why = ssl_error_text();
    if (why.find("mismatch") != std::string::npos) {
      throw std::invalid_argument(fmt::format(
          "remote.tls_key {} is not the key of remote.tls_cert {}", files.key, files.cert));
    }
    throw std::invalid_argument(
        fmt::format("remote.tls_key {}: not a PEM private key: {}", files.key, why));
  }
  if (SSL_CTX_load_verify_locations(ctx, files.ca.c_str(), nullptr) != 1) {
    fail(fmt::format("remote.tls_ca {}: not a PEM certificate", files.ca));
  }
  // A server accepts only devices with a certificate from the CA; a device
  // only a server with one.
  SSL_CTX_set_verify(
      ctx,
      role == Role::kServer ? SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT : SSL_VERIFY_PEER,
      nullptr);
  // Partial writes, retried from where they stopped (transfer()).
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Connections are long-lived and reconnects cheap: no session tickets
  // (which a server would otherwise send after the handshake).
  SSL_CTX_set_num_tickets(ctx, 0);
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
}

TlsContext::~TlsContext() = default;

std::unique_ptr<Channel> TlsContext::channel(util::UniqueFd fd, const std::string& peer_host) {
  SSL* ssl = SSL_new(impl_->ctx);
  if (ssl == nullptr) throw std::runtime_error("SSL_new: " + ssl_error_text());
  SSL_set_fd(ssl, fd.get());
  SSL_set_read_ahead(ssl, 1);
  if (impl_->role == Role::kServer) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
    // The server's certificate must name the host we dialled: an address
    // as an IP SAN, a name as a DNS SAN (and sent as SNI).
    in6_addr any{};
    const bool literal = ::inet_pton(AF_INET, peer_host.c_str(), &any) == 1 ||
                         ::inet_pton(AF_INET6, peer_host.c_str(), &any) == 1;
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    if (literal) {
      X509_VERIFY_PARAM_set1_ip_asc(param, peer_host.c_str());
    } else if (!peer_host.empty()) {
      SSL_set_tlsext_host_name(ssl, peer_host.c_str());
      SSL_set1_host(ssl, peer_host.c_str());
    }
  }
  return std::make_unique<TlsChannel>(std::move(fd), ssl);
}

}  // namespace dpfs::remote
