#include "backend/nfs/nfs.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <linux/fuse.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include "backend/nfs/nfs4.h"
#include "backend/worker_hook.h"

namespace dpfs {

using nfs::Connection;
using nfs::DirEntry;
using nfs::NewNode;
using nfs::Node;
using nfs::UnstableWrite;
using nfs::WriteResult;
using nfs::WriteVerifier;

namespace {

// Copies `len` bytes of `data` into `dst` starting at byte `at` of it.
void copy_to_iov(std::span<const iovec> dst, size_t at, const char* data, size_t len) {
  for (const iovec& v : dst) {
    if (len == 0) return;
    if (at >= v.iov_len) {
      at -= v.iov_len;
      continue;
    }
    const size_t n = std::min(len, v.iov_len - at);
    std::memcpy(static_cast<char*>(v.iov_base) + at, data, n);
    data += n;
    len -= n;
    at = 0;
  }
}

// Bytes [at, at + len) of `src`, gathered.
std::string gather(std::span<const iovec> src, size_t at, size_t len) {
  std::string out;
  out.reserve(len);
  for (const iovec& v : src) {
    if (len == 0) break;
    if (at >= v.iov_len) {
      at -= v.iov_len;
      continue;
    }
    const size_t n = std::min(len, v.iov_len - at);
    out.append(static_cast<const char*>(v.iov_base) + at, n);
    len -= n;
    at = 0;
  }
  return out;
}

// The names under which files removed while open live on until their last
// close (hidden from READDIR). The kernel's NFS client calls them .nfsXXXX.
constexpr std::string_view kHiddenPrefix = ".dpfs-removed-";

// RFC 1813 has no limit, but Linux's NFS client refuses longer symlink
// targets than NFS3_MAXPATHLEN (PATH_MAX, 4096) with ENAMETOOLONG, and
// servers do too. NFSv4 has none (linktext4): the server's file system has
// its own.
constexpr size_t kMaxSymlinkV3 = 4096;

// What a write or truncation by a caller without CAP_FSETID leaves of a
// mode, as the Linux VFS does: set-user-ID goes, and set-group-ID on a
// group-executable file.
mode_t kill_suid(mode_t mode) {
  mode &= ~mode_t(S_ISUID);
  if (mode & S_IXGRP) mode &= ~mode_t(S_ISGID);
  return mode;
}

}  // namespace

NfsBackend::NfsBackend(NfsOptions options) : options_(std::move(options)) {
  if (options_.url.version != 3 && options_.url.version != 4) {
    throw std::invalid_argument("backend nfs: version must be 3 or 4");
  }
  if (options_.connections == 0)
    throw std::invalid_argument("backend nfs: connections must be >= 1");
  nfs::ConnectionOptions copts;
  copts.url = options_.url;
  copts.timeout = options_.timeout;
  copts.owner = this;
  for (unsigned i = 0; i < options_.connections; ++i) {
    connections_.push_back(std::make_unique<Connection>(copts, int(i)));
  }
  Connection& first = *connections_.front();
  if (options_.url.version == 4) {
    protocol_ = std::make_unique<nfs::Nfs4>();
  } else {
    protocol_ = std::make_unique<nfs::Nfs3>();
  }
  inodes_ = std::make_unique<nfs::InodeTable>(first.root_fh());
  auto cap = [](uint64_t server, uint32_t mine) {
    return uint32_t(std::clamp<uint64_t>(server == 0 ? mine : server, 4096, mine));
  };
  rsize_ = cap(first.readmax(), options_.rsize);
  wsize_ = cap(first.writemax(), options_.wsize);
  spdlog::info(
      "nfs: mounted nfs://{}{} (NFSv{}, {} connection{}, rsize {} wsize {}, timeout {} ms)",
      options_.url.server, options_.url.export_path, options_.url.version, connections_.size(),
      connections_.size() == 1 ? "" : "s", rsize_, wsize_, options_.timeout.count());
}

NfsBackend::~NfsBackend() {
  // Before the inode table goes: completions run while connections shut
  // down (cancelled RPCs) and use it.
  for (auto& conn : connections_) conn->shutdown();
}

Capabilities NfsBackend::capabilities() const {
  Capabilities caps;
  caps.readdirplus = true;
  // Set-id bits are dropped here, by a SETATTR of the mode: the server
  // writes as root and would keep them.
  caps.killpriv_v2 = true;
  return caps;
}

namespace {

// A transport worker driving one connection from its event loop.
class ConnectionHook final : public WorkerHook {
 public:
  explicit ConnectionHook(Connection& conn) : conn_(conn) {}
  ~ConnectionHook() override { conn_.give_back(); }
  int fd() const override { return conn_.wait_fd(); }
  void on_readable() override { conn_.on_readable(); }
  void flush() override { conn_.flush(); }
  bool poll() override { return conn_.poll(); }

