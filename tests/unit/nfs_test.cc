// The NFS backend's pure parts: URL parsing, NFSv3 status and attribute
// conversion, the node-id table (lookup counts, forget, open handles, the
// UNSTABLE write log), and its settings. The backend against a real server
// is tested in tests/integration/nfs_test.cc.
#include <gtest/gtest.h>

// libnfs.h first: the raw headers use the EXTERN it defines.
#include <nfsc/libnfs.h>

#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw.h>

#include <sys/sysmacros.h>

#include <cerrno>
#include <stdexcept>

#include "backend/factory.h"
#include "backend/nfs/inode_table.h"
#include "backend/nfs/nfs3.h"
#include "backend/nfs/nfs4.h"
#include "daemon/config.h"

namespace dpfs::nfs {
namespace {

TEST(NfsUrl, Parses) {
  NfsUrl u = parse_nfs_url("nfs://server.example/srv/export?version=3");
  EXPECT_EQ(u.server, "server.example");
  EXPECT_EQ(u.port, 0);
  EXPECT_EQ(u.export_path, "/srv/export");
  EXPECT_EQ(u.version, 3);
  u = parse_nfs_url("nfs://10.0.0.1:2049/x");
  EXPECT_EQ(u.server, "10.0.0.1");
  EXPECT_EQ(u.port, 2049);
  EXPECT_EQ(u.export_path, "/x");
  EXPECT_EQ(parse_nfs_url("nfs://h/x?version=4").version, 4);
}

TEST(NfsUrl, RefusesWhatIsNotAnExport) {
  for (const char* bad :
       {"nfs:/h/x", "http://h/x", "nfs://", "nfs://h", "nfs://h/", "nfs:///x", "nfs://h:0/x",
        "nfs://h:70000/x", "nfs://h:port/x", "nfs://h/x?v=3", "nfs://h/x?version=2"}) {
    EXPECT_THROW(parse_nfs_url(bad), std::invalid_argument) << bad;
  }
}

TEST(Nfs3, StatusToErrnoAsLinuxNfsClient) {
  EXPECT_EQ(nfs3_errno(NFS3_OK), 0);
  EXPECT_EQ(nfs3_errno(NFS3ERR_NOENT), ENOENT);
  EXPECT_EQ(nfs3_errno(NFS3ERR_ACCES), EACCES);
  EXPECT_EQ(nfs3_errno(NFS3ERR_EXIST), EEXIST);
  EXPECT_EQ(nfs3_errno(NFS3ERR_NOTEMPTY), ENOTEMPTY);
  EXPECT_EQ(nfs3_errno(NFS3ERR_NAMETOOLONG), ENAMETOOLONG);
  EXPECT_EQ(nfs3_errno(NFS3ERR_STALE), ESTALE);
  EXPECT_EQ(nfs3_errno(NFS3ERR_BADHANDLE), ESTALE);
  EXPECT_EQ(nfs3_errno(NFS3ERR_NOTSUPP), EOPNOTSUPP);
  EXPECT_EQ(nfs3_errno(NFS3ERR_DQUOT), EDQUOT);
  EXPECT_EQ(nfs3_errno(NFS3ERR_FBIG), EFBIG);
  EXPECT_EQ(nfs3_errno(NFS3ERR_SERVERFAULT), EREMOTEIO);
  EXPECT_EQ(nfs3_errno(123456), EIO) << "an unknown status is an I/O error";
  EXPECT_EQ(rpc_errno(RPC_STATUS_SUCCESS), 0);
  EXPECT_EQ(rpc_errno(RPC_STATUS_TIMEOUT), ETIMEDOUT);
  EXPECT_EQ(rpc_errno(RPC_STATUS_ERROR), EIO);
  EXPECT_EQ(rpc_errno(RPC_STATUS_CANCEL), EIO);
}

TEST(Nfs4, StatusToErrnoAsLinuxNfsClient) {
  EXPECT_EQ(nfs4_errno(0), 0);
  EXPECT_EQ(nfs4_errno(2), ENOENT) << "below 10000 the values are v3's";
  EXPECT_EQ(nfs4_errno(70), ESTALE);
  EXPECT_EQ(nfs4_errno(10001), ESTALE);      // BADHANDLE
  EXPECT_EQ(nfs4_errno(10004), EOPNOTSUPP);  // NOTSUPP
  EXPECT_EQ(nfs4_errno(10041), EINVAL);      // BADNAME
  EXPECT_EQ(nfs4_errno(10029), ELOOP);       // SYMLINK
  EXPECT_EQ(nfs4_errno(10022), EIO);         // STALE_CLIENTID
  EXPECT_EQ(nfs4_errno(99999), EIO);
}

// Big-endian XDR words, as a server sends them.
std::string xdr(std::initializer_list<uint32_t> words) {
  std::string out;
  for (uint32_t w : words) {
    out += char(w >> 24);
    out += char(w >> 16);
    out += char(w >> 8);
    out += char(w);
  }
  return out;
}

TEST(Nfs4, AttributesDecodeToStat) {
  // TYPE(1) SIZE(4) FILEID(20) | MODE(33) NUMLINKS(35) OWNER(36) OWNER_GROUP(37)
  // RAWDEV(41) TIME_MODIFY(53)
  const uint32_t mask[2] = {(1u << 1) | (1u << 4) | (1u << 20),
                            (1u << 1) | (1u << 3) | (1u << 4) | (1u << 5) | (1u << 9) | (1u << 21)};
  std::string v = xdr({4 /*NF4CHR*/, 0, 12345, 0, 987654321, 04755, 3});
  v += xdr({4}) + "1000";
  v += xdr({6}) + std::string("nobody") + std::string(2, '\0');  // not a number: 65534
  v += xdr({4, 64, 0xffffffffu, 0xfffffff0u /* -16 s */, 5});
  Attributes4 a;
  ASSERT_TRUE(decode_attributes(mask, 2, v, &a));
  EXPECT_EQ(a.st.st_mode, S_IFCHR | 04755);
  EXPECT_EQ(a.st.st_size, 12345);
  EXPECT_EQ(a.st.st_ino, 987654321u);
  EXPECT_EQ(a.st.st_nlink, 3u);
  EXPECT_EQ(a.st.st_uid, 1000u);
  EXPECT_EQ(a.st.st_gid, 65534u);
  EXPECT_EQ(a.st.st_rdev, makedev(4, 64));
  EXPECT_EQ(a.st.st_mtim.tv_sec, -16) << "nfstime4 seconds are signed";
  EXPECT_EQ(a.st.st_mtim.tv_nsec, 5);
  // A server's malformed values are refused, not read past their end.
  EXPECT_FALSE(decode_attributes(mask, 2, v.substr(0, v.size() - 2), &a));
  const uint32_t unasked[2] = {1u << 2, 0};  // FH_EXPIRE_TYPE: size unknown to dpfs
  EXPECT_FALSE(decode_attributes(unasked, 2, xdr({0}), &a));
  const uint32_t owner[2] = {0, 1u << 4};
  EXPECT_FALSE(decode_attributes(owner, 2, xdr({1000}), &a)) << "a string longer than the data";
}

TEST(Nfs4, SetAttrEncodesInAttributeOrder) {
  SetAttr attr;
  attr.valid = SetAttr::kMode | SetAttr::kUid | SetAttr::kSize | SetAttr::kMtime | SetAttr::kAtime |
               SetAttr::kAtimeNow;
  attr.mode = 0100644;
  attr.uid = 42;
  attr.size = 7;
  attr.mtime = {-1, 2};
  std::array<uint32_t, 2> mask;
  std::string values;
  encode_attributes(attr, &mask, &values);
  EXPECT_EQ(mask[0], 1u << 4);                                          // SIZE
  EXPECT_EQ(mask[1], (1u << 1) | (1u << 4) | (1u << 16) | (1u << 22));  // MODE OWNER A/MTIME_SET
  EXPECT_EQ(values, xdr({0, 7, 0644, 2}) + "42" + std::string(2, '\0') +
                        xdr({0 /*server time*/, 1, 0xffffffffu, 0xffffffffu, 2}));
  EXPECT_EQ(numeric_id("4294967295"), 4294967295u);
  EXPECT_EQ(numeric_id("root@localdomain"), 65534u);
  EXPECT_EQ(numeric_id(""), 65534u);
}

TEST(Nfs3, AttributesToStat) {
  fattr3 a{};
  a.type = NF3CHR;
  a.mode = 0104755;  // bits above 07777 are not the type: dropped
  a.nlink = 3;
  a.uid = 1000;
  a.gid = 100;
  a.size = 12345;
  a.used = 8192;
  a.rdev = {4, 64};
  a.fileid = 987654321;
  a.mtime = {1700000000, 123};
  struct stat st = to_stat(a);
  EXPECT_EQ(st.st_mode, S_IFCHR | 04755);
  EXPECT_EQ(st.st_nlink, 3u);
  EXPECT_EQ(st.st_uid, 1000u);
  EXPECT_EQ(st.st_size, 12345);
  EXPECT_EQ(st.st_blocks, 16);
  EXPECT_EQ(st.st_rdev, makedev(4, 64));
  EXPECT_EQ(st.st_ino, 987654321u);
  EXPECT_EQ(st.st_mtim.tv_sec, 1700000000);
  EXPECT_EQ(st.st_mtim.tv_nsec, 123);
}

TEST(Nfs3, SattrSetsOnlyWhatIsValid) {
  SetAttr attr;
  attr.valid = SetAttr::kMode | SetAttr::kMtime | SetAttr::kMtimeNow | SetAttr::kAtime;
  attr.mode = S_IFREG | 0640;
  attr.atime = {5, 6};
  sattr3 s;
  to_sattr3(attr, &s);
  EXPECT_TRUE(s.mode.set_it);
  EXPECT_EQ(s.mode.set_mode3_u.mode, 0640u);
  EXPECT_FALSE(s.uid.set_it);
  EXPECT_FALSE(s.gid.set_it);
  EXPECT_FALSE(s.size.set_it);
  EXPECT_EQ(s.mtime.set_it, SET_TO_SERVER_TIME);
  EXPECT_EQ(s.atime.set_it, SET_TO_CLIENT_TIME);
  EXPECT_EQ(s.atime.set_atime_u.atime.seconds, 5u);
  EXPECT_EQ(s.atime.set_atime_u.atime.nseconds, 6u);
}

// Times NFSv3 cannot hold are clamped, as Linux's client clamps them, not
// wrapped into another date.
TEST(Nfs3, TimesOutsideUnsigned32BitSecondsAreClamped) {
  EXPECT_EQ(to_nfstime3({1700000000, 7}).seconds, 1700000000u);
  EXPECT_EQ(to_nfstime3({1700000000, 7}).nseconds, 7u);
  EXPECT_EQ(to_nfstime3({-100, 5}).seconds, 0u);
  EXPECT_EQ(to_nfstime3({-100, 5}).nseconds, 0u);
  EXPECT_EQ(to_nfstime3({(1ll << 32) + 100, 5}).seconds, UINT32_MAX);
  EXPECT_EQ(to_nfstime3({(1ll << 32) + 100, 5}).nseconds, 0u);
  EXPECT_EQ(to_nfstime3({UINT32_MAX, 9}).seconds, UINT32_MAX);
}

TEST(InodeTable, SameHandleSameIdUntilForgotten) {
  InodeTable t("root");
  std::string fh;
  ASSERT_TRUE(t.find(kRootIno, &fh));
  EXPECT_EQ(fh, "root");
  const uint64_t a = t.remember("fh-a", S_IFREG | 0644, 0);
  EXPECT_NE(a, kRootIno);
  EXPECT_EQ(t.remember("fh-a", S_IFREG | 0644, 0), a) << "a second lookup, the same id";
  EXPECT_EQ(t.remember("root", S_IFDIR | 0755, 0), kRootIno);
  const uint64_t b = t.remember("fh-b", S_IFREG | 0644, 0);
  EXPECT_NE(b, a);
  t.forget(a, 1);
  EXPECT_TRUE(t.find(a, &fh)) << "one lookup left";
  t.forget(a, 1);
  EXPECT_FALSE(t.find(a, &fh)) << "forgotten: ESTALE";
  EXPECT_NE(t.remember("fh-a", S_IFREG | 0644, 0), a) << "ids are never reused";
  t.forget(kRootIno, 100);
  EXPECT_TRUE(t.find(kRootIno, &fh)) << "the root is never forgotten";
  EXPECT_FALSE(t.find(0, &fh));
  EXPECT_FALSE(t.find(999999, &fh)) << "an id never given out";
}

TEST(InodeTable, OpenFilesOutliveTheirLookupsAndHiddenOnesAreReturnedAtLastClose) {
  InodeTable t("root");
  const uint64_t a = t.remember("fh-a", S_IFREG | 0644, 0);
  EXPECT_EQ(t.open_id("fh-a"), 0u);
  const uint64_t h1 = t.open(a);
  const uint64_t h2 = t.open(a);
  ASSERT_NE(h1, 0u);
  ASSERT_NE(h2, h1);
  EXPECT_EQ(t.open(12345), 0u) << "not a live id";
  EXPECT_TRUE(t.has_handle(a, h1));
  EXPECT_FALSE(t.has_handle(a, h1 + h2)) << "a handle never given out";
  EXPECT_FALSE(t.has_handle(kRootIno, h1)) << "another file's handle";
  EXPECT_EQ(t.open_id("fh-a"), a);
  t.hide(a, {"dir", ".dpfs-removed-1"});
  EXPECT_TRUE(t.hidden(a));
  t.forget(a, 1);
  std::string fh;
  EXPECT_TRUE(t.find(a, &fh)) << "still open";
  std::optional<InodeTable::Hidden> hidden;
  EXPECT_FALSE(t.close(kRootIno, h1, &hidden)) << "a handle closed through another id";
  EXPECT_TRUE(t.close(a, h1, &hidden));
  EXPECT_FALSE(hidden.has_value()) << "one handle left";
  EXPECT_FALSE(t.close(a, h1, &hidden)) << "closed twice";
  EXPECT_TRUE(t.close(a, h2, &hidden));
  ASSERT_TRUE(hidden.has_value());
  EXPECT_EQ(hidden->name, ".dpfs-removed-1");
  EXPECT_FALSE(t.find(a, &fh)) << "no lookups, no handles: gone";
}

// What becomes of a file whose name goes: open files and (for a rename)
// files the kernel still holds live on hidden until both let go; the rest
// are doomed, and opens of them wait for the removal.
TEST(InodeTable, RemovedNamesKeepHeldFilesUntilForgotten) {
  InodeTable t("root");
  const uint64_t a = t.remember("fh-a", S_IFREG | 0644, 0);
  uint64_t ino = 0;
  EXPECT_EQ(t.doom("fh-a", /*keep_if_held=*/true, &ino), InodeTable::Fate::kHeld);
  EXPECT_EQ(ino, a);
  ASSERT_TRUE(t.hide(a, {"dir", ".dpfs-removed-a"}));
  const uint64_t h = t.open(a, [] { ADD_FAILURE() << "a kept file is not doomed"; });
  ASSERT_NE(h, 0u);
  ASSERT_NE(h, InodeTable::kWaiting);
  EXPECT_EQ(t.doom("fh-a", false, &ino), InodeTable::Fate::kOpen);
  EXPECT_FALSE(t.forget(a, 1).has_value()) << "still open";
  std::optional<InodeTable::Hidden> hidden;
  ASSERT_TRUE(t.close(a, h, &hidden));
  ASSERT_TRUE(hidden.has_value()) << "neither open nor held";
  EXPECT_EQ(hidden->name, ".dpfs-removed-a");

  // Held, not open: the last FORGET hands the hidden name out.
  const uint64_t b = t.remember("fh-b", S_IFREG | 0644, 0);
  t.remember("fh-b", S_IFREG | 0644, 0);
  ASSERT_TRUE(t.hide(b, {"dir", ".dpfs-removed-b"}));
  EXPECT_FALSE(t.forget(b, 1).has_value()) << "one lookup left";
  auto gone = t.forget(b, 1);
  ASSERT_TRUE(gone.has_value());
  EXPECT_EQ(gone->name, ".dpfs-removed-b");
  EXPECT_FALSE(t.hide(b, {"dir", "late"})) << "forgotten before the hiding was answered";

  // Not held or not asked to keep: doomed; opens wait for undoom().
  const uint64_t c = t.remember("fh-c", S_IFREG | 0644, 0);
  EXPECT_EQ(t.doom("fh-c", /*keep_if_held=*/false, &ino), InodeTable::Fate::kGoes);
  bool retried = false;
  EXPECT_EQ(t.open(c, [&] { retried = true; }), InodeTable::kWaiting);
  for (auto& retry : t.undoom("fh-c")) retry();
  EXPECT_TRUE(retried);
  EXPECT_EQ(t.doom("fh-unknown", true, &ino), InodeTable::Fate::kGoes) << "never looked up";
}

TEST(InodeTable, UnstableWritesAreKeptTrimmedAndCounted) {
  InodeTable t("root");
  const uint64_t a = t.remember("fh-a", S_IFREG | 0644, 0);
  t.add_unstable(a, {0, std::string(100, 'x'), {}});
  t.add_unstable(a, {100, std::string(100, 'y'), {}});
  EXPECT_EQ(t.unstable_bytes(), 200u);
  t.truncate_unstable(a, 150);
  EXPECT_EQ(t.unstable_bytes(), 150u) << "nothing past a truncation is sent again";
  t.forget(a, 1);
  std::string fh;
  EXPECT_TRUE(t.find(a, &fh)) << "kept while writes are uncommitted";
  auto writes = t.take_unstable(a);
  ASSERT_EQ(writes.size(), 2u);
  EXPECT_EQ(writes[1].data.size(), 50u);
  EXPECT_EQ(t.unstable_bytes(), 0u);
  EXPECT_FALSE(t.find(a, &fh)) << "committed and forgotten: gone";
}

TEST(NfsConfig, SpecAndSettings) {
  BackendConfig cfg;
  parse_backend_spec("nfs://127.0.0.1/srv?version=3", &cfg);
  EXPECT_EQ(cfg.kind, BackendKind::kNfs);
  EXPECT_EQ(cfg.arg, "//127.0.0.1/srv?version=3");
  EXPECT_THROW(parse_backend_spec("nfs://127.0.0.1", &cfg), std::invalid_argument);
  EXPECT_THROW(parse_backend_spec("nfs", &cfg), std::invalid_argument);
  daemon::Config c;
  daemon::apply_toml(c,
                     "[backend]\ntype = \"nfs://h/x\"\n[backend.nfs]\nconnections = 4\n"
                     "timeout = 2.5\nrsize = \"64K\"\nwsize = 32768\nmax_unstable = \"8M\"\n",
                     "t");
  EXPECT_EQ(c.backend.kind, BackendKind::kNfs);
  EXPECT_EQ(c.backend.nfs.connections, 4u);
  EXPECT_DOUBLE_EQ(c.backend.nfs.timeout, 2.5);
  EXPECT_EQ(c.backend.nfs.rsize, 65536u);
  EXPECT_EQ(c.backend.nfs.wsize, 32768u);
  EXPECT_EQ(c.backend.nfs.max_unstable, 8u << 20);
  for (const char* bad : {"[backend.nfs]\nconnections = 0\n", "[backend.nfs]\ntimeout = 0\n",
                          "[backend.nfs]\nrsize = \"2M\"\n", "[backend.nfs]\nwsize = 100\n"}) {
    daemon::Config d;
    EXPECT_THROW(daemon::apply_toml(d, bad, "t"), daemon::ConfigError) << bad;
  }
}

}  // namespace
}  // namespace dpfs::nfs
