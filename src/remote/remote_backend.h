// The remote backend: `--backend remote://HOST:PORT`, a Backend like the
// others, whose file system is a dpfs server (remote::Server) elsewhere.
//
// The device runs its own FUSE session over this backend, as over any
// other: the tenant's requests are decoded, checked and dispatched here,
// with this host's wall in front of them. Each typed call is then encoded
// as one FUSE request for the server's session, sent by a Forwarder (its
// links, resends and timeouts), and the server's reply is decoded back into
// the typed Reply. Bulk data is not copied on this side: a WRITE's source
// iovecs go out with writev(2) and a READ's reply is read straight into its
// destination iovecs.
//
// The server's session is negotiated by this backend, not by the tenant:
// capabilities() asks the server (a FUSE INIT of our own, once, and again
// after destroy()) and reports what it granted, so the device offers its
// tenant only what the server's backend can do; its max_write bounds the
// device's.
//
// Node ids and handles are the server's, passed through untouched; the
// server's session checks each one against what it gave this device.
// Everything the server answers is checked here before it reaches the
// session: a reply of the wrong size, an errno out of range, a dirent that
// runs past its buffer answer EIO (and are logged, rate-limited), never
// reach the tenant as they came.
//
// Trust: the tenant's side of a request was checked by the device's
// session; the server is a peer, authenticated by the link (wire.h), whose
// replies are parsed as foreign bytes.
//
// Safe for concurrent use, as backend.h requires.
#pragma once

#include <linux/fuse.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "backend/backend.h"
#include "remote/forwarder.h"
#include "util/rate_limited_log.h"
#include "util/thread_annotations.h"

namespace dpfs::remote {

class RemoteBackend final : public Backend {
 public:
  // Starts the forwarder's links (Forwarder's constructor: throws
  // RemoteError if the server refuses us).
  explicit RemoteBackend(ForwarderOptions options);
  RemoteBackend(const RemoteBackend&) = delete;
  RemoteBackend& operator=(const RemoteBackend&) = delete;
  // Stops the links; what is still in flight is answered EIO.
  ~RemoteBackend() override;

  // Waits (up to the forwarder's timeout) for the server's answer to our
  // INIT if the server's session is not negotiated yet; a server that does
  // not answer leaves the device with the least it can offer (no locks, no
  // writeback cache), logged.
  Capabilities capabilities() const override;
  // DESTROY on the server's session (its backend forgets what this tenant
  // held); the next capabilities() negotiates it again.
  void destroy() override;
  std::vector<std::string> stats() const override;

  const Forwarder::Counters& counters() const { return forwarder_.counters(); }

