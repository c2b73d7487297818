#include "backend/nfs/nfs3.h"

// clang-format off: libnfs's headers depend on this order.
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
// clang-format on

#include <fmt/format.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <charconv>
#include <stdexcept>

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
  // be stored (RFC 1813 §2.5 nfstime3).
  if (attr.valid & SetAttr::kAtime) {
    if (attr.valid & SetAttr::kAtimeNow) {
      out->atime.set_it = SET_TO_SERVER_TIME;
    } else {
      out->atime.set_it = SET_TO_CLIENT_TIME;
      out->atime.set_atime_u.atime = {u_int(attr.atime.tv_sec), u_int(attr.atime.tv_nsec)};
    }
  }
  if (attr.valid & SetAttr::kMtime) {
    if (attr.valid & SetAttr::kMtimeNow) {
      out->mtime.set_it = SET_TO_SERVER_TIME;
    } else {
      out->mtime.set_it = SET_TO_CLIENT_TIME;
      out->mtime.set_mtime_u.mtime = {u_int(attr.mtime.tv_sec), u_int(attr.mtime.tv_nsec)};
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
