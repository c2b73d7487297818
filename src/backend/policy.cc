#include "backend/policy.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <sys/stat.h>

#include <cerrno>
#include <stdexcept>

namespace dpfs {
namespace {

struct XattrNamespace {
  std::string_view name;
  std::string_view prefix;
  uint32_t bit;
};
constexpr XattrNamespace kXattrNamespaces[] = {
    {"user", "user.", HostPolicy::kXattrUser},
    {"trusted", "trusted.", HostPolicy::kXattrTrusted},
    {"security", "security.", HostPolicy::kXattrSecurity},
    {"system", "system.", HostPolicy::kXattrSystem},
};

// A caller acting as any host uid but 0 has no CAP_FSETID on the host: what
// it writes or truncates loses its set-id bits, whatever its kernel said.
bool keeps_setid(const Context& host) { return host.uid == 0; }

}  // namespace

bool HostPolicy::xattr_allowed(std::string_view name) const {
  for (const XattrNamespace& ns : kXattrNamespaces) {
    if (!name.starts_with(ns.prefix)) continue;
    // POSIX ACLs hold uids and gids in their value (linux/posix_acl_xattr.h)
    // that no map translates: with a translating identity, an ACL would
    // grant rights to host ids the tenant does not own.
    if (ns.bit == kXattrSystem && name.starts_with("system.posix_acl_") &&
        !identity.is_identity()) {
      return false;
    }
    return (xattr_namespaces & ns.bit) != 0;
  }
  // Linux knows no other namespace: the backend answers EOPNOTSUPP.
  return true;
}

uint32_t parse_xattr_namespaces(std::string_view text) {
  uint32_t bits = 0;
  constexpr std::string_view kSeparators = ", ";
  while (!text.empty()) {
    const size_t start = text.find_first_not_of(kSeparators);
    if (start == std::string_view::npos) break;
    text = text.substr(start);
    const size_t end = text.find_first_of(kSeparators);
    const std::string_view word = text.substr(0, end);
    bool known = false;
    for (const XattrNamespace& ns : kXattrNamespaces) {
      if (word == ns.name) {
        bits |= ns.bit;
        known = true;
      }
    }
    if (!known) {
      throw std::invalid_argument(
          fmt::format("unknown xattr namespace '{}' (user, trusted, security, system)", word));
    }
    if (end == std::string_view::npos) break;
    text = text.substr(end);
  }
  return bits;
}

std::string xattr_namespace_names(uint32_t namespaces) {
  std::string out;
  for (const XattrNamespace& ns : kXattrNamespaces) {
    if (!(namespaces & ns.bit)) continue;
    if (!out.empty()) out += ',';
    out += ns.name;
  }
  return out.empty() ? "none" : out;
}

PolicyBackend::PolicyBackend(std::unique_ptr<Backend> inner,
                             std::shared_ptr<const HostPolicy> policy)
    : inner_(std::move(inner)),
      policy_(std::move(policy)),
      identity_(policy_->identity.is_identity()) {}

bool PolicyBackend::admit(const Context& guest, Context* host) const {
  *host = guest;
  if (identity_) return true;
  const std::optional<uint32_t> uid = policy_->identity.host_uid(guest.uid);
  const std::optional<uint32_t> gid = policy_->identity.host_gid(guest.gid);
  if (!uid || !gid) return false;
  host->uid = *uid;
  host->gid = *gid;
  return true;
}

Context PolicyBackend::lenient(const Context& guest) const {
  Context host = guest;
  host.uid = policy_->identity.host_uid(guest.uid).value_or(policy_->identity.squash_id);
  host.gid = policy_->identity.host_gid(guest.gid).value_or(policy_->identity.squash_id);
  return host;
}

void PolicyBackend::lookup(const Context& ctx, uint64_t parent, std::string_view name,
                           EntryReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->lookup(host, parent, name, std::move(reply));
}

void PolicyBackend::forget(uint64_t ino, uint64_t nlookup) { inner_->forget(ino, nlookup); }

void PolicyBackend::getattr(const Context& ctx, uint64_t ino, std::optional<uint64_t> fh,
                            AttrReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->getattr(host, ino, fh, std::move(reply));
}

void PolicyBackend::setattr(const Context& ctx, uint64_t ino, const SetAttr& attr,
                            AttrReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  SetAttr a = attr;
  // chown(2) sets host ids: the ids the tenant names go through its map.
  if (a.valid & SetAttr::kUid) {
    const std::optional<uint32_t> uid = policy_->identity.host_uid(a.uid);
    if (!uid) return reply.error(EPERM);
    a.uid = *uid;
  }
  if (a.valid & SetAttr::kGid) {
    const std::optional<uint32_t> gid = policy_->identity.host_gid(a.gid);
    if (!gid) return reply.error(EPERM);
    a.gid = *gid;
  }
  // truncate(2) by a writer without CAP_FSETID (the kernel's
  // FATTR_KILL_SUIDGID, which the tenant's kernel may leave out). A mode in
  // the same request is the caller's own choice and wins.
  if ((a.valid & SetAttr::kSize) && !(a.valid & SetAttr::kMode) && !keeps_setid(host)) {
    a.valid |= SetAttr::kKillSuidgid;
  }
  inner_->setattr(host, ino, a, std::move(reply));
}

void PolicyBackend::readlink(const Context& ctx, uint64_t ino, ReadlinkReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->readlink(host, ino, std::move(reply));
}

void PolicyBackend::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                            std::string_view target, EntryReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->symlink(host, parent, name, target, std::move(reply));
}

