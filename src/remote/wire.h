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
