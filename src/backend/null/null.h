// The null backend: the cheapest possible answer to every request, to
// measure what the framework itself costs.
//
// A fixed tree of two inodes: the root directory (ino 1, mode 0755) holding
// one regular file "zero" (ino 2, mode 0644, size NullOptions::file_size)
// that reads as zeros and discards what is written to it (its size never
// changes). Everything that would change the tree or the attributes answers
// EROFS; fallocate answers EOPNOTSUPP.
//
// Nothing is allocated, locked or looked up on any path: the inodes are
// static, so lookup counts are not kept and forget is ignored. Safe for
// concurrent use: the backend is immutable after construction.
//
// Reads are meant to reach the daemon every time (a benchmark of the
// framework, not of the page cache): open never sets FOPEN_KEEP_CACHE, and
// NullOptions::direct_io makes the kernel bypass the page cache even for
// buffered I/O.
#pragma once

#include <sys/stat.h>

#include <cerrno>
#include <cstdint>

#include "backend/backend.h"

namespace dpfs {

struct NullOptions {
  uint64_t file_size = 1ull << 40;
  // Open "zero" with FOPEN_DIRECT_IO.
  bool direct_io = false;
  // Entry and attribute timeouts: nothing ever changes, so the kernel may
  // cache names and attributes for long.
  double timeout = 3600;
};

class NullBackend final : public Backend {
 public:
  static constexpr uint64_t kFileIno = 2;
  static constexpr const char* kFileName = "zero";

  explicit NullBackend(NullOptions options = {});

  Capabilities capabilities() const override;

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
  void access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) override;
  void create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
              uint32_t umask, uint32_t flags, CreateReply reply) override;
  void fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode, uint64_t offset,
                 uint64_t length, StatusReply reply) override;
  void syncfs(const Context& ctx, uint64_t ino, StatusReply reply) override;
  void tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask, uint32_t flags,
               CreateReply reply) override;

 private:
  static bool valid(uint64_t ino) { return ino == kRootIno || ino == kFileIno; }
  const struct stat& attr(uint64_t ino) const { return ino == kRootIno ? root_ : file_; }
  Entry entry(uint64_t ino) const;
  // The errno a change under directory `parent` gets: ESTALE for an inode
  // this backend never gave out, ENOTDIR for the file, EROFS otherwise.
  static int dir_change_error(uint64_t parent);
  // The errno a change to `ino` gets: ESTALE or EROFS.
  static int change_error(uint64_t ino) { return valid(ino) ? EROFS : ESTALE; }

  const NullOptions options_;
  struct stat root_ {};
  struct stat file_ {};
};

}  // namespace dpfs
