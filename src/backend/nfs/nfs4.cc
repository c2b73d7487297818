#include "backend/nfs/nfs4.h"

// libnfs.h first: the raw headers use the EXTERN it defines.
#include <nfsc/libnfs.h>

#include <dirent.h>
#include <fmt/format.h>
#include <nfsc/libnfs-raw-nfs4.h>
#include <nfsc/libnfs-raw.h>
#include <spdlog/spdlog.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <deque>
#include <optional>

#include "backend/nfs/connection.h"
#include "backend/nfs/large_call.h"
#include "backend/nfs/nfs3.h"

namespace dpfs::nfs {
namespace {

// rpc_nfs4_compound_async with room for `extra` bytes of arguments.
int send_compound(rpc_context* rpc, rpc_cb cb, COMPOUND4args* args, void* private_data,
                  size_t extra) {
  if (extra == 0) return rpc_nfs4_compound_async(rpc, cb, args, private_data);
  return send_large_call(rpc, NFS4_PROGRAM, NFS_V4, NFSPROC4_COMPOUND, cb, private_data,
                         reinterpret_cast<zdrproc_t>(&zdr_COMPOUND4args), args,
                         reinterpret_cast<zdrproc_t>(&zdr_COMPOUND4res), int(sizeof(COMPOUND4res)),
                         extra);
}

}  // namespace

int nfs4_errno(int status) {
  if (status < 10000) return nfs3_errno(status);  // the v3 values, as Linux maps them
  switch (status) {
    case NFS4ERR_BADHANDLE:
    case NFS4ERR_FHEXPIRED:
      return ESTALE;
    case NFS4ERR_NOTSUPP:
    case NFS4ERR_ATTRNOTSUPP:
    case NFS4ERR_OP_ILLEGAL:
    case NFS4ERR_LOCK_NOTSUPP:
      return EOPNOTSUPP;
    case NFS4ERR_BAD_COOKIE:
    case NFS4ERR_TOOSMALL:
    case NFS4ERR_BADTYPE:
    case NFS4ERR_BADOWNER:
    case NFS4ERR_BADCHAR:
    case NFS4ERR_BADNAME:
    case NFS4ERR_BAD_RANGE:
      return EINVAL;
    case NFS4ERR_SERVERFAULT:
    case NFS4ERR_RESOURCE:
      return EREMOTEIO;
    case NFS4ERR_DELAY:  // retried until the deadline; then the caller may try again
    case NFS4ERR_GRACE:
    case NFS4ERR_LOCKED:
      return EAGAIN;
    case NFS4ERR_DENIED:
    case NFS4ERR_SHARE_DENIED:
      return EACCES;
    case NFS4ERR_WRONGSEC:
      return EPERM;
    case NFS4ERR_SYMLINK:
      return ELOOP;
    case NFS4ERR_DEADLOCK:
      return EDEADLK;
    case NFS4ERR_FILE_OPEN:
      return EBUSY;
    case NFS4ERR_MOVED:
      return EREMOTE;
    default:
      return EIO;
  }
}

namespace {

using RpcCb = void (*)(rpc_context*, int, void*, void*);
using Mask = std::array<uint32_t, 2>;

// Attribute numbers (RFC 7530 §5.7, §5.8); all below 64: two mask words.
enum : unsigned {
  kType = 1,
  kChange = 3,
  kSize = 4,
  kFsid = 8,
  kRdattrError = 11,
  kFilehandle = 19,
  kFileid = 20,
  kFilesAvail = 21,
  kFilesFree = 22,
  kFilesTotal = 23,
  kMaxname = 29,
  kMode = 33,
  kNumlinks = 35,
  kOwner = 36,
  kOwnerGroup = 37,
  kRawdev = 41,
  kSpaceAvail = 42,
  kSpaceFree = 43,
  kSpaceTotal = 44,
  kSpaceUsed = 45,
  kTimeAccess = 47,
  kTimeAccessSet = 48,
  kTimeMetadata = 52,
  kTimeModify = 53,
  kTimeModifySet = 54,
  kMountedOnFileid = 55,
};

constexpr Mask mask_of(std::initializer_list<unsigned> attrs) {
  Mask m{};
  for (unsigned a : attrs) m[a / 32] |= 1u << (a % 32);
  return m;
}

constexpr Mask kStatAttrs = mask_of({kType, kSize, kFileid, kMode, kNumlinks, kOwner, kOwnerGroup,
                                     kRawdev, kSpaceUsed, kTimeAccess, kTimeMetadata, kTimeModify});
constexpr Mask kFileidAttr = mask_of({kFileid});
constexpr Mask kStatfsAttrs =
    mask_of({kFilesAvail, kFilesFree, kFilesTotal, kSpaceAvail, kSpaceFree, kSpaceTotal});
constexpr Mask kDirEntryAttrs = [] {
  Mask m = kStatAttrs;
  m[0] |= (1u << kRdattrError) | (1u << kFilehandle);
  return m;
}();

// XDR (RFC 4506) in and out of fattr4 values: big-endian words, opaque
// data padded to four bytes.
class XdrReader {
 public:
  explicit XdrReader(std::string_view in) : in_(in) {}
  bool ok() const { return ok_; }
  uint32_t u32() {
    if (!take(4)) return 0;
    const auto* p = reinterpret_cast<const unsigned char*>(in_.data() - 4);
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3];
  }
  uint64_t u64() {
    const uint64_t hi = u32();
    return hi << 32 | u32();
  }
  std::string_view opaque() {
    const uint32_t len = u32();
    const size_t padded = (size_t(len) + 3) & ~size_t(3);
    if (!ok_ || padded > in_.size()) {
      ok_ = false;
      return {};
    }
    std::string_view out = in_.substr(0, len);
    in_.remove_prefix(padded);
    return out;
  }
  timespec time() {
    const int64_t sec = int64_t(u64());
    const uint32_t nsec = u32();
    if (nsec >= 1000000000u) ok_ = false;
    return {time_t(sec), long(nsec)};
  }