 private:
  Connection& conn_;
};

}  // namespace

std::unique_ptr<WorkerHook> NfsBackend::attach_worker() {
  for (auto& conn : connections_) {
    if (conn->adopt()) return std::make_unique<ConnectionHook>(*conn);
  }
  return nullptr;
}

std::vector<std::string> NfsBackend::stats() const {
  std::vector<std::string> lines;
  for (size_t i = 0; i < connections_.size(); ++i) {
    lines.push_back(fmt::format("nfs connection {}: {}", i, connections_[i]->stats()));
  }
  return lines;
}

bool NfsBackend::handle(uint64_t ino, std::string* fh, Reply& reply) {
  if (inodes_->find(ino, fh)) return true;
  reply.error(ESTALE);
  return false;
}

Entry NfsBackend::make_entry(const Node& node) {
  Entry e;
  e.ino = inodes_->remember(node.fh, node.attr.st_mode, node.attr.st_gid);
  e.attr = node.attr;
  e.entry_timeout = options_.entry_timeout;
  e.attr_timeout = options_.attr_timeout;
  return e;
}

// --- names ------------------------------------------------------------------

void NfsBackend::lookup(const Context&, uint64_t parent, std::string_view name, EntryReply reply) {
  // The second wall (backend.h): one path component, '.' and '..' included.
  if (int e = check_component(name)) return reply.error(e);
  std::string dir;
  if (!handle(parent, &dir, reply)) return;
  // ".." of the export's root is the root, as for a local mount's root
  // (path_resolution(7)). The server would not stop there: NFSv4's LOOKUPP
  // and NFSv3's LOOKUP ".." of a directory below the server's export root
  // (a sub-directory URL) answer its parent. "." is the directory itself
  // (NFSv4 has no LOOKUP "." at all: RFC 7530 §16.13.5, NFS4ERR_BADNAME).
  // Either way only a GETATTR goes out, of a handle we already serve.
  std::string root;
  inodes_->find(kRootIno, &root);
  if (name == "." || (name == ".." && dir == root)) {
    protocol_->getattr(connection_for(parent), dir,
                       [this, dir, reply = std::move(reply)](int err, struct stat st) mutable {
                         if (err != 0) return reply.error(err);
                         reply.ok(make_entry(Node{dir, st}));
                       });
    return;
  }
  protocol_->lookup(connection_for(parent), dir, std::string(name),
                    [this, reply = std::move(reply)](int err, Node node) mutable {
                      if (err != 0) return reply.error(err);
                      reply.ok(make_entry(node));
                    });
}

void NfsBackend::forget(uint64_t ino, uint64_t nlookup) {
  std::optional<nfs::InodeTable::Hidden> hidden = inodes_->forget(ino, nlookup);
  if (!hidden) return;
  // The kernel let go of a hidden file that is not open: now it goes.
  protocol_->remove(
      connection_for(ino), hidden->dir_fh, hidden->name, false, [name = hidden->name](int err) {
        if (err != 0) {
          spdlog::warn("nfs: cannot remove {} once forgotten: {}", name, strerror(err));
        }
      });
}

void NfsBackend::make_node(const Context& ctx, uint64_t parent, std::string_view name, NewNode spec,
                           nfs::Then<int, Entry> then) {
  if (int e = check_new_component(name)) return then(e, Entry{});
  std::string dir;
  if (!inodes_->find(parent, &dir)) return then(ESTALE, Entry{});
  // Owner: the tenant; group: the directory's in a set-group-ID directory
  // (the server, creating as root, would not know the tenant's).
  SetAttr& attr = spec.attr;
  attr.valid |= SetAttr::kUid | SetAttr::kGid;
  attr.uid = ctx.uid;
  attr.gid = ctx.gid;
  mode_t dir_mode = 0;
  gid_t dir_gid = 0;
  if (inodes_->attributes(parent, &dir_mode, &dir_gid) && (dir_mode & S_ISGID)) {
    attr.gid = dir_gid;
  }
  if (!S_ISLNK(spec.mode)) {
    attr.valid |= SetAttr::kMode;
    attr.mode = spec.mode & 07777;
  }
  protocol_->create(connection_for(parent), dir, std::string(name), spec,
                    [this, then = std::move(then)](int err, Node node) mutable {
                      if (err != 0) return then(err, Entry{});
                      then(0, make_entry(node));
                    });
}

void NfsBackend::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                       uint32_t rdev, uint32_t, EntryReply reply) {
  NewNode spec;
  spec.mode = mode;
  spec.rdev = rdev;
  spec.exclusive = true;
  if (S_ISDIR(mode) || S_ISLNK(mode)) return reply.error(EINVAL);
  make_node(ctx, parent, name, spec, [reply = std::move(reply)](int err, Entry e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e);
  });
}

