// The map between the node ids dpfs gives the kernel and NFS file handles.
//
// A file handle seen for the first time (in a LOOKUP, a creation or a
// READDIRPLUS answer) gets a new node id; the same handle maps to the same
// id while the kernel holds a lookup on it, so a file keeps its inode across
// lookups. Ids are never reused (a 64-bit counter, generation 0): an id the
// kernel still holds for a file that was removed and whose fileid the
// server gave to a new file keeps naming the old handle, and answers
// ESTALE, never the new file. (st_ino is the server's fileid.) The root
// (kRootIno) is the export's root handle and is never forgotten. An id not
// in the table (never given out, or forgotten) is refused: ESTALE.

// Per node it also keeps what the backend needs between requests: the last
// mode and gid seen (a new file's group in a set-group-ID directory), the
// number of open handles, and the writes the server acknowledged UNSTABLE
// and has not yet committed (to be sent again if its write verifier
// changes: RFC 1813 §3.3.7).
//
// Safe for concurrent use: one mutex; nothing is called under it.
#pragma once

#include <sys/types.h>

#include <array>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/nfs/protocol.h"
#include "util/thread_annotations.h"

namespace dpfs::nfs {

// A write the server holds only in memory until COMMIT.
struct UnstableWrite {
  uint64_t offset = 0;
  std::string data;
  WriteVerifier verifier{};
};

class InodeTable {
 public:
  explicit InodeTable(std::string root_fh);

  // The node id of `fh`, counting one lookup. `mode` and `gid` are the
  // attributes that came with it.
  uint64_t remember(const std::string& fh, mode_t mode, gid_t gid);
  // The file handle of `ino`; false if `ino` is not a live id of ours.
  bool find(uint64_t ino, std::string* fh) const;
  // The last mode and gid seen for `ino`; false if unknown.
  bool attributes(uint64_t ino, mode_t* mode, gid_t* gid) const;
  void update(uint64_t ino, mode_t mode, gid_t gid);
  // Drops `n` lookups; the id dies at zero unless the file is open. At the
  // last lookup of a hidden file that is not open, returns where it was
  // hidden (see hide()) for the caller to remove.
  struct Hidden {
    std::string dir_fh;
    std::string name;
  };
  std::optional<Hidden> forget(uint64_t ino, uint64_t n);

  // Open handles (the id stays alive while a file is open): open() gives
  // out a handle number for `ino` (0 if `ino` is not live); only that number
  // with that id is accepted by has_handle() and close().
  // While the name of the file is being removed or replaced (see doom()),
  // open() keeps `retry` to be run when that is done and returns kWaiting.
  static constexpr uint64_t kWaiting = UINT64_MAX;
  uint64_t open(uint64_t ino, std::function<void()> retry = nullptr);
  bool has_handle(uint64_t ino, uint64_t handle) const;
  // Drops a handle; false if `handle` is not an open handle of `ino`. At the
  // last one of a hidden file the kernel no longer holds a lookup on,
  // *hidden is where it was hidden for the caller to remove.
  bool close(uint64_t ino, uint64_t handle, std::optional<Hidden>* hidden);
  // The id of `fh` if it is open; 0 otherwise.
  uint64_t open_id(const std::string& fh) const;
  // `ino` lost its name but lives on as `name` in `dir_fh` (the NFS
  // client's silly-rename) while it is open or the kernel holds a lookup on
  // it. False if neither is true any more: the caller removes `where` now.
  bool hide(uint64_t ino, Hidden where);
  bool hidden(uint64_t ino) const;

  // A name is about to be removed or replaced and `fh` is the file it names.
  // kOpen: the file is open (its id in *ino): it must live on, hidden.
  // kHeld (only asked with `keep_if_held`): the kernel holds a lookup on it,
  // so an open of it may still come (the kernel resolved a path to it just
  // before a rename replaced it): it should live on, hidden, too.
  // kGoes: opens of it wait until undoom(fh): an open racing the removal
  // must not succeed on the server just before the file goes (its reads
  // would then fail ESTALE); after it, its GETATTR answers ESTALE and the
  // kernel looks the name up again.
  enum class Fate { kGoes, kOpen, kHeld };
  Fate doom(const std::string& fh, bool keep_if_held, uint64_t* ino);
  // The removal is done: the opens that waited, to run again.
  std::vector<std::function<void()>> undoom(const std::string& fh);

  // UNSTABLE writes: recorded as acknowledged, taken out to commit, put
  // back when the commit failed, trimmed at a truncation. The total size
  // recorded is bounded by the caller (see unstable_bytes()).
  void add_unstable(uint64_t ino, UnstableWrite write);
  std::vector<UnstableWrite> take_unstable(uint64_t ino);
  void restore_unstable(uint64_t ino, std::vector<UnstableWrite> writes);
  void truncate_unstable(uint64_t ino, uint64_t size);
  uint64_t unstable_bytes() const;

  size_t size() const;

 private:
  struct Node {
    std::string fh;
    uint64_t lookups = 0;
    uint32_t opens = 0;
    mode_t mode = 0;
    gid_t gid = 0;
    std::vector<UnstableWrite> unstable;
    std::optional<Hidden> hidden;
  };
  void drop_if_unused(uint64_t ino, Node& node) DPFS_REQUIRES(mu_);

  mutable util::Mutex mu_;
  std::unordered_map<uint64_t, Node> nodes_ DPFS_GUARDED_BY(mu_);
  std::unordered_map<std::string, uint64_t> by_fh_ DPFS_GUARDED_BY(mu_);
  std::unordered_map<uint64_t, uint64_t> handles_ DPFS_GUARDED_BY(mu_);  // open handle -> node id
  struct Doomed {
    unsigned count = 0;  // removals in flight
    std::vector<std::function<void()>> waiting;
  };
  std::unordered_map<std::string, Doomed> doomed_ DPFS_GUARDED_BY(mu_);  // by file handle
  uint64_t next_ino_ DPFS_GUARDED_BY(mu_) = kRootIno + 1;
  uint64_t next_handle_ DPFS_GUARDED_BY(mu_) = 1;
  uint64_t unstable_bytes_ DPFS_GUARDED_BY(mu_) = 0;
};

}  // namespace dpfs::nfs