 private:
  bool take(size_t n) {
    if (!ok_ || in_.size() < n) {
      ok_ = false;
      return false;
    }
    in_.remove_prefix(n);
    return true;
  }
  std::string_view in_;
  bool ok_ = true;
};

class XdrWriter {
 public:
  void u32(uint32_t v) {
    const char b[4] = {char(v >> 24), char(v >> 16), char(v >> 8), char(v)};
    out_.append(b, 4);
  }
  void u64(uint64_t v) {
    u32(uint32_t(v >> 32));
    u32(uint32_t(v));
  }
  void opaque(std::string_view s) {
    u32(uint32_t(s.size()));
    out_.append(s);
    out_.append((4 - s.size() % 4) % 4, '\0');
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

mode_t type_bits(uint32_t nfs_ftype4) {
  switch (nfs_ftype4) {
    case NF4DIR:
      return S_IFDIR;
    case NF4BLK:
      return S_IFBLK;
    case NF4CHR:
      return S_IFCHR;
    case NF4LNK:
      return S_IFLNK;
    case NF4SOCK:
      return S_IFSOCK;
    case NF4FIFO:
      return S_IFIFO;
    default:
      return S_IFREG;
  }
}

// A COMPOUND being put together: the operations and the memory their
// arguments point into, alive until send() has encoded them.
class Compound {
 public:
  nfs_argop4& add(nfs_opnum4 op) {
    nfs_argop4& a = ops_.emplace_back();
    std::memset(&a, 0, sizeof a);
    a.argop = op;
    return a;
  }
  void putfh(const std::string& fh) {
    nfs_fh4& o = add(OP_PUTFH).nfs_argop4_u.opputfh.object;
    o.nfs_fh4_len = u_int(fh.size());
    o.nfs_fh4_val = const_cast<char*>(fh.data());  // libnfs only encodes it
  }
  void getfh() { add(OP_GETFH); }
  void savefh() { add(OP_SAVEFH); }
  void restorefh() { add(OP_RESTOREFH); }
  void getattr(const Mask& mask) {
    request(add(OP_GETATTR).nfs_argop4_u.opgetattr.attr_request, mask);
  }
  void lookup(const std::string& name) {
    if (name == "..") {
      add(OP_LOOKUPP);
      return;
    }
    utf8(add(OP_LOOKUP).nfs_argop4_u.oplookup.objname, name);
  }
  void request(bitmap4& out, const Mask& mask) {
    Mask& m = masks_.emplace_back(mask);
    out.bitmap4_len = 2;
    out.bitmap4_val = m.data();
  }
  void attributes(fattr4& out, const SetAttr& attr) {
    Mask mask;
    std::string& values = strings_.emplace_back();
    encode_attributes(attr, &mask, &values);
    request(out.attrmask, mask);
    out.attr_vals.attrlist4_len = u_int(values.size());
    out.attr_vals.attrlist4_val = values.data();
  }
  void utf8(utf8string& out, const std::string& s) {
    out.utf8string_len = u_int(s.size());
    out.utf8string_val = const_cast<char*>(s.data());
  }
  // Bytes of data (WRITE) beyond what libnfs makes room for by itself.
  void reserve(size_t bytes) { extra_ += bytes; }

  int send(rpc_context* rpc, RpcCb cb, void* p) {
    COMPOUND4args args{};
    args.minorversion = 0;
    args.argarray.argarray_len = u_int(ops_.size());
    args.argarray.argarray_val = ops_.data();
    return send_compound(rpc, cb, &args, p, extra_ == 0 ? 0 : extra_ + 1024);
  }

 private:
  size_t extra_ = 0;
  std::vector<nfs_argop4> ops_;
  std::deque<Mask> masks_;
  std::deque<std::string> strings_;
};

// The anonymous stateid (all zeros): READ, WRITE and SETATTR without OPEN
// state (RFC 7530 §9.1.4.3).
stateid4 anonymous_stateid() {
  stateid4 s;
  std::memset(&s, 0, sizeof s);
  return s;
}

// Sends the COMPOUND `build(Compound&)` makes; `done(err, res)` gets the
// answer: err 0 when every operation succeeded; res whenever the server
// answered (its status says which error).
template <typename Build, typename Done>
void call(Connection& conn, Build build, Done done, bool idempotent = true) {
  conn.submit(make_call(
      [build = std::move(build)](rpc_context* rpc, RpcCb cb, void* p) {
        Compound c;
        build(c);
        return c.send(rpc, cb, p);
      },
      [done = std::move(done)](int rpc_status, void* r) mutable {
        if (rpc_status != RPC_STATUS_SUCCESS) return done(rpc_errno(rpc_status), nullptr);
        auto* res = static_cast<COMPOUND4res*>(r);
        done(nfs4_errno(res->status), res);
      },
      idempotent));
}

// The result of operation `i` of an answer, or none if the server sent
// fewer (or another operation there). A copy: libnfs 4.0 decodes the
// results into 4-byte aligned memory, and they hold 64-bit members (UBSan:
// misaligned member access).
std::optional<nfs_resop4> result(const COMPOUND4res* res, size_t i, nfs_opnum4 op) {
  if (res == nullptr || i >= res->resarray.resarray_len) return std::nullopt;
  nfs_resop4 r;
  std::memcpy(&r, reinterpret_cast<const char*>(res->resarray.resarray_val) + i * sizeof r,
              sizeof r);
  if (r.resop != op) return std::nullopt;
  return r;
}

bool stat_of(const fattr4& f, struct stat* st) {
  Attributes4 a;
  if (!decode_attributes(f.attrmask.bitmap4_val, f.attrmask.bitmap4_len,
                         std::string_view(f.attr_vals.attrlist4_val, f.attr_vals.attrlist4_len),
                         &a)) {
    return false;
  }
  *st = a.st;
  return true;
}

// The attributes of a GETATTR at `i`; false (logged) if missing or malformed.
bool stat_at(const COMPOUND4res* res, size_t i, struct stat* st) {
  const std::optional<nfs_resop4> r = result(res, i, OP_GETATTR);
  if (r && stat_of(r->nfs_resop4_u.opgetattr.GETATTR4res_u.resok4.obj_attributes, st)) {
    return true;
  }
  spdlog::warn("nfs: the server sent malformed attributes");
  return false;
}

std::string fh_at(const COMPOUND4res* res, size_t i) {
  const std::optional<nfs_resop4> r = result(res, i, OP_GETFH);
  if (!r) return {};
  const nfs_fh4& fh = r->nfs_resop4_u.opgetfh.GETFH4res_u.resok4.object;
  if (fh.nfs_fh4_len == 0 || fh.nfs_fh4_len > NFS4_FHSIZE) return {};
  return std::string(fh.nfs_fh4_val, fh.nfs_fh4_len);
}

// Answers `then` with the node of a GETFH at `i` and a GETATTR after it.
void node_then(const COMPOUND4res* res, size_t i, Then<int, Node>& then) {
  Node node;
  node.fh = fh_at(res, i);
  if (node.fh.empty() || !stat_at(res, i + 1, &node.attr)) return then(EIO, {});
  then(0, std::move(node));
}

}  // namespace

uint32_t numeric_id(std::string_view owner) {
  uint32_t id = 0;
  auto [end, ec] = std::from_chars(owner.data(), owner.data() + owner.size(), id);
  if (ec != std::errc() || end != owner.data() + owner.size() || owner.empty()) return 65534;
  return id;
}

bool decode_attributes(const uint32_t* mask, size_t mask_words, std::string_view values,
                       Attributes4* out) {
  XdrReader in(values);
  struct stat& st = out->st;
  st.st_blksize = 4096;
  for (size_t word = 0; word < mask_words; ++word) {
    for (unsigned bit = 0; bit < 32; ++bit) {
      if (!(mask[word] & (1u << bit))) continue;
      switch (word * 32 + bit) {
        case kType:
          st.st_mode = (st.st_mode & 07777) | type_bits(in.u32());
          break;
        case kChange:
          in.u64();
          break;
        case kSize:
          st.st_size = off_t(in.u64());
          break;
        case kFsid:
          in.u64();
          in.u64();
          break;
        case kRdattrError:
          out->rdattr_error = in.u32();
          break;
        case kFilehandle: {
          std::string_view fh = in.opaque();
          if (fh.empty() || fh.size() > NFS4_FHSIZE) return false;
          out->fh = std::string(fh);
          break;
        }
        case kFileid:
          st.st_ino = ino_t(in.u64());
          break;
        case kFilesAvail:
          out->files_avail = in.u64();
          break;
        case kFilesFree:
          out->files_free = in.u64();
          break;
        case kFilesTotal:
          out->files_total = in.u64();
          break;
        case kMaxname:
          in.u32();
          break;
        case kMode:
          st.st_mode = (st.st_mode & S_IFMT) | (in.u32() & 07777);
          break;
        case kNumlinks:
          st.st_nlink = nlink_t(in.u32());
          break;
        case kOwner:
          st.st_uid = numeric_id(in.opaque());
          break;
        case kOwnerGroup:
          st.st_gid = numeric_id(in.opaque());
          break;
        case kRawdev: {
          const uint32_t major_number = in.u32();
          st.st_rdev = makedev(major_number, in.u32());
          break;
        }
        case kSpaceAvail:
          out->space_avail = in.u64();
          break;
        case kSpaceFree:
          out->space_free = in.u64();
          break;
        case kSpaceTotal:
          out->space_total = in.u64();
          break;
        case kSpaceUsed:
          st.st_blocks = blkcnt_t((in.u64() + 511) / 512);
          break;
        case kTimeAccess:
          st.st_atim = in.time();
          break;
        case kTimeMetadata:
          st.st_ctim = in.time();
          break;
        case kTimeModify:
          st.st_mtim = in.time();
          break;
        case kMountedOnFileid:
          in.u64();
          break;
        default:
          return false;  // not asked for: its size is unknown
      }
      if (!in.ok()) return false;
    }
  }
  return in.ok();
}

void encode_attributes(const SetAttr& attr, Mask* mask, std::string* values) {
  *mask = {};
  XdrWriter out;
  auto set = [&](unsigned a) { (*mask)[a / 32] |= 1u << (a % 32); };
  // In the order of the attribute numbers, as fattr4 requires.
  if (attr.valid & SetAttr::kSize) {
    set(kSize);
    out.u64(attr.size);
  }
  if (attr.valid & SetAttr::kMode) {
    set(kMode);
    out.u32(attr.mode & 07777);
  }
  if (attr.valid & SetAttr::kUid) {
    set(kOwner);
    out.opaque(std::to_string(attr.uid));
  }
  if (attr.valid & SetAttr::kGid) {
    set(kOwnerGroup);
    out.opaque(std::to_string(attr.gid));
  }
  auto time = [&](unsigned a, uint32_t now_bit, const timespec& t) {
    set(a);
    if (attr.valid & now_bit) {
      out.u32(0);  // SET_TO_SERVER_TIME4
      return;
    }
    out.u32(1);  // SET_TO_CLIENT_TIME4: nfstime4 seconds are signed
    out.u64(uint64_t(int64_t(t.tv_sec)));
    out.u32(uint32_t(t.tv_nsec));
  };
  if (attr.valid & SetAttr::kAtime) time(kTimeAccessSet, SetAttr::kAtimeNow, attr.atime);
  if (attr.valid & SetAttr::kMtime) time(kTimeModifySet, SetAttr::kMtimeNow, attr.mtime);
  *values = out.take();
}

// --- operations ---------------------------------------------------------------

void Nfs4::lookup(Connection& conn, const std::string& dir, const std::string& name,
                  Then<int, Node> then) {
  call(
      conn,
      [dir, name](Compound& c) {
        c.putfh(dir);
        c.lookup(name);
        c.getfh();
        c.getattr(kStatAttrs);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        if (err != 0) return then(err, {});
        node_then(res, 2, then);
      });
}

void Nfs4::getattr(Connection& conn, const std::string& fh, Then<int, struct stat> then) {
  call(
      conn,
      [fh](Compound& c) {
        c.putfh(fh);
        c.getattr(kStatAttrs);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        struct stat st {};
        if (err == 0 && !stat_at(res, 1, &st)) err = EIO;
        then(err, st);
      });
}

void Nfs4::setattr(Connection& conn, const std::string& fh, const SetAttr& attr,
                   Then<int, struct stat> then) {
  call(
      conn,
      [fh, attr](Compound& c) {
        c.putfh(fh);
        SETATTR4args& a = c.add(OP_SETATTR).nfs_argop4_u.opsetattr;
        a.stateid = anonymous_stateid();
        c.attributes(a.obj_attributes, attr);
        c.getattr(kStatAttrs);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        struct stat st {};
        if (err == 0 && !stat_at(res, 2, &st)) err = EIO;
        then(err, st);
      });
}

void Nfs4::create(Connection& conn, const std::string& dir, const std::string& name,
                  const NewNode& spec, Then<int, Node> then) {
  if (S_ISREG(spec.mode)) return open_create(conn, dir, name, spec, false, std::move(then));
  call(
      conn,
      [dir, name, spec](Compound& c) {
        c.putfh(dir);
        CREATE4args& a = c.add(OP_CREATE).nfs_argop4_u.opcreate;
        c.utf8(a.objname, name);
        c.attributes(a.createattrs, spec.attr);
        switch (spec.mode & S_IFMT) {
          case S_IFDIR:
            a.objtype.type = NF4DIR;
            break;
          case S_IFLNK:
            a.objtype.type = NF4LNK;
            c.utf8(a.objtype.createtype4_u.linkdata, spec.target);
            c.reserve(spec.target.size());
            break;
          case S_IFCHR:
          case S_IFBLK:
            a.objtype.type = S_ISCHR(spec.mode) ? NF4CHR : NF4BLK;
            a.objtype.createtype4_u.devdata.specdata1 = major(spec.rdev);
            a.objtype.createtype4_u.devdata.specdata2 = minor(spec.rdev);
            break;
          case S_IFIFO:
            a.objtype.type = NF4FIFO;
            break;
          default:
            a.objtype.type = NF4SOCK;
            break;
        }
        c.getfh();
        c.getattr(kStatAttrs);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        if (err != 0) return then(err, {});
        node_then(res, 2, then);
      },
      /*idempotent=*/false);
}

void Nfs4::open_create(Connection& conn, const std::string& dir, const std::string& name,
                       const NewNode& spec, bool retried, Then<int, Node> then) {
  with_client_id(conn, [this, &conn, dir, name, spec, retried, then = std::move(then)](
                           int err, uint64_t client_id) mutable {
    if (err != 0) return then(err, {});
    std::string owner;
    {
      std::lock_guard lock(mu_);
      owner = fmt::format("dpfs-open-{}", next_owner_++);
    }
    call(
        conn,
        [dir, name, spec, client_id, owner](Compound& c) {
          c.putfh(dir);
          OPEN4args& a = c.add(OP_OPEN).nfs_argop4_u.opopen;
          // A fresh open-owner per creation: its first seqid is ours to pick.
          a.seqid = 0;
          a.share_access = OPEN4_SHARE_ACCESS_BOTH;
          a.share_deny = OPEN4_SHARE_DENY_NONE;
          a.owner.clientid = client_id;
          a.owner.owner.owner_len = u_int(owner.size());
          a.owner.owner.owner_val = const_cast<char*>(owner.data());
          a.openhow.opentype = OPEN4_CREATE;
          createhow4& how = a.openhow.openflag4_u.how;
          how.mode = spec.exclusive ? GUARDED4 : UNCHECKED4;
          c.attributes(how.createhow4_u.createattrs, spec.attr);
          a.claim.claim = CLAIM_NULL;
          c.utf8(a.claim.open_claim4_u.file, name);
          c.getfh();
          c.getattr(kStatAttrs);
        },
        [this, &conn, dir, name, spec, retried, client_id, then = std::move(then)](
            int err, COMPOUND4res* res) mutable {
          const bool forgotten = res != nullptr && (res->status == NFS4ERR_STALE_CLIENTID ||
                                                    res->status == NFS4ERR_EXPIRED);
          if (forgotten && !retried) {
            // The server forgot our client id (a restart, an expired lease):
            // nothing was created; once more with a new one.
            forget_client_id(client_id);
            return open_create(conn, dir, name, spec, true, std::move(then));
          }
          if (err != 0) return then(err, {});
          const std::optional<nfs_resop4> open = result(res, 1, OP_OPEN);
          if (!open) return then(EIO, {});
          const OPEN4resok& ok = open->nfs_resop4_u.opopen.OPEN4res_u.resok4;
          Node node;
          node.fh = fh_at(res, 2);
          if (node.fh.empty() || !stat_at(res, 3, &node.attr)) return then(EIO, {});
          // The file exists now: the OPEN state is only closed (it held no
          // lock, and I/O uses the anonymous stateid).
          confirm_open(conn, node.fh, ok.stateid, (ok.rflags & OPEN4_RESULT_CONFIRM) != 0);
          then(0, std::move(node));
        },
        /*idempotent=*/false);
  });
}

void Nfs4::confirm_open(Connection& conn, const std::string& fh, const stateid4& stateid,
                        bool confirm) {
  // The open-owner's seqids: 0 was the OPEN's, then OPEN_CONFIRM's, CLOSE's.
  auto close = [&conn, fh](stateid4 sid, uint32_t seqid) {
    call(
        conn,
        [fh, sid, seqid](Compound& c) {
          c.putfh(fh);
          CLOSE4args& a = c.add(OP_CLOSE).nfs_argop4_u.opclose;
          a.seqid = seqid;
          a.open_stateid = sid;
        },
        [](int err, COMPOUND4res*) {
          if (err != 0) spdlog::debug("nfs: CLOSE after a creation failed: {}", strerror(err));
        });
  };
  if (!confirm) return close(stateid, 1);
  call(
      conn,
      [fh, stateid](Compound& c) {
        c.putfh(fh);
        OPEN_CONFIRM4args& a = c.add(OP_OPEN_CONFIRM).nfs_argop4_u.opopen_confirm;
        a.open_stateid = stateid;
        a.seqid = 1;
      },
      [close](int err, COMPOUND4res* res) {
        const std::optional<nfs_resop4> r =
            err == 0 ? result(res, 1, OP_OPEN_CONFIRM) : std::nullopt;
        if (!r) {
          spdlog::debug("nfs: OPEN_CONFIRM after a creation failed: {}", strerror(err));
          return;
        }
        close(r->nfs_resop4_u.opopen_confirm.OPEN_CONFIRM4res_u.resok4.open_stateid, 2);
      });
}

void Nfs4::with_client_id(Connection& conn, Then<int, uint64_t> then) {
  {
    std::unique_lock lock(mu_);
    if (!have_client_id_) {
      client_waiting_.push_back(std::move(then));
      if (setting_up_) return;
      setting_up_ = true;
    } else {
      const uint64_t id = client_id_;
      lock.unlock();
      return then(0, id);
    }
  }
  auto finish = [this](int err, uint64_t id) {
    std::vector<Then<int, uint64_t>> waiting;
    {
      std::lock_guard lock(mu_);
      setting_up_ = false;
      if (err == 0) {
        have_client_id_ = true;
        client_id_ = id;
      }
      waiting.swap(client_waiting_);
    }
    if (err != 0) spdlog::warn("nfs: SETCLIENTID failed: {}", strerror(err));
    for (auto& w : waiting) w(err, id);
  };
  // RFC 7530 §16.33: SETCLIENTID, then SETCLIENTID_CONFIRM with its
  // verifier. No callback channel: the server then offers no delegations.
  const std::string id = fmt::format("dpfs-{}-{}", ::getpid(), static_cast<const void*>(this));
  const uint64_t boot = uint64_t(std::chrono::system_clock::now().time_since_epoch().count());
  call(
      conn,
      [id, boot](Compound& c) {
        SETCLIENTID4args& a = c.add(OP_SETCLIENTID).nfs_argop4_u.opsetclientid;
        std::memcpy(a.client.verifier, &boot, sizeof a.client.verifier);
        a.client.id.id_len = u_int(id.size());
        a.client.id.id_val = const_cast<char*>(id.data());
        a.callback.cb_program = 0x40000000;
        a.callback.cb_location.r_netid = const_cast<char*>("tcp");
        a.callback.cb_location.r_addr = const_cast<char*>("127.0.0.1.0.0");
        a.callback_ident = 1;
      },
      [&conn, finish](int err, COMPOUND4res* res) mutable {
        const std::optional<nfs_resop4> r =
            err == 0 ? result(res, 0, OP_SETCLIENTID) : std::nullopt;
        if (!r) return finish(err != 0 ? err : EIO, 0);
        const SETCLIENTID4resok ok = r->nfs_resop4_u.opsetclientid.SETCLIENTID4res_u.resok4;
        call(
            conn,
            [ok](Compound& c) {
              SETCLIENTID_CONFIRM4args& a =
                  c.add(OP_SETCLIENTID_CONFIRM).nfs_argop4_u.opsetclientid_confirm;
              a.clientid = ok.clientid;
              std::memcpy(a.setclientid_confirm, ok.setclientid_confirm,
                          sizeof a.setclientid_confirm);
            },
            [finish, id = ok.clientid](int err, COMPOUND4res*) mutable { finish(err, id); });
      });
}

void Nfs4::forget_client_id(uint64_t id) {
  std::lock_guard lock(mu_);
  if (have_client_id_ && client_id_ == id) have_client_id_ = false;
}

void Nfs4::link(Connection& conn, const std::string& file, const std::string& dir,
                const std::string& name, Then<int, struct stat> then) {
  call(
      conn,
      [file, dir, name](Compound& c) {
        c.putfh(file);
        c.savefh();
        c.putfh(dir);
        c.utf8(c.add(OP_LINK).nfs_argop4_u.oplink.newname, name);
        c.restorefh();
        c.getattr(kStatAttrs);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        struct stat st {};
        if (err == 0 && !stat_at(res, 5, &st)) err = EIO;
        then(err, st);
      },
      /*idempotent=*/false);
}

void Nfs4::remove(Connection& conn, const std::string& dir, const std::string& name, bool,
                  Then<int> then) {
  // REMOVE takes files and directories alike; the kernel has checked which
  // one the name is (EISDIR, ENOTDIR) before asking.
  call(
      conn,
      [dir, name](Compound& c) {
        c.putfh(dir);
        c.utf8(c.add(OP_REMOVE).nfs_argop4_u.opremove.target, name);
      },
      [then = std::move(then)](int err, COMPOUND4res*) mutable { then(err); },
      /*idempotent=*/false);
}

void Nfs4::rename(Connection& conn, const std::string& from_dir, const std::string& from,
                  const std::string& to_dir, const std::string& to, Then<int> then) {
  call(
      conn,
      [from_dir, from, to_dir, to](Compound& c) {
        c.putfh(from_dir);
        c.savefh();
        c.putfh(to_dir);
        RENAME4args& a = c.add(OP_RENAME).nfs_argop4_u.oprename;
        c.utf8(a.oldname, from);
        c.utf8(a.newname, to);
      },
      [then = std::move(then)](int err, COMPOUND4res*) mutable { then(err); },
      /*idempotent=*/false);
}

void Nfs4::readlink(Connection& conn, const std::string& fh, Then<int, std::string> then) {
  call(
      conn,
      [fh](Compound& c) {
        c.putfh(fh);
        c.add(OP_READLINK);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        const std::optional<nfs_resop4> r = err == 0 ? result(res, 1, OP_READLINK) : std::nullopt;
        if (!r) return then(err != 0 ? err : EIO, {});
        const linktext4& link = r->nfs_resop4_u.opreadlink.READLINK4res_u.resok4.link;
        then(0, std::string(link.utf8string_val, link.utf8string_len));
      });
}

void Nfs4::access(Connection& conn, const std::string& fh, uint32_t mask, Then<int> then) {
  const uint32_t want = access_bits(mask);  // ACCESS4_* are ACCESS3_*
  call(
      conn,
      [fh, want](Compound& c) {
        c.putfh(fh);
        c.add(OP_ACCESS).nfs_argop4_u.opaccess.access = want;
      },
      [want, then = std::move(then)](int err, COMPOUND4res* res) mutable {
        const std::optional<nfs_resop4> r = err == 0 ? result(res, 1, OP_ACCESS) : std::nullopt;
        if (!r) return then(err != 0 ? err : EIO);
        then(access_errno(want, r->nfs_resop4_u.opaccess.ACCESS4res_u.resok4.access));
      });
}

void Nfs4::statfs(Connection& conn, const std::string& fh, Then<int, struct statvfs> then) {
  call(
      conn,
      [fh](Compound& c) {
        c.putfh(fh);
        c.getattr(kStatfsAttrs);
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        const std::optional<nfs_resop4> r = err == 0 ? result(res, 1, OP_GETATTR) : std::nullopt;
        if (!r) return then(err != 0 ? err : EIO, {});
        const fattr4& f = r->nfs_resop4_u.opgetattr.GETATTR4res_u.resok4.obj_attributes;
        Attributes4 a;
        if (!decode_attributes(
                f.attrmask.bitmap4_val, f.attrmask.bitmap4_len,
                std::string_view(f.attr_vals.attrlist4_val, f.attr_vals.attrlist4_len), &a)) {
          return then(EIO, {});
        }
        then(0, to_statvfs(a.space_total, a.space_free, a.space_avail, a.files_total, a.files_free,
                           a.files_avail));
      });
}

void Nfs4::read(Connection& conn, const std::string& fh, uint64_t offset, uint32_t count,
                Then<int, const char*, size_t> then) {
  call(
      conn,
      [fh, offset, count](Compound& c) {
        c.putfh(fh);
        READ4args& a = c.add(OP_READ).nfs_argop4_u.opread;
        a.stateid = anonymous_stateid();
        a.offset = offset;
        a.count = count;
      },
      [count, then = std::move(then)](int err, COMPOUND4res* res) mutable {
        const std::optional<nfs_resop4> r = err == 0 ? result(res, 1, OP_READ) : std::nullopt;
        if (!r) return then(err != 0 ? err : EIO, nullptr, 0);
        const READ4resok& ok = r->nfs_resop4_u.opread.READ4res_u.resok4;
        then(0, ok.data.data_val, std::min<size_t>(ok.data.data_len, count));
      });
}

void Nfs4::write(Connection& conn, const std::string& fh, uint64_t offset,
                 std::shared_ptr<const std::string> data, bool stable,
                 Then<int, WriteResult> then) {
  call(
      conn,
      [fh, offset, data, stable](Compound& c) {
        c.putfh(fh);
        WRITE4args& a = c.add(OP_WRITE).nfs_argop4_u.opwrite;
        a.stateid = anonymous_stateid();
        a.offset = offset;
        a.stable = stable ? FILE_SYNC4 : UNSTABLE4;
        a.data.data_len = u_int(data->size());
        a.data.data_val = const_cast<char*>(data->data());  // libnfs only encodes it
        c.reserve(data->size());
      },
      [size = data->size(), then = std::move(then)](int err, COMPOUND4res* res) mutable {
        const std::optional<nfs_resop4> r = err == 0 ? result(res, 1, OP_WRITE) : std::nullopt;
        if (!r) return then(err != 0 ? err : EIO, {});
        const WRITE4resok& ok = r->nfs_resop4_u.opwrite.WRITE4res_u.resok4;
        WriteResult out;
        out.count = std::min<size_t>(ok.count, size);
        out.stable = ok.committed == FILE_SYNC4;
        std::memcpy(out.verifier.data(), ok.writeverf, out.verifier.size());
        then(0, out);
      });
}

void Nfs4::commit(Connection& conn, const std::string& fh, Then<int, WriteVerifier> then) {
  call(
      conn,
      [fh](Compound& c) {
        c.putfh(fh);
        c.add(OP_COMMIT);  // offset 0, count 0: the whole file
      },
      [then = std::move(then)](int err, COMPOUND4res* res) mutable {
        WriteVerifier verifier{};
        const std::optional<nfs_resop4> r = err == 0 ? result(res, 1, OP_COMMIT) : std::nullopt;
        if (!r) return then(err != 0 ? err : EIO, verifier);
        std::memcpy(verifier.data(), r->nfs_resop4_u.opcommit.COMMIT4res_u.resok4.writeverf,
                    verifier.size());
        then(0, verifier);
      });
}

Nfs4::Verifier Nfs4::cookie_verifier(const std::string& dir) const {
  std::lock_guard lock(verifiers_mu_);
  auto it = verifiers_.find(dir);
  return it != verifiers_.end() ? it->second : Verifier{};
}

void Nfs4::keep_cookie_verifier(const std::string& dir, const Verifier& v) {
  std::lock_guard lock(verifiers_mu_);
  // Bounded: a listing that loses its verifier starts over with a zero one,
  // which servers that do not check it (ganesha) accept.
  if (verifiers_.size() >= 4096) verifiers_.clear();
  verifiers_[dir] = v;
}

void Nfs4::readdir(Connection& conn, const std::string& fh, uint64_t cookie,
                   Then<int, std::vector<DirEntry>> then) {
  // v4 READDIR returns no "." and "..": they are made here, with the
  // cookies 1 and 2 that RFC 7530 §16.24.4 reserves (a server never hands
  // them out), and the fileids of the directory and of its parent
  // (LOOKUPP, which fails at the server's root: then the directory's own).
  const bool dots = cookie < 3;
  const Verifier verifier = dots ? Verifier{} : cookie_verifier(fh);
  constexpr count4 kDirCount = 16384;
  constexpr count4 kMaxCount = 65536;
  conn.submit(make_call(
      [fh, cookie, dots, verifier](rpc_context* rpc, RpcCb cb, void* p) {
        Compound c;
        c.putfh(fh);
        READDIR4args& a = c.add(OP_READDIR).nfs_argop4_u.opreaddir;
        a.cookie = dots ? 0 : cookie;
        std::memcpy(a.cookieverf, verifier.data(), sizeof a.cookieverf);
        a.dircount = kDirCount;
        a.maxcount = kMaxCount;
        c.request(a.attr_request, kDirEntryAttrs);
        if (dots) {
          c.getattr(kFileidAttr);
          c.add(OP_LOOKUPP);
          c.getattr(kFileidAttr);
        }
        return c.send(rpc, cb, p);
      },
      [this, fh, cookie, dots, then = std::move(then)](int rpc_status, void* r) mutable {
        if (rpc_status != RPC_STATUS_SUCCESS) return then(rpc_errno(rpc_status), {});
        auto* res = static_cast<COMPOUND4res*>(r);
        // With the dots, a failed LOOKUPP (op 3) still leaves the listing.
        const std::optional<nfs_resop4> list = result(res, 1, OP_READDIR);
        if (!list || list->nfs_resop4_u.opreaddir.status != NFS4_OK) {
          return then(res->status != NFS4_OK ? nfs4_errno(res->status) : EIO, {});
        }
        const READDIR4resok& ok = list->nfs_resop4_u.opreaddir.READDIR4res_u.resok4;
        std::vector<DirEntry> out;
        if (dots) {
          struct stat self {
          }, parent{};
          if (!stat_at(res, 2, &self)) return then(EIO, {});
          const std::optional<nfs_resop4> up = result(res, 3, OP_LOOKUPP);
          if (!up || up->nfs_resop4_u.oplookupp.status != NFS4_OK || !stat_at(res, 4, &parent)) {
            parent = self;
          }
          if (cookie == 0) out.push_back(DirEntry{".", 1, self.st_ino, DT_DIR, {}});
          if (cookie <= 1) out.push_back(DirEntry{"..", 2, parent.st_ino, DT_DIR, {}});
        }
        Verifier v;
        std::memcpy(v.data(), ok.cookieverf, v.size());
        keep_cookie_verifier(fh, v);
        // libnfs decodes the entries into 4-byte aligned memory: each is
        // copied out before use (UBSan: misaligned member access).
        entry4 e;
        for (const void* at = ok.reply.entries; at != nullptr; at = e.nextentry) {
          std::memcpy(&e, at, sizeof e);
          DirEntry d;
          d.name.assign(e.name.utf8string_val, e.name.utf8string_len);
          d.cookie = e.cookie;
          Attributes4 a;
          const bool decoded = decode_attributes(
              e.attrs.attrmask.bitmap4_val, e.attrs.attrmask.bitmap4_len,
              std::string_view(e.attrs.attr_vals.attrlist4_val, e.attrs.attr_vals.attrlist4_len),
              &a);
          if (!decoded || a.rdattr_error != 0 || d.name.empty() ||
              d.name.find('/') != std::string::npos || d.name.find('\0') != std::string::npos) {
            if (!decoded) spdlog::warn("nfs: the server sent a malformed directory entry");
            continue;
          }
          d.fileid = a.st.st_ino;
          d.type = (a.st.st_mode & S_IFMT) >> 12;
          if (!a.fh.empty()) d.node = Node{std::move(a.fh), a.st};
          out.push_back(std::move(d));
        }
        then(0, std::move(out));
      }));
}

}  // namespace dpfs::nfs