void NfsBackend::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                       uint32_t, EntryReply reply) {
  NewNode spec;
  spec.mode = S_IFDIR | (mode & 07777);
  make_node(ctx, parent, name, spec, [reply = std::move(reply)](int err, Entry e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e);
  });
}

void NfsBackend::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                         std::string_view target, EntryReply reply) {
  if (protocol_->version() == 3 && target.size() > kMaxSymlinkV3) {
    return reply.error(ENAMETOOLONG);
  }
  NewNode spec;
  spec.mode = S_IFLNK | 0777;
  spec.target = std::string(target);
  make_node(ctx, parent, name, spec, [reply = std::move(reply)](int err, Entry e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e);
  });
}

void NfsBackend::create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                        uint32_t, uint32_t flags, CreateReply reply) {
  NewNode spec;
  spec.mode = S_IFREG | (mode & 07777);
  spec.exclusive = (flags & O_EXCL) != 0;
  if (flags & O_TRUNC) {
    spec.attr.valid |= SetAttr::kSize;
    spec.attr.size = 0;
  }
  make_node(ctx, parent, name, spec, [this, reply = std::move(reply)](int err, Entry e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e, inodes_->open(e.ino));
  });
}

void NfsBackend::link(const Context&, uint64_t ino, uint64_t new_parent, std::string_view new_name,
                      EntryReply reply) {
  if (int e = check_new_component(new_name)) return reply.error(e);
  std::string file, dir;
  if (!handle(ino, &file, reply) || !handle(new_parent, &dir, reply)) return;
  protocol_->link(connection_for(new_parent), file, dir, std::string(new_name),
                  [this, file, reply = std::move(reply)](int err, struct stat st) mutable {
                    if (err != 0) return reply.error(err);
                    reply.ok(make_entry(Node{file, st}));
                  });
}

