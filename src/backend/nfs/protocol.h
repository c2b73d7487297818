// What the NFS backend asks of a server, in terms of file handles, and the
// one implementation per NFS version that says it on the wire: Nfs3
// (nfs3.h, RFC 1813) and Nfs4 (nfs4.h, RFC 7530). NfsBackend keeps
// everything that does not depend on the version (the inode table,
// silly-rename, UNSTABLE writes and their resend, splitting READs and
// WRITEs); a Protocol only encodes a request, sends it on the connection it
// is given and decodes the answer.
//
// Every method completes `then` exactly once, on the connection's driver
// (its worker or loop thread; or at once on the calling thread when the connection is shut
// down), with 0 or the errno the Linux NFS client would give. Methods that
// create, remove or rename are sent once (a lost answer is an error, not a
// second creation); the others are retried by the Connection until its
// deadline. Safe for concurrent use.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "backend/backend.h"

namespace dpfs::nfs {

class Connection;

using WriteVerifier = std::array<char, 8>;

// A move-only callable void(Args...): completions own the tenant's reply,
// which std::function (copyable) cannot hold.
template <typename... Args>
class Then {
 public:
  Then() = default;
  template <typename F>
  requires(!std::is_same_v<std::decay_t<F>, Then> && std::is_invocable_v<F&, Args...>) Then(F f)
      : impl_(std::make_unique<Impl<F>>(std::move(f))) {}  // NOLINT: implicit on purpose
  Then(Then&&) noexcept = default;
  Then& operator=(Then&&) noexcept = default;

  void operator()(Args... args) { impl_->call(std::forward<Args>(args)...); }

 private:
  struct Base {
    virtual ~Base() = default;
    virtual void call(Args... args) = 0;
  };
  template <typename F>
  struct Impl final : Base {
    explicit Impl(F f) : f(std::move(f)) {}
    void call(Args... args) override { f(std::forward<Args>(args)...); }
    F f;
  };
  std::unique_ptr<Base> impl_;
};

// A file the server named: its handle and attributes (st_ino: the fileid).
struct Node {
  std::string fh;
  struct stat attr {};
};

// One READDIR entry. `node` is absent when the server gave no handle or
// attributes for it; `type` is DT_* (DT_UNKNOWN without attributes).
struct DirEntry {
  std::string name;
  uint64_t cookie = 0;
  uint64_t fileid = 0;
  uint32_t type = 0;
  std::optional<Node> node;
};

// What a creation makes: the type in `mode` (S_IFREG, S_IFDIR, S_IFLNK,
// devices, FIFOs, sockets); `attr` holds what the new file is given (mode,
// owner, group, size 0 for O_TRUNC).
struct NewNode {
  uint32_t mode = 0;
  uint32_t rdev = 0;
  std::string target;  // symlinks
  bool exclusive = false;
  SetAttr attr;
};

struct WriteResult {
  size_t count = 0;
  bool stable = false;  // FILE_SYNC: nothing to commit
  WriteVerifier verifier{};
};

class Protocol {
 public:
  virtual ~Protocol() = default;
  virtual int version() const = 0;

  virtual void lookup(Connection& conn, const std::string& dir, const std::string& name,
                      Then<int, Node> then) = 0;
  virtual void getattr(Connection& conn, const std::string& fh, Then<int, struct stat> then) = 0;
  virtual void setattr(Connection& conn, const std::string& fh, const SetAttr& attr,
                       Then<int, struct stat> then) = 0;
  virtual void create(Connection& conn, const std::string& dir, const std::string& name,
                      const NewNode& spec, Then<int, Node> then) = 0;
  // The new name's attributes (those of `file`).
  virtual void link(Connection& conn, const std::string& file, const std::string& dir,
                    const std::string& name, Then<int, struct stat> then) = 0;
  virtual void remove(Connection& conn, const std::string& dir, const std::string& name,
                      bool directory, Then<int> then) = 0;
  virtual void rename(Connection& conn, const std::string& from_dir, const std::string& from,
                      const std::string& to_dir, const std::string& to, Then<int> then) = 0;
  virtual void readlink(Connection& conn, const std::string& fh, Then<int, std::string> then) = 0;
  // mask: R_OK | W_OK | X_OK (X_OK: execute or search).
  virtual void access(Connection& conn, const std::string& fh, uint32_t mask, Then<int> then) = 0;
  virtual void statfs(Connection& conn, const std::string& fh, Then<int, struct statvfs> then) = 0;
  // `data` (valid during the call only) holds what was read; fewer bytes
  // than asked: end of file.
  virtual void read(Connection& conn, const std::string& fh, uint64_t offset, uint32_t count,
                    Then<int, const char*, size_t> then) = 0;
  virtual void write(Connection& conn, const std::string& fh, uint64_t offset,
                     std::shared_ptr<const std::string> data, bool stable,
                     Then<int, WriteResult> then) = 0;
  // COMMITs the whole file; the server's write verifier.
  virtual void commit(Connection& conn, const std::string& fh, Then<int, WriteVerifier> then) = 0;
  // The entries after `cookie` (0: from the start), without "." and "..",
  // as many as fit in one answer; an empty list at the end.
  virtual void readdir(Connection& conn, const std::string& fh, uint64_t cookie,
                       Then<int, std::vector<DirEntry>> then) = 0;
};

}  // namespace dpfs::nfs
