#include "backend/nfs/nfs3.h"

// libnfs.h first: the raw headers use the EXTERN it defines.
#include <nfsc/libnfs.h>

#include <dirent.h>
#include <fmt/format.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw.h>
#include <spdlog/spdlog.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstddef>
#include <cstring>
#include <stdexcept>

#include "backend/nfs/connection.h"
#include "backend/nfs/large_call.h"

namespace dpfs::nfs {

int nfs3_errno(int status) {
  switch (status) {
    case NFS3_OK:
      return 0;
    case NFS3ERR_PERM:
      return EPERM;
    case NFS3ERR_NOENT:
      return ENOENT;
    case NFS3ERR_IO:
      return EIO;
    case NFS3ERR_NXIO:
      return ENXIO;
    case NFS3ERR_ACCES:
      return EACCES;
    case NFS3ERR_EXIST:
      return EEXIST;
    case NFS3ERR_XDEV:
      return EXDEV;
    case NFS3ERR_NODEV:
      return ENODEV;
    case NFS3ERR_NOTDIR:
      return ENOTDIR;
    case NFS3ERR_ISDIR:
      return EISDIR;
    case NFS3ERR_INVAL:
      return EINVAL;
    case NFS3ERR_FBIG:
      return EFBIG;
    case NFS3ERR_NOSPC:
      return ENOSPC;
    case NFS3ERR_ROFS:
      return EROFS;
    case NFS3ERR_MLINK:
      return EMLINK;
    case NFS3ERR_NAMETOOLONG:
      return ENAMETOOLONG;
    case NFS3ERR_NOTEMPTY:
      return ENOTEMPTY;
    case NFS3ERR_DQUOT:
      return EDQUOT;
    case NFS3ERR_STALE:
    case NFS3ERR_BADHANDLE:  // the kernel's EBADHANDLE is not a user-space errno
      return ESTALE;
    case NFS3ERR_REMOTE:
      return EREMOTE;
    case NFS3ERR_NOTSUPP:
      return EOPNOTSUPP;
    case NFS3ERR_BAD_COOKIE:
    case NFS3ERR_TOOSMALL:
    case NFS3ERR_BADTYPE:
      return EINVAL;
    case NFS3ERR_SERVERFAULT:
      return EREMOTEIO;
    case NFS3ERR_JUKEBOX:  // retried until the deadline; then the caller may try again
      return EAGAIN;
    default:
      return EIO;
  }
}

int rpc_errno(int rpc_status) {
  switch (rpc_status) {
    case RPC_STATUS_SUCCESS:
      return 0;
    case RPC_STATUS_TIMEOUT:
      return ETIMEDOUT;
    default:
      return EIO;
  }
}

uint32_t access_bits(uint32_t mask) {
  uint32_t want = 0;
  if (mask & R_OK) want |= ACCESS3_READ;
  if (mask & W_OK) want |= ACCESS3_MODIFY;
  if (mask & X_OK) want |= ACCESS3_EXECUTE | ACCESS3_LOOKUP;
  return want;
}

int access_errno(uint32_t want, uint32_t got) {
  // Execute is LOOKUP on a directory and EXECUTE on a file: either will do.
  constexpr uint32_t kExec = ACCESS3_EXECUTE | ACCESS3_LOOKUP;
  const uint32_t need = want & ~kExec;
  if ((need & got) != need) return EACCES;
  if ((want & kExec) && !(got & kExec)) return EACCES;
  return 0;
}

struct statvfs to_statvfs(uint64_t tbytes, uint64_t fbytes, uint64_t abytes, uint64_t tfiles,
                          uint64_t ffiles, uint64_t afiles) {
  constexpr uint64_t kBlock = 4096;
  struct statvfs st {};
  st.f_bsize = kBlock;
  st.f_frsize = kBlock;
  st.f_blocks = tbytes / kBlock;
  st.f_bfree = fbytes / kBlock;
  st.f_bavail = abytes / kBlock;
  st.f_files = tfiles;
  st.f_ffree = ffiles;
  st.f_favail = afiles;
  st.f_namemax = NAME_MAX;
  return st;
}

struct stat to_stat(const fattr3& a) {
  struct stat st {};
  mode_t type = S_IFREG;
  switch (a.type) {
    case NF3REG:
      type = S_IFREG;
      break;
    case NF3DIR:
      type = S_IFDIR;
      break;
    case NF3BLK:
      type = S_IFBLK;
      break;
    case NF3CHR:
      type = S_IFCHR;
      break;
    case NF3LNK:
      type = S_IFLNK;
      break;
    case NF3SOCK:
      type = S_IFSOCK;
      break;
    case NF3FIFO:
      type = S_IFIFO;
      break;
  }
  st.st_mode = type | (a.mode & 07777);
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_size = off_t(a.size);
  st.st_blocks = blkcnt_t((a.used + 511) / 512);
  st.st_blksize = 4096;
  st.st_rdev = makedev(a.rdev.specdata1, a.rdev.specdata2);
  st.st_ino = a.fileid;
  st.st_atim = {time_t(a.atime.seconds), long(a.atime.nseconds)};
  st.st_mtim = {time_t(a.mtime.seconds), long(a.mtime.nseconds)};
  st.st_ctim = {time_t(a.ctime.seconds), long(a.ctime.nseconds)};
  return st;
}

nfs_fh3 as_fh3(const std::string& fh) {
  nfs_fh3 out{};
  out.data.data_len = u_int(fh.size());
  out.data.data_val = const_cast<char*>(fh.data());  // libnfs only encodes it
  return out;
}

nfstime3 to_nfstime3(const timespec& t) {
  // As the kernel's timestamp_truncate: a clamped time loses its nanoseconds.
  if (t.tv_sec < 0) return {0, 0};
  if (uint64_t(t.tv_sec) > UINT32_MAX) return {UINT32_MAX, 0};
  return {u_int(t.tv_sec), u_int(t.tv_nsec)};
}

void to_sattr3(const SetAttr& attr, sattr3* out) {
  *out = sattr3{};
  if (attr.valid & SetAttr::kMode) {
    out->mode.set_it = 1;
    out->mode.set_mode3_u.mode = attr.mode & 07777;
  }
  if (attr.valid & SetAttr::kUid) {
    out->uid.set_it = 1;
    out->uid.set_uid3_u.uid = attr.uid;
  }
  if (attr.valid & SetAttr::kGid) {
    out->gid.set_it = 1;
    out->gid.set_gid3_u.gid = attr.gid;
  }
  if (attr.valid & SetAttr::kSize) {
    out->size.set_it = 1;
    out->size.set_size3_u.size = attr.size;
  }
  // NFSv3 times are unsigned 32-bit seconds: earlier or later times cannot
  // be stored (RFC 1813 §2.5 nfstime3). They are clamped, as Linux's own
  // client clamps them (its superblock's s_time_min/max are 0 and
  // U32_MAX), never wrapped into another date.
  if (attr.valid & SetAttr::kAtime) {
    if (attr.valid & SetAttr::kAtimeNow) {
      out->atime.set_it = SET_TO_SERVER_TIME;
    } else {
      out->atime.set_it = SET_TO_CLIENT_TIME;
      out->atime.set_atime_u.atime = to_nfstime3(attr.atime);
    }
  }
  if (attr.valid & SetAttr::kMtime) {
    if (attr.valid & SetAttr::kMtimeNow) {
      out->mtime.set_it = SET_TO_SERVER_TIME;
    } else {
      out->mtime.set_it = SET_TO_CLIENT_TIME;
      out->mtime.set_mtime_u.mtime = to_nfstime3(attr.mtime);
    }
  }
}

NfsUrl parse_nfs_url(std::string_view url) {
  auto bad = [&](std::string_view why) {
    throw std::invalid_argument(
        fmt::format("{}: {} (expected nfs://SERVER[:PORT]/EXPORT[?version=3])", url, why));
  };
  constexpr std::string_view kScheme = "nfs://";
  if (!url.starts_with(kScheme)) bad("does not start with nfs://");
  std::string_view rest = url.substr(kScheme.size());
  std::string_view query;
  if (size_t q = rest.find('?'); q != std::string_view::npos) {
    query = rest.substr(q + 1);
    rest = rest.substr(0, q);
  }
  const size_t slash = rest.find('/');
  if (slash == std::string_view::npos || slash + 1 == rest.size()) bad("no export path");
  std::string_view host = rest.substr(0, slash);
  NfsUrl out;
  out.export_path = std::string(rest.substr(slash));
  if (size_t colon = host.rfind(':'); colon != std::string_view::npos) {
    std::string_view port = host.substr(colon + 1);
    unsigned n = 0;
    auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), n);
    if (ec != std::errc() || end != port.data() + port.size() || n == 0 || n > 65535) {
      bad(fmt::format("bad port '{}'", port));
    }
    out.port = uint16_t(n);
    host = host.substr(0, colon);
  }
  if (host.empty()) bad("no server");
  out.server = std::string(host);
  if (out.export_path.find('\0') != std::string::npos) bad("NUL in the export path");
  while (!query.empty()) {
    const size_t amp = query.find('&');
    std::string_view kv = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (kv == "version=3") {
      out.version = 3;
    } else if (kv == "version=4") {
      out.version = 4;
    } else {
      bad(fmt::format("unknown option '{}' (known: version=3, version=4)", kv));
    }
  }
  return out;
}

}  // namespace dpfs::nfs

