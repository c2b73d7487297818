#include "vhost_user/message.h"

#include <fmt/format.h>

#include <cstring>
#include <limits>

namespace dpfs::vhost_user {

static_assert(sizeof(Header) == kHeaderSize);
static_assert(sizeof(VringState) == 8);
static_assert(sizeof(VringAddr) == 40);
static_assert(sizeof(MemoryRegion) == 32);
static_assert(sizeof(LogArea) == 16);
static_assert(sizeof(ConfigHeader) == 12);

namespace {

// The payload type of each request, as the spec's "request payload" line.
enum class Kind {
  kNone,
  kU64,
  kVringState,
  kVringAddr,
  kVringFile,
  kMemoryTable,
  kSingleRegion,
  kLog,
  kConfig,
  kSkipped,  // known, never handled here: the payload is skipped whatever its size
};

// How many fds a request carries.
enum class Fds {
  kNone,
  kOne,
  kNoneOrOne,   // REM_MEM_REG (spec: "MAY accept ... MUST close"), log messages
  kPerRegion,   // SET_MEM_TABLE
  kUnlessNoFd,  // SET_VRING_KICK/CALL/ERR
  kAny,         // skipped requests: whatever came is closed
};

struct Rule {
  std::string_view name;
  Kind kind;
  Fds fds;
  bool reply_body;
};

constexpr Rule kUnknown{"UNKNOWN", Kind::kSkipped, Fds::kAny, false};

// Indexed by request number. Source: vhost-user.rst "Front-end message types";
// "reply payload" N/A means the request is answered only by a REPLY_ACK ack.
constexpr Rule kRules[] = {
    kUnknown,                                                       // 0
    {"GET_FEATURES", Kind::kNone, Fds::kNone, true},                // 1
    {"SET_FEATURES", Kind::kU64, Fds::kNone, false},                // 2
    {"SET_OWNER", Kind::kNone, Fds::kNone, false},                  // 3
    {"RESET_OWNER", Kind::kNone, Fds::kNone, false},                // 4
    {"SET_MEM_TABLE", Kind::kMemoryTable, Fds::kPerRegion, false},  // 5
    {"SET_LOG_BASE", Kind::kLog, Fds::kNoneOrOne, false},           // 6
    {"SET_LOG_FD", Kind::kNone, Fds::kNoneOrOne, false},            // 7
    {"SET_VRING_NUM", Kind::kVringState, Fds::kNone, false},        // 8
    {"SET_VRING_ADDR", Kind::kVringAddr, Fds::kNone, false},        // 9
    {"SET_VRING_BASE", Kind::kVringState, Fds::kNone, false},       // 10
    {"GET_VRING_BASE", Kind::kVringState, Fds::kNone, true},        // 11
    {"SET_VRING_KICK", Kind::kVringFile, Fds::kUnlessNoFd, false},  // 12
    {"SET_VRING_CALL", Kind::kVringFile, Fds::kUnlessNoFd, false},  // 13
    {"SET_VRING_ERR", Kind::kVringFile, Fds::kUnlessNoFd, false},   // 14
    {"GET_PROTOCOL_FEATURES", Kind::kNone, Fds::kNone, true},       // 15
    {"SET_PROTOCOL_FEATURES", Kind::kU64, Fds::kNone, false},       // 16
    {"GET_QUEUE_NUM", Kind::kNone, Fds::kNone, true},               // 17
    {"SET_VRING_ENABLE", Kind::kVringState, Fds::kNone, false},     // 18
    {"SEND_RARP", Kind::kU64, Fds::kNone, false},                   // 19
    {"NET_SET_MTU", Kind::kU64, Fds::kNone, false},                 // 20
    {"SET_BACKEND_REQ_FD", Kind::kNone, Fds::kOne, false},          // 21
    {"IOTLB_MSG", Kind::kSkipped, Fds::kNone, true},                // 22 reply: u64 status
    {"SET_VRING_ENDIAN", Kind::kVringState, Fds::kNone, false},     // 23
    {"GET_CONFIG", Kind::kConfig, Fds::kNone, true},                // 24
    {"SET_CONFIG", Kind::kConfig, Fds::kNone, false},               // 25
    {"CREATE_CRYPTO_SESSION", Kind::kSkipped, Fds::kNone, true},    // 26
    {"CLOSE_CRYPTO_SESSION", Kind::kU64, Fds::kNone, false},        // 27
    {"POSTCOPY_ADVISE", Kind::kNone, Fds::kNone, true},             // 28 reply: an fd
    {"POSTCOPY_LISTEN", Kind::kNone, Fds::kNone, false},            // 29
    {"POSTCOPY_END", Kind::kNone, Fds::kNone, true},                // 30 reply: u64 status
    {"GET_INFLIGHT_FD", Kind::kSkipped, Fds::kNone, true},          // 31
    {"SET_INFLIGHT_FD", Kind::kSkipped, Fds::kOne, false},          // 32
    {"GPU_SET_SOCKET", Kind::kNone, Fds::kOne, false},              // 33
    {"RESET_DEVICE", Kind::kNone, Fds::kNone, false},               // 34
    {"VRING_KICK", Kind::kVringState, Fds::kNone, false},           // 35
    {"GET_MAX_MEM_SLOTS", Kind::kNone, Fds::kNone, true},           // 36
    {"ADD_MEM_REG", Kind::kSingleRegion, Fds::kOne, false},         // 37
    {"REM_MEM_REG", Kind::kSingleRegion, Fds::kNoneOrOne, false},   // 38
    {"SET_STATUS", Kind::kU64, Fds::kNone, false},                  // 39
    {"GET_STATUS", Kind::kNone, Fds::kNone, true},                  // 40
};

const Rule& rule_for(uint32_t request) {
  if (request >= std::size(kRules)) return kUnknown;
  return kRules[request];
}

template <typename T>
T load(std::span<const uint8_t> bytes, size_t offset = 0) {
  T value;
  std::memcpy(&value, bytes.data() + offset, sizeof(T));
  return value;
}

// Whether [start, start + size) runs past 2^64; size > 0.
bool wraps(uint64_t start, uint64_t size) {
  return size - 1 > std::numeric_limits<uint64_t>::max() - start;
}

// A region is usable only if it is not empty and none of its ranges wraps
// around 2^64 (the last byte start + size - 1 must be representable).
bool check_region(const MemoryRegion& r, std::string* error) {
  if (r.memory_size == 0) {
    *error = fmt::format("empty memory region at guest address {:#x}", r.guest_phys_addr);
    return false;
  }
  if (wraps(r.guest_phys_addr, r.memory_size) || wraps(r.userspace_addr, r.memory_size) ||
      wraps(r.mmap_offset, r.memory_size)) {
    *error = fmt::format(
        "memory region wraps around the address space (guest {:#x} user {:#x} offset {:#x} "
        "size {:#x})",
        r.guest_phys_addr, r.userspace_addr, r.mmap_offset, r.memory_size);
    return false;
  }
  return true;
}

bool expect_size(std::span<const uint8_t> payload, size_t want, std::string* error) {
  if (payload.size() == want) return true;
  *error = fmt::format("payload of {} bytes, expected {}", payload.size(), want);
  return false;
}

bool decode(const Rule& rule, std::span<const uint8_t> payload, Message* out, std::string* error) {
  switch (rule.kind) {
    case Kind::kNone:
      if (!expect_size(payload, 0, error)) return false;
      out->payload = NoPayload{};
      return true;
    case Kind::kU64:
      if (!expect_size(payload, sizeof(uint64_t), error)) return false;
      out->payload = U64Payload{load<uint64_t>(payload)};
      return true;
    case Kind::kVringState:
      if (!expect_size(payload, sizeof(VringState), error)) return false;
      out->payload = load<VringState>(payload);
      return true;
    case Kind::kVringAddr:
      if (!expect_size(payload, sizeof(VringAddr), error)) return false;
      out->payload = load<VringAddr>(payload);
      return true;
    case Kind::kVringFile: {
      if (!expect_size(payload, sizeof(uint64_t), error)) return false;
      const uint64_t value = load<uint64_t>(payload);
      if (value & ~(kVringIndexMask | kVringNoFdMask)) {
        *error = fmt::format("reserved bits set in {:#x}", value);
        return false;
      }
      out->payload = VringFilePayload{static_cast<uint32_t>(value & kVringIndexMask),
                                      (value & kVringNoFdMask) != 0};
      return true;
    }
    case Kind::kMemoryTable: {
      // u32 nregions, u32 padding, then nregions regions: QEMU sends exactly
      // that many (hw/virtio/vhost-user.c vhost_user_set_mem_table).
      constexpr size_t kHead = 2 * sizeof(uint32_t);
      if (payload.size() < kHead) {
        *error = fmt::format("payload of {} bytes, shorter than the memory table header",
                             payload.size());
        return false;
      }
      const uint32_t nregions = load<uint32_t>(payload);
      if (nregions > kMaxMemRegions) {
        *error = fmt::format("{} memory regions, at most {}", nregions, kMaxMemRegions);
        return false;
      }
      if (!expect_size(payload, kHead + size_t{nregions} * sizeof(MemoryRegion), error)) {
        return false;
      }
      MemoryTablePayload table;
      table.regions.reserve(nregions);
      for (uint32_t i = 0; i < nregions; ++i) {
        const auto r = load<MemoryRegion>(payload, kHead + i * sizeof(MemoryRegion));
        if (!check_region(r, error)) return false;
        table.regions.push_back(r);
      }
      out->payload = std::move(table);
      return true;
    }
    case Kind::kSingleRegion: {
      // u64 padding, then one region.
      if (!expect_size(payload, sizeof(uint64_t) + sizeof(MemoryRegion), error)) return false;
      const auto r = load<MemoryRegion>(payload, sizeof(uint64_t));
      if (!check_region(r, error)) return false;
      out->payload = SingleRegionPayload{r};
      return true;
    }
    case Kind::kLog:
      if (!expect_size(payload, sizeof(LogArea), error)) return false;
      out->payload = load<LogArea>(payload);
      return true;
    case Kind::kConfig: {
      if (payload.size() < sizeof(ConfigHeader)) {
        *error = fmt::format("payload of {} bytes, shorter than the config header", payload.size());
        return false;
      }
      ConfigPayload config;
      config.header = load<ConfigHeader>(payload);
      if (config.header.size > kMaxConfigSize) {
        *error = fmt::format("config size {}, at most {}", config.header.size, kMaxConfigSize);
        return false;
      }
      if (!expect_size(payload, sizeof(ConfigHeader) + config.header.size, error)) return false;
      config.data.assign(payload.begin() + sizeof(ConfigHeader), payload.end());
      out->payload = std::move(config);
      return true;
    }
    case Kind::kSkipped:
      out->payload = UnknownPayload{};
      return true;
  }
  *error = "no payload type";
  return false;
}

bool check_fds(const Rule& rule, const Message& message, size_t num_fds, std::string* error) {
  size_t min = 0;
  size_t max = 0;
  switch (rule.fds) {
    case Fds::kNone:
      break;
    case Fds::kOne:
      min = max = 1;
      break;
    case Fds::kNoneOrOne:
      max = 1;
      break;
    case Fds::kPerRegion:
      min = max = std::get<MemoryTablePayload>(message.payload).regions.size();
      break;
    case Fds::kUnlessNoFd:
      min = max = std::get<VringFilePayload>(message.payload).no_fd ? 0 : 1;
      break;
    case Fds::kAny:
      max = kMaxFds;
      break;
  }
  if (num_fds >= min && num_fds <= max) return true;
  if (min == max) {
    *error = fmt::format("{} fds, expected {}", num_fds, min);
  } else {
    *error = fmt::format("{} fds, expected {} to {}", num_fds, min, max);
  }
  return false;
}

}  // namespace

std::string_view request_name(uint32_t request) { return rule_for(request).name; }

bool has_reply_body(uint32_t request) { return rule_for(request).reply_body; }

bool validate_header(const Header& header, std::string* error) {
  if ((header.flags & kVersionMask) != kVersion) {
    *error = fmt::format("protocol version {}, expected {}", header.flags & kVersionMask, kVersion);
    return false;
  }
  if (header.flags & kFlagReply) {
    *error = "reply flag set on a request";
    return false;
  }
  if (header.flags & ~(kVersionMask | kFlagReply | kFlagNeedReply)) {
    *error = fmt::format("reserved flag bits set in {:#x}", header.flags);
    return false;
  }
  if (header.size > kMaxPayloadSize) {
    *error = fmt::format("payload size {}, at most {}", header.size, kMaxPayloadSize);
    return false;
  }
  return true;
}

bool parse_message(const Header& header, std::span<const uint8_t> payload, size_t num_fds,
                   Message* out, std::string* error) {
  if (payload.size() != header.size) {
    *error = fmt::format("payload of {} bytes, header says {}", payload.size(), header.size);
    return false;
  }
  if (num_fds > kMaxFds) {
    *error = fmt::format("{} fds, at most {}", num_fds, kMaxFds);
    return false;
  }
  const Rule& rule = rule_for(header.request);
  out->request = header.request;
  out->flags = header.flags;
  return decode(rule, payload, out, error) && check_fds(rule, *out, num_fds, error);
}

std::vector<uint8_t> encode_reply(uint32_t request, std::span<const uint8_t> payload) {
  const Header header{request, kVersion | kFlagReply, static_cast<uint32_t>(payload.size())};
  std::vector<uint8_t> bytes(kHeaderSize + payload.size());
  std::memcpy(bytes.data(), &header, kHeaderSize);
  if (!payload.empty()) std::memcpy(bytes.data() + kHeaderSize, payload.data(), payload.size());
  return bytes;
}

std::vector<uint8_t> encode_reply_u64(uint32_t request, uint64_t value) {
  uint8_t bytes[sizeof(value)];
  std::memcpy(bytes, &value, sizeof(value));
  return encode_reply(request, bytes);
}

std::vector<uint8_t> encode_reply_vring_state(uint32_t request, const VringState& state) {
  uint8_t bytes[sizeof(state)];
  std::memcpy(bytes, &state, sizeof(state));
  return encode_reply(request, bytes);
}

}  // namespace dpfs::vhost_user
