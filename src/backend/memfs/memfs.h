// memfs: a complete POSIX file system in memory, with tmpfs semantics.
//
// Regular files (sparse: page-sized chunks, holes cost nothing), directories,
// symlinks, hard links, device nodes, FIFOs and sockets; nanosecond
// timestamps; xattrs (user., trusted., security.: tmpfs's namespaces; others
// EOPNOTSUPP; trusted.* listed to root only); rename with RENAME_NOREPLACE and
// RENAME_EXCHANGE; fallocate, SEEK_DATA/SEEK_HOLE, copy_file_range; POSIX and
// flock locks, SETLKW answered when the lock is free; O_TMPFILE. Capacity
// (bytes) and inode count are bounded; past them, ENOSPC.
//
// Permission checks are the kernel's (mount with default_permissions);
// access() answers from the mode bits for mounts that ask.
//
// Inode numbers are never reused (a 64-bit counter, generation 0): an ino the
// kernel still names is either alive or answers ESTALE. An inode is freed
// when it has no links, no lookups and no open handles.
//
// Safe for concurrent use by any number of workers. Locking:
//   tree_mu_ (shared_mutex)  the inode table and the namespace: directory
//       entries, nlink, parents. Changed only under exclusive ownership;
//       read under shared ownership.
//   Inode::mu                the rest of an inode: attributes, data, xattrs,
//       lookup count, open handles. Taken only under tree_mu_ shared (under
//       exclusive, nothing else runs), one at a time, except two in
//       copy_file_range, in increasing ino order.
//   LockTable's mutex        byte-range locks; taken last (possibly under an
//       inode's mu), nothing is taken under it.
// Replies are answered after every lock is released (except directory
// entries, which are encoded into the tenant's buffer as they are listed).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <shared_mutex>
#include <string_view>
#include <unordered_map>

#include "backend/backend.h"
#include "backend/lock_table.h"
#include "backend/memfs/file_data.h"
#include "util/thread_annotations.h"

namespace dpfs {

struct MemfsOptions {
  uint64_t capacity_bytes = 1ull << 30;  // file data, xattrs, names and symlink targets
  uint64_t max_inodes = 1u << 20;
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
};

class Memfs final : public Backend {
 public:
  explicit Memfs(MemfsOptions options = {});
  ~Memfs() override;
  Memfs(const Memfs&) = delete;
  Memfs& operator=(const Memfs&) = delete;

  Capabilities capabilities() const override;
  void destroy() override;

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
  void setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                std::span<const std::byte> value, uint32_t flags, StatusReply reply) override;
  void getxattr(const Context& ctx, uint64_t ino, std::string_view name, XattrReply reply) override;
  void listxattr(const Context& ctx, uint64_t ino, XattrReply reply) override;
  void removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                   StatusReply reply) override;
  void flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
             StatusReply reply) override;
  void opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) override;
  void readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
               DirReply reply) override;
  void releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply) override;
  void fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                StatusReply reply) override;
  void getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockReply reply) override;
  void setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner, const Lock& lock,
             LockWait wait, LockFlavor flavor, StatusReply reply) override;
  void access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) override;
  void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t umask, uint32_t flags, CreateReply reply) override;
  void interrupt(uint64_t unique) override;
  void fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                 uint64_t length, StatusReply reply) override;
  void lseek(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset, uint32_t whence,
             LseekReply reply) override;
  void copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) override;
  void syncfs(const Context& ctx, uint64_t ino, StatusReply reply) override;
  void tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask, uint32_t flags,
               CreateReply reply) override;

 private:
  struct Inode;
  struct NewNode;

  Inode* find(uint64_t ino) const DPFS_REQUIRES_SHARED(tree_mu_);
  // The directory `ino`, alive (not removed); nullptr and *error otherwise.
  Inode* find_dir(uint64_t ino, int* error) const DPFS_REQUIRES_SHARED(tree_mu_);
  // The one way to an inode for an operation on it: `fn(Inode*)` runs
  // under tree_mu_ shared and the inode's own lock, and its errno is the
  // answer; ESTALE when `ino` is not a live inode of ours.
  template <typename Fn>
  int with_inode(uint64_t ino, Fn&& fn) DPFS_EXCLUDES(tree_mu_);
  // The same through handle `fh` of the inode: EBADF unless it is one of
  // its handles; `fn(Inode*, uint32_t open_flags)`.
  template <typename Fn>
  int with_handle(uint64_t ino, uint64_t fh, Fn&& fn) DPFS_EXCLUDES(tree_mu_);
  // Creates a named inode in `parent` (mknod, mkdir, symlink, create) or an
  // unnamed one (tmpfile, name empty) and fills *entry (+1 lookup) and, when
  // `fh` is given, opens it.
  int make_node(const Context& ctx, uint64_t parent, std::string_view name, const NewNode& spec,
                Entry* entry, uint64_t* fh) DPFS_REQUIRES(tree_mu_);
  // Removes xattr `name` and returns its space; false if there is none.
  // REQUIRES: node->mu, or tree_mu_ exclusive.
  bool erase_xattr(Inode* node, std::string_view name);
  // Removes security.capability (a write, truncation or chown happened).
  // REQUIRES: node->mu, or tree_mu_ exclusive.
  void drop_capability(Inode* node);
  // O_TRUNC on an open file: empties it and drops its privileges.
  // REQUIRES: node->mu, or tree_mu_ exclusive.
  void truncate_on_open(const Context& ctx, Inode* node);
  // Frees `node` if it has no links, lookups or handles.
  void free_if_unused(Inode* node) DPFS_REQUIRES(tree_mu_);
  // Takes tree_mu_ exclusive and frees `ino` if it is unused (after a
  // reference was dropped under the shared lock).
  void collect(uint64_t ino) DPFS_EXCLUDES(tree_mu_);
  // The Entry naming `node`; take_entry also counts the lookup it makes.
  // REQUIRES: tree_mu_ shared and node.mu, or tree_mu_ exclusive.
  Entry entry_of(Inode& node) const;
  Entry take_entry(Inode& node) const;

  const MemfsOptions options_;
  memfs::Space space_;
  LockTable locks_;

  mutable util::SharedMutex tree_mu_;
  std::unordered_map<uint64_t, std::unique_ptr<Inode>> inodes_ DPFS_GUARDED_BY(tree_mu_);
  uint64_t next_ino_ DPFS_GUARDED_BY(tree_mu_) = kRootIno + 1;
  std::atomic<uint64_t> next_fh_{1};
};

}  // namespace dpfs