// --- Nfs3 -------------------------------------------------------------------

namespace dpfs::nfs {
namespace {

using RpcCb = void (*)(rpc_context*, int, void*, void*);

// The errno of an answer: 0, an RPC failure, or the server's nfsstat3.
// REQUIRES: Res is an NFSv3 *3res (its first member is the nfsstat3).
template <typename Res>
int status_of(int rpc_status, void* res) {
  if (rpc_status != RPC_STATUS_SUCCESS) return rpc_errno(rpc_status);
  return nfs3_errno(static_cast<Res*>(res)->status);
}

std::string fh_string(const nfs_fh3& fh) { return std::string(fh.data.data_val, fh.data.data_len); }

uint32_t dirent_type(const post_op_attr& attr) {
  if (!attr.attributes_follow) return DT_UNKNOWN;
  return (to_stat(attr.post_op_attr_u.attributes).st_mode & S_IFMT) >> 12;
}

// Sends one RPC: `send(rpc, cb, private)` is an rpc_nfs3_*_async call, and
// `done(err, res)` gets its answer (res: the decoded *3res when err is 0).
template <typename Res, typename Send, typename Done>
void call(Connection& conn, Send send, Done done, bool idempotent = true) {
  conn.submit(make_call(
      std::move(send),
      [done = std::move(done)](int rpc_status, void* r) mutable {
        const int err = status_of<Res>(rpc_status, r);
        done(err, err == 0 ? static_cast<Res*>(r) : nullptr);
      },
      idempotent));
}

}  // namespace

void Nfs3::attributes_then(Connection& conn, const std::string& fh, const void* known,
                           Then<int, struct stat> then) {
  const auto* attr = static_cast<const post_op_attr*>(known);
  if (attr != nullptr && attr->attributes_follow) {
    return then(0, to_stat(attr->post_op_attr_u.attributes));
  }
  getattr(conn, fh, std::move(then));
}

void Nfs3::getattr(Connection& conn, const std::string& fh, Then<int, struct stat> then) {
  call<GETATTR3res>(
      conn,
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        GETATTR3args a{};
        a.object = as_fh3(fh);
        return rpc_nfs3_getattr_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int err, GETATTR3res* r) mutable {
        if (err != 0) return then(err, {});
        then(0, to_stat(r->GETATTR3res_u.resok.obj_attributes));
      });
}

