// The vhost-user wire format, as the back-end (the role virtiofsd plays
// towards QEMU) receives it, and its validation.
//
// A message is a 12-byte header (request, flags, size), `size` bytes of
// payload, and file descriptors passed in the ancillary data of the same
// sendmsg (SCM_RIGHTS). All numbers are in native byte order. Source:
// QEMU docs/interop/vhost-user.rst ("Message Specification", "Front-end
// message types").
//
// Everything here treats the front-end as hostile: parse_message() accepts a
// payload only if its size is exactly what the request's payload type takes,
// and a set of fds only if its count is exactly what the request carries.
// Checks that need connection state (a vring index against the number of
// queues, a ring size against the negotiated ring layout, features against
// what was offered) are the connection's.
//
// Pure functions; safe for concurrent use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "util/unique_fd.h"

namespace dpfs::vhost_user {

// Front-end message types (vhost-user.rst "Front-end message types").
enum class Request : uint32_t {
  kGetFeatures = 1,
  kSetFeatures = 2,
  kSetOwner = 3,
  kResetOwner = 4,
  kSetMemTable = 5,
  kSetLogBase = 6,
  kSetLogFd = 7,
  kSetVringNum = 8,
  kSetVringAddr = 9,
  kSetVringBase = 10,
  kGetVringBase = 11,
  kSetVringKick = 12,
  kSetVringCall = 13,
  kSetVringErr = 14,
  kGetProtocolFeatures = 15,
  kSetProtocolFeatures = 16,
  kGetQueueNum = 17,
  kSetVringEnable = 18,
  kSendRarp = 19,
  kNetSetMtu = 20,
  kSetBackendReqFd = 21,  // "SET_SLAVE_REQ_FD" in older texts
  kIotlbMsg = 22,
  kSetVringEndian = 23,
  kGetConfig = 24,
  kSetConfig = 25,
  kCreateCryptoSession = 26,
  kCloseCryptoSession = 27,
  kPostcopyAdvise = 28,
  kPostcopyListen = 29,
  kPostcopyEnd = 30,
  kGetInflightFd = 31,
  kSetInflightFd = 32,
  kGpuSetSocket = 33,
  kResetDevice = 34,
  kVringKick = 35,
  kGetMaxMemSlots = 36,
  kAddMemReg = 37,
  kRemMemReg = 38,
  kSetStatus = 39,
  kGetStatus = 40,
};

// "GET_FEATURES", ...; "UNKNOWN" for a number the spec does not define.
std::string_view request_name(uint32_t request);

// Header flags.
inline constexpr uint32_t kVersionMask = 0x3;
inline constexpr uint32_t kVersion = 0x1;
inline constexpr uint32_t kFlagReply = 0x4;      // set on every reply of the back-end
inline constexpr uint32_t kFlagNeedReply = 0x8;  // REPLY_ACK: the front-end wants an ack

inline constexpr size_t kHeaderSize = 12;
// No request this back-end knows takes more than 268 bytes (GET_CONFIG with
// 256 bytes of config space); the limit leaves room for requests it only
// skips (a crypto session is about 600 bytes). A larger size is an error.
inline constexpr size_t kMaxPayloadSize = 4096;
// QEMU's VHOST_MEMORY_BASELINE_NREGIONS: the most regions a SET_MEM_TABLE
// carries, and the most fds any message carries.
inline constexpr uint32_t kMaxMemRegions = 8;
inline constexpr size_t kMaxFds = 8;

// SET_VRING_KICK/CALL/ERR u64 payload: bits 0-7 the vring index, bit 8 "no
// fd in the ancillary data" (kick: the back-end polls; call: the front-end
// polls). Other bits are reserved.
inline constexpr uint64_t kVringIndexMask = 0xff;
inline constexpr uint64_t kVringNoFdMask = 0x100;

// The largest virtqueue (virtio 1.2 §2.7 / §2.8: Queue Size up to 32768).
inline constexpr uint32_t kMaxQueueSize = 32768;

// Feature bits of GET_FEATURES/SET_FEATURES that concern the vhost-user layer.
inline constexpr uint64_t kFeatureLogAll = 1ull << 26;            // VHOST_F_LOG_ALL
inline constexpr uint64_t kFeatureProtocolFeatures = 1ull << 30;  // VHOST_USER_F_PROTOCOL_FEATURES
inline constexpr uint64_t kFeatureVersion1 = 1ull << 32;          // VIRTIO_F_VERSION_1
inline constexpr uint64_t kFeatureRingPacked = 1ull << 34;        // VIRTIO_F_RING_PACKED

// Protocol feature bits (GET/SET_PROTOCOL_FEATURES).
namespace protocol_feature {
inline constexpr uint64_t kMq = 1ull << 0;
inline constexpr uint64_t kLogShmfd = 1ull << 1;
inline constexpr uint64_t kRarp = 1ull << 2;
inline constexpr uint64_t kReplyAck = 1ull << 3;
inline constexpr uint64_t kMtu = 1ull << 4;
inline constexpr uint64_t kBackendReq = 1ull << 5;
inline constexpr uint64_t kCrossEndian = 1ull << 6;
inline constexpr uint64_t kCryptoSession = 1ull << 7;
inline constexpr uint64_t kPagefault = 1ull << 8;
inline constexpr uint64_t kConfig = 1ull << 9;
inline constexpr uint64_t kBackendSendFd = 1ull << 10;
inline constexpr uint64_t kHostNotifier = 1ull << 11;
inline constexpr uint64_t kInflightShmfd = 1ull << 12;
inline constexpr uint64_t kResetDevice = 1ull << 13;
inline constexpr uint64_t kInbandNotifications = 1ull << 14;
inline constexpr uint64_t kConfigureMemSlots = 1ull << 15;
inline constexpr uint64_t kStatus = 1ull << 16;
}  // namespace protocol_feature

// Wire structures. Natural alignment gives the spec's packed layout; the
// static_asserts in message.cc hold that. Always read and written with memcpy
// (the payload follows a 12-byte header, so it is not 8-byte aligned).
struct Header {
  uint32_t request;
  uint32_t flags;
  uint32_t size;  // of the payload
};

// "A vring state description": SET_VRING_NUM (num = queue size),
// SET_VRING_BASE (num = next available index to process), GET_VRING_BASE,
// SET_VRING_ENABLE (num = 0 or 1).
struct VringState {
  uint32_t index;
  uint32_t num;
};

// "A vring address description" (struct vhost_vring_addr). The three ring
// addresses are front-end *user* addresses (QEMU's virtual addresses),
// translated through MemoryRegion::userspace_addr, not guest physical
// addresses (VIRTIO_F_IOMMU_PLATFORM, which would make them IOVAs, is never
// offered).
struct VringAddr {
  uint32_t index;
  uint32_t flags;  // bit 0: VHOST_VRING_F_LOG (log used-ring writes); refused
  uint64_t desc_user_addr;
  uint64_t used_user_addr;
  uint64_t avail_user_addr;
  uint64_t log_guest_addr;
};
inline constexpr uint32_t kVringFlagLog = 0x1;

// One region of guest memory: guest physical [guest_phys_addr, +memory_size)
// is front-end user address [userspace_addr, +memory_size) and is mapped from
// the region's fd at mmap_offset. parse_message() guarantees memory_size > 0
// and that none of the three ranges wraps around 2^64.
struct MemoryRegion {
  uint64_t guest_phys_addr;
  uint64_t memory_size;
  uint64_t userspace_addr;
  uint64_t mmap_offset;
};

// "Log description" (SET_LOG_BASE).
struct LogArea {
  uint64_t mmap_size;
  uint64_t mmap_offset;
};

// The head of "Virtio device config space" (GET_CONFIG, SET_CONFIG).
struct ConfigHeader {
  uint32_t offset;
  uint32_t size;
  uint32_t flags;
};
inline constexpr uint32_t kMaxConfigSize = 256;  // QEMU's VHOST_USER_MAX_CONFIG_SIZE

// A region and the fd it is mapped from, as handed to the device.
struct MemoryRegionFd {
  MemoryRegion region;
  util::UniqueFd fd;
};

// Decoded payloads, one alternative per payload type.
struct NoPayload {};
struct U64Payload {
  uint64_t value;
};
// SET_VRING_KICK/CALL/ERR, with the u64 split into its fields.
struct VringFilePayload {
  uint32_t index;
  bool no_fd;
};
// SET_MEM_TABLE: up to kMaxMemRegions regions, in the order of their fds.
struct MemoryTablePayload {
  std::vector<MemoryRegion> regions;
};
// ADD_MEM_REG, REM_MEM_REG ("single memory region description").
struct SingleRegionPayload {
  MemoryRegion region;
};
struct ConfigPayload {
  ConfigHeader header;
  std::vector<uint8_t> data;  // header.size bytes (SET_CONFIG's new contents)
};
// A request this back-end does not know: the payload is skipped.
struct UnknownPayload {};

using Payload =
    std::variant<NoPayload, U64Payload, VringState, VringAddr, VringFilePayload, MemoryTablePayload,
                 SingleRegionPayload, LogArea, ConfigPayload, UnknownPayload>;

// A validated request.
struct Message {
  uint32_t request = 0;
  uint32_t flags = 0;
  Payload payload;

