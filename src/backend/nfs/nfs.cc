#include "backend/nfs/nfs.h"

// clang-format off: libnfs's headers depend on this order.
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
// clang-format on

#include <dirent.h>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace dpfs {

using nfs::as_fh3;
using nfs::Connection;
using nfs::make_call;
using nfs::nfs3_errno;
using nfs::rpc_errno;
using nfs::to_stat;
using nfs::UnstableWrite;
using nfs::WriteVerifier;

namespace {

using RpcCb = void (*)(rpc_context*, int, void*, void*);

// The errno of an answer: 0, an RPC failure, or the server's nfsstat3.
// REQUIRES: Res is an NFSv3 *3res (its first member is the nfsstat3).
template <typename Res>
int status_of(int rpc_status, void* res) {
  if (rpc_status != RPC_STATUS_SUCCESS) return rpc_errno(rpc_status);
  return nfs3_errno(static_cast<Res*>(res)->status);
}

std::string fh_string(const nfs_fh3& fh) {
  return std::string(fh.data.data_val, fh.data.data_len);
}

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
// targets than NFS3_MAXPATHLEN with ENAMETOOLONG, and servers do too.
constexpr size_t kMaxSymlink = 1024;

uint32_t dirent_type(const post_op_attr& attr) {
  if (!attr.attributes_follow) return DT_UNKNOWN;
  return (to_stat(attr.post_op_attr_u.attributes).st_mode & S_IFMT) >> 12;
}

}  // namespace

// What make_node creates.
struct NfsBackend::NewNode {
  uint32_t mode = 0;  // with the file type
  uint32_t rdev = 0;
  std::string target;  // symlinks
  bool exclusive = false;
  bool truncate = false;
};

NfsBackend::NfsBackend(NfsOptions options) : options_(std::move(options)) {
  if (options_.url.version != 3) {
    throw std::invalid_argument(
        "backend nfs: only NFS version 3 is implemented (use ?version=3)");
  }
  if (options_.connections == 0) throw std::invalid_argument("backend nfs: connections must be >= 1");
  nfs::ConnectionOptions copts;
  copts.url = options_.url;
  copts.timeout = options_.timeout;
  for (unsigned i = 0; i < options_.connections; ++i) {
    connections_.push_back(std::make_unique<Connection>(copts, int(i)));
  }
  const Connection& first = *connections_.front();
  inodes_ = std::make_unique<nfs::InodeTable>(first.root_fh());
  auto cap = [](uint64_t server, uint32_t mine) {
    return uint32_t(std::clamp<uint64_t>(server == 0 ? mine : server, 4096, mine));
  };
  rsize_ = cap(first.readmax(), options_.rsize);
  wsize_ = cap(first.writemax(), options_.wsize);
  spdlog::info("nfs: mounted nfs://{}{} (NFSv3, {} connection{}, rsize {} wsize {}, timeout {} ms)",
               options_.url.server, options_.url.export_path, connections_.size(),
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
  return caps;
}

bool NfsBackend::handle(uint64_t ino, std::string* fh, Reply& reply) {
  if (inodes_->find(ino, fh)) return true;
  reply.error(ESTALE);
  return false;
}

Entry NfsBackend::make_entry(const std::string& fh, const struct stat& st) {
  Entry e;
  e.ino = inodes_->remember(fh, st.st_mode, st.st_gid);
  e.attr = st;
  e.entry_timeout = options_.entry_timeout;
  e.attr_timeout = options_.attr_timeout;
  return e;
}

template <typename Then>
void NfsBackend::attributes_then(Connection& conn, const std::string& fh, const void* known,
                                 Then then) {
  const auto* attr = static_cast<const post_op_attr*>(known);
  if (attr != nullptr && attr->attributes_follow) {
    return then(0, to_stat(attr->post_op_attr_u.attributes));
  }
  conn.submit(make_call(
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        GETATTR3args a{};
        a.object = as_fh3(fh);
        return rpc_nfs3_getattr_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int rpc_status, void* r) mutable {
        const int err = status_of<GETATTR3res>(rpc_status, r);
        if (err != 0) {
          struct stat none {};
          return then(err, none);
        }
        then(0, to_stat(static_cast<GETATTR3res*>(r)->GETATTR3res_u.resok.obj_attributes));
      }));
}

// --- names ------------------------------------------------------------------

