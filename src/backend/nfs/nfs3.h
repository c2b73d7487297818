// NFSv3 wire values as dpfs uses them: the errno of an nfsstat3, a fattr3 as
// struct stat, the settable attributes (sattr3) of a SETATTR or a creation,
// and the nfs:// URL that names an export.
//
// Pure functions, safe from any thread; and Nfs3, the Protocol that speaks
// NFSv3 (RFC 1813) through libnfs's raw asynchronous API.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "backend/backend.h"
#include "backend/nfs/protocol.h"

struct fattr3;
struct sattr3;
struct nfs_fh3;
struct nfstime3;

namespace dpfs::nfs {

// What the server returned, as the errno the Linux NFS client would give
// (fs/nfs/nfs3xdr.c's table). Codes that have no user-space errno there
// (BADHANDLE, NOT_SYNC, BAD_COOKIE, NOTSUPP, ...) become the nearest one a
// program understands: ESTALE, EIO, EINVAL, EOPNOTSUPP. Unknown codes: EIO.
int nfs3_errno(int nfsstat3);

// The errno of an RPC that got no NFS answer (libnfs's RPC_STATUS_*): the
// server did not answer in time (ETIMEDOUT) or the connection failed (EIO).
int rpc_errno(int rpc_status);

// ACCESS (NFSv3 and v4 share the bits): what to ask for a mask of R_OK,
// W_OK and X_OK, and the errno of the server's answer `got` to `want`.
uint32_t access_bits(uint32_t mask);
int access_errno(uint32_t want, uint32_t got);

// FSSTAT's (or v4's space and files attributes') numbers as statvfs.
struct statvfs to_statvfs(uint64_t tbytes, uint64_t fbytes, uint64_t abytes, uint64_t tfiles,
                          uint64_t ffiles, uint64_t afiles);

// st_ino is the server's fileid (stable across mounts and restarts); the
// FUSE node id is separate (see InodeTable).
struct stat to_stat(const fattr3& attr);

// An nfs_fh3 pointing into `fh` (which must outlive it).
nfs_fh3 as_fh3(const std::string& fh);

// A time as NFSv3 stores it: seconds clamped to 0..2^32-1 (nanoseconds
// dropped when clamped), as Linux's NFS client clamps them.
struct nfstime3 to_nfstime3(const timespec& t);

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

// NFSv3: one RPC per request (a LOOKUP or creation whose answer lacks
// attributes is followed by a GETATTR); READDIRPLUS for directories, its
// cookie verifier left zero (the servers dpfs targets accept it).
class Nfs3 final : public Protocol {
 public:
  int version() const override { return 3; }
  void lookup(Connection& conn, const std::string& dir, const std::string& name,
              Then<int, Node> then) override;
  void getattr(Connection& conn, const std::string& fh, Then<int, struct stat> then) override;
  void setattr(Connection& conn, const std::string& fh, const SetAttr& attr,
               Then<int, struct stat> then) override;
  void create(Connection& conn, const std::string& dir, const std::string& name,
              const NewNode& spec, Then<int, Node> then) override;
  void link(Connection& conn, const std::string& file, const std::string& dir,
            const std::string& name, Then<int, struct stat> then) override;
  void remove(Connection& conn, const std::string& dir, const std::string& name, bool directory,
              Then<int> then) override;
  void rename(Connection& conn, const std::string& from_dir, const std::string& from,
              const std::string& to_dir, const std::string& to, Then<int> then) override;
  void readlink(Connection& conn, const std::string& fh, Then<int, std::string> then) override;
  void access(Connection& conn, const std::string& fh, uint32_t mask, Then<int> then) override;
  void statfs(Connection& conn, const std::string& fh, Then<int, struct statvfs> then) override;
  void read(Connection& conn, const std::string& fh, uint64_t offset, uint32_t count,
            Then<int, const char*, size_t> then) override;
  void write(Connection& conn, const std::string& fh, uint64_t offset,
             std::shared_ptr<const std::string> data, bool stable,
             Then<int, WriteResult> then) override;
  void commit(Connection& conn, const std::string& fh, Then<int, WriteVerifier> then) override;
  void readdir(Connection& conn, const std::string& fh, uint64_t cookie,
               Then<int, std::vector<DirEntry>> then) override;

 private:
  // The attributes of `fh`: `known` (a post_op_attr) if it holds them,
  // else a GETATTR's.
  void attributes_then(Connection& conn, const std::string& fh, const void* known,
                       Then<int, struct stat> then);
};

}  // namespace dpfs::nfs