  bool need_reply() const { return (flags & kFlagNeedReply) != 0; }
};

// Checks a header as soon as its 12 bytes are in, before any payload is read:
// version 1, no reply flag (that is the back-end's), no reserved flag bits,
// size <= kMaxPayloadSize. On failure returns false and sets *error to one
// line saying what is wrong.
bool validate_header(const Header& header, std::string* error);

// Decodes and validates a whole message: `header` has passed
// validate_header(), `payload` holds its header.size bytes and `num_fds` is
// how many fds came with it. For a known request the payload size must be
// exactly that of its payload type (SET_MEM_TABLE: 8 + 32 * nregions with
// nregions <= 8), and the fd count exactly what the request carries
// (SET_MEM_TABLE: one per region; ADD_MEM_REG, SET_BACKEND_REQ_FD,
// SET_INFLIGHT_FD, GPU_SET_SOCKET: one; SET_VRING_KICK/CALL/ERR: one, none
// with the no-fd bit; REM_MEM_REG, SET_LOG_BASE, SET_LOG_FD: none or one, to
// be closed; every other: none). An unknown request may carry up to kMaxFds
// fds (all to be closed). On failure returns false and sets *error to one
// line (without the request name, which the caller has).
bool parse_message(const Header& header, std::span<const uint8_t> payload, size_t num_fds,
                   Message* out, std::string* error);

// Whether the request has a reply of its own (GET_FEATURES, GET_VRING_BASE,
// ...), sent whatever REPLY_ACK says; every other request is answered only
// by a REPLY_ACK ack, when the front-end asks for one.
bool has_reply_body(uint32_t request);

// Encodes a reply: header (flags = version | reply) followed by the payload.
std::vector<uint8_t> encode_reply(uint32_t request, std::span<const uint8_t> payload);
std::vector<uint8_t> encode_reply_u64(uint32_t request, uint64_t value);
std::vector<uint8_t> encode_reply_vring_state(uint32_t request, const VringState& state);

}  // namespace dpfs::vhost_user