void NfsBackend::lookup(const Context&, uint64_t parent, std::string_view name,
                        EntryReply reply) {
  std::string dir;
  if (!handle(parent, &dir, reply)) return;
  Connection& conn = connection_for(parent);
  conn.submit(make_call(
      [dir, name = std::string(name)](rpc_context* rpc, RpcCb cb, void* p) {
        LOOKUP3args a{};
        a.what.dir = as_fh3(dir);
        a.what.name = const_cast<char*>(name.c_str());
        return rpc_nfs3_lookup_async(rpc, cb, &a, p);
      },
      [this, &conn, reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<LOOKUP3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const LOOKUP3resok& ok = static_cast<LOOKUP3res*>(r)->LOOKUP3res_u.resok;
        std::string fh = fh_string(ok.object);
        attributes_then(conn, fh, &ok.obj_attributes,
                        [this, fh, reply = std::move(reply)](int e, const struct stat& st) mutable {
                          if (e != 0) return reply.error(e);
                          reply.ok(make_entry(fh, st));
                        });
      }));
}

void NfsBackend::forget(uint64_t ino, uint64_t nlookup) { inodes_->forget(ino, nlookup); }

template <typename Then>
void NfsBackend::make_node(const Context& ctx, uint64_t parent, std::string_view name,
                           const NewNode& spec, Then then) {
  std::string dir;
  if (!inodes_->find(parent, &dir)) return then(ESTALE, Entry{});
  // Owner: the tenant; group: the directory's in a set-group-ID directory
  // (the server, creating as root, would not know the tenant's).
  SetAttr attr;
  attr.valid = SetAttr::kUid | SetAttr::kGid;
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
  if (spec.truncate) {
    attr.valid |= SetAttr::kSize;
    attr.size = 0;
  }
  Connection& conn = connection_for(parent);
  auto send = [dir, name = std::string(name), spec, attr](rpc_context* rpc, RpcCb cb, void* p) {
    diropargs3 where{as_fh3(dir), const_cast<char*>(name.c_str())};
    sattr3 sattr;
    nfs::to_sattr3(attr, &sattr);
    switch (spec.mode & S_IFMT) {
      case S_IFDIR: {
        MKDIR3args a{};
        a.where = where;
        a.attributes = sattr;
        return rpc_nfs3_mkdir_async(rpc, cb, &a, p);
      }
      case S_IFLNK: {
        SYMLINK3args a{};
        a.where = where;
        a.symlink.symlink_attributes = sattr;
        a.symlink.symlink_data = const_cast<char*>(spec.target.c_str());
        return rpc_nfs3_symlink_async(rpc, cb, &a, p);
      }
      case S_IFREG: {
        CREATE3args a{};
        a.where = where;
        a.how.mode = spec.exclusive ? GUARDED : UNCHECKED;
        a.how.createhow3_u.obj_attributes = sattr;
        return rpc_nfs3_create_async(rpc, cb, &a, p);
      }
      default: {
        MKNOD3args a{};
        a.where = where;
        switch (spec.mode & S_IFMT) {
          case S_IFCHR:
          case S_IFBLK: {
            const bool chr = S_ISCHR(spec.mode);
            a.what.type = chr ? NF3CHR : NF3BLK;
            devicedata3& dev = chr ? a.what.mknoddata3_u.chr_device : a.what.mknoddata3_u.blk_device;
            dev.dev_attributes = sattr;
            dev.spec.specdata1 = major(spec.rdev);
            dev.spec.specdata2 = minor(spec.rdev);
            break;
          }
          case S_IFIFO:
            a.what.type = NF3FIFO;
            a.what.mknoddata3_u.pipe_attributes = sattr;
            break;
          default:
            a.what.type = NF3SOCK;
            a.what.mknoddata3_u.sock_attributes = sattr;
            break;
        }
        return rpc_nfs3_mknod_async(rpc, cb, &a, p);
      }
    }
  };
  // CREATE3resok, MKDIR3resok, MKNOD3resok and SYMLINK3resok share their
  // layout up to the attributes: {nfsstat3; post_op_fh3 obj; post_op_attr}.
  static_assert(offsetof(CREATE3res, CREATE3res_u) == offsetof(MKDIR3res, MKDIR3res_u));
  static_assert(offsetof(CREATE3res, CREATE3res_u) == offsetof(SYMLINK3res, SYMLINK3res_u));
  static_assert(offsetof(CREATE3res, CREATE3res_u) == offsetof(MKNOD3res, MKNOD3res_u));
  // Not idempotent: sent once (a lost answer is an error, not a second create).
  conn.submit(make_call(
      std::move(send),
      [this, &conn, then = std::move(then)](int rpc_status, void* r) mutable {
        const int err = status_of<CREATE3res>(rpc_status, r);
        if (err != 0) return then(err, Entry{});
        const CREATE3resok& ok = static_cast<CREATE3res*>(r)->CREATE3res_u.resok;
        if (!ok.obj.handle_follows) {
          spdlog::warn("nfs: the server created a file but returned no handle for it");
          return then(EIO, Entry{});
        }
        std::string fh = fh_string(ok.obj.post_op_fh3_u.handle);
        attributes_then(conn, fh, &ok.obj_attributes,
                        [this, fh, then = std::move(then)](int e, const struct stat& st) mutable {
                          if (e != 0) return then(e, Entry{});
                          then(0, make_entry(fh, st));
                        });
      },
      /*idempotent=*/false));
}

