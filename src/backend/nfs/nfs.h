// The NFS backend: dpfs is the NFS client, the tenant mounts virtio-fs (or a
// FUSE mount) and needs no NFS client, no route to the storage network and
// no configuration of its own.
//
// NFSv3 (RFC 1813) or NFSv4.0 (RFC 7530) over TCP through libnfs's
// asynchronous raw RPC API, which hands over file handles and attributes
// directly. What is said on the wire is a Protocol's (Nfs3, Nfs4); this
// class keeps what does not depend on the version. One FUSE request is one
// RPC or COMPOUND (READ and WRITE larger than the server's limits are split
// and the pieces sent together). Connections (Connection) each own a libnfs
// context. Each transport worker adopts one and drives it from its own
// event loop (attach_worker): a request, its RPCs and its reply stay on that
// worker. Connections no worker took run a loop thread of their own and
// serve threads without one (metadata to the first, READs and WRITEs to
// each in turn).
//
// Inodes: NFS file handles are mapped to dpfs node ids (InodeTable), stable
// while the kernel holds a lookup and never reused; st_ino is the server's
// fileid, so a file shows the inode number it has on the server.
//
// Credentials: RPCs go out as root (AUTH_SYS 0/0; the export must not
// squash root); permissions are checked by the kernel (default_permissions)
// and what a tenant creates is given its uid and gid (the directory's group
// in a set-group-ID directory) explicitly.
//
// Durability: WRITEs are UNSTABLE; what the server acknowledged is kept
// until a COMMIT (on fsync, flush and release) and sent again FILE_SYNC when
// the COMMIT's write verifier differs from the WRITE's (the server restarted
// and may have lost it: RFC 1813 §3.3.7). Past max_unstable bytes kept,
// WRITEs go FILE_SYNC.
//
// Set-id bits: FUSE_HANDLE_KILLPRIV_V2 is negotiated and the bits dropped
// here (a SETATTR of the mode) on a WRITE or O_TRUNC open by a caller
// without CAP_FSETID: the server, writing as root, would keep them.
//
// Not supported (NFSv3 has no such operations, or they need NLM): extended
// attributes (ENOSYS, the kernel stops asking), POSIX and flock locks (the
// kernel keeps them locally: not shared with other NFS clients), fallocate,
// SEEK_DATA/SEEK_HOLE, copy_file_range (the kernel falls back to copying),
// RENAME_NOREPLACE/EXCHANGE (EINVAL, as Linux's NFS client answers), O_TMPFILE.
// A file removed (or replaced by a rename) while open is renamed to a hidden
// name and removed at its last close, as NFS clients do (silly-rename); a
// directory removed while open answers ESTALE, as with any NFS client.
//
// Safe for concurrent use by any number of workers.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/nfs/connection.h"
#include "backend/nfs/inode_table.h"
#include "backend/nfs/nfs3.h"
#include "backend/nfs/protocol.h"

namespace dpfs {

struct NfsOptions {
  nfs::NfsUrl url;
  unsigned connections = 1;
  std::chrono::milliseconds timeout{30000};  // an RPC unanswered this long fails ETIMEDOUT
  uint32_t rsize = 1u << 20;                 // caps on the server's rtmax and wtmax
  uint32_t wsize = 1u << 20;
  uint64_t max_unstable = 64ull << 20;  // bytes of uncommitted writes kept for a resend
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
};

class NfsBackend final : public Backend {
 public:
  // Connects and mounts (blocking: start-up only). Throws std::runtime_error
  // or std::invalid_argument with one line for the operator.
  explicit NfsBackend(NfsOptions options);
  ~NfsBackend() override;

  Capabilities capabilities() const override;
  // A connection for this worker to drive on its own event loop, while one
  // is free; null (the worker's Calls go to the others) when all are taken.
  std::unique_ptr<WorkerHook> attach_worker() override;
  std::vector<std::string> stats() const override;

