// NFSv4.0 (RFC 7530) as the Protocol of the NFS backend: COMPOUNDs sent
// through libnfs's raw asynchronous API (rpc_nfs4_compound_async), with the
// attributes (fattr4) encoded and decoded here.
//
// Stateless where v4 allows it, so that it keeps what the v3 backend
// guarantees: READ, WRITE and SETATTR use the anonymous stateid (RFC 7530
// §9.1.4.3) instead of OPEN state, so nothing has to be recovered after a
// server restart or a lease expiry, and dpfs's own handles (InodeTable)
// stay the only open state. The one exception is creating a regular file,
// which v4 can only do by OPEN: a fresh open-owner per creation, OPEN
// (confirmed if the server asks), CLOSE, under a client id set up on first
// use and again when the server forgot it (a restart, an expired lease).
//
// Owners and groups are numbers in the strings ("1000"): the server must
// send and accept numeric ids (ganesha: NFSV4 { Allow_Numeric_Owners = true;
// Only_Numeric_Owners = true; }); a name dpfs cannot read as a number
// becomes 65534 (nobody), and names are never looked up (no blocking NSS
// call on a worker or loop thread).
#pragma once

#include <sys/stat.h>

#include <array>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "backend/nfs/protocol.h"

struct stateid4;

namespace dpfs::nfs {

// The errno the Linux NFS client gives for an nfsstat4 (values below 10000
// are those of NFSv3; see nfs3_errno). Unknown: EIO.
int nfs4_errno(int nfsstat4);

// fattr4 values, as far as dpfs reads and writes them.
struct Attributes4 {
  struct stat st {};
  std::string fh;  // FATTR4_FILEHANDLE, when asked for
  uint64_t files_avail = 0, files_free = 0, files_total = 0;
  uint64_t space_avail = 0, space_free = 0, space_total = 0;
  uint32_t rdattr_error = 0;  // READDIR: why an entry has no attributes
};
// Decodes an attribute mask and its values; false if they are malformed or
// hold an attribute dpfs did not ask for.
bool decode_attributes(const uint32_t* mask, size_t mask_words, std::string_view values,
                       Attributes4* out);
// The mask words and values of what `attr` sets (SIZE, MODE, OWNER,
// OWNER_GROUP, TIME_ACCESS_SET, TIME_MODIFY_SET; ctime cannot be set).
void encode_attributes(const SetAttr& attr, std::array<uint32_t, 2>* mask, std::string* values);
// An owner or group string as a number; 65534 (nobody) if it is not one.
uint32_t numeric_id(std::string_view owner);

class Nfs4 final : public Protocol {
 public:
  int version() const override { return 4; }
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
  using Verifier = std::array<char, 8>;
  // A regular file by OPEN; `retried`: after the server forgot our client id.
  void open_create(Connection& conn, const std::string& dir, const std::string& name,
                   const NewNode& spec, bool retried, Then<int, Node> then);
  // then(error, client id): the confirmed client id, set up if need be.
  void with_client_id(Connection& conn, Then<int, uint64_t> then);
  void forget_client_id(uint64_t id);
  // After a creating OPEN: OPEN_CONFIRM if the server asked, then CLOSE
  // (in the background; a failure only leaves state the lease expires).
  void confirm_open(Connection& conn, const std::string& fh, const stateid4& stateid, bool confirm);
  Verifier cookie_verifier(const std::string& dir) const;
  void keep_cookie_verifier(const std::string& dir, const Verifier& v);

  std::mutex mu_;
  bool have_client_id_ = false;                      // guarded by mu_
  bool setting_up_ = false;                          // guarded by mu_
  uint64_t client_id_ = 0;                           // guarded by mu_
  std::vector<Then<int, uint64_t>> client_waiting_;  // guarded by mu_
  uint64_t next_owner_ = 1;                          // guarded by mu_
  mutable std::mutex verifiers_mu_;
  // READDIR cookie verifiers by directory handle, to continue a listing.
  std::unordered_map<std::string, Verifier> verifiers_;  // guarded by verifiers_mu_
};

}  // namespace dpfs::nfs
