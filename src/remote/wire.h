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
#include <span>
#include <string>
#include <string_view>

namespace dpfs::remote {

static_assert(std::endian::native == std::endian::little, "the wire format is little-endian");

inline constexpr uint32_t kMagic = 0x52465044;  // "DPFR"
inline constexpr uint8_t kVersion = 1;

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

struct HelloPayload {
  Nonce device_nonce;
  uint64_t session_id;  // the device's FUSE session: the same on all its connections
  uint32_t max_write;   // the device's buffers hold a WRITE/READ of this many bytes
  uint32_t reserved;
};
static_assert(sizeof(HelloPayload) == 48);

struct ChallengePayload {
  Nonce server_nonce;
  Mac server_proof;  // server_proof(secret, hello, server_nonce)
};
static_assert(sizeof(ChallengePayload) == 64);

struct AuthPayload {
  Mac device_proof;  // device_proof(secret, hello, server_nonce)
};

inline constexpr uint32_t kWelcomeNeedsInit = 1;  // the server's session awaits INIT
struct WelcomePayload {
  uint32_t flags;
  uint32_t max_request;  // the largest kRequest payload the server accepts
};
static_assert(sizeof(WelcomePayload) == 8);

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
// Constant-time comparison.
bool same_mac(const Mac& a, const Mac& b);
// Random bytes for nonces and session ids; throws std::runtime_error if the
// system has none.
void random_bytes(void* dst, size_t len);

// --- Addresses -------------------------------------------------------------

struct Endpoint {
  std::string host;  // a name or a literal; without IPv6 brackets
  uint16_t port = 0;
};
// Parses "HOST:PORT" or "[V6]:PORT" after `scheme` ("tcp://"). Port 0 is
// allowed only when `allow_port_zero` (a listener: any free port). Throws
// std::invalid_argument with the reason.
Endpoint parse_endpoint(std::string_view text, std::string_view scheme, bool allow_port_zero);
std::string format_endpoint(const Endpoint& e);

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