void NfsBackend::hide_if_open(uint64_t parent, const std::string& dir, std::string_view name,
                              bool replacing, nfs::Then<int, bool, std::string> then) {
  Connection& conn = connection_for(parent);
  protocol_->lookup(conn, dir, std::string(name),
                    [this, &conn, dir, name = std::string(name), replacing, then = std::move(then)](
                        int err, Node node) mutable {
                      if (err != 0) return then(err, false, std::string());
                      // Only a rename keeps a file the kernel merely holds: after an unlink
                      // an open of it may as well fail (ESTALE, then ENOENT on the kernel's
                      // second look), but after a rename it must find the old file or the
                      // new one. A file with other names lives on anyway.
                      const bool keep_if_held =
                          replacing && !S_ISDIR(node.attr.st_mode) && node.attr.st_nlink <= 1;
                      uint64_t ino = 0;
                      const auto fate = inodes_->doom(node.fh, keep_if_held, &ino);
                      if (fate == nfs::InodeTable::Fate::kGoes)
                        return then(0, false, std::move(node.fh));
                      std::string hidden = fmt::format("{}{:x}-{}", kHiddenPrefix, ino, next_fh_++);
                      auto hide = [this, ino, dir, hidden](int e) {
                        if (e != 0 || inodes_->hide(ino, {dir, hidden})) return;
                        // Closed and forgotten meanwhile: nothing will remove it later.
                        protocol_->remove(connection_for(ino), dir, hidden, false, [](int) {});
                      };
                      if (!replacing) {
                        // Unlinked while open: moved aside, removed at its last close.
                        protocol_->rename(conn, dir, name, dir, hidden,
                                          [hide, then = std::move(then)](int e) mutable {
                                            hide(e);
                                            if (e != 0) return then(e, false, std::string());
                                            then(0, true, std::string());
                                          });
                        return;
                      }
                      // Replaced by a rename: a second name keeps the file, and the rename
                      // then replaces the first atomically (the name never goes missing).
                      protocol_->link(
                          conn, node.fh, dir, hidden,
                          [hide, ino, then = std::move(then)](int e, struct stat) mutable {
                            hide(e);
                            if (e != 0) {
                              spdlog::debug("nfs: cannot keep inode {} under a second name: {}",
                                            ino, strerror(e));
                            }
                            then(0, false, std::string());
                          });
                    });
}

void NfsBackend::unlink(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_new_component(name)) return reply.error(e);
  std::string dir;
  if (!handle(parent, &dir, reply)) return;
  hide_if_open(parent, dir, name, /*replacing=*/false,
               [this, parent, dir, name = std::string(name), reply = std::move(reply)](
                   int err, bool hidden, std::string doomed) mutable {
                 if (err != 0) return reply.error(err);
                 if (hidden) return reply.ok();
                 remove(parent, dir, name, false, std::move(reply), std::move(doomed));
               });
}

void NfsBackend::undoom(const std::string& fh) {
  if (fh.empty()) return;
  for (auto& retry : inodes_->undoom(fh)) retry();
}

void NfsBackend::remove(uint64_t parent, const std::string& dir, const std::string& name,
                        bool directory, StatusReply reply, std::string doomed) {
  protocol_->remove(connection_for(parent), dir, name, directory,
                    [this, doomed = std::move(doomed), reply = std::move(reply)](int err) mutable {
                      undoom(doomed);
                      if (err != 0) return reply.error(err);
                      reply.ok();
                    });
}

void NfsBackend::rmdir(const Context&, uint64_t parent, std::string_view name, StatusReply reply) {
  if (int e = check_new_component(name)) return reply.error(e);
  std::string dir;
  if (!handle(parent, &dir, reply)) return;
  remove(parent, dir, std::string(name), true, std::move(reply), std::string());
}

void NfsBackend::rename(const Context&, uint64_t parent, std::string_view name, uint64_t new_parent,
                        std::string_view new_name, uint32_t flags, StatusReply reply) {
  // NFS RENAME always replaces; Linux's NFS client refuses flags the same way.
  if (flags != 0) return reply.error(EINVAL);
  if (int e = check_new_component(name)) return reply.error(e);
  if (int e = check_new_component(new_name)) return reply.error(e);
  std::string from, to;
  if (!handle(parent, &from, reply) || !handle(new_parent, &to, reply)) return;
  // A file replaced while open stays readable through its descriptors, and
  // openable while the kernel may still open it (hide_if_open).
  hide_if_open(new_parent, to, new_name, /*replacing=*/true,
               [this, parent, from, to, name = std::string(name), new_name = std::string(new_name),
                reply = std::move(reply)](int err, bool, std::string doomed) mutable {
                 if (err != 0 && err != ENOENT) return reply.error(err);
                 protocol_->rename(
                     connection_for(parent), from, name, to, new_name,
                     [this, doomed = std::move(doomed), reply = std::move(reply)](int e) mutable {
                       undoom(doomed);
                       if (e != 0) return reply.error(e);
                       reply.ok();
                     });
               });
}

// --- attributes -------------------------------------------------------------