void Nfs3::lookup(Connection& conn, const std::string& dir, const std::string& name,
                  Then<int, Node> then) {
  call<LOOKUP3res>(
      conn,
      [dir, name](rpc_context* rpc, RpcCb cb, void* p) {
        LOOKUP3args a{};
        a.what.dir = as_fh3(dir);
        a.what.name = const_cast<char*>(name.c_str());
        return rpc_nfs3_lookup_async(rpc, cb, &a, p);
      },
      [this, &conn, then = std::move(then)](int err, LOOKUP3res* r) mutable {
        if (err != 0) return then(err, {});
        const LOOKUP3resok& ok = r->LOOKUP3res_u.resok;
        std::string fh = fh_string(ok.object);
        attributes_then(conn, fh, &ok.obj_attributes,
                        [fh, then = std::move(then)](int e, struct stat st) mutable {
                          if (e != 0) return then(e, {});
                          then(0, Node{fh, st});
                        });
      });
}

void Nfs3::setattr(Connection& conn, const std::string& fh, const SetAttr& attr,
                   Then<int, struct stat> then) {
  call<SETATTR3res>(
      conn,
      [fh, attr](rpc_context* rpc, RpcCb cb, void* p) {
        SETATTR3args a{};
        a.object = as_fh3(fh);
        to_sattr3(attr, &a.new_attributes);
        return rpc_nfs3_setattr_async(rpc, cb, &a, p);
      },
      [this, &conn, fh, then = std::move(then)](int err, SETATTR3res* r) mutable {
        if (err != 0) return then(err, {});
        attributes_then(conn, fh, &r->SETATTR3res_u.resok.obj_wcc.after, std::move(then));
      });
}

