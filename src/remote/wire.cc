#include "remote/wire.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "util/iov.h"

namespace dpfs::remote {
namespace {

constexpr size_t kMinSecret = 16;
// Labels end in the version: a proof of one version never verifies in another.
constexpr std::string_view kServerLabel = "dpfs-remote-v2 server";
constexpr std::string_view kDeviceLabel = "dpfs-remote-v2 device";
constexpr std::string_view kSessionLabel = "dpfs-remote-v2 session";
constexpr std::string_view kSealLabel = "dpfs-remote-v2 seal";
constexpr std::string_view kJoinLabel = "dpfs-remote-v2 join";
constexpr std::string_view kDeviceFramesLabel = "dpfs-remote-v2 device frames";
constexpr std::string_view kServerFramesLabel = "dpfs-remote-v2 server frames";

Mac hmac(std::string_view key, const void* message, size_t len) {
  Mac out{};
  unsigned out_len = 0;
  // An empty key is a zero-length key: HMAC needs a non-null pointer.
  static const unsigned char kNoKey = 0;
  const void* k = key.empty() ? static_cast<const void*>(&kNoKey) : key.data();
  if (HMAC(EVP_sha256(), k, int(key.size()), static_cast<const unsigned char*>(message), len,
           out.data(), &out_len) == nullptr ||
      out_len != kMacSize) {
    throw std::runtime_error("HMAC-SHA256 failed (libcrypto)");
  }
  return out;
}

std::string_view as_key(const Mac& key) {
  return {reinterpret_cast<const char*>(key.data()), key.size()};
}

// HMAC(key, label || hello || server nonce).
Mac proof(std::string_view key, std::string_view label, const HelloPayload& hello,
          const Nonce& server_nonce) {
  unsigned char message[64 + sizeof(HelloPayload) + kNonceSize];
  size_t at = 0;
  std::memcpy(message + at, label.data(), label.size());
  at += label.size();
  std::memcpy(message + at, &hello, sizeof(hello));
  at += sizeof(hello);
  std::memcpy(message + at, server_nonce.data(), kNonceSize);
  at += kNonceSize;
  return hmac(key, message, at);
}

}  // namespace

FrameHeader make_header(FrameType type, uint32_t length, uint64_t id, uint32_t reply_capacity) {
  FrameHeader h;
  h.type = uint8_t(type);
  h.length = length;
  h.id = id;
  h.reply_capacity = reply_capacity;
  return h;
}

const char* frame_type_name(uint8_t type) {
  switch (FrameType(type)) {
    case FrameType::kHello:
      return "HELLO";
    case FrameType::kChallenge:
      return "CHALLENGE";
    case FrameType::kAuth:
      return "AUTH";
    case FrameType::kWelcome:
      return "WELCOME";
    case FrameType::kRequest:
      return "REQUEST";
    case FrameType::kReply:
      return "REPLY";
    case FrameType::kError:
      return "ERROR";
  }
  return "UNKNOWN";
}

std::string check_header(const FrameHeader& h, uint32_t max_length) {
  if (h.magic != kMagic) {
    // 0x16: a TLS handshake record (RFC 8446 §5.1), a device with TLS on.
    return fmt::format(
        "not a dpfs remote frame (magic {:#010x}){}", h.magic,
        (h.magic & 0xff) == 0x16 ? "; a TLS client? (this server has no remote.tls_*)" : "");
  }
  if (h.version != kVersion) {
    return fmt::format("wire format version {}, this dpfs speaks {}", h.version, kVersion);
  }
  if (h.length > max_length) {
    return fmt::format("{} frame of {} bytes exceeds the limit of {}", frame_type_name(h.type),
                       h.length, max_length);
  }
  return "";
}

FrameHeader decode_header(std::span<const uint8_t> bytes) {
  FrameHeader h;
  std::memcpy(&h, bytes.data(), sizeof(h));
  return h;
}

namespace {

// The frame a reader at `stage` expects, with its exact payload size (0:
// any, up to a limit of its own).
struct Expected {
  FrameType type;
  uint32_t size;
};

Expected expected_at(Stage stage) {
  switch (stage) {
    case Stage::kHello:
      return {FrameType::kHello, sizeof(HelloPayload)};
    case Stage::kAuth:
      return {FrameType::kAuth, sizeof(AuthPayload)};
    case Stage::kRequests:
      return {FrameType::kRequest, 0};
    case Stage::kChallenge:
      return {FrameType::kChallenge, sizeof(ChallengePayload)};
    case Stage::kWelcome:
      return {FrameType::kWelcome, sizeof(WelcomePayload)};
    case Stage::kReplies:
      break;
  }
  return {FrameType::kReply, 0};
}

bool device_reads(Stage stage) {
  return stage == Stage::kChallenge || stage == Stage::kWelcome || stage == Stage::kReplies;
}

}  // namespace

Refusal check_frame(const FrameHeader& h, Stage stage, uint32_t max_request) {
  // Another version of this format is told why; anything else is not ours.
  if (h.magic != kMagic || h.version != kVersion) {
    return {check_header(h, kMaxPayload), h.magic == kMagic};
  }
  const Expected want = expected_at(stage);
  if (h.type == uint8_t(FrameType::kError) && device_reads(stage)) {
    if (h.length > kMaxErrorText) {
      return {fmt::format("an ERROR frame of {} bytes (at most {})", h.length, kMaxErrorText),
              false};
    }
    return {};
  }
  if (h.type != uint8_t(want.type)) {
    return {fmt::format("expected {}, got a {} frame", frame_type_name(uint8_t(want.type)),
                        frame_type_name(h.type)),
            true};
  }
  if (want.size != 0 && h.length != want.size) {
    return {
        fmt::format("a {} of {} bytes (it has {})", frame_type_name(h.type), h.length, want.size),
        true};
  }
  const uint32_t limit =
      want.type == FrameType::kRequest ? std::min(max_request, kMaxPayload) : kMaxPayload;
  if (h.length > limit) {
    // Where the frame ends is still known, but a peer this far off the
    // format is not one to keep talking to.
    return {check_header(h, limit), false};
  }
  return {};
}

Refusal check_hello(const HelloPayload& hello) {
  if (hello.max_write < kMinMaxWrite || hello.max_write % kMinMaxWrite != 0) {
    return {fmt::format("device max_write {} is not a positive multiple of 4K", hello.max_write),
            true};
  }
  return {};
}

Refusal check_welcome(const WelcomePayload& welcome) {
  // The server's limit must at least take a request with a page of data.
  if (welcome.max_request < kMinMaxWrite) {
    return {fmt::format("the server takes requests of at most {} bytes (too few to work)",
                        welcome.max_request),
            false};
  }
  return {};
}

std::string error_text(std::span<const uint8_t> payload) {
  std::string text;
  for (const uint8_t c : payload.first(std::min(payload.size(), kMaxErrorText))) {
    text.push_back(c >= 0x20 && c < 0x7f ? char(c) : '?');
  }
  return text;
}

bool opcode_takes_reply(uint32_t opcode) {
  return opcode != FUSE_FORGET && opcode != FUSE_BATCH_FORGET && opcode != FUSE_INTERRUPT &&
         opcode != FUSE_NOTIFY_REPLY;
}

Refusal check_reply_fits(const FrameHeader& h, size_t capacity) {
  if (h.length > capacity) {
    return {fmt::format("a {}-byte reply for a {}-byte buffer", h.length, capacity), false};
  }
  return {};
}

ReplyCheck check_reply(std::span<const iovec> out, uint32_t length, uint64_t unique,
                       uint32_t opcode) {
  if (length == 0) return opcode_takes_reply(opcode) ? ReplyCheck::kEmpty : ReplyCheck::kValid;
  fuse_out_header header{};
  if (length < sizeof(header) || iov_copy_out(out, &header, sizeof(header)) != sizeof(header) ||
      header.len != length || header.unique != unique) {
    return ReplyCheck::kMalformed;
  }
  return ReplyCheck::kValid;
}

Mac server_proof(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce) {
  return proof(secret, kServerLabel, hello, server_nonce);
}

Mac device_proof(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce) {
  return proof(secret, kDeviceLabel, hello, server_nonce);
}

Mac session_token(const Mac& server_key, uint64_t session_id) {
  unsigned char message[64 + sizeof(session_id)];
  std::memcpy(message, kSessionLabel.data(), kSessionLabel.size());
  std::memcpy(message + kSessionLabel.size(), &session_id, sizeof(session_id));
  return hmac(as_key(server_key), message, kSessionLabel.size() + sizeof(session_id));
}

Mac seal_token(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce,
               const Mac& token) {
  Mac sealed = proof(secret, kSealLabel, hello, server_nonce);
  for (size_t i = 0; i < kMacSize; ++i) sealed[i] ^= token[i];
  return sealed;
}

Mac session_proof(const Mac& token, const HelloPayload& hello, const Nonce& server_nonce) {
  return proof(as_key(token), kJoinLabel, hello, server_nonce);
}

bool frames_authenticated(bool have_secret, bool tls) { return have_secret && !tls; }

FrameKeys frame_keys(std::string_view secret, const HelloPayload& hello,
                     const Nonce& server_nonce) {
  return {proof(secret, kDeviceFramesLabel, hello, server_nonce),
          proof(secret, kServerFramesLabel, hello, server_nonce)};
}

// A keyed HMAC-SHA256 context; each frame re-initialises it with the same
// key (EVP_MAC_init with a null key keeps the key set before).
struct FrameMac::Ctx {
  ~Ctx() {
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
  }
  EVP_MAC* mac = nullptr;
  EVP_MAC_CTX* ctx = nullptr;
};

FrameMac::FrameMac(const Mac& key) : ctx_(std::make_unique<Ctx>()) {
  ctx_->mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  if (ctx_->mac != nullptr) ctx_->ctx = EVP_MAC_CTX_new(ctx_->mac);
  char digest[] = "SHA256";
  const OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string("digest", digest, 0),
                               OSSL_PARAM_construct_end()};
  if (ctx_->ctx == nullptr || EVP_MAC_init(ctx_->ctx, key.data(), key.size(), params) != 1) {
    throw std::runtime_error("HMAC-SHA256 failed (libcrypto)");
  }
}