  void lookup(const Context& ctx, uint64_t parent, std::string_view name,
              EntryReply reply) override;
  void forget(uint64_t ino, uint64_t nlookup) override;
  void getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
               AttrReply reply) override;
  void setattr(const Context& ctx, uint64_t ino, const SetAttr& attr, AttrReply reply) override;
  void readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply) override;
  void symlink(const Context& ctx, uint64_t parent, std::string_view name, std::string_view target,
               EntryReply reply) override;
  void mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t rdev, uint32_t umask, EntryReply reply) override;
  void mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
             uint32_t umask, EntryReply reply) override;
  void unlink(const Context& ctx, uint64_t parent, std::string_view name,
              StatusReply reply) override;
  void rmdir(const Context& ctx, uint64_t parent, std::string_view name,
             StatusReply reply) override;
  void rename(const Context& ctx, uint64_t parent, std::string_view name, uint64_t new_parent,
              std::string_view new_name, uint32_t flags, StatusReply reply) override;
  void link(const Context& ctx, uint64_t ino, uint64_t new_parent, std::string_view new_name,
            EntryReply reply) override;
  void open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t size,
            std::span<const iovec> dst, ReadReply reply) override;
  void write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
             std::span<const iovec> src, uint32_t write_flags, WriteReply reply) override;
  void statfs(const Context& ctx, uint64_t ino, StatfsReply reply) override;
  void release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags, uint64_t lock_owner,
               ReleaseFlock flock, StatusReply reply) override;
  void fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
             StatusReply reply) override;
  void flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
             StatusReply reply) override;
  void opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
               DirReply reply) override;
  void fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                StatusReply reply) override;
  void access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) override;
  void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t umask, uint32_t flags, CreateReply reply) override;
  void syncfs(const Context& ctx, uint64_t ino, StatusReply reply) override;

 private:
  // The connection a request goes to: the one the calling thread drives
  // (a worker that adopted one, and every completion, which runs on the
  // connection's driver: a request's RPCs stay on one connection, with no
  // hand-off between threads). Other threads send metadata to the first
  // connection and READs and WRITEs to each in turn.
  nfs::Connection& connection_for(uint64_t) {
    nfs::Connection* mine = driven_here();
    return mine != nullptr ? *mine : *connections_.front();
  }
  nfs::Connection& next_connection() {
    if (nfs::Connection* mine = driven_here()) return *mine;
    return *connections_[next_connection_.fetch_add(1, std::memory_order_relaxed) %
                         connections_.size()];
  }
  nfs::Connection* driven_here() const {
    nfs::Connection* conn = nfs::Connection::driven_here();
    return conn != nullptr && conn->owner() == this ? conn : nullptr;
  }
  // The file handle of `ino`, or false after answering ESTALE on `reply`.
  bool handle(uint64_t ino, std::string* fh, Reply& reply);
  // An Entry for a file the server just named (one lookup counted).
  Entry make_entry(const nfs::Node& node);
  // Creates `name` in `parent` as `spec` says, owned by the caller; then
  // then(error, entry).
  void make_node(const Context& ctx, uint64_t parent, std::string_view name, nfs::NewNode spec,
                 nfs::Then<int, Entry> then);
  // Adds to `attr` the mode change that drops `ino`'s set-id bits
  // (FUSE_HANDLE_KILLPRIV_V2); false if there are none to drop.
  bool kill_suid_attr(uint64_t ino, SetAttr* attr);
  void write_pieces(uint64_t ino, const std::string& fh, uint64_t offset,
                    std::vector<std::shared_ptr<const std::string>> pieces, WriteReply reply);
  // COMMITs what `ino` has written UNSTABLE and sends again what the server
  // may have lost; then `then(error)`.
  void commit(uint64_t ino, nfs::Then<int> then);
  void resend(uint64_t ino, const std::string& fh, std::vector<nfs::UnstableWrite> writes,
              nfs::Then<int> then);
  // After a COMMIT failed at the last close: the writes are dropped, and
  // the operator told (see release()).
  void drop_uncommitted(uint64_t ino, int err);
  // Before a name is removed (unlink) or replaced (rename, `replacing`):
  // if it names a file that is open, or, for a rename, one the kernel still
  // holds a lookup on, the file lives on under a hidden name (unlink: moved
  // there; rename: linked there first, so the rename stays atomic), removed
  // once it is neither open nor held (as NFS clients' silly-rename).
  // then(error, hidden, doomed): `hidden`: an unlink's name is gone already;
  // `doomed` is the handle of the file about to go (opens of it wait), to be
  // passed to undoom() once the removal or rename is answered.
  void hide_if_open(uint64_t parent, const std::string& dir, std::string_view name, bool replacing,
                    nfs::Then<int, bool, std::string> then);
  void remove(uint64_t parent, const std::string& dir, const std::string& name, bool directory,
              StatusReply reply, std::string doomed);
  void undoom(const std::string& fh);
  void open_checked(uint64_t ino, const std::string& fh, uint32_t flags, bool kill_suidgid,
                    std::shared_ptr<OpenReply> reply);
  void reply_attr(uint64_t ino, struct stat st, AttrReply reply);
  // Drops an open handle of `ino`; at the last one of a hidden file,
  // removes it from the server. Then then().
  void close_handle(uint64_t ino, uint64_t handle, nfs::Then<> then);

  const NfsOptions options_;
  std::vector<std::unique_ptr<nfs::Connection>> connections_;
  std::unique_ptr<nfs::Protocol> protocol_;
  std::unique_ptr<nfs::InodeTable> inodes_;
  uint32_t rsize_ = 0;
  uint32_t wsize_ = 0;
  std::atomic<uint64_t> next_connection_{0};
  std::atomic<uint64_t> next_fh_{1};  // directory handles, suffixes of hidden names
};

}  // namespace dpfs
