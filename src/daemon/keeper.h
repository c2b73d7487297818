// What a supervisor keeps of a device process's front-end connection, so
// that a successor can take the connection over when the process dies
// (docs/restart.md): the connected socket itself, the journal of the
// vhost-user requests the device took (with their fds), and what FUSE INIT
// negotiated. The front-end never sees the connection close.
//
// The device process sends records over a SOCK_SEQPACKET socket pair (one
// record a message, fds with it):
//   'C' + the connection's fd    a front-end connected: a new journal
//   'M' + request bytes + fds    a request the device took
//   'I' + fuse::InitState        INIT was negotiated
//   'X'                          the connection ended: nothing to keep
// The supervisor stores them without reading what the front-end chose (the
// request bytes are opaque to it), within bounds: a journal too long makes
// the connection not resumable (one line), never the supervisor's memory
// or descriptors grow without end.
#pragma once

#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "fuse/session.h"
#include "util/unique_fd.h"

namespace dpfs::daemon {

struct Kept {
  struct Request {
    std::vector<uint8_t> bytes;
    std::vector<util::UniqueFd> fds;
  };
  util::UniqueFd connection;
  std::vector<Request> journal;
  std::optional<fuse::InitState> init;
  size_t bytes = 0;  // in journal
  size_t fds = 0;    // in journal
  bool overflow = false;

  bool resumable() const { return connection && !overflow; }
  void clear() { *this = Kept{}; }
};

// Bounds of one device's journal.
inline constexpr size_t kMaxKeptRequests = 4096;
inline constexpr size_t kMaxKeptBytes = 4u << 20;
inline constexpr size_t kMaxKeptFds = 512;

// The supervisor's side: takes every record waiting on `fd` (non-blocking)
// into `kept`. Returns false once the other end is gone (EOF or an error).
// A malformed record is dropped with one line naming `who`.
bool take_records(int fd, Kept& kept, const std::string& who);

// The device process's side. Thread-safe (the control thread journals, a
// worker reports INIT). With fd -1 every call does nothing.
class KeeperLink {
 public:
  explicit KeeperLink(int fd = -1) : fd_(fd) {}
  bool active() const { return fd_ >= 0; }
  void connection(int socket);
  void request(std::span<const uint8_t> bytes, std::vector<util::UniqueFd> fds);
  void init(const fuse::InitState& state);
  void ended();

 private:
  void send(char kind, std::span<const uint8_t> payload, const std::vector<int>& fds);

  std::mutex mu_;
  int fd_;
};

}  // namespace dpfs::daemon