FrameMac::~FrameMac() = default;

Mac FrameMac::next(const FrameHeader& h, std::span<const iovec> payload) {
  EVP_MAC_CTX* c = ctx_->ctx;
  bool ok = EVP_MAC_init(c, nullptr, 0, nullptr) == 1;
  const uint64_t seq = sequence_++;
  ok = ok && EVP_MAC_update(c, reinterpret_cast<const unsigned char*>(&seq), sizeof(seq)) == 1;
  ok = ok && EVP_MAC_update(c, reinterpret_cast<const unsigned char*>(&h), sizeof(h)) == 1;
  size_t left = h.length;
  for (const iovec& v : payload) {
    if (left == 0) break;
    const size_t take = std::min(left, v.iov_len);
    ok = ok && EVP_MAC_update(c, static_cast<const unsigned char*>(v.iov_base), take) == 1;
    left -= take;
  }
  Mac out{};
  size_t len = 0;
  ok = ok && left == 0 && EVP_MAC_final(c, out.data(), &len, out.size()) == 1 && len == kMacSize;
  // A payload shorter than the header says (a caller's bug) or a failing
  // libcrypto: a MAC that matches nothing, so the frame is refused.
  if (!ok) random_bytes(out.data(), out.size());
  return out;
}

Mac FrameMac::next(const FrameHeader& h, const void* payload) {
  const iovec v{const_cast<void*>(payload), h.length};
  return next(h, std::span<const iovec>(&v, 1));
}