void NfsBackend::mknod(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                       uint32_t rdev, uint32_t, EntryReply reply) {
  NewNode spec;
  spec.mode = mode;
  spec.rdev = rdev;
  spec.exclusive = true;
  if (S_ISDIR(mode) || S_ISLNK(mode)) return reply.error(EINVAL);
  make_node(ctx, parent, name, spec, [reply = std::move(reply)](int err, const Entry& e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e);
  });
}

void NfsBackend::mkdir(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                       uint32_t, EntryReply reply) {
  NewNode spec;
  spec.mode = S_IFDIR | (mode & 07777);
  make_node(ctx, parent, name, spec, [reply = std::move(reply)](int err, const Entry& e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e);
  });
}

void NfsBackend::symlink(const Context& ctx, uint64_t parent, std::string_view name,
                         std::string_view target, EntryReply reply) {
  if (target.size() > kMaxSymlink) return reply.error(ENAMETOOLONG);
  NewNode spec;
  spec.mode = S_IFLNK | 0777;
  spec.target = std::string(target);
  make_node(ctx, parent, name, spec, [reply = std::move(reply)](int err, const Entry& e) mutable {
    if (err != 0) return reply.error(err);
    reply.ok(e);
  });
}

void NfsBackend::create(const Context& ctx, uint64_t parent, std::string_view name, uint32_t mode,
                        uint32_t, uint32_t flags, CreateReply reply) {
  NewNode spec;
  spec.mode = S_IFREG | (mode & 07777);
  spec.exclusive = (flags & O_EXCL) != 0;
  spec.truncate = (flags & O_TRUNC) != 0;
  make_node(ctx, parent, name, spec,
            [this, reply = std::move(reply)](int err, const Entry& e) mutable {
              if (err != 0) return reply.error(err);
              reply.ok(e, inodes_->open(e.ino));
            });
}

void NfsBackend::link(const Context&, uint64_t ino, uint64_t new_parent,
                      std::string_view new_name, EntryReply reply) {
  std::string file, dir;
  if (!handle(ino, &file, reply) || !handle(new_parent, &dir, reply)) return;
  Connection& conn = connection_for(new_parent);
  conn.submit(make_call(
      [file, dir, name = std::string(new_name)](rpc_context* rpc, RpcCb cb, void* p) {
        LINK3args a{};
        a.file = as_fh3(file);
        a.link.dir = as_fh3(dir);
        a.link.name = const_cast<char*>(name.c_str());
        return rpc_nfs3_link_async(rpc, cb, &a, p);
      },
      [this, &conn, file, reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<LINK3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const LINK3resok& ok = static_cast<LINK3res*>(r)->LINK3res_u.resok;
        attributes_then(conn, file, &ok.file_attributes,
                        [this, file, reply = std::move(reply)](int e, const struct stat& st) mutable {
                          if (e != 0) return reply.error(e);
                          reply.ok(make_entry(file, st));
                        });
      },
      /*idempotent=*/false));
}

