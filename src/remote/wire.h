// The remote transport's wire format: FUSE requests and replies framed on a
// TCP connection between a device (remote::Forwarder) and a server
// (remote::Server). docs/remote-wire-format.md is the specification; this
// file is its code, shared by both ends.
//
// Every frame is a FrameHeader followed by `length` payload bytes. Integers
// are little-endian (the FUSE messages inside are in the tenant's byte
// order, which both ends share: dpfs builds for little-endian hosts only).
//
// Functions here are safe for concurrent use; they keep no state.
#pragma once

#include <sys/uio.h>

#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "util/endpoint.h"

namespace dpfs::remote {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

inline constexpr uint32_t kMagic = 0x52465044;  // "DPFR"
// 2: sessions joined with a token the server issued (not a guessable id),
// and frames authenticated in shared-secret mode.
inline constexpr uint8_t kVersion = 2;

enum class FrameType : uint8_t {
  kHello = 1,      // device -> server: nonce, session id, max_write
  kChallenge = 2,  // server -> device: nonce, the server's proof
  kAuth = 3,       // device -> server: the device's proof
  kWelcome = 4,    // server -> device: session state, limits
  kRequest = 5,    // device -> server: one FUSE request
  kReply = 6,      // server -> device: the reply to the request of the same id
  kError = 7,      // either way, then close: a reason for the peer's log
};

struct FrameHeader {
  uint32_t magic = kMagic;
  uint8_t version = kVersion;
  uint8_t type = 0;
  uint16_t reserved = 0;
  uint32_t length = 0;  // payload bytes after this header
  // kRequest: bytes the device can take in the reply (its `out` buffers).
  uint32_t reply_capacity = 0;
  // kRequest/kReply: chosen by the device, unique among its requests in
  // flight on the connection; never the tenant's FUSE unique.
  uint64_t id = 0;
};
static_assert(sizeof(FrameHeader) == 24);

inline constexpr size_t kNonceSize = 32;
inline constexpr size_t kMacSize = 32;  // HMAC-SHA256
using Nonce = std::array<uint8_t, kNonceSize>;
using Mac = std::array<uint8_t, kMacSize>;

// HELLO flags bit 0: the device joins the session `session_id` the server
// gave it (proved in AUTH); without it the server makes a new session.
inline constexpr uint32_t kHelloJoin = 1;
struct HelloPayload {
  Nonce device_nonce;
  uint64_t session_id;  // with kHelloJoin: the session the server gave this device
  uint32_t max_write;   // the device's buffers hold a WRITE/READ of this many bytes
  uint32_t flags;
};
static_assert(sizeof(HelloPayload) == 48);

struct ChallengePayload {
  Nonce server_nonce;
  Mac server_proof;  // server_proof(secret, hello, server_nonce)
};
static_assert(sizeof(ChallengePayload) == 64);

struct AuthPayload {
  Mac device_proof;   // device_proof(secret, hello, server_nonce)
  Mac session_proof;  // with kHelloJoin: session_proof(token, hello, server_nonce); else zeros
};
static_assert(sizeof(AuthPayload) == 64);

inline constexpr uint32_t kWelcomeNeedsInit = 1;   // the server's session awaits INIT
inline constexpr uint32_t kWelcomeNewSession = 2;  // not the session the device asked to join
struct WelcomePayload {
  uint32_t flags;
  uint32_t max_request;  // the largest kRequest payload the server accepts
  uint64_t session_id;   // the device's session: to join on its next connections
  // The session's token, sealed: seal_token(secret, hello, server_nonce, token).
  Mac sealed_token;
};
static_assert(sizeof(WelcomePayload) == 48);

// The frame id of an INIT a device replays to a server that lost its
// session; never the id of a tenant's request. A server whose session is up
// already (another connection's INIT got there first) acknowledges it with
// a header-only success instead of negotiating again.
inline constexpr uint64_t kInitReplayId = 0;

inline constexpr size_t kMaxErrorText = 256;
// No reply or request may exceed this, whatever a peer says (a sanity bound
// far above max_write = 1M plus headers).
inline constexpr uint32_t kMaxPayload = 4u << 20;

FrameHeader make_header(FrameType type, uint32_t length, uint64_t id = 0,
                        uint32_t reply_capacity = 0);

// "" if `h` is a frame of this version whose payload is at most
// `max_length`; otherwise why not, for a one-line log.
std::string check_header(const FrameHeader& h, uint32_t max_length);
const char* frame_type_name(uint8_t type);

// --- Decoding what a peer sends ----------------------------------------------
//
// Pure functions from a peer's bytes to a decision. Both ends judge every
// frame they read with them, and decide nothing about a peer's bytes
// elsewhere, so tests/fuzz/remote_wire_fuzz.cc, which feeds them arbitrary
// bytes in both directions, covers the parsing a peer can reach. (Handshake
// payloads are plain integers and byte arrays: any bytes are a value, and
// check_hello()/check_welcome() judge the values.)

// What the reader of a connection expects next.
enum class Stage : uint8_t {
  kHello,      // server: the first frame
  kAuth,       // server: after CHALLENGE
  kRequests,   // server: after WELCOME
  kChallenge,  // device: after HELLO
  kWelcome,    // device: after AUTH
  kReplies,    // device: after WELCOME
};

// Why a peer's frame or payload is refused; empty `reason` = accepted.
// `tell_peer`: the peer speaks this format and deserves an ERROR frame.
struct Refusal {
  std::string reason;
  bool tell_peer = false;
  bool refused() const { return !reason.empty(); }
};

// The header at the start of `bytes`. REQUIRES bytes.size() >= sizeof(FrameHeader).
FrameHeader decode_header(std::span<const uint8_t> bytes);
// Whether `h` may come next at `stage`: the magic and version, a type
// expected there (ERROR wherever a device reads), and a payload of the
// handshake message's exact size, at most `max_request` for a REQUEST,
// kMaxPayload for a REPLY and kMaxErrorText for an ERROR.
Refusal check_frame(const FrameHeader& h, Stage stage, uint32_t max_request = kMaxPayload);

// The smallest max_write a device may announce; its max_write must be a
// multiple of it (the server's session works in pages).
inline constexpr uint32_t kMinMaxWrite = 4096;
Refusal check_hello(const HelloPayload& hello);
Refusal check_welcome(const WelcomePayload& welcome);
// An ERROR frame's payload as text for a log line: printable ASCII only
// (a peer must not be able to forge log lines), at most kMaxErrorText.
std::string error_text(std::span<const uint8_t> payload);

// FORGET, BATCH_FORGET, INTERRUPT and NOTIFY_REPLY take no reply in FUSE
// (their REPLY frame is empty).
bool opcode_takes_reply(uint32_t opcode);

// How a device treats a REPLY (check_frame accepted it) for a request whose
// `out` buffers hold `capacity` bytes, before reading its payload.
Refusal check_reply_fits(const FrameHeader& h, size_t capacity);
enum class ReplyCheck {
  kValid,      // complete the request with it
  kEmpty,      // an empty reply to a request that takes one: EIO, link stays
  kMalformed,  // a header that does not match the request: EIO, link breaks
};
// The reply of `length` bytes read into `out`, for the request with FUSE
// `unique` and `opcode`: fuse_out_header.len must equal `length` and its
// unique the request's.
ReplyCheck check_reply(std::span<const iovec> out, uint32_t length, uint64_t unique,
                       uint32_t opcode);

// The proofs of the handshake: HMAC-SHA256 keyed with the shared secret
// (empty when none is configured) over a label, both nonces and the
// device's parameters, so neither side's message can be replayed as the
// other's and the parameters cannot be changed in transit.
Mac server_proof(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce);
Mac device_proof(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce);

// --- Sessions (docs/remote-wire-format.md, "Sessions") --------------------------
//
// A session's token is HMAC-SHA256(server key, label || session id): the
// server key is random and never leaves the server, so only the device the
// server issued a session to can join it. The token travels once, in the
// WELCOME that creates the session, sealed with a pad only the two ends of
// that handshake can compute (from the secret and both nonces); later
// connections prove it (session_proof) without sending it.
Mac session_token(const Mac& server_key, uint64_t session_id);
// token XOR HMAC(secret, label || hello || server_nonce); its own inverse.
Mac seal_token(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce,
               const Mac& token);
Mac session_proof(const Mac& token, const HelloPayload& hello, const Nonce& server_nonce);

// --- Frame authentication (shared-secret mode without TLS) ---------------------
//
// Every frame after AUTH but ERROR carries a 32-byte trailer after its
// payload (not counted in `length`): HMAC-SHA256(key of its direction,
// sequence || header || payload), the sequence numbering that direction's
// authenticated frames from 0. A frame altered, dropped, replayed or
// reordered in transit fails its check and ends the connection. TLS
// protects its frames itself; without a secret (loopback) there is no key
// an attacker does not know.
bool frames_authenticated(bool have_secret, bool tls);
struct FrameKeys {
  Mac device_to_server, server_to_device;
};
// HMAC(secret, label || hello || server_nonce), one label per direction.
FrameKeys frame_keys(std::string_view secret, const HelloPayload& hello, const Nonce& server_nonce);

// The MACs of one direction of one connection. Not thread-safe: its user
// (the writer under its send lock, or the reader) keeps the sequence.
class FrameMac {
 public:
  explicit FrameMac(const Mac& key);
  ~FrameMac();
  FrameMac(const FrameMac&) = delete;
  FrameMac& operator=(const FrameMac&) = delete;
  // The trailer of the next frame: `h` and the first h.length bytes of
  // `payload`. Advances the sequence.
  Mac next(const FrameHeader& h, std::span<const iovec> payload);
  Mac next(const FrameHeader& h, const void* payload);
  uint64_t sequence() const { return sequence_; }

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
  uint64_t sequence_ = 0;
};
// Constant-time comparison.
bool same_mac(const Mac& a, const Mac& b);
// Random bytes for nonces and session ids; throws std::runtime_error if the
// system has none.
void random_bytes(void* dst, size_t len);

// --- Addresses -------------------------------------------------------------

// util/endpoint.h: HOST:PORT parsing, shared with the backend factory.
using util::Endpoint;
using util::format_endpoint;
using util::parse_endpoint;

// Reads a shared secret from `path`: at least 16 bytes, trailing newline
// dropped, the file not readable by group or others. Throws
// std::invalid_argument with what to fix.
std::string read_secret_file(const std::string& path);

// --- Socket I/O --------------------------------------------------------------

// Reads exactly `len` bytes; false on EOF, error or timeout (errno set; 0
// for a clean EOF).
bool read_full(int fd, void* dst, size_t len);
// Reads exactly `len` bytes into `iov` (which holds at least that many).
bool readv_full(int fd, std::span<const iovec> iov, size_t len);
// Writes all of `iov` (any number of entries; consumed as it goes). False
// on error or timeout (errno set). Never raises SIGPIPE.
bool writev_full(int fd, std::span<iovec> iov);
// read_full() for the start of a frame: waits for its first byte as long as
// it takes (an idle peer is not a failure; shutdown(2) ends the wait), then
// reads the rest under SO_RCVTIMEO (a frame that stalls half-way is). Reads
// at once, without waiting, what has arrived already.
bool read_frame_start(int fd, void* dst, size_t len);
// Sets TCP_NODELAY and keepalive (a peer that vanished without a FIN is
// noticed in about `dead_after_s` seconds).
void tune_socket(int fd, unsigned dead_after_s);
// SO_RCVTIMEO / SO_SNDTIMEO; 0 means none.
void set_timeouts(int fd, double receive_s, double send_s);

}  // namespace dpfs::remote