bool same_mac(const Mac& a, const Mac& b) {
  return CRYPTO_memcmp(a.data(), b.data(), kMacSize) == 0;
}

void random_bytes(void* dst, size_t len) {
  auto* p = static_cast<uint8_t*>(dst);
  while (len > 0) {
    const ssize_t n = ::getrandom(p, len, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(fmt::format("getrandom: {}", std::strerror(errno)));
    }
    p += n;
    len -= size_t(n);
  }
}

std::string read_secret_file(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    throw std::invalid_argument(fmt::format("secret file {}: {}", path, std::strerror(errno)));
  }
  if (st.st_mode & 077) {
    throw std::invalid_argument(
        fmt::format("secret file {} is readable by group or others (mode {:04o}); chmod 600 {}",
                    path, st.st_mode & 07777, path));
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in) throw std::invalid_argument(fmt::format("secret file {}: cannot read it", path));
  std::string secret = text.str();
  while (!secret.empty() && (secret.back() == '\n' || secret.back() == '\r')) secret.pop_back();
  if (secret.size() < kMinSecret) {
    throw std::invalid_argument(fmt::format(
        "secret file {} holds {} bytes; use at least {} (e.g. head -c 32 /dev/urandom | base64)",
        path, secret.size(), kMinSecret));
  }
  return secret;
}