template <typename Then>
void NfsBackend::hide_if_open(uint64_t parent, const std::string& dir, std::string_view name,
                              Then then) {
  Connection& conn = connection_for(parent);
  conn.submit(make_call(
      [dir, name = std::string(name)](rpc_context* rpc, RpcCb cb, void* p) {
        LOOKUP3args a{};
        a.what.dir = as_fh3(dir);
        a.what.name = const_cast<char*>(name.c_str());
        return rpc_nfs3_lookup_async(rpc, cb, &a, p);
      },
      [this, &conn, dir, name = std::string(name), then = std::move(then)](int rpc_status,
                                                                           void* r) mutable {
        const int err = status_of<LOOKUP3res>(rpc_status, r);
        if (err != 0) return then(err, false, std::string());
        std::string target = fh_string(static_cast<LOOKUP3res*>(r)->LOOKUP3res_u.resok.object);
        uint64_t ino = 0;
        if (inodes_->doom(target, &ino)) return then(0, false, std::move(target));
        // Open: move it aside instead, and remove it at its last close.
        std::string hidden = fmt::format("{}{:x}-{}", kHiddenPrefix, ino, next_fh_++);
        conn.submit(make_call(
            [dir, name, hidden](rpc_context* rpc, RpcCb cb, void* p) {
              RENAME3args a{};
              a.from.dir = as_fh3(dir);
              a.from.name = const_cast<char*>(name.c_str());
              a.to.dir = as_fh3(dir);
              a.to.name = const_cast<char*>(hidden.c_str());
              return rpc_nfs3_rename_async(rpc, cb, &a, p);
            },
            [this, ino, dir, hidden, then = std::move(then)](int rpc_status, void* r) mutable {
              const int err = status_of<RENAME3res>(rpc_status, r);
              if (err != 0) return then(err, false, std::string());
              inodes_->hide(ino, {dir, hidden});
              then(0, true, std::string());
            },
            /*idempotent=*/false));
      }));
}

