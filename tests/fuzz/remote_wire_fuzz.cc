// libFuzzer target: what a peer of the remote transport can send, in both
// directions, through the decoding both ends do (src/remote/wire.h). The
// first byte picks the direction:
//
//  - to a server: HELLO, AUTH, then REQUEST frames, judged as
//    remote::Server's reader judges them; the requests it accepts go, as it
//    sends them, to a FuseSession over memfs with reply buffers of the
//    frame's reply_capacity (capped at the session's largest reply), with
//    the session's SessionTable fencing off node ids and handles the
//    session was not given, cutting FORGETs and counting replies;
//  - to a device: requests in flight (ids, FUSE uniques, opcodes, reply
//    buffers split into several iovecs) made from the input, then
//    CHALLENGE, WELCOME and REPLY frames, judged as remote::Forwarder judges
//    them, with each reply read into its request's buffers.
//
// Each frame is a control byte, a 24-byte header and its payload. The
// control byte can mend the header (magic, version, the type expected
// next) so that the fuzzer gets past the handshake; unmended, the header
// is as the input says. The stream ends where a real end would close the
// connection.
//
// Findings: a crash or sanitizer report; a frame accepted against the
// format's rules (the wrong type for the stage, a payload past its limit);
// a reply to the tenant longer than reply_capacity; a reply taken as valid
// whose FUSE header disagrees with its frame or request; log text with a
// byte that is not printable; a request let through that names a node id
// the session does not hold.
#include <linux/fuse.h>
#include <spdlog/spdlog.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "backend/memfs/memfs.h"
#include "fuse/request.h"
#include "fuse/session.h"
#include "fuzz_input.h"
#include "remote/session_table.h"
#include "remote/wire.h"
#include "util/iov.h"

namespace {

using dpfs::fuzz::Input;
using namespace dpfs::remote;

void require(bool ok) {
  if (!ok) std::abort();
}

FrameType type_at(Stage stage) {
  switch (stage) {
    case Stage::kHello:
      return FrameType::kHello;
    case Stage::kAuth:
      return FrameType::kAuth;
    case Stage::kRequests:
      return FrameType::kRequest;
    case Stage::kChallenge:
      return FrameType::kChallenge;
    case Stage::kWelcome:
      return FrameType::kWelcome;
    case Stage::kReplies:
      break;
  }
  return FrameType::kReply;
}

// The next frame's header, mended as its control byte says; nullopt at the
// end of the input.
std::optional<FrameHeader> next_header(Input& in, Stage stage) {
  const uint8_t control = in.byte();
  const auto bytes = in.take(sizeof(FrameHeader));
  if (!bytes) return std::nullopt;
  FrameHeader h = decode_header(*bytes);
  if (control & 1) {
    h.magic = kMagic;
    h.version = kVersion;
  }
  if (control & 2) h.type = uint8_t(type_at(stage));
  if (control & 4) h.length %= 512;
  return h;
}

// Whatever check_frame() accepts keeps the format's rules.
void check_accepted(const FrameHeader& h, Stage stage, uint32_t max_request) {
  require(h.magic == kMagic && h.version == kVersion && h.length <= kMaxPayload);
  const bool device =
      stage == Stage::kChallenge || stage == Stage::kWelcome || stage == Stage::kReplies;
  if (h.type == uint8_t(FrameType::kError)) {
    require(device && h.length <= kMaxErrorText);
    return;
  }
  require(h.type == uint8_t(type_at(stage)));
  if (stage == Stage::kRequests) require(h.length <= max_request);
}

void require_printable(const std::string& text) {
  require(text.size() <= kMaxErrorText);
  for (const char c : text) require(c >= 0x20 && c < 0x7f);
}

// --- Frames to a server -------------------------------------------------------

// A request of one session, as the server's: what its typed reply gives out
// goes into the session's table when it completes.
class ServerRequest final : public dpfs::remote::SessionRequest {
 public:
  explicit ServerRequest(dpfs::remote::SessionTable& table) : table_(table) {}
  void complete(size_t len) override {
    ++completions;
    reply_len = len;
    require(len <= dpfs::iov_length(out));
    give_to(table_, len);
  }
  int completions = 0;
  size_t reply_len = 0;