void PolicyBackend::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                          uint32_t rdev, uint32_t umask, EntryReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  // A device node in the shared directory opens the host's device to any
  // host process that opens it (mknod(2): EPERM without CAP_MKNOD).
  if ((S_ISCHR(mode) || S_ISBLK(mode)) && !policy_->allow_device_nodes) {
    return reply.error(EPERM);
  }
  inner_->mknod(host, parent, name, mode, rdev, umask, std::move(reply));
}

void PolicyBackend::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                          uint32_t umask, EntryReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->mkdir(host, parent, name, mode, umask, std::move(reply));
}

void PolicyBackend::unlink(const Context& ctx, uint64_t parent, std::string_view name,
                           StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->unlink(host, parent, name, std::move(reply));
}

void PolicyBackend::rmdir(const Context& ctx, uint64_t parent, std::string_view name,
                          StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->rmdir(host, parent, name, std::move(reply));
}

void PolicyBackend::rename(const Context& ctx, uint64_t parent, std::string_view name,
                           uint64_t new_parent, std::string_view new_name, uint32_t flags,
                           StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->rename(host, parent, name, new_parent, new_name, flags, std::move(reply));
}

void PolicyBackend::link(const Context& ctx, uint64_t ino, uint64_t new_parent,
                         std::string_view new_name, EntryReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->link(host, ino, new_parent, new_name, std::move(reply));
}

void PolicyBackend::open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  if ((flags & O_TRUNC) && !keeps_setid(host)) host.kill_suidgid = true;
  inner_->open(host, ino, flags, std::move(reply));
}

void PolicyBackend::read(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                         uint32_t size, std::span<const iovec> dst, ReadReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->read(host, ino, fh, offset, size, dst, std::move(reply));
}

void PolicyBackend::write(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                          std::span<const iovec> src, uint32_t write_flags, WriteReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  if (!keeps_setid(host)) write_flags |= FUSE_WRITE_KILL_SUIDGID;
  inner_->write(host, ino, fh, offset, src, write_flags, std::move(reply));
}

void PolicyBackend::statfs(const Context& ctx, uint64_t ino, StatfsReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->statfs(host, ino, std::move(reply));
}

void PolicyBackend::release(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t flags,
                            uint64_t lock_owner, ReleaseFlock flock, StatusReply reply) {
  inner_->release(lenient(ctx), ino, fh, flags, lock_owner, flock, std::move(reply));
}

void PolicyBackend::fsync(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                          StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->fsync(host, ino, fh, mode, std::move(reply));
}