void NfsBackend::unlink(const Context&, uint64_t parent, std::string_view name,
                        StatusReply reply) {
  std::string dir;
  if (!handle(parent, &dir, reply)) return;
  hide_if_open(parent, dir, name,
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
  connection_for(parent).submit(make_call(
      [dir, name, directory](rpc_context* rpc, RpcCb cb, void* p) {
        if (directory) {
          RMDIR3args a{};
          a.object.dir = as_fh3(dir);
          a.object.name = const_cast<char*>(name.c_str());
          return rpc_nfs3_rmdir_async(rpc, cb, &a, p);
        }
        REMOVE3args a{};
        a.object.dir = as_fh3(dir);
        a.object.name = const_cast<char*>(name.c_str());
        return rpc_nfs3_remove_async(rpc, cb, &a, p);
      },
      [this, doomed = std::move(doomed), reply = std::move(reply)](int rpc_status,
                                                                   void* r) mutable {
        undoom(doomed);
        // REMOVE3res and RMDIR3res are both {nfsstat3; wcc_data}.
        const int err = status_of<REMOVE3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        reply.ok();
      },
      /*idempotent=*/false));
}

void NfsBackend::rmdir(const Context&, uint64_t parent, std::string_view name,
                       StatusReply reply) {
  std::string dir;
  if (!handle(parent, &dir, reply)) return;
  remove(parent, dir, std::string(name), true, std::move(reply), std::string());
}

void NfsBackend::rename(const Context&, uint64_t parent, std::string_view name,
                        uint64_t new_parent, std::string_view new_name, uint32_t flags,
                        StatusReply reply) {
  // NFSv3 RENAME always replaces; Linux's NFS client refuses flags the same way.
  if (flags != 0) return reply.error(EINVAL);
  std::string from, to;
  if (!handle(parent, &from, reply) || !handle(new_parent, &to, reply)) return;
  auto rename_now = [this, parent, from, to, name = std::string(name),
                     new_name = std::string(new_name)](StatusReply reply, std::string doomed) {
    connection_for(parent).submit(make_call(
        [from, to, name, new_name](rpc_context* rpc, RpcCb cb, void* p) {
          RENAME3args a{};
          a.from.dir = as_fh3(from);
          a.from.name = const_cast<char*>(name.c_str());
          a.to.dir = as_fh3(to);
          a.to.name = const_cast<char*>(new_name.c_str());
          return rpc_nfs3_rename_async(rpc, cb, &a, p);
        },
        [this, doomed = std::move(doomed), reply = std::move(reply)](int rpc_status,
                                                                     void* r) mutable {
          undoom(doomed);
          const int err = status_of<RENAME3res>(rpc_status, r);
          if (err != 0) return reply.error(err);
          reply.ok();
        },
        /*idempotent=*/false));
  };
  // A file replaced while open stays readable through its descriptors.
  hide_if_open(new_parent, to, new_name,
               [rename_now, reply = std::move(reply)](int err, bool, std::string doomed) mutable {
                 if (err != 0 && err != ENOENT) return reply.error(err);
                 rename_now(std::move(reply), std::move(doomed));
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
  attributes_then(connection_for(ino), fh, nullptr,
                  [this, ino, reply = std::move(reply)](int err, const struct stat& st) mutable {
                    if (err != 0) return reply.error(err);
                    reply_attr(ino, st, std::move(reply));
                  });
}

void NfsBackend::setattr(const Context&, uint64_t ino, const SetAttr& attr, AttrReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  // Acknowledged writes past a new end of file must not come back in a resend.
  if (attr.valid & SetAttr::kSize) inodes_->truncate_unstable(ino, attr.size);
  Connection& conn = connection_for(ino);
  conn.submit(make_call(
      [fh, attr](rpc_context* rpc, RpcCb cb, void* p) {
        SETATTR3args a{};
        a.object = as_fh3(fh);
        nfs::to_sattr3(attr, &a.new_attributes);
        return rpc_nfs3_setattr_async(rpc, cb, &a, p);
      },
      [this, &conn, ino, fh, reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<SETATTR3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const SETATTR3resok& ok = static_cast<SETATTR3res*>(r)->SETATTR3res_u.resok;
        attributes_then(conn, fh, &ok.obj_wcc.after,
                        [this, ino, reply = std::move(reply)](int e, const struct stat& st) mutable {
                          if (e != 0) return reply.error(e);
                          reply_attr(ino, st, std::move(reply));
                        });
      }));
}

void NfsBackend::readlink(const Context&, uint64_t ino, ReadlinkReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  connection_for(ino).submit(make_call(
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        READLINK3args a{};
        a.symlink = as_fh3(fh);
        return rpc_nfs3_readlink_async(rpc, cb, &a, p);
      },
      [reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<READLINK3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const char* target = static_cast<READLINK3res*>(r)->READLINK3res_u.resok.data;
        reply.ok(target != nullptr ? target : "");
      }));
}

void NfsBackend::access(const Context&, uint64_t ino, uint32_t mask, StatusReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  uint32_t want = 0;
  if (mask & R_OK) want |= ACCESS3_READ;
  if (mask & W_OK) want |= ACCESS3_MODIFY;
  if (mask & X_OK) want |= ACCESS3_EXECUTE | ACCESS3_LOOKUP;
  connection_for(ino).submit(make_call(
      [fh, want](rpc_context* rpc, RpcCb cb, void* p) {
        ACCESS3args a{};
        a.object = as_fh3(fh);
        a.access = want;
        return rpc_nfs3_access_async(rpc, cb, &a, p);
      },
      [want, reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<ACCESS3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const uint32_t got = static_cast<ACCESS3res*>(r)->ACCESS3res_u.resok.access;
        // Execute is LOOKUP on a directory and EXECUTE on a file: either will do.
        uint32_t need = want & ~uint32_t(ACCESS3_EXECUTE | ACCESS3_LOOKUP);
        if ((need & got) != need) return reply.error(EACCES);
        if ((want & (ACCESS3_EXECUTE | ACCESS3_LOOKUP)) &&
            !(got & (ACCESS3_EXECUTE | ACCESS3_LOOKUP))) {
          return reply.error(EACCES);
        }
        reply.ok();
      }));
}

void NfsBackend::statfs(const Context&, uint64_t, StatfsReply reply) {
  std::string root;
  if (!handle(kRootIno, &root, reply)) return;
  connection_for(kRootIno).submit(make_call(
      [root](rpc_context* rpc, RpcCb cb, void* p) {
        FSSTAT3args a{};
        a.fsroot = as_fh3(root);
        return rpc_nfs3_fsstat_async(rpc, cb, &a, p);
      },
      [reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<FSSTAT3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const FSSTAT3resok& ok = static_cast<FSSTAT3res*>(r)->FSSTAT3res_u.resok;
        constexpr uint64_t kBlock = 4096;
        struct statvfs st {};
        st.f_bsize = kBlock;
        st.f_frsize = kBlock;
        st.f_blocks = ok.tbytes / kBlock;
        st.f_bfree = ok.fbytes / kBlock;
        st.f_bavail = ok.abytes / kBlock;
        st.f_files = ok.tfiles;
        st.f_ffree = ok.ffiles;
        st.f_favail = ok.afiles;
        st.f_namemax = NAME_MAX;
        reply.ok(st);
      }));
}

// --- files ------------------------------------------------------------------

void NfsBackend::open(const Context&, uint64_t ino, uint32_t flags, OpenReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  open_checked(ino, fh, flags, std::make_shared<OpenReply>(std::move(reply)));
}

void NfsBackend::open_checked(uint64_t ino, const std::string& fh, uint32_t flags,
                              std::shared_ptr<OpenReply> reply) {
  // Counted open before the server is asked: a concurrent unlink or rename
  // over this name (hide_if_open) then hides the file instead of removing
  // it under the opener; one already on its way makes this open wait.
  const uint64_t handle =
      inodes_->open(ino, [this, ino, fh, flags, reply] { open_checked(ino, fh, flags, reply); });
  if (handle == nfs::InodeTable::kWaiting) return;
  if (handle == 0) return reply->error(ESTALE);
  // Close-to-open consistency, as NFS clients keep it: an open asks the
  // server, and a file that was replaced or removed since the kernel looked
  // it up answers ESTALE, on which the kernel looks the name up again. With
  // FUSE_ATOMIC_O_TRUNC, the truncation is ours to do: a SETATTR.
  const bool truncate = (flags & O_TRUNC) != 0;
  if (truncate) inodes_->truncate_unstable(ino, 0);
  connection_for(ino).submit(make_call(
      [fh, truncate](rpc_context* rpc, RpcCb cb, void* p) {
        if (truncate) {
          SETATTR3args a{};
          a.object = as_fh3(fh);
          a.new_attributes.size.set_it = 1;
          a.new_attributes.size.set_size3_u.size = 0;
          return rpc_nfs3_setattr_async(rpc, cb, &a, p);
        }
        GETATTR3args a{};
        a.object = as_fh3(fh);
        return rpc_nfs3_getattr_async(rpc, cb, &a, p);
      },
      [this, ino, handle, reply](int rpc_status, void* r) {
        // SETATTR3res and GETATTR3res both begin with their nfsstat3.
        const int err = status_of<GETATTR3res>(rpc_status, r);
        if (err != 0) {
          close_handle(ino, handle, [reply, err] { reply->error(err); });
          return;
        }
        reply->ok(handle);
      }));
}

void NfsBackend::read(const Context&, uint64_t ino, uint64_t handle_id, uint64_t offset,
                      uint32_t size, std::span<const iovec> dst, ReadReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  if (!inodes_->has_handle(ino, handle_id)) return reply.error(EBADF);
  if (size == 0) return reply.ok(0);
  // The pieces of one READ, answered together. All go to one connection, so
  // their callbacks run on its one loop thread: no lock.
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
    conn.submit(make_call(
        [fh, off = offset + at, count](rpc_context* rpc, RpcCb cb, void* p) {
          READ3args a{};
          a.file = as_fh3(fh);
          a.offset = off;
          a.count = count;
          return rpc_nfs3_read_async(rpc, cb, &a, p);
        },
        [state, at, count](int rpc_status, void* r) {
          const int err = status_of<READ3res>(rpc_status, r);
          if (err != 0) {
            if (state->error == 0) state->error = err;
          } else {
            const READ3resok& ok = static_cast<READ3res*>(r)->READ3res_u.resok;
            const size_t got = std::min<size_t>(ok.data.data_len, count);
            copy_to_iov(state->dst, at, ok.data.data_val, got);
            if (got < count) state->end = std::min<uint64_t>(state->end, at + got);
          }
          if (--state->pending > 0) return;
          if (state->error != 0) return state->reply.error(state->error);
          state->reply.ok(state->end);
        }));
  }
}

void NfsBackend::write(const Context&, uint64_t ino, uint64_t handle_id, uint64_t offset,
                       std::span<const iovec> src, uint32_t, WriteReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  if (!inodes_->has_handle(ino, handle_id)) return reply.error(EBADF);
  size_t size = 0;
  for (const iovec& v : src) size += v.iov_len;
  if (size == 0) return reply.ok(0);
  struct Pieces {
    WriteReply reply;
    unsigned pending = 0;
    int error = 0;
    uint64_t end;  // the first byte not written
  };
  auto state = std::make_shared<Pieces>();
  state->reply = std::move(reply);
  state->end = size;
  state->pending = unsigned((size + wsize_ - 1) / wsize_);
  // Past the bound on what is kept for a resend, the server must make the
  // data stable before it answers.
  const bool stable = inodes_->unstable_bytes() >= options_.max_unstable;
  Connection& conn = next_connection();
  for (uint64_t at = 0; at < size; at += wsize_) {
    const size_t count = std::min<uint64_t>(wsize_, size - at);
    auto data = std::make_shared<std::string>(gather(src, at, count));
    conn.submit(make_call(
        [fh, off = offset + at, data, stable](rpc_context* rpc, RpcCb cb, void* p) {
          WRITE3args a{};
          a.file = as_fh3(fh);
          a.offset = off;
          a.count = count3(data->size());
          a.stable = stable ? FILE_SYNC : UNSTABLE;
          a.data.data_len = u_int(data->size());
          a.data.data_val = data->data();
          return rpc_nfs3_write_async(rpc, cb, &a, p);
        },
        [this, state, ino, at, off = offset + at, data](int rpc_status, void* r) {
          const int err = status_of<WRITE3res>(rpc_status, r);
          if (err != 0) {
            if (state->error == 0) state->error = err;
          } else {
            const WRITE3resok& ok = static_cast<WRITE3res*>(r)->WRITE3res_u.resok;
            const size_t done = std::min<size_t>(ok.count, data->size());
            if (done < data->size()) state->end = std::min<uint64_t>(state->end, at + done);
            if (ok.committed != FILE_SYNC && done > 0) {
              UnstableWrite w;
              w.offset = off;
              data->resize(done);
              w.data = std::move(*data);
              std::memcpy(w.verifier.data(), ok.verf, w.verifier.size());
              inodes_->add_unstable(ino, std::move(w));
            }
          }
          if (--state->pending > 0) return;
          if (state->error != 0) return state->reply.error(state->error);
          state->reply.ok(state->end);
        }));
  }
}

template <typename Then>
void NfsBackend::commit(uint64_t ino, Then then) {
  std::string fh;
  if (!inodes_->find(ino, &fh)) return then(ESTALE);
  std::vector<UnstableWrite> writes = inodes_->take_unstable(ino);
  if (writes.empty()) return then(0);
  auto pending = std::make_shared<std::vector<UnstableWrite>>(std::move(writes));
  connection_for(ino).submit(make_call(
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        COMMIT3args a{};
        a.file = as_fh3(fh);  // offset 0, count 0: the whole file
        return rpc_nfs3_commit_async(rpc, cb, &a, p);
      },
      [this, ino, fh, pending, then = std::move(then)](int rpc_status, void* r) mutable {
        const int err = status_of<COMMIT3res>(rpc_status, r);
        if (err != 0) {
          inodes_->restore_unstable(ino, std::move(*pending));
          return then(err);
        }
        WriteVerifier verifier;
        std::memcpy(verifier.data(), static_cast<COMMIT3res*>(r)->COMMIT3res_u.resok.verf,
                    verifier.size());
        // A write acknowledged under another verifier was acknowledged by a
        // server instance that may have lost it: send it again.
        std::vector<UnstableWrite> lost;
        for (UnstableWrite& w : *pending) {
          if (w.verifier != verifier) lost.push_back(std::move(w));
        }
        if (lost.empty()) return then(0);
        spdlog::warn("nfs: the server's write verifier changed (it restarted?): sending {} "
                     "write{} again",
                     lost.size(), lost.size() == 1 ? "" : "s");
        resend(ino, fh, std::move(lost), std::move(then));
      }));
}

