// Host policy: what a tenant may do to the host, decided by the operator and
// not by what the tenant claims.
//
// A tenant's kernel says who asks (the uid/gid of every request), whether a
// writer may keep set-user-ID bits (FUSE_WRITE_KILL_SUIDGID and friends say
// it has no CAP_FSETID), what to create (a device node) and which extended
// attributes to set. All of it is the tenant's to choose. PolicyBackend sits
// between the session and any backend and replaces each claim by the
// operator's decision:
//
//   - credentials: the request's uid/gid go through the tenant's Identity
//     (identity.h: translation, squash); a forbidden id answers EPERM. The
//     ids a SETATTR (chown) sets go through it too. (The way back, host ids
//     in the attributes the tenant is shown, is the session's: it encodes
//     the replies; see SessionOptions::policy.)
//   - device nodes: MKNOD of a block or character device answers EPERM
//     unless allow_device_nodes. FIFOs and sockets are harmless on the host
//     and stay allowed.
//   - set-id bits: a caller that acts as any host uid but 0 has no
//     CAP_FSETID on the host, whatever its kernel says: its WRITE, its
//     truncation (SETATTR size, OPEN/CREATE with O_TRUNC) drop set-user-ID
//     and group-executable set-group-ID, as Linux does for such a writer
//     (fs/inode.c file_remove_privs; the backends' killpriv_v2 handling).
//     The backends drop security.capability on every write, truncation and
//     chown, and set-id bits on every chown of a non-directory, themselves.
//   - xattr namespaces: only the namespaces the operator allows (default:
//     user) may be set, read or removed; names of the others are refused
//     (EPERM to set or remove, as the kernel refuses trusted.* to the
//     unprivileged; ENODATA to read: as if absent) and left out of
//     listings (the session filters LISTXATTR). system.posix_acl_* carries
//     uids and gids inside its value that no map translates: refused
//     whenever the identity translates, even with "system" allowed.
//
// Requests that only give something back (FORGET, RELEASE, RELEASEDIR,
// FLUSH, INTERRUPT) are never refused: a tenant must always be able to let
// go of what it holds.
//
// Safe for concurrent use (the policy is immutable; the wrapped backend is).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "backend/identity.h"

namespace dpfs {

struct HostPolicy {
  // Bits of xattr_namespaces.
  enum : uint32_t {
    kXattrUser = 1u << 0,
    kXattrTrusted = 1u << 1,
    kXattrSecurity = 1u << 2,
    kXattrSystem = 1u << 3,
  };

  Identity identity;
  bool allow_device_nodes = false;
  uint32_t xattr_namespaces = kXattrUser;

  // Whether the tenant may use the extended attribute `name` at all.
  bool xattr_allowed(std::string_view name) const;
  bool operator==(const HostPolicy&) const = default;
};

// "user,trusted" -> kXattrUser | kXattrTrusted; "" -> 0. Throws
// std::invalid_argument naming the unknown word.
uint32_t parse_xattr_namespaces(std::string_view text);
std::string xattr_namespace_names(uint32_t namespaces);

class PolicyBackend final : public Backend {
 public:
  PolicyBackend(std::unique_ptr<Backend> inner, std::shared_ptr<const HostPolicy> policy);

  const HostPolicy& policy() const { return *policy_; }
  Backend& inner() { return *inner_; }

  Capabilities capabilities() const override { return inner_->capabilities(); }
  void init() override { inner_->init(); }
  void resumed() override { inner_->resumed(); }
  void destroy() override { inner_->destroy(); }
  std::unique_ptr<WorkerHook> attach_worker() override { return inner_->attach_worker(); }
  std::vector<std::string> stats() const override { return inner_->stats(); }

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
  // The request's credentials as the host sees them; false when the policy
  // forbids them.
  bool admit(const Context& guest, Context* host) const;
  // For requests that must not fail: the credentials, or the squash id's.
  Context lenient(const Context& guest) const;

  std::unique_ptr<Backend> inner_;
  std::shared_ptr<const HostPolicy> policy_;
  // No translation, no squash: every request acts as the ids it claims
  // (the common case, checked once instead of per request).
  bool identity_ = false;
};

}  // namespace dpfs