void Nfs3::create(Connection& conn, const std::string& dir, const std::string& name,
                  const NewNode& spec, Then<int, Node> then) {
  auto send = [dir, name, spec](rpc_context* rpc, RpcCb cb, void* p) {
    diropargs3 where{as_fh3(dir), const_cast<char*>(name.c_str())};
    sattr3 sattr;
    to_sattr3(spec.attr, &sattr);
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
        // A long target does not fit libnfs's 4 KiB encode buffer.
        if (spec.target.size() > 1024) {
          return send_large_call(rpc, NFS_PROGRAM, NFS_V3, NFS3_SYMLINK, cb, p,
                                 reinterpret_cast<zdrproc_t>(&zdr_SYMLINK3args), &a,
                                 reinterpret_cast<zdrproc_t>(&zdr_SYMLINK3res),
                                 int(sizeof(SYMLINK3res)), spec.target.size());
        }
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
            devicedata3& dev =
                chr ? a.what.mknoddata3_u.chr_device : a.what.mknoddata3_u.blk_device;
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
  call<CREATE3res>(
      conn, std::move(send),
      [this, &conn, then = std::move(then)](int err, CREATE3res* r) mutable {
        if (err != 0) return then(err, {});
        const CREATE3resok& ok = r->CREATE3res_u.resok;
        if (!ok.obj.handle_follows) {
          spdlog::warn("nfs: the server created a file but returned no handle for it");
          return then(EIO, {});
        }
        std::string fh = fh_string(ok.obj.post_op_fh3_u.handle);
        attributes_then(conn, fh, &ok.obj_attributes,
                        [fh, then = std::move(then)](int e, struct stat st) mutable {
                          if (e != 0) return then(e, {});
                          then(0, Node{fh, st});
                        });
      },
      /*idempotent=*/false);
}

void Nfs3::link(Connection& conn, const std::string& file, const std::string& dir,
                const std::string& name, Then<int, struct stat> then) {
  call<LINK3res>(
      conn,
      [file, dir, name](rpc_context* rpc, RpcCb cb, void* p) {
        LINK3args a{};
        a.file = as_fh3(file);
        a.link.dir = as_fh3(dir);
        a.link.name = const_cast<char*>(name.c_str());
        return rpc_nfs3_link_async(rpc, cb, &a, p);
      },
      [this, &conn, file, then = std::move(then)](int err, LINK3res* r) mutable {
        if (err != 0) return then(err, {});
        attributes_then(conn, file, &r->LINK3res_u.resok.file_attributes, std::move(then));
      },
      /*idempotent=*/false);
}

void Nfs3::remove(Connection& conn, const std::string& dir, const std::string& name, bool directory,
                  Then<int> then) {
  // REMOVE3res and RMDIR3res are both {nfsstat3; wcc_data}.
  call<REMOVE3res>(
      conn,
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
      [then = std::move(then)](int err, REMOVE3res*) mutable { then(err); },
      /*idempotent=*/false);
}

void Nfs3::rename(Connection& conn, const std::string& from_dir, const std::string& from,
                  const std::string& to_dir, const std::string& to, Then<int> then) {
  call<RENAME3res>(
      conn,
      [from_dir, from, to_dir, to](rpc_context* rpc, RpcCb cb, void* p) {
        RENAME3args a{};
        a.from.dir = as_fh3(from_dir);
        a.from.name = const_cast<char*>(from.c_str());
        a.to.dir = as_fh3(to_dir);
        a.to.name = const_cast<char*>(to.c_str());
        return rpc_nfs3_rename_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int err, RENAME3res*) mutable { then(err); },
      /*idempotent=*/false);
}

void Nfs3::readlink(Connection& conn, const std::string& fh, Then<int, std::string> then) {
  call<READLINK3res>(
      conn,
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        READLINK3args a{};
        a.symlink = as_fh3(fh);
        return rpc_nfs3_readlink_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int err, READLINK3res* r) mutable {
        if (err != 0) return then(err, {});
        const char* target = r->READLINK3res_u.resok.data;
        then(0, target != nullptr ? target : "");
      });
}

void Nfs3::access(Connection& conn, const std::string& fh, uint32_t mask, Then<int> then) {
  const uint32_t want = access_bits(mask);
  call<ACCESS3res>(
      conn,
      [fh, want](rpc_context* rpc, RpcCb cb, void* p) {
        ACCESS3args a{};
        a.object = as_fh3(fh);
        a.access = want;
        return rpc_nfs3_access_async(rpc, cb, &a, p);
      },
      [want, then = std::move(then)](int err, ACCESS3res* r) mutable {
        if (err != 0) return then(err);
        then(access_errno(want, r->ACCESS3res_u.resok.access));
      });
}