template <typename Then>
void NfsBackend::resend(uint64_t ino, const std::string& fh, std::vector<UnstableWrite> writes,
                        Then then) {
  struct Resend {
    std::vector<UnstableWrite> writes;
    std::vector<UnstableWrite> failed;
    size_t pending;
    int error = 0;
    Then then;
  };
  auto state = std::make_shared<Resend>(Resend{std::move(writes), {}, 0, 0, std::move(then)});
  state->pending = state->writes.size();
  Connection& conn = connection_for(ino);
  for (size_t i = 0; i < state->writes.size(); ++i) {
    conn.submit(make_call(
        [fh, state, i](rpc_context* rpc, RpcCb cb, void* p) {
          const UnstableWrite& w = state->writes[i];
          WRITE3args a{};
          a.file = as_fh3(fh);
          a.offset = w.offset;
          a.count = count3(w.data.size());
          a.stable = FILE_SYNC;
          a.data.data_len = u_int(w.data.size());
          a.data.data_val = const_cast<char*>(w.data.data());
          return rpc_nfs3_write_async(rpc, cb, &a, p);
        },
        [this, ino, state, i](int rpc_status, void* r) {
          const int err = status_of<WRITE3res>(rpc_status, r);
          if (err != 0) {
            if (state->error == 0) state->error = err;
            state->failed.push_back(std::move(state->writes[i]));
          }
          if (--state->pending > 0) return;
          // What could not be sent stays for the next commit.
          if (!state->failed.empty()) inodes_->restore_unstable(ino, std::move(state->failed));
          state->then(state->error);
        }));
  }
}