void NfsBackend::reply_attr(uint64_t ino, struct stat st, AttrReply reply) {
  inodes_->update(ino, st.st_mode, st.st_gid);
  // A file removed while open is only hidden on the server: it has one
  // link less than the server counts.
  if (st.st_nlink > 0 && inodes_->hidden(ino)) --st.st_nlink;
  reply.ok(st, options_.attr_timeout);
}

void NfsBackend::getattr(const Context&, uint64_t ino, std::optional<uint64_t>, AttrReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  protocol_->getattr(connection_for(ino), fh,
                     [this, ino, reply = std::move(reply)](int err, struct stat st) mutable {
                       if (err != 0) return reply.error(err);
                       reply_attr(ino, st, std::move(reply));
                     });
}

bool NfsBackend::kill_suid_attr(uint64_t ino, SetAttr* attr) {
  mode_t mode = 0;
  gid_t gid = 0;
  if (!inodes_->attributes(ino, &mode, &gid)) return false;
  const mode_t base = (attr->valid & SetAttr::kMode) ? attr->mode : mode;
  const mode_t killed = kill_suid(base);
  if (killed == (base & 07777) && (attr->valid & SetAttr::kMode)) return false;
  if (killed == mode) return false;
  attr->valid |= SetAttr::kMode;
  attr->mode = killed & 07777;
  return true;
}

void NfsBackend::setattr(const Context&, uint64_t ino, const SetAttr& in, AttrReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  SetAttr attr = in;
  if (attr.valid & SetAttr::kKillSuidgid) kill_suid_attr(ino, &attr);
  // Acknowledged writes past a new end of file must not come back in a resend.
  if (attr.valid & SetAttr::kSize) inodes_->truncate_unstable(ino, attr.size);
  protocol_->setattr(connection_for(ino), fh, attr,
                     [this, ino, reply = std::move(reply)](int err, struct stat st) mutable {
                       if (err != 0) return reply.error(err);
                       reply_attr(ino, st, std::move(reply));
                     });
}

void NfsBackend::readlink(const Context&, uint64_t ino, ReadlinkReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  protocol_->readlink(connection_for(ino), fh,
                      [reply = std::move(reply)](int err, std::string target) mutable {
                        if (err != 0) return reply.error(err);
                        reply.ok(target);
                      });
}

void NfsBackend::access(const Context&, uint64_t ino, uint32_t mask, StatusReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  protocol_->access(connection_for(ino), fh, mask, [reply = std::move(reply)](int err) mutable {
    if (err != 0) return reply.error(err);
    reply.ok();
  });
}

void NfsBackend::statfs(const Context&, uint64_t, StatfsReply reply) {
  std::string root;
  if (!handle(kRootIno, &root, reply)) return;
  protocol_->statfs(connection_for(kRootIno), root,
                    [reply = std::move(reply)](int err, struct statvfs st) mutable {
                      if (err != 0) return reply.error(err);
                      reply.ok(st);
                    });
}

// --- files ------------------------------------------------------------------

void NfsBackend::open(const Context& ctx, uint64_t ino, uint32_t flags, OpenReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  open_checked(ino, fh, flags, ctx.kill_suidgid, std::make_shared<OpenReply>(std::move(reply)));
}

void NfsBackend::open_checked(uint64_t ino, const std::string& fh, uint32_t flags,
                              bool kill_suidgid, std::shared_ptr<OpenReply> reply) {
  // Counted open before the server is asked: a concurrent unlink or rename
  // over this name (hide_if_open) then hides the file instead of removing
  // it under the opener; one already on its way makes this open wait.
  const uint64_t handle = inodes_->open(ino, [this, ino, fh, flags, kill_suidgid, reply] {
    open_checked(ino, fh, flags, kill_suidgid, reply);
  });
  if (handle == nfs::InodeTable::kWaiting) return;
  if (handle == 0) return reply->error(ESTALE);
  // Close-to-open consistency, as NFS clients keep it: an open asks the
  // server, and a file that was replaced or removed since the kernel looked
  // it up answers ESTALE, on which the kernel looks the name up again. With
  // FUSE_ATOMIC_O_TRUNC, the truncation is ours to do: a SETATTR (which
  // also drops set-id bits for a caller without CAP_FSETID).
  auto done = [this, ino, handle, reply](int err, struct stat st) {
    if (err != 0) {
      close_handle(ino, handle, [reply, err] { reply->error(err); });
      return;
    }
    inodes_->update(ino, st.st_mode, st.st_gid);
    reply->ok(handle);
  };
  if (!(flags & O_TRUNC)) return protocol_->getattr(connection_for(ino), fh, std::move(done));
  inodes_->truncate_unstable(ino, 0);
  SetAttr attr;
  attr.valid = SetAttr::kSize;
  attr.size = 0;
  if (kill_suidgid) kill_suid_attr(ino, &attr);
  protocol_->setattr(connection_for(ino), fh, attr, std::move(done));
}