void Nfs3::statfs(Connection& conn, const std::string& fh, Then<int, struct statvfs> then) {
  call<FSSTAT3res>(
      conn,
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        FSSTAT3args a{};
        a.fsroot = as_fh3(fh);
        return rpc_nfs3_fsstat_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int err, FSSTAT3res* r) mutable {
        if (err != 0) return then(err, {});
        const FSSTAT3resok& ok = r->FSSTAT3res_u.resok;
        then(0, to_statvfs(ok.tbytes, ok.fbytes, ok.abytes, ok.tfiles, ok.ffiles, ok.afiles));
      });
}

void Nfs3::read(Connection& conn, const std::string& fh, uint64_t offset, uint32_t count,
                Then<int, const char*, size_t> then) {
  call<READ3res>(
      conn,
      [fh, offset, count](rpc_context* rpc, RpcCb cb, void* p) {
        READ3args a{};
        a.file = as_fh3(fh);
        a.offset = offset;
        a.count = count;
        return rpc_nfs3_read_async(rpc, cb, &a, p);
      },
      [count, then = std::move(then)](int err, READ3res* r) mutable {
        if (err != 0) return then(err, nullptr, 0);
        const READ3resok& ok = r->READ3res_u.resok;
        then(0, ok.data.data_val, std::min<size_t>(ok.data.data_len, count));
      });
}

void Nfs3::write(Connection& conn, const std::string& fh, uint64_t offset,
                 std::shared_ptr<const std::string> data, bool stable,
                 Then<int, WriteResult> then) {
  call<WRITE3res>(
      conn,
      [fh, offset, data, stable](rpc_context* rpc, RpcCb cb, void* p) {
        WRITE3args a{};
        a.file = as_fh3(fh);
        a.offset = offset;
        a.count = count3(data->size());
        a.stable = stable ? FILE_SYNC : UNSTABLE;
        a.data.data_len = u_int(data->size());
        a.data.data_val = const_cast<char*>(data->data());  // libnfs only encodes it
        return rpc_nfs3_write_async(rpc, cb, &a, p);
      },
      [size = data->size(), then = std::move(then)](int err, WRITE3res* r) mutable {
        if (err != 0) return then(err, {});
        const WRITE3resok& ok = r->WRITE3res_u.resok;
        WriteResult out;
        out.count = std::min<size_t>(ok.count, size);
        out.stable = ok.committed == FILE_SYNC;
        std::memcpy(out.verifier.data(), ok.verf, out.verifier.size());
        then(0, out);
      });
}

void Nfs3::commit(Connection& conn, const std::string& fh, Then<int, WriteVerifier> then) {
  call<COMMIT3res>(
      conn,
      [fh](rpc_context* rpc, RpcCb cb, void* p) {
        COMMIT3args a{};
        a.file = as_fh3(fh);  // offset 0, count 0: the whole file
        return rpc_nfs3_commit_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int err, COMMIT3res* r) mutable {
        WriteVerifier verifier{};
        if (err == 0) std::memcpy(verifier.data(), r->COMMIT3res_u.resok.verf, verifier.size());
        then(err, verifier);
      });
}

void Nfs3::readdir(Connection& conn, const std::string& fh, uint64_t cookie,
                   Then<int, std::vector<DirEntry>> then) {
  constexpr count3 kDirCount = 16384;
  constexpr count3 kMaxCount = 65536;
  call<READDIRPLUS3res>(
      conn,
      [fh, cookie](rpc_context* rpc, RpcCb cb, void* p) {
        READDIRPLUS3args a{};
        a.dir = as_fh3(fh);
        a.cookie = cookie;
        a.dircount = kDirCount;
        a.maxcount = kMaxCount;
        return rpc_nfs3_readdirplus_async(rpc, cb, &a, p);
      },
      [then = std::move(then)](int err, READDIRPLUS3res* r) mutable {
        if (err != 0) return then(err, {});
        std::vector<DirEntry> out;
        // libnfs 4.0 decodes the entries into 4-byte aligned memory: each
        // is copied out before use (UBSan: misaligned member access).
        entryplus3 e;
        for (const void* at = r->READDIRPLUS3res_u.resok.reply.entries; at != nullptr;
             at = e.nextentry) {
          std::memcpy(&e, at, sizeof e);
          DirEntry d;
          d.name = e.name != nullptr ? e.name : "";
          d.cookie = e.cookie;
          d.fileid = e.fileid;
          d.type = dirent_type(e.name_attributes);
          if (e.name_handle.handle_follows && e.name_attributes.attributes_follow) {
            d.node = Node{fh_string(e.name_handle.post_op_fh3_u.handle),
                          to_stat(e.name_attributes.post_op_attr_u.attributes)};
          }
          out.push_back(std::move(d));
        }
        then(0, std::move(out));
      });
}

}  // namespace dpfs::nfs
