// The lookups and open handles one remote session holds on the server's
// shared backend.
//
// Every device connected to a server has a FUSE session of its own there,
// and all of them share one backend, whose lookup counts (backend.h) sum
// what every session's kernel holds. A session that ends -- its device
// sends DESTROY, or vanishes for longer than the grace period -- must give
// back exactly its own lookups, and a device must never forget another
// session's. The table counts, per inode, the lookups the session's
// replies gave out (told by the server's requests as the backend answers
// them, typed: gave_lookup), trims each FORGET the device sends to what the
// session holds, and hands the rest back when the session ends. Open handles
// likewise: those its OPEN, OPENDIR, CREATE and TMPFILE replies gave out
// (gave_handle), less those the device RELEASEd, are closed on the backend
// when the session ends (else a device that vanishes with files open would
// keep them -- descriptors, storage of unlinked files -- for the server's
// lifetime).
//
// The same records fence the sessions off from each other: check() lets a
// request name only node ids this session holds (and the root) and file
// handles it opened, so a device that guesses another session's node id or
// handle gets ESTALE or EBADF instead of its files.
//
// Safe for concurrent use.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "fuse/request.h"
#include "util/thread_annotations.h"

namespace dpfs::remote {

class SessionTable {
 public:
  // What a reply the session sent gave out (backend.h): one lookup of
  // `ino` (an Entry; 0, a negative entry, and the root count nothing), an
  // open handle `fh` on `ino`, or the news that the backend does not open
  // (OPEN or OPENDIR answered ENOSYS: the kernel then sends fh 0 without
  // opening, FUSE's no_open).
  void gave_lookup(uint64_t ino);
  void gave_handle(uint64_t ino, uint64_t fh, bool directory);
  void opens_nothing();

  // A RELEASE or RELEASEDIR request from the device (fuse_in_header first):
  // its handle is no longer the session's to close.
  void on_release(std::span<const uint8_t> request);

  struct OpenHandle {
    uint64_t ino = 0;
    uint64_t fh = 0;
    bool directory = false;
  };
  // Empties the open handles: what the session's end must release (a
  // handle given out n times, as a backend without handles gives out 0,
  // n times).
  std::vector<OpenHandle> take_handles();
  size_t handles() const;

  // A FORGET or BATCH_FORGET request from the device (fuse_in_header
  // first), rewritten in place: each count is cut to what the session holds
  // (and taken from the table), so the backend never loses another
  // session's lookups. A request too short for what it claims is left to the
  // session to refuse, with its counts cut to what it does carry.
  void on_forget(std::span<uint8_t> request);

  // Whether the session may send `request` (fuse_in_header first; the very
  // bytes the session will parse): 0, ESTALE if it names a node id the
  // session does not hold (the header's nodeid; LINK's oldnodeid,
  // RENAME/RENAME2's newdir, COPY_FILE_RANGE's nodeid_out), EBADF if it
  // names a file handle the session did not open (the fh of READ, WRITE,
  // RELEASE[DIR], FLUSH, FSYNC[DIR], READDIR[PLUS], GETLK, SETLK[W], LSEEK,
  // FALLOCATE, IOCTL, POLL, SETUPMAPPING, COPY_FILE_RANGE's both, GETATTR
  // with FUSE_GETATTR_FH, SETATTR with FATTR_FH). INIT, DESTROY, INTERRUPT,
  // NOTIFY_REPLY and the FORGETs (cut by on_forget) name nothing to check;
  // a request too short for its arguments is the session's to refuse.
  int check(std::span<const uint8_t> request) const;

  // Empties the table: (inode, lookups) for the backend's forget().
  std::vector<std::pair<uint64_t, uint64_t>> take_all();

  // Lookups held on `ino`; inodes with lookups.
  uint64_t held(uint64_t ino) const;
  size_t inodes() const;

 private:
  void add(uint64_t ino);
  // Removes up to `n` lookups of `ino`; returns how many it removed.
  uint64_t remove(uint64_t ino, uint64_t n);

  struct Open {
    OpenHandle handle;
    uint64_t count = 0;  // times given out, less RELEASEs
  };
  bool holds(uint64_t ino) const DPFS_REQUIRES(mu_);
  bool opened(uint64_t fh) const DPFS_REQUIRES(mu_);

  mutable util::Mutex mu_;
  std::unordered_map<uint64_t, uint64_t> held_ DPFS_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, Open> open_ DPFS_GUARDED_BY(mu_);  // by fh
  // The backend answered OPEN/OPENDIR with ENOSYS: the kernel then sends
  // fh 0 without opening (FUSE's no_open/no_opendir).
  bool no_open_ DPFS_GUARDED_BY(mu_) = false;
};

// A request served for one session: notes what the backend's typed answer
// gives out (backend.h's ReplyTarget, on its way to the FUSE encoder), and
// gives it to the session's table once the reply is complete -- a reply that
// did not fit the device's buffer (answered EIO instead) gives nothing.
class SessionRequest : public fuse::Request {
 protected:
  // Before a request is handled.
  void forget_given();
  // From complete(), before the request is reused.
  void give_to(SessionTable& table, size_t reply_len);

  void answer_entry(const Entry& entry) override;
  void answer_create(const Entry& entry, uint64_t fh, uint32_t open_flags, int host_fd) override;
  void answer_open(uint64_t fh, uint32_t open_flags, int host_fd) override;
  void answer_error(int errno_value) override;
  bool dir_add_plus(std::string_view name, const Entry& entry, uint64_t next_offset) override;

  ~SessionRequest() = default;

 private:
  // Kept across requests: the vector's capacity too.
  std::vector<uint64_t> lookups_given_;
  std::optional<SessionTable::OpenHandle> handle_given_;
  bool opens_nothing_ = false;
};

}  // namespace dpfs::remote
