// libFuzzer target: what a server's reply payload does to the remote
// backend on the device (src/remote/remote_backend.h, decode_reply). The
// wire layer has checked the frame and the FUSE header's length and unique
// (remote_wire_fuzz covers that); everything after is the server's to
// choose: the errno, the payload's size, every field, the dirent records.
//
// Input: the request's opcode (an index), READDIRPLUS or not, the bytes it
// asked for (READ) or sent (WRITE), the room the tenant's listing has (in
// records), the FUSE header's error, then the payload.
//
// Findings: a crash or sanitizer report; a request answered other than
// exactly once (the typed reply, or EIO when malformed); a READ answered
// with more bytes than asked, a WRITE with more written than sent; a
// listing entry whose name is empty, longer than NAME_MAX or holds '/' or
// NUL; a lookup to forget for node id 0 or outside READDIRPLUS.
#include <linux/fuse.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fuzz_input.h"
#include "remote/remote_backend.h"

namespace {

using namespace dpfs;
using dpfs::fuzz::Input;

void require(bool ok) {
  if (!ok) std::abort();
}

void require_name(std::string_view name) {
  require(!name.empty() && name.size() <= NAME_MAX);
  require(name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos);
}

// The tenant's end of one request: counts its answers and checks each.
class Target final : public ReplyTarget {
 public:
  uint32_t asked = 0;
  bool plus = false;
  unsigned room = 0;  // listing records that still fit
  int answers = 0;

  uint64_t request_id() const override { return 1; }
  const char* operation() const override { return "FUZZ"; }
  void answer_error(int e) override {
    require(e > 0 && e < 4096);
    ++answers;
  }
  void answer_status() override { ++answers; }
  void answer_entry(const Entry&) override { ++answers; }
  void answer_attr(const struct stat&, double timeout) override {
    require(timeout >= 0);
    ++answers;
  }
  void answer_open(uint64_t, uint32_t, int) override { ++answers; }
  void answer_create(const Entry&, uint64_t, uint32_t, int) override { ++answers; }
  void answer_read(size_t bytes) override {
    require(bytes <= asked);
    ++answers;
  }
  void answer_write(size_t bytes) override {
    require(bytes <= asked);
    ++answers;
  }
  void answer_readlink(std::string_view target) override {
    require(!target.empty() && target.size() <= PATH_MAX);
    ++answers;
  }
  void answer_xattr(std::span<const std::byte> value) override {
    require(value.size() <= 65536);
    ++answers;
  }
  void answer_statfs(const struct statvfs&) override { ++answers; }
  void answer_lock(const Lock&) override { ++answers; }
  void answer_lseek(uint64_t) override { ++answers; }
  bool dir_plus() const override { return plus; }
  size_t dir_size() const override { return 4096; }
  bool dir_add(std::string_view name, uint64_t, uint32_t, uint64_t) override {
    require(!plus);
    require_name(name);
    if (room == 0) return false;
    --room;
    return true;
  }
  bool dir_add_plus(std::string_view name, const Entry&, uint64_t) override {
    require(plus);
    require_name(name);
    if (room == 0) return false;
    --room;
    return true;
  }
  void dir_done() override { ++answers; }
};

constexpr uint32_t kOpcodes[] = {
    FUSE_LOOKUP,   FUSE_MKDIR,     FUSE_GETATTR,         FUSE_SETATTR, FUSE_OPEN,
    FUSE_OPENDIR,  FUSE_CREATE,    FUSE_TMPFILE,         FUSE_READ,    FUSE_WRITE,
    FUSE_READLINK, FUSE_GETXATTR,  FUSE_STATFS,          FUSE_GETLK,   FUSE_LSEEK,
    FUSE_READDIR,  FUSE_UNLINK,    FUSE_SETLKW,          FUSE_FLUSH,   FUSE_RELEASE,
    FUSE_RENAME2,  FUSE_LISTXATTR, FUSE_COPY_FILE_RANGE,
};

// The typed reply the remote backend hands the server's answer to, for
// each opcode (as its operations do).
remote::TypedReply typed_for(uint32_t opcode, Target* t) {
  switch (opcode) {
    case FUSE_LOOKUP:
    case FUSE_MKDIR:
      return EntryReply(t);
    case FUSE_GETATTR:
    case FUSE_SETATTR:
      return AttrReply(t);
    case FUSE_OPEN:
    case FUSE_OPENDIR:
      return OpenReply(t);
    case FUSE_CREATE:
    case FUSE_TMPFILE:
      return CreateReply(t);
    case FUSE_READ:
      return ReadReply(t);
    case FUSE_WRITE:
    case FUSE_COPY_FILE_RANGE:
      return WriteReply(t);
    case FUSE_READLINK:
      return ReadlinkReply(t);
    case FUSE_GETXATTR:
    case FUSE_LISTXATTR:
      return XattrReply(t);
    case FUSE_STATFS:
      return StatfsReply(t);
    case FUSE_GETLK:
      return LockReply(t);
    case FUSE_LSEEK:
      return LseekReply(t);
    case FUSE_READDIR:
      return DirReply(t);
    default:
      return StatusReply(t);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Input in{data, size};
  remote::ReplyShape shape;
  shape.opcode = kOpcodes[in.byte() % std::size(kOpcodes)];
  const uint8_t flags = in.byte();
  shape.plus = shape.opcode == FUSE_READDIR && (flags & 1);
  if (shape.plus) shape.opcode = FUSE_READDIRPLUS;
  shape.asked = in.u16();
  fuse_out_header h{};
  h.error = int32_t(in.u32());
  if (flags & 2) h.error = 0;  // most replies a server sends are successes
  const std::vector<uint8_t> bytes = in.bytes(in.n);
  const std::span<const char> payload(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  // A READ's data lands in the tenant's buffer; only its length is here.
  const size_t length = payload.size();
  const std::span<const char> ours = shape.opcode == FUSE_READ ? std::span<const char>() : payload;

  Target target;
  target.asked = shape.asked;
  target.plus = shape.plus;
  target.room = flags >> 2;
  std::vector<uint64_t> unlisted;
  {
    remote::TypedReply reply =
        typed_for(shape.opcode == FUSE_READDIRPLUS ? FUSE_READDIR : shape.opcode, &target);
    if (remote::decode_reply(shape, h, length, ours, reply, &unlisted) != nullptr) {
      require(target.answers == 0);
    }
    // An unanswered reply answers EIO as it goes (as the remote backend's
    // own malformed path does).
  }
  require(target.answers == 1);
  for (uint64_t ino : unlisted) require(shape.plus && ino != 0);
  return 0;
}