void NfsBackend::fsync(const Context&, uint64_t ino, uint64_t, bool, StatusReply reply) {
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

void NfsBackend::release(const Context&, uint64_t ino, uint64_t fh, uint32_t, uint64_t, bool,
                         StatusReply reply) {
  if (!inodes_->has_handle(ino, fh)) return reply.error(EBADF);
  commit(ino, [this, ino, fh, reply = std::move(reply)](int err) mutable {
    if (err != 0) spdlog::warn("nfs: committing writes at the last close failed: {}", strerror(err));
    close_handle(ino, fh, [reply = std::move(reply)]() mutable { reply.ok(); });
  });
}

template <typename Then>
void NfsBackend::close_handle(uint64_t ino, uint64_t handle, Then then) {
  std::optional<nfs::InodeTable::Hidden> hidden;
  if (!inodes_->close(ino, handle, &hidden) || !hidden) return then();
  // The last close of a file removed while open: now it goes.
  connection_for(ino).submit(make_call(
      [hidden = *hidden](rpc_context* rpc, RpcCb cb, void* p) {
        REMOVE3args a{};
        a.object.dir = as_fh3(hidden.dir_fh);
        a.object.name = const_cast<char*>(hidden.name.c_str());
        return rpc_nfs3_remove_async(rpc, cb, &a, p);
      },
      [name = hidden->name, then = std::move(then)](int rpc_status, void* r) mutable {
        if (const int err = status_of<REMOVE3res>(rpc_status, r); err != 0) {
          spdlog::warn("nfs: cannot remove {} at its last close: {}", name, strerror(err));
        }
        then();
      },
      /*idempotent=*/false));
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

void NfsBackend::fsyncdir(const Context&, uint64_t ino, uint64_t, bool, StatusReply reply) {
  // NFSv3 directory operations are synchronous on the server (RFC 1813 §3.3).
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  reply.ok();
}

void NfsBackend::readdir(const Context&, uint64_t ino, uint64_t, uint64_t offset,
                         DirReply reply) {
  std::string fh;
  if (!handle(ino, &fh, reply)) return;
  // The FUSE offset is the NFS cookie of the last entry returned (0: start).
  // The cookie verifier is left zero: the servers dpfs targets accept it.
  constexpr count3 kDirCount = 16384;
  constexpr count3 kMaxCount = 65536;
  connection_for(ino).submit(make_call(
      [fh, offset](rpc_context* rpc, RpcCb cb, void* p) {
        READDIRPLUS3args a{};
        a.dir = as_fh3(fh);
        a.cookie = offset;
        a.dircount = kDirCount;
        a.maxcount = kMaxCount;
        return rpc_nfs3_readdirplus_async(rpc, cb, &a, p);
      },
      [this, reply = std::move(reply)](int rpc_status, void* r) mutable {
        const int err = status_of<READDIRPLUS3res>(rpc_status, r);
        if (err != 0) return reply.error(err);
        const READDIRPLUS3resok& ok = static_cast<READDIRPLUS3res*>(r)->READDIRPLUS3res_u.resok;
        const bool plus = reply.plus();
        // libnfs 4.0 decodes the entries into 4-byte aligned memory: each
        // is copied out before use (UBSan: misaligned member access).
        entryplus3 copy;
        for (const void* at = ok.reply.entries; at != nullptr; at = copy.nextentry) {
          std::memcpy(&copy, at, sizeof copy);
          const entryplus3* e = &copy;
          const std::string_view name = e->name != nullptr ? e->name : "";
          if (name.empty() || name.starts_with(kHiddenPrefix)) continue;
          if (!plus) {
            if (!reply.add(name, e->fileid, dirent_type(e->name_attributes), e->cookie)) break;
            continue;
          }
          const bool dot = name == "." || name == "..";
          // The kernel counts no lookup for "." and "..", nor for an entry
          // without a handle (node id 0): it only lists those.
          if (dot || !e->name_handle.handle_follows || !e->name_attributes.attributes_follow) {
            Entry entry;
            if (e->name_attributes.attributes_follow) {
              entry.attr = to_stat(e->name_attributes.post_op_attr_u.attributes);
            }
            // The kernel links no inode for "." and ".."; node id 0 tells it
            // an entry has no attributes. d_ino is st_ino, the fileid.
            entry.attr.st_ino = e->fileid;
            if (!reply.add_plus(name, entry, e->cookie)) break;
            continue;
          }
          Entry entry = make_entry(fh_string(e->name_handle.post_op_fh3_u.handle),
                                   to_stat(e->name_attributes.post_op_attr_u.attributes));
          if (!reply.add_plus(name, entry, e->cookie)) {
            inodes_->forget(entry.ino, 1);  // not sent: not counted
            break;
          }
        }
        reply.done();
      }));
}

}  // namespace dpfs