void NfsBackend::read(const Context&, uint64_t ino, uint64_t handle_id, uint64_t offset,
                      uint32_t size, std::span<const iovec> dst, ReadReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  if (!inodes_->has_handle(ino, handle_id)) return reply.error(EBADF);
  if (size == 0) return reply.ok(0);
  // The pieces of one READ, answered together. All go to one connection, so
  // their callbacks run on its one driver thread: no lock.
  struct Pieces {
    ReadReply reply;
    std::vector<iovec> dst;
    unsigned pending = 0;
    int error = 0;
    uint64_t end;  // the first byte not read (a short piece lowers it)
  };
  auto state = std::make_shared<Pieces>();
  state->reply = std::move(reply);
  state->dst.assign(dst.begin(), dst.end());
  state->end = size;
  state->pending = (size + rsize_ - 1) / rsize_;
  Connection& conn = next_connection();
  for (uint64_t at = 0; at < size; at += rsize_) {
    const uint32_t count = uint32_t(std::min<uint64_t>(rsize_, size - at));
    protocol_->read(conn, fh, offset + at, count,
                    [state, at, count](int err, const char* data, size_t got) {
                      if (err != 0) {
                        if (state->error == 0) state->error = err;
                      } else {
                        copy_to_iov(state->dst, at, data, got);
                        if (got < count) state->end = std::min<uint64_t>(state->end, at + got);
                      }
                      if (--state->pending > 0) return;
                      if (state->error != 0) return state->reply.error(state->error);
                      state->reply.ok(state->end);
                    });
  }
}

void NfsBackend::write(const Context&, uint64_t ino, uint64_t handle_id, uint64_t offset,
                       std::span<const iovec> src, uint32_t write_flags, WriteReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  if (!inodes_->has_handle(ino, handle_id)) return reply.error(EBADF);
  size_t size = 0;
  for (const iovec& v : src) size += v.iov_len;
  if (size == 0) return reply.ok(0);
  // The data is copied out of the tenant's buffers before anything is
  // sent: the pieces may go out after a SETATTR's answer.
  std::vector<std::shared_ptr<const std::string>> pieces;
  for (uint64_t at = 0; at < size; at += wsize_) {
    pieces.push_back(std::make_shared<const std::string>(
        gather(src, at, std::min<uint64_t>(wsize_, size - at))));
  }
  // FUSE_WRITE_KILL_SUIDGID: a writer without CAP_FSETID; the server,
  // writing as root, would keep the set-id bits.
  SetAttr kill;
  if ((write_flags & FUSE_WRITE_KILL_SUIDGID) && kill_suid_attr(ino, &kill)) {
    protocol_->setattr(connection_for(ino), fh, kill,
                       [this, ino, fh, offset, pieces = std::move(pieces),
                        reply = std::move(reply)](int err, struct stat st) mutable {
                         if (err != 0) return reply.error(err);
                         inodes_->update(ino, st.st_mode, st.st_gid);
                         write_pieces(ino, fh, offset, std::move(pieces), std::move(reply));
                       });
    return;
  }
  write_pieces(ino, fh, offset, std::move(pieces), std::move(reply));
}