  void lookup(const Context& ctx, uint64_t parent, std::string_view name,
              EntryReply reply) override;
  void forget(uint64_t ino, uint64_t nlookup) override;
  void symlink(const Context& ctx, uint64_t parent, std::string_view name, std::string_view target,
               EntryReply reply) override;
  void mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, EntryReply reply) override;
  void mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, EntryReply reply) override;
  void link(const Context& ctx, uint64_t ino, uint64_t new_parent, std::string_view new_name,
            EntryReply reply) override;
  void unlink(const Context& ctx, uint64_t parent, std::string_view name,
              StatusReply reply) override;
  void rmdir(const Context& ctx, uint64_t parent, std::string_view name,
             StatusReply reply) override;
  void rename(const Context& ctx, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, StatusReply reply) override;
  void getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
               AttrReply reply) override;
  void setattr(const Context& ctx, uint64_t ino, const SetAttr& attr, AttrReply reply) override;
  void readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply) override;
  void access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) override;
  void statfs(const Context& ctx, uint64_t ino, StatfsReply reply) override;
  void open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t umask, uint32_t flags, CreateReply reply) override;
  void tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask, uint32_t flags,
               CreateReply reply) override;
  void read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
            std::span<const iovec> dst, ReadReply reply) override;
  void write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
             std::span<const iovec> src, uint32_t write_flags, WriteReply reply) override;
  void flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
             StatusReply reply) override;
  void release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags, uint64_t lock_owner,
               ReleaseFlock flock, StatusReply reply) override;
  void fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
             StatusReply reply) override;
  void fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                 uint64_t length, StatusReply reply) override;
  void lseek(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t whence,
             LseekReply reply) override;
  void copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) override;
  void opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
               DirReply reply) override;
  void releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply) override;
  void fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                StatusReply reply) override;
  void setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                std::span<const std::byte> value, uint32_t flags, StatusReply reply) override;
  void getxattr(const Context& ctx, uint64_t ino, std::string_view name, XattrReply reply) override;
  void listxattr(const Context& ctx, uint64_t ino, XattrReply reply) override;
  void removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                   StatusReply reply) override;
  void getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockReply reply) override;
  void setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockWait wait, LockFlavor flavor, StatusReply reply) override;
  void interrupt(uint64_t unique) override;
  void syncfs(const Context& ctx, uint64_t ino, StatusReply reply) override;

  class Call;

 private:
  friend class Call;
  // A Call from the pool (allocated only when all are in flight), begun
  // for `opcode`; it belongs to the forwarder once sent, and comes back to
  // the pool when answered.
  Call* start(uint32_t opcode, uint64_t nodeid, const Context& ctx);
  Call* start(uint32_t opcode, uint64_t nodeid, uint64_t unique);
  std::unique_ptr<Call> take_call();
  void give_back(std::unique_ptr<Call> call);
  // A unique for a request no tenant request names (FORGET, INTERRUPT, INIT).
  uint64_t fresh_unique();
  // Sends INIT or DESTROY and waits for the answer: its errno and, for
  // INIT, the payload.
  int exchange(uint32_t opcode, std::vector<char>* payload);
  // INIT on the server's session, unless it is negotiated already.
  void negotiate();

  // What the server's session granted us at INIT (flags, max_write).
  struct Negotiated {
    bool done = false;
    uint64_t flags = 0;
    uint32_t max_write = 0;
  };
  Negotiated negotiated() const;

  Forwarder forwarder_;
  // The lines a confused or hostile server causes.
  util::RateLimitedLog peer_log_{"remote server"};
  std::mutex negotiate_mu_;  // one INIT or DESTROY at a time
  mutable util::Mutex state_mu_;
  Negotiated negotiated_ DPFS_GUARDED_BY(state_mu_);
  util::Mutex pool_mu_;
  std::vector<std::unique_ptr<Call>> pool_ DPFS_GUARDED_BY(pool_mu_);
  std::atomic<uint64_t> next_unique_{1ull << 63};  // for requests no tenant request names
};

// The typed reply that answers one request sent to the server.
using TypedReply = std::variant<std::monostate, StatusReply, EntryReply, AttrReply, OpenReply,
                                CreateReply, ReadReply, WriteReply, ReadlinkReply, XattrReply,
                                StatfsReply, LockReply, LseekReply, DirReply>;

// What the request asked for, to judge its reply by.
struct ReplyShape {
  uint32_t opcode = 0;
  uint32_t asked = 0;  // READ: bytes asked for; WRITE, COPY_FILE_RANGE: bytes sent
  bool plus = false;   // READDIRPLUS
};

// Decodes the server's reply to a request of `shape` into `reply` and
// answers it: `h` is the reply's FUSE header, `length` the bytes after it,
// `payload` those of them in this side's buffer (all but a READ's data,
// which is in the request's destination). Returns nullptr, or what was
// malformed; then `reply` may hold a partial listing but is unanswered (the
// caller answers EIO). `unlisted`: node ids of READDIRPLUS entries the
// server counted a lookup for that `reply` had no room for (the caller
// forgets them on the server). Exposed for the fuzz target.
const char* decode_reply(const ReplyShape& shape, const fuse_out_header& h, size_t length,
                         std::span<const char> payload, TypedReply& reply,
                         std::vector<uint64_t>* unlisted);

// The records of a READDIR or READDIRPLUS payload, added to `reply` while
// they fit. False, and nothing added, if any is malformed (a name of the
// wrong length or with '/' or NUL, a record that runs past the end).
bool decode_dirents(std::span<const char> payload, bool plus, DirReply& reply,
                    std::vector<uint64_t>* unlisted);

}  // namespace dpfs::remote
