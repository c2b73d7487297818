// NFSv3 wire values as dpfs uses them: the errno of an nfsstat3, a fattr3 as
// struct stat, the settable attributes (sattr3) of a SETATTR or a creation,
// and the nfs:// URL that names an export.
//
// Pure functions, safe from any thread.
#pragma once

#include <sys/stat.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "backend/backend.h"

struct fattr3;
struct sattr3;
struct nfs_fh3;

namespace dpfs::nfs {

// What the server returned, as the errno the Linux NFS client would give
// (fs/nfs/nfs3xdr.c's table). Codes that have no user-space errno there
// (BADHANDLE, NOT_SYNC, BAD_COOKIE, NOTSUPP, ...) become the nearest one a
// program understands: ESTALE, EIO, EINVAL, EOPNOTSUPP. Unknown codes: EIO.
int nfs3_errno(int nfsstat3);

// The errno of an RPC that got no NFS answer (libnfs's RPC_STATUS_*): the
// server did not answer in time (ETIMEDOUT) or the connection failed (EIO).
int rpc_errno(int rpc_status);

// st_ino is the server's fileid (stable across mounts and restarts); the
// FUSE node id is separate (see InodeTable).
struct stat to_stat(const fattr3& attr);

// An nfs_fh3 pointing into `fh` (which must outlive it).
nfs_fh3 as_fh3(const std::string& fh);

// A SETATTR's or creation's attributes: only the fields in attr.valid (a
// mask of SetAttr::k*) are set.
void to_sattr3(const SetAttr& attr, sattr3* out);

// nfs://SERVER[:PORT]/EXPORT[?version=3|4], as given to --backend.
struct NfsUrl {
  std::string server;
  uint16_t port = 0;  // 0: ask the server's portmapper
  std::string export_path;
  int version = 3;
};
// Throws std::invalid_argument with the reason ("nfs://host/export: ...").
NfsUrl parse_nfs_url(std::string_view url);

}  // namespace dpfs::nfs