void NfsBackend::write_pieces(uint64_t ino, const std::string& fh, uint64_t offset,
                              std::vector<std::shared_ptr<const std::string>> pieces,
                              WriteReply reply) {
  struct State {
    WriteReply reply;
    size_t pending = 0;
    int error = 0;
    uint64_t end = 0;  // the first byte not written
  };
  auto state = std::make_shared<State>();
  state->reply = std::move(reply);
  state->pending = pieces.size();
  for (const auto& p : pieces) state->end += p->size();
  // Past the bound on what is kept for a resend, the server must make the
  // data stable before it answers.
  const bool stable = inodes_->unstable_bytes() >= options_.max_unstable;
  Connection& conn = next_connection();
  uint64_t at = 0;
  for (auto& data : pieces) {
    const size_t len = data->size();
    protocol_->write(conn, fh, offset + at, data, stable,
                     [this, state, ino, at, off = offset + at, data](int err, WriteResult w) {
                       if (err != 0) {
                         if (state->error == 0) state->error = err;
                       } else {
                         if (w.count < data->size()) {
                           state->end = std::min<uint64_t>(state->end, at + w.count);
                         }
                         if (!w.stable && w.count > 0) {
                           UnstableWrite u;
                           u.offset = off;
                           u.data.assign(*data, 0, w.count);
                           u.verifier = w.verifier;
                           inodes_->add_unstable(ino, std::move(u));
                         }
                       }
                       if (--state->pending > 0) return;
                       if (state->error != 0) return state->reply.error(state->error);
                       state->reply.ok(state->end);
                     });
    at += len;
  }
}

void NfsBackend::commit(uint64_t ino, nfs::Then<int> then) {
  std::string fh;
  if (!inodes_->find(ino, &fh)) return then(ESTALE);
  std::vector<UnstableWrite> writes = inodes_->take_unstable(ino);
  if (writes.empty()) return then(0);
  auto pending = std::make_shared<std::vector<UnstableWrite>>(std::move(writes));
  protocol_->commit(
      connection_for(ino), fh,
      [this, ino, fh, pending, then = std::move(then)](int err, WriteVerifier verifier) mutable {
        if (err != 0) {
          inodes_->restore_unstable(ino, std::move(*pending));
          return then(err);
        }
        // A write acknowledged under another verifier was acknowledged by a
        // server instance that may have lost it: send it again.
        std::vector<UnstableWrite> lost;
        for (UnstableWrite& w : *pending) {
          if (w.verifier != verifier) lost.push_back(std::move(w));
        }
        if (lost.empty()) return then(0);
        spdlog::warn(
            "nfs: the server's write verifier changed (it restarted?): sending {} "
            "write{} again",
            lost.size(), lost.size() == 1 ? "" : "s");
        resend(ino, fh, std::move(lost), std::move(then));
      });
}

void NfsBackend::resend(uint64_t ino, const std::string& fh, std::vector<UnstableWrite> writes,
                        nfs::Then<int> then) {
  struct Resend {
    std::vector<UnstableWrite> failed;
    size_t pending = 0;
    int error = 0;
    nfs::Then<int> then;
  };
  auto state = std::make_shared<Resend>();
  state->pending = writes.size();
  state->then = std::move(then);
  Connection& conn = connection_for(ino);
  for (UnstableWrite& w : writes) {
    auto data = std::make_shared<const std::string>(std::move(w.data));
    protocol_->write(
        conn, fh, w.offset, data, /*stable=*/true,
        [this, ino, state, offset = w.offset, verifier = w.verifier, data](int err, WriteResult) {
          if (err != 0) {
            if (state->error == 0) state->error = err;
            // Kept for the next commit, which sends it again.
            state->failed.push_back(UnstableWrite{offset, *data, verifier});
          }
          if (--state->pending > 0) return;
          if (!state->failed.empty()) {
            inodes_->restore_unstable(ino, std::move(state->failed));
          }
          state->then(state->error);
        });
  }
}

void NfsBackend::fsync(const Context&, uint64_t ino, uint64_t, SyncMode, StatusReply reply) {
  commit(ino, [reply = std::move(reply)](int err) mutable {
    if (err != 0) return reply.error(err);
    reply.ok();
  });
}

// close(2): like the kernel's NFS client (close-to-open consistency), what
// was written is on stable storage before close returns, and a failure is
// reported to the closer.
void NfsBackend::flush(const Context&, uint64_t ino, uint64_t, uint64_t, StatusReply reply) {
  commit(ino, [reply = std::move(reply)](int err) mutable {
    if (err != 0) return reply.error(err);
    reply.ok();
  });
}