void PolicyBackend::setxattr(const Context& ctx, uint64_t ino, std::string_view name,
                             std::span<const std::byte> value, uint32_t flags, StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  if (!policy_->xattr_allowed(name)) return reply.error(EPERM);
  inner_->setxattr(host, ino, name, value, flags, std::move(reply));
}

void PolicyBackend::getxattr(const Context& ctx, uint64_t ino, std::string_view name,
                             XattrReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  // As if absent: listings leave these names out too.
  if (!policy_->xattr_allowed(name)) return reply.error(ENODATA);
  inner_->getxattr(host, ino, name, std::move(reply));
}

void PolicyBackend::listxattr(const Context& ctx, uint64_t ino, XattrReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->listxattr(host, ino, std::move(reply));
}

void PolicyBackend::removexattr(const Context& ctx, uint64_t ino, std::string_view name,
                                StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  if (!policy_->xattr_allowed(name)) return reply.error(EPERM);
  inner_->removexattr(host, ino, name, std::move(reply));
}

void PolicyBackend::flush(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t lock_owner,
                          StatusReply reply) {
  inner_->flush(lenient(ctx), ino, fh, lock_owner, std::move(reply));
}

void PolicyBackend::opendir(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->opendir(host, ino, flags, std::move(reply));
}

void PolicyBackend::readdir(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                            DirReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->readdir(host, ino, fh, offset, std::move(reply));
}

void PolicyBackend::releasedir(const Context& ctx, uint64_t ino, uint64_t fh, StatusReply reply) {
  inner_->releasedir(lenient(ctx), ino, fh, std::move(reply));
}

void PolicyBackend::fsyncdir(const Context& ctx, uint64_t ino, uint64_t fh, SyncMode mode,
                             StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->fsyncdir(host, ino, fh, mode, std::move(reply));
}

void PolicyBackend::getlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                          const Lock& lock, LockReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->getlk(host, ino, fh, owner, lock, std::move(reply));
}

void PolicyBackend::setlk(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t owner,
                          const Lock& lock, LockWait wait, LockFlavor flavor, StatusReply reply) {
  // An unlock gives something back: never refused.
  if (lock.type == F_UNLCK) {
    return inner_->setlk(lenient(ctx), ino, fh, owner, lock, wait, flavor, std::move(reply));
  }
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->setlk(host, ino, fh, owner, lock, wait, flavor, std::move(reply));
}

void PolicyBackend::access(const Context& ctx, uint64_t ino, uint32_t mask, StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->access(host, ino, mask, std::move(reply));
}

void PolicyBackend::create(const Context& ctx, uint64_t parent, std::string_view name,
                           uint32_t mode, uint32_t umask, uint32_t flags, CreateReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  if ((flags & O_TRUNC) && !keeps_setid(host)) host.kill_suidgid = true;
  inner_->create(host, parent, name, mode, umask, flags, std::move(reply));
}

void PolicyBackend::interrupt(uint64_t unique) { inner_->interrupt(unique); }

void PolicyBackend::fallocate(const Context& ctx, uint64_t ino, uint64_t fh, uint32_t mode,
                              uint64_t offset, uint64_t length, StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->fallocate(host, ino, fh, mode, offset, length, std::move(reply));
}

void PolicyBackend::lseek(const Context& ctx, uint64_t ino, uint64_t fh, uint64_t offset,
                          uint32_t whence, LseekReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->lseek(host, ino, fh, offset, whence, std::move(reply));
}

void PolicyBackend::copy_file_range(const Context& ctx, const CopyRange& range, WriteReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  // Written data, as WRITE's: FUSE has no flag for it.
  if (!keeps_setid(host)) host.kill_suidgid = true;
  inner_->copy_file_range(host, range, std::move(reply));
}

void PolicyBackend::syncfs(const Context& ctx, uint64_t ino, StatusReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->syncfs(host, ino, std::move(reply));
}

void PolicyBackend::tmpfile(const Context& ctx, uint64_t parent, uint32_t mode, uint32_t umask,
                            uint32_t flags, CreateReply reply) {
  Context host;
  if (!admit(ctx, &host)) return reply.error(EPERM);
  inner_->tmpfile(host, parent, mode, umask, flags, std::move(reply));
}

}  // namespace dpfs