bool read_full(int fd, void* dst, size_t len) {
  auto* p = static_cast<char*>(dst);
  while (len > 0) {
    const ssize_t n = ::recv(fd, p, len, MSG_WAITALL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) {
      errno = 0;
      return false;
    }
    p += n;
    len -= size_t(n);
  }
  return true;
}

bool readv_full(int fd, std::span<const iovec> iov, size_t len) {
  for (const iovec& v : iov) {
    if (len == 0) break;
    const size_t take = std::min(len, v.iov_len);
    if (!read_full(fd, v.iov_base, take)) return false;
    len -= take;
  }
  return len == 0;
}

bool writev_full(int fd, std::span<iovec> iov) {
  size_t first = 0;
  while (first < iov.size()) {
    if (iov[first].iov_len == 0) {
      ++first;
      continue;
    }
    msghdr msg{};
    msg.msg_iov = iov.data() + first;
    msg.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    size_t done = size_t(n);
    while (done > 0 && first < iov.size()) {
      const size_t take = std::min(done, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      done -= take;
      if (iov[first].iov_len == 0) ++first;
    }
  }
  return true;
}

bool read_frame_start(int fd, void* dst, size_t len) {
  auto* p = static_cast<char*>(dst);
  ssize_t n;
  do {
    n = ::recv(fd, p, len, MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n == 0) {
    errno = 0;
    return false;
  }
  if (n < 0) {
    if (errno != EAGAIN && errno != EWOULDBLOCK) return false;
    pollfd pfd{fd, POLLIN, 0};
    while (::poll(&pfd, 1, -1) < 0 && errno == EINTR) {
    }
    n = 0;
  }
  return read_full(fd, p + n, len - size_t(n));
}

void tune_socket(int fd, unsigned dead_after_s) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  const int idle = int(std::max(1u, dead_after_s / 3));
  const int interval = int(std::max(1u, dead_after_s / 6));
  const int count = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  // Unacknowledged data older than this ends the connection.
  const unsigned user_timeout_ms = std::max(1u, dead_after_s) * 1000;
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof(user_timeout_ms));
}

void set_timeouts(int fd, double receive_s, double send_s) {
  auto tv = [](double s) {
    timeval t{};
    t.tv_sec = time_t(s);
    t.tv_usec = suseconds_t((s - double(t.tv_sec)) * 1e6);
    return t;
  };
  const timeval r = tv(receive_s), w = tv(send_s);
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof(r));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &w, sizeof(w));
}

}  // namespace dpfs::remote