void NfsBackend::release(const Context&, uint64_t ino, uint64_t fh, uint32_t, uint64_t,
                         ReleaseFlock, StatusReply reply) {
  if (!inodes_->has_handle(ino, fh)) return reply.error(EBADF);
  commit(ino, [this, ino, fh, reply = std::move(reply)](int err) mutable {
    if (err != 0) drop_uncommitted(ino, err);
    close_handle(ino, fh, [reply = std::move(reply)]() mutable { reply.ok(); });
  });
}

void NfsBackend::drop_uncommitted(uint64_t ino, int err) {
  uint64_t bytes = 0;
  for (const UnstableWrite& w : inodes_->take_unstable(ino)) bytes += w.data.size();
  if (bytes == 0) return;
  spdlog::error(
      "nfs: node {}: {} bytes written were never committed ({}) and are dropped; "
      "close(2) and fsync(2) reported it",
      ino, bytes, strerror(err));
}

void NfsBackend::close_handle(uint64_t ino, uint64_t handle, nfs::Then<> then) {
  std::optional<nfs::InodeTable::Hidden> hidden;
  if (!inodes_->close(ino, handle, &hidden) || !hidden) return then();
  // The last close of a file removed while open: now it goes.
  protocol_->remove(connection_for(ino), hidden->dir_fh, hidden->name, false,
                    [name = hidden->name, then = std::move(then)](int err) mutable {
                      if (err != 0) {
                        spdlog::warn("nfs: cannot remove {} at its last close: {}", name,
                                     strerror(err));
                      }
                      then();
                    });
}

void NfsBackend::syncfs(const Context&, uint64_t, StatusReply reply) {
  // Every COMMIT is done at flush; nothing is left to sync across files.
  reply.ok();
}

// --- directories ------------------------------------------------------------

void NfsBackend::opendir(const Context&, uint64_t ino, uint32_t, OpenReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  reply.ok(next_fh_++);
}

void NfsBackend::fsyncdir(const Context&, uint64_t ino, uint64_t, SyncMode, StatusReply reply) {
  // Directory operations are stable on the server when it answers
  // (RFC 1813 §3.3; RFC 7530 §16 for v4).
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  reply.ok();
}

void NfsBackend::readdir(const Context&, uint64_t ino, uint64_t, uint64_t offset, DirReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  const bool root = ino == kRootIno;
  // The FUSE offset is the NFS cookie of the last entry returned (0: start).
  protocol_->readdir(
      connection_for(ino), fh, offset,
      [this, root, reply = std::move(reply)](int err, std::vector<DirEntry> entries) mutable {
        if (err != 0) return reply.error(err);
        const bool plus = reply.plus();
        const DirEntry* self = nullptr;
        for (DirEntry& e : entries) {
          if (e.name.empty() || e.name.starts_with(kHiddenPrefix)) continue;
          // The root's ".." is the root (see lookup), not the directory
          // above, whose number and attributes the server reports. "."
          // comes first in the same answer (v4: made so; v3: the server's
          // order); without it ".." is left out.
          if (root && e.name == ".") self = &e;
          if (root && e.name == "..") {
            if (self == nullptr) continue;
            e.fileid = self->fileid;
            e.node = self->node;
          }
          if (!plus) {
            if (!reply.add(e.name, e.fileid, e.type, e.cookie)) break;
            continue;
          }
          // The kernel counts no lookup for "." and "..", nor for an entry
          // without a handle (node id 0): it only lists those.
          const bool dot = e.name == "." || e.name == "..";
          if (dot || !e.node) {
            Entry entry;
            if (e.node) entry.attr = e.node->attr;
            entry.attr.st_mode = (entry.attr.st_mode & ~S_IFMT) | (e.type << 12);
            entry.attr.st_ino = e.fileid;  // d_ino is st_ino, the fileid
            if (!reply.add_plus(e.name, entry, e.cookie)) break;
            continue;
          }
          Entry entry = make_entry(*e.node);
          if (!reply.add_plus(e.name, entry, e.cookie)) {
            inodes_->forget(entry.ino, 1);  // not sent: not counted
            break;
          }
        }
        reply.done();
      });
}

}  // namespace dpfs