 private:
  dpfs::remote::SessionTable& table_;
};

void init_session(dpfs::fuse::FuseSession& session) {
  struct {
    fuse_in_header h;
    fuse_init_in init;
  } msg{};
  msg.h.len = sizeof(msg);
  msg.h.opcode = FUSE_INIT;
  msg.init.major = 7;
  msg.init.minor = FUSE_KERNEL_MINOR_VERSION;
  msg.init.flags = 0xffffffff;
  std::vector<uint8_t> reply(4096);
  iovec in{&msg, sizeof(msg)}, out{reply.data(), reply.size()};
  dpfs::remote::SessionTable table;
  ServerRequest req(table);
  req.in = {&in, 1};
  req.out = {&out, 1};
  session.handle(req);
  require(req.completions == 1);
}

void to_server(Input& in, bool initialized) {
  std::optional<FrameHeader> h = next_header(in, Stage::kHello);
  if (!h || check_frame(*h, Stage::kHello).refused()) return;
  check_accepted(*h, Stage::kHello, 0);
  const auto hello_bytes = in.take(h->length);
  if (!hello_bytes) return;
  HelloPayload hello;
  std::memcpy(&hello, hello_bytes->data(), sizeof(hello));
  if (check_hello(hello).refused()) return;
  require(hello.max_write >= kMinMaxWrite && hello.max_write % kMinMaxWrite == 0);

  h = next_header(in, Stage::kAuth);
  if (!h || check_frame(*h, Stage::kAuth).refused()) return;
  check_accepted(*h, Stage::kAuth, 0);
  if (!in.take(h->length)) return;
  // (The proof cannot be forged here; the server compares it in constant
  // time and closes on a mismatch. Past it, as the server does.)

  dpfs::Memfs memfs(dpfs::MemfsOptions{1 << 22, 256, 1.0, 1.0});
  dpfs::fuse::SessionOptions options;
  options.max_write = std::min<uint32_t>(options.max_write, hello.max_write);
  dpfs::fuse::FuseSession session(memfs, options);
  if (initialized) init_session(session);
  const uint32_t max_request = uint32_t(session.max_request_size());
  const uint32_t max_reply = uint32_t(session.max_reply_size());
  std::vector<uint8_t> reply(max_reply);
  dpfs::remote::SessionTable table;
  for (uint64_t n = 0; n < 64; ++n) {
    h = next_header(in, Stage::kRequests);
    if (!h) break;
    if (Refusal bad = check_frame(*h, Stage::kRequests, max_request); bad.refused()) {
      require_printable(bad.reason.substr(0, kMaxErrorText));
      break;
    }
    check_accepted(*h, Stage::kRequests, max_request);
    const auto payload = in.take(h->length);
    if (!payload) break;
    if (h->id == kInitReplayId && session.initialized()) continue;  // answered by the server
    // The request as the server hands it over: its payload, and reply
    // space of what the device can take.
    std::vector<uint8_t> bytes(payload->begin(), payload->end());
    fuse_in_header fh{};
    if (!bytes.empty()) std::memcpy(&fh, bytes.data(), std::min(bytes.size(), sizeof(fh)));
    const uint32_t opcode = bytes.size() >= sizeof(fh) ? fh.opcode : 0;
    if (opcode == FUSE_DESTROY) continue;  // answered by the server
    // The fences, as the server puts them up: a request naming a node id or
    // handle this session was not given is answered without reaching it.
    if (const int error = table.check(bytes); error != 0) {
      require(error == ESTALE || error == EBADF);
      require(opcode_takes_reply(opcode));  // what takes no reply names nothing checked
      continue;
    }
    // What passes names only the root or a node id the session holds.
    const bool exempt = opcode == FUSE_INIT || opcode == FUSE_INTERRUPT ||
                        opcode == FUSE_NOTIFY_REPLY || opcode == FUSE_FORGET ||
                        opcode == FUSE_BATCH_FORGET;
    if (bytes.size() >= sizeof(fh) && fh.len >= sizeof(fh) && !exempt) {
      require(fh.nodeid == dpfs::kRootIno || table.held(fh.nodeid) > 0);
    }
    if (opcode == FUSE_FORGET || opcode == FUSE_BATCH_FORGET) {
      const size_t held = table.inodes();
      table.on_forget(bytes);
      require(table.inodes() <= held);  // a FORGET never adds
    }
    if (opcode == FUSE_RELEASE || opcode == FUSE_RELEASEDIR) {
      const size_t open = table.handles();
      table.on_release(bytes);
      require(table.handles() <= open);  // a RELEASE never adds
    }
    iovec in_iov{bytes.data(), bytes.size()};
    iovec out_iov{reply.data(), std::min(h->reply_capacity, max_reply)};
    ServerRequest req(table);
    req.in = {&in_iov, 1};
    req.out = {&out_iov, 1};
    session.handle(req);
    if (req.completions == 0) {
      // Only a SETLKW waiting for a lock may stay pending.
      require(fh.opcode == FUSE_SETLKW);
      memfs.interrupt(fh.unique);
    }
    require(req.completions == 1);
  }
  // The session's end, as the server ends it: what it holds goes back.
  for (const auto& [ino, n] : table.take_all()) memfs.forget(ino, n);
}

// --- Frames to a device -------------------------------------------------------

struct InFlight {
  uint64_t unique;
  uint32_t opcode;
  std::vector<uint8_t> buffer;
  std::vector<iovec> out;  // `buffer` in up to three pieces
  bool answered = false;
};

constexpr uint32_t kOpcodes[] = {FUSE_GETATTR, FUSE_READ,   FUSE_LOOKUP,       FUSE_INIT,
                                 FUSE_FORGET,  FUSE_WRITE,  FUSE_BATCH_FORGET, FUSE_SETLKW,
                                 FUSE_READDIR, FUSE_STATFS, FUSE_INTERRUPT,    FUSE_OPEN};

std::vector<InFlight> requests_in_flight(Input& in) {
  std::vector<InFlight> table(in.byte() % 8 + 1);
  for (InFlight& r : table) {
    r.unique = in.byte();
    r.opcode = kOpcodes[in.byte() % std::size(kOpcodes)];
    r.buffer.resize(size_t(in.byte()) * 16);
    const size_t a = std::min<size_t>(in.byte(), r.buffer.size());
    const size_t b = std::min<size_t>(a + in.byte(), r.buffer.size());
    r.out = {{r.buffer.data(), a},
             {r.buffer.data() + a, b - a},
             {r.buffer.data() + b, r.buffer.size() - b}};
  }
  return table;
}

// An ERROR frame: its text for the log, then the end.
void error_frame(Input& in, const FrameHeader& h) {
  if (const auto text = in.take(h.length)) require_printable(error_text(*text));
}

void to_device(Input& in) {
  std::vector<InFlight> table = requests_in_flight(in);
  for (Stage stage : {Stage::kChallenge, Stage::kWelcome}) {
    const std::optional<FrameHeader> h = next_header(in, stage);
    if (!h || check_frame(*h, stage).refused()) return;
    check_accepted(*h, stage, 0);
    if (h->type == uint8_t(FrameType::kError)) return error_frame(in, *h);
    const auto payload = in.take(h->length);
    if (!payload) return;
    if (stage == Stage::kWelcome) {
      WelcomePayload welcome;
      std::memcpy(&welcome, payload->data(), sizeof(welcome));
      if (check_welcome(welcome).refused()) return;
    }
  }
  for (;;) {
    const std::optional<FrameHeader> h = next_header(in, Stage::kReplies);
    if (!h) return;
    if (Refusal bad = check_frame(*h, Stage::kReplies); bad.refused()) {
      require_printable(bad.reason.substr(0, kMaxErrorText));
      return;
    }
    check_accepted(*h, Stage::kReplies, 0);
    if (h->type == uint8_t(FrameType::kError)) return error_frame(in, *h);
    // Frame ids are 1..n here; any other is unknown and ends the link.
    if (h->id == 0 || h->id > table.size() || table[h->id - 1].answered) return;
    InFlight& r = table[h->id - 1];
    if (check_reply_fits(*h, r.buffer.size()).refused()) return;
    const auto payload = in.take(h->length);
    if (!payload) return;
    // As readv_full() reads it: straight into the request's buffers.
    size_t at = 0;
    for (const iovec& v : r.out) {
      const size_t take = std::min(v.iov_len, payload->size() - at);
      if (take == 0) continue;  // an empty piece may have no address at all
      std::memcpy(v.iov_base, payload->data() + at, take);
      at += take;
    }
    r.answered = true;
    const ReplyCheck verdict = check_reply(r.out, h->length, r.unique, r.opcode);
    if (verdict == ReplyCheck::kMalformed) return;
    if (verdict == ReplyCheck::kEmpty) {
      require(h->length == 0 && opcode_takes_reply(r.opcode));
      continue;
    }
    if (h->length == 0) {
      require(!opcode_takes_reply(r.opcode));
      continue;
    }
    fuse_out_header out;
    require(dpfs::iov_copy_out(r.out, &out, sizeof(out)) == sizeof(out));
    require(out.len == h->length && out.unique == r.unique);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Input in{data, size};
  const uint8_t mode = in.byte();
  if (mode & 1) {
    to_device(in);
  } else {
    to_server(in, mode & 2);
  }
  return 0;
}
