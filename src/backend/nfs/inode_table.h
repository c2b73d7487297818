// The map between the node ids dpfs gives the kernel and NFS file handles.
//
// The node id of a file is its fileid on the server (the inode number in
// the exported directory), so READDIR's d_ino, stat's st_ino and the server
// agree and a file keeps its inode across lookups and dpfs restarts. The
// root (kRootIno) is the export's root handle and is never forgotten.
//
// A server reuses the fileid of a removed file for a new one: then the id
// is given the new handle and its generation is raised, which tells the
// kernel (fuse_stale_inode) that any inode it still caches under that id is
// another file. The lookup counts of both add up in the one node, so the
// kernel's FORGETs of the old inode still balance.
//
// An id that is not in the table (never given out, or forgotten) is
// refused: the caller answers ESTALE.
//
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
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace dpfs::nfs {

using WriteVerifier = std::array<char, 8>;

// A write the server holds only in memory until COMMIT.
struct UnstableWrite {
  uint64_t offset = 0;
  std::string data;
  WriteVerifier verifier{};
};

class InodeTable {
 public:
  explicit InodeTable(std::string root_fh);

  struct Id {
    uint64_t ino;
    uint64_t generation;
  };
  // The node id of `fh`, counting one lookup. `fileid`, `mode` and `gid`
  // are the attributes that came with it.
  Id remember(const std::string& fh, uint64_t fileid, mode_t mode, gid_t gid);
  // The file handle of `ino`; false if `ino` is not a live id of ours.
  bool find(uint64_t ino, std::string* fh) const;
  // The last mode and gid seen for `ino`; false if unknown.
  bool attributes(uint64_t ino, mode_t* mode, gid_t* gid) const;
  void update(uint64_t ino, mode_t mode, gid_t gid);
  // Drops `n` lookups; the id dies at zero unless the file is open.
  void forget(uint64_t ino, uint64_t n);

  // Open handles (the id stays alive while a file is open).
  bool open(uint64_t ino);
  // Drops an open handle. At the last one of a file that was removed while
  // open, returns where it was hidden (see hide()) for the caller to remove.
  struct Hidden {
    std::string dir_fh;
    std::string name;
  };
  std::optional<Hidden> close(uint64_t ino);
  // The id of `fh` if it is open; 0 otherwise.
  uint64_t open_id(const std::string& fh) const;
  // `ino` was removed while open and lives on as `name` in `dir_fh`
  // (the NFS client's silly-rename).
  void hide(uint64_t ino, Hidden where);
  bool hidden(uint64_t ino) const;

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
    uint64_t generation = 0;
    uint64_t lookups = 0;
    uint32_t opens = 0;
    mode_t mode = 0;
    gid_t gid = 0;
    std::vector<UnstableWrite> unstable;
    std::optional<Hidden> hidden;
  };
  void drop_if_unused(uint64_t ino, Node& node);  // REQUIRES: mu_

  mutable std::mutex mu_;
  std::unordered_map<uint64_t, Node> nodes_;
  std::unordered_map<std::string, uint64_t> by_fh_;
  uint64_t unstable_bytes_ = 0;
};

}  // namespace dpfs::nfs
