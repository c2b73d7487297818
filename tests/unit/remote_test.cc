// The remote transport's wire format and both of its ends, in process: a
// Forwarder against a real Server (memfs), and against a scripted fake
// server that answers out of order, with garbage, or not at all.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>

#include "backend/memfs/memfs.h"
#include "remote/forwarder.h"
#include "remote/ledger.h"
#include "remote/server.h"
#include "remote/wire.h"
#include "server/config.h"
#include "session_harness.h"

namespace dpfs::remote {
namespace {

using namespace std::chrono_literals;
using testing::RequestBuilder;

// --- Wire --------------------------------------------------------------------

TEST(RemoteWire, ParsesEndpoints) {
  Endpoint e = parse_endpoint("tcp://127.0.0.1:8080", "tcp://", false);
  EXPECT_EQ(e.host, "127.0.0.1");
  EXPECT_EQ(e.port, 8080);
  e = parse_endpoint("remote://[::1]:9", "remote://", false);
  EXPECT_EQ(e.host, "::1");
  EXPECT_EQ(e.port, 9);
  EXPECT_EQ(format_endpoint(e), "[::1]:9");
  EXPECT_EQ(parse_endpoint("tcp://h:0", "tcp://", true).port, 0);
  for (const char* bad : {"tcp://h:0", "udp://h:1", "tcp://h", "tcp://:1", "tcp://h:65536",
                          "tcp://h:1x", "tcp://[::1:1", "tcp://h:"}) {
    EXPECT_THROW(parse_endpoint(bad, "tcp://", false), std::invalid_argument) << bad;
  }
}

TEST(RemoteWire, ChecksHeaders) {
  FrameHeader h = make_header(FrameType::kRequest, 100, 5, 4096);
  EXPECT_EQ(check_header(h, 100), "");
  EXPECT_NE(check_header(h, 99), "");
  h.version = 2;
  EXPECT_NE(check_header(h, 100).find("version 2"), std::string::npos);
  h = make_header(FrameType::kRequest, 1);
  h.magic = 0x12345678;
  EXPECT_NE(check_header(h, 100).find("magic"), std::string::npos);
}

// Each stage takes its one frame type (and a device also ERROR), handshake
// frames of their exact size, and nothing past its limit.
TEST(RemoteWire, FramesAreJudgedByWhereTheConnectionIs) {
  auto judge = [](FrameType type, uint32_t length, Stage stage, uint32_t max_request = 1000) {
    return check_frame(make_header(type, length), stage, max_request);
  };
  EXPECT_FALSE(judge(FrameType::kHello, sizeof(HelloPayload), Stage::kHello).refused());
  EXPECT_TRUE(judge(FrameType::kHello, sizeof(HelloPayload) + 1, Stage::kHello).refused());
  EXPECT_TRUE(judge(FrameType::kRequest, 100, Stage::kHello).tell_peer);
  EXPECT_TRUE(judge(FrameType::kError, 10, Stage::kHello).refused());  // devices do not send ERROR
  EXPECT_FALSE(judge(FrameType::kAuth, sizeof(AuthPayload), Stage::kAuth).refused());
  EXPECT_FALSE(judge(FrameType::kRequest, 1000, Stage::kRequests).refused());
  const Refusal big = judge(FrameType::kRequest, 1001, Stage::kRequests);
  EXPECT_TRUE(big.refused());
  EXPECT_FALSE(big.tell_peer);
  EXPECT_TRUE(judge(FrameType::kReply, 10, Stage::kRequests).refused());
  EXPECT_FALSE(
      judge(FrameType::kChallenge, sizeof(ChallengePayload), Stage::kChallenge).refused());
  EXPECT_FALSE(judge(FrameType::kError, kMaxErrorText, Stage::kChallenge).refused());
  EXPECT_TRUE(judge(FrameType::kError, kMaxErrorText + 1, Stage::kWelcome).refused());
  EXPECT_FALSE(judge(FrameType::kReply, kMaxPayload, Stage::kReplies).refused());
  EXPECT_TRUE(judge(FrameType::kReply, kMaxPayload + 1, Stage::kReplies).refused());
  EXPECT_TRUE(judge(FrameType::kRequest, 10, Stage::kReplies).refused());
  FrameHeader other = make_header(FrameType::kHello, sizeof(HelloPayload));
  other.version = 2;
  EXPECT_TRUE(check_frame(other, Stage::kHello).tell_peer);  // told in our format why
  other.magic = 0x20544547;                                   // "GET "
  EXPECT_FALSE(check_frame(other, Stage::kHello).tell_peer);
}

TEST(RemoteWire, HandshakeValuesAndErrorTextAreChecked) {
  HelloPayload hello{};
  for (uint32_t bad : {0u, 100u, 4097u}) {
    hello.max_write = bad;
    EXPECT_TRUE(check_hello(hello).refused()) << bad;
  }
  hello.max_write = 1 << 20;
  EXPECT_FALSE(check_hello(hello).refused());
  EXPECT_TRUE(check_welcome(WelcomePayload{0, 100}).refused());
  EXPECT_FALSE(check_welcome(WelcomePayload{0, 1 << 20}).refused());
  const std::string forged = "bad secret\nremote: all is well\x1b[2J";
  const std::string text =
      error_text({reinterpret_cast<const uint8_t*>(forged.data()), forged.size()});
  EXPECT_EQ(text, "bad secret?remote: all is well?[2J");
  const std::vector<uint8_t> long_text(1000, 'a');
  EXPECT_EQ(error_text(long_text).size(), kMaxErrorText);
}

TEST(RemoteWire, RepliesMustMatchTheirRequest) {
  fuse_out_header out{sizeof(fuse_out_header), 0, 77};
  const iovec whole{&out, sizeof(out)};
  EXPECT_EQ(check_reply({&whole, 1}, sizeof(out), 77, FUSE_GETATTR), ReplyCheck::kValid);
  EXPECT_EQ(check_reply({&whole, 1}, sizeof(out), 78, FUSE_GETATTR), ReplyCheck::kMalformed);
  EXPECT_EQ(check_reply({&whole, 1}, sizeof(out) + 8, 77, FUSE_GETATTR), ReplyCheck::kMalformed);
  EXPECT_EQ(check_reply({&whole, 1}, 5, 77, FUSE_GETATTR), ReplyCheck::kMalformed);
  EXPECT_EQ(check_reply({&whole, 1}, 0, 77, FUSE_GETATTR), ReplyCheck::kEmpty);
  EXPECT_EQ(check_reply({&whole, 1}, 0, 77, FUSE_FORGET), ReplyCheck::kValid);
  // The header may straddle the tenant's buffers.
  auto* bytes = reinterpret_cast<char*>(&out);
  const iovec split[3] = {{bytes, 3}, {bytes + 3, 0}, {bytes + 3, sizeof(out) - 3}};
  EXPECT_EQ(check_reply(split, sizeof(out), 77, FUSE_READ), ReplyCheck::kValid);
  EXPECT_TRUE(check_reply_fits(make_header(FrameType::kReply, 17), 16).refused());
  EXPECT_FALSE(check_reply_fits(make_header(FrameType::kReply, 16), 16).refused());
}

TEST(RemoteWire, ProofsBindSecretRoleAndParameters) {
  HelloPayload hello{};
  hello.session_id = 1;
  hello.max_write = 4096;
  Nonce n{};
  const Mac base = device_proof("secret", hello, n);
  EXPECT_TRUE(same_mac(base, device_proof("secret", hello, n)));
  EXPECT_FALSE(same_mac(base, server_proof("secret", hello, n)));
  EXPECT_FALSE(same_mac(base, device_proof("secret2", hello, n)));
  EXPECT_FALSE(same_mac(base, device_proof("", hello, n)));
  HelloPayload other = hello;
  other.max_write = 8192;
  EXPECT_FALSE(same_mac(base, device_proof("secret", other, n)));
  n[31] = 1;
  EXPECT_FALSE(same_mac(base, device_proof("secret", hello, n)));
}

TEST(RemoteWire, SecretFilesMustBePrivateAndLongEnough) {
  char tmpl[] = "/tmp/dpfs-secret-test.XXXXXX";
  const int fd = ::mkstemp(tmpl);
  ASSERT_GE(fd, 0);
  ::close(fd);
  const std::string path = tmpl;
  auto write = [&](const std::string& text, mode_t mode) {
    std::ofstream(path, std::ios::trunc) << text;
    ::chmod(path.c_str(), mode);
  };
  write("0123456789abcdef\n", 0600);
  EXPECT_EQ(read_secret_file(path), "0123456789abcdef");
  write("0123456789abcdef\n", 0640);
  EXPECT_THROW(read_secret_file(path), std::invalid_argument);
  write("short\n", 0600);
  EXPECT_THROW(read_secret_file(path), std::invalid_argument);
  ::unlink(path.c_str());
  EXPECT_THROW(read_secret_file(path), std::invalid_argument);
}

// writev_full copes with more buffers than IOV_MAX and with partial writes
// (a small socket buffer); readv_full fills buffers in order.
TEST(RemoteWire, VectoredIoOverManyBuffers) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  const int small = 4096;
  ::setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
  std::mt19937 rng(3);
  std::string data(3 << 20, '\0');
  for (char& c : data) c = char(rng());
  std::vector<iovec> out;
  for (size_t at = 0; at < data.size();) {
    const size_t len = std::min<size_t>(data.size() - at, rng() % 3000);
    out.push_back({data.data() + at, len});
    at += len;
  }
  ASSERT_GT(out.size(), size_t(IOV_MAX));
  std::string got(data.size(), '\0');
  std::thread reader([&] {
    std::vector<iovec> in;
    for (size_t at = 0; at < got.size(); at += 7777) {
      in.push_back({got.data() + at, std::min<size_t>(7777, got.size() - at)});
    }
    EXPECT_TRUE(readv_full(sv[1], in, got.size()));
  });
  EXPECT_TRUE(writev_full(sv[0], out));
  reader.join();
  EXPECT_TRUE(got == data);
  ::close(sv[0]);
  ::close(sv[1]);
}

// --- Configuration -----------------------------------------------------------

TEST(RemoteConfig, KeysAreCheckedAndCombinationsRefused) {
  using server::Config;
  using server::ConfigError;
  Config cfg;
  server::apply_toml(
      cfg, "[remote]\nlisten = \"tcp://127.0.0.1:0\"\nconnections = 4\ntimeout = 2.5\n", "t");
  server::finish(cfg);
  EXPECT_EQ(cfg.remote.listen, "tcp://127.0.0.1:0");
  EXPECT_EQ(cfg.remote.connections, 4u);
  EXPECT_DOUBLE_EQ(cfg.remote.timeout, 2.5);
  EXPECT_TRUE(cfg.fuse.mount.empty()) << "a listener alone mounts nothing";

  for (const auto& [key, value] :
       std::vector<std::pair<const char*, const char*>>{{"remote.listen", "http://h:1"},
                                                        {"remote.listen", "tcp://h"},
                                                        {"remote.connections", "0"},
                                                        {"remote.connections", "65"},
                                                        {"remote.timeout", "0"},
                                                        {"remote.secret_file", ""},
                                                        {"backend.type", "remote:h:1"},
                                                        {"backend.type", "remote://h"}}) {
    Config c;
    EXPECT_THROW(server::apply_flag(c, key, value), ConfigError) << key << " " << value;
  }

  Config device;
  server::apply_flag(device, "backend.type", "remote://10.0.0.1:7070");
  server::finish(device);
  EXPECT_EQ(device.backend.type, "remote");
  EXPECT_EQ(device.backend.arg, "//10.0.0.1:7070");

  Config both;
  server::apply_flag(both, "backend.type", "remote://h:1");
  server::apply_flag(both, "remote.listen", "tcp://127.0.0.1:1");
  EXPECT_THROW(server::finish(both), ConfigError);
  Config vhost;  // a virtio-fs device may forward too
  server::apply_flag(vhost, "backend.type", "remote://h:1");
  server::apply_flag(vhost, "vhost_user.socket", "/tmp/x.sock");
  server::finish(vhost);
  EXPECT_EQ(vhost.devices.at(0).backend.type, "remote");
}

// --- Forwarder ---------------------------------------------------------------

// A request answered from another thread, waited for by the test.
class AsyncRequest final : public fuse::Request {
 public:
  explicit AsyncRequest(std::vector<uint8_t> bytes, size_t out_size = 1 << 16)
      : bytes_(std::move(bytes)), out_buf_(out_size, 0xee) {
    in_iov_ = {bytes_.data(), bytes_.size()};
    out_iov_ = {out_buf_.data(), out_buf_.size()};
    in = std::span<const iovec>(&in_iov_, 1);
    out = std::span<const iovec>(&out_iov_, 1);
  }
  void complete(size_t len) override {
    std::lock_guard lock(mu_);
    ++completions_;
    reply_len_ = len;
    cv_.notify_all();
  }
  // Waits for the completion; false if none came within `timeout`.
  bool wait(std::chrono::milliseconds timeout = 5s) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return completions_ > 0; });
  }
  int completions() {
    std::lock_guard lock(mu_);
    return completions_;
  }
  size_t reply_len() {
    std::lock_guard lock(mu_);
    return reply_len_;
  }
  fuse_out_header header() const {
    fuse_out_header h;
    std::memcpy(&h, out_buf_.data(), sizeof(h));
    return h;
  }

 private:
  std::vector<uint8_t> bytes_;
  std::vector<uint8_t> out_buf_;
  iovec in_iov_{}, out_iov_{};
  std::mutex mu_;
  std::condition_variable cv_;
  int completions_ = 0;
  size_t reply_len_ = 0;
};

std::vector<uint8_t> getattr(uint64_t unique) {
  fuse_getattr_in in{};
  return RequestBuilder(FUSE_GETATTR, 1, unique).arg(in).bytes();
}

ForwarderOptions forwarder_options(uint16_t port, double timeout = 5.0, unsigned links = 1) {
  ForwarderOptions o;
  o.server = Endpoint{"127.0.0.1", port};
  o.connections = links;
  o.timeout_s = timeout;
  return o;
}

std::unique_ptr<Server> memfs_server(std::string secret = "") {
  ServerOptions o;
  o.listen = Endpoint{"127.0.0.1", 0};
  o.secret = std::move(secret);
  auto server = std::make_unique<Server>(std::move(o), std::make_unique<Memfs>(MemfsOptions{}));
  server->start();
  return server;
}

TEST(RemoteForwarder, ServesThroughARealServerFromManyThreads) {
  // Requests outlive the forwarder (which answers what it holds when it
  // stops), whichever way the test ends.
  AsyncRequest init(testing::init_request());
  std::vector<std::unique_ptr<AsyncRequest>> reqs;
  for (uint64_t i = 0; i < 200; ++i)
    reqs.push_back(std::make_unique<AsyncRequest>(getattr(100 + i)));
  auto server = memfs_server();
  Forwarder fw(forwarder_options(server->bound().port, 5.0, 3));
  fw.handle(init);
  ASSERT_TRUE(init.wait());
  ASSERT_EQ(init.header().error, 0);
  ASSERT_EQ(init.header().unique, 1u);

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = size_t(t); i < reqs.size(); i += 4) fw.handle(*reqs[i]);
    });
  }
  for (auto& t : threads) t.join();
  for (uint64_t i = 0; i < reqs.size(); ++i) {
    ASSERT_TRUE(reqs[i]->wait()) << i;
    EXPECT_EQ(reqs[i]->completions(), 1);
    EXPECT_EQ(reqs[i]->header().error, 0);
    EXPECT_EQ(reqs[i]->header().unique, 100 + i);
    EXPECT_EQ(reqs[i]->reply_len(), sizeof(fuse_out_header) + sizeof(fuse_attr_out));
  }
  fw.stop();
  server->stop();
}

TEST(RemoteForwarder, ASecretMismatchIsFatalAtStartUp) {
  auto server = memfs_server("the server's secret");
  EXPECT_THROW(Forwarder(forwarder_options(server->bound().port)), RemoteError);
  ForwarderOptions o = forwarder_options(server->bound().port);
  o.secret = "the server's secret";
  AsyncRequest init(testing::init_request());
  Forwarder fw(o);
  fw.handle(init);
  ASSERT_TRUE(init.wait());
  EXPECT_EQ(init.header().error, 0);
}

TEST(RemoteForwarder, WithoutAServerRequestsTimeOut) {
  uint16_t port;
  {
    auto server = memfs_server();
    port = server->bound().port;
  }  // nothing listens there now
  AsyncRequest req(getattr(9));
  Forwarder fw(forwarder_options(port, 0.3));
  const auto t0 = std::chrono::steady_clock::now();
  fw.handle(req);
  ASSERT_TRUE(req.wait(3s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 2s);
  EXPECT_EQ(req.header().error, -ETIMEDOUT);
  EXPECT_EQ(req.header().unique, 9u);
}

// A scripted server on loopback, speaking the wire format by hand.
class FakeServer {
 public:
  FakeServer() {
    listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(::listen(listen_.get(), 8), 0);
    socklen_t len = sizeof(a);
    ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  uint16_t port() const { return port_; }

  // Accepts a connection and completes the handshake.
  void accept() {
    conn_.reset(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    ASSERT_TRUE(conn_);
    set_timeouts(conn_.get(), 5, 5);
    FrameHeader h;
    HelloPayload hello{};
    ASSERT_TRUE(read_full(conn_.get(), &h, sizeof(h)));
    ASSERT_TRUE(read_full(conn_.get(), &hello, sizeof(hello)));
    ChallengePayload c{};
    c.server_proof = server_proof("", hello, c.server_nonce);
    send(FrameType::kChallenge, &c, sizeof(c));
    AuthPayload auth{};
    ASSERT_TRUE(read_full(conn_.get(), &h, sizeof(h)));
    ASSERT_TRUE(read_full(conn_.get(), &auth, sizeof(auth)));
    WelcomePayload w{0, 1u << 21};
    send(FrameType::kWelcome, &w, sizeof(w));
  }
  // Reads one request frame; returns its id and the FUSE header.
  std::pair<uint64_t, fuse_in_header> read_request() {
    FrameHeader h;
    std::vector<char> payload;
    EXPECT_TRUE(read_full(conn_.get(), &h, sizeof(h)));
    payload.resize(h.length);
    EXPECT_TRUE(read_full(conn_.get(), payload.data(), h.length));
    fuse_in_header in{};
    std::memcpy(&in, payload.data(), std::min(payload.size(), sizeof(in)));
    return {h.id, in};
  }
  // Replies to frame `id` with a header-only reply for `unique`.
  void reply(uint64_t id, uint64_t unique, int32_t error = 0) {
    fuse_out_header out{};
    out.len = sizeof(out);
    out.error = error;
    out.unique = unique;
    send(FrameType::kReply, &out, sizeof(out), id);
  }
  int fd() const { return conn_.get(); }
  void send(FrameType type, const void* payload, uint32_t len, uint64_t id = 0) {
    FrameHeader h = make_header(type, len, id);
    iovec iov[2] = {{&h, sizeof(h)}, {const_cast<void*>(payload), len}};
    EXPECT_TRUE(writev_full(conn_.get(), iov));
  }

 private:
  transport::UniqueFd listen_, conn_;
  uint16_t port_ = 0;
};

TEST(RemoteForwarder, RepliesMayComeInAnyOrder) {
  FakeServer fake;
  std::thread script([&] {
    fake.accept();
    auto [id1, h1] = fake.read_request();
    auto [id2, h2] = fake.read_request();
    EXPECT_NE(id1, id2);
    fake.reply(id2, h2.unique, -ENOENT);
    fake.reply(id1, h1.unique);
  });
  AsyncRequest a(getattr(0xaaaa)), b(getattr(0xaaaa));  // the same FUSE unique: not trusted
  Forwarder fw(forwarder_options(fake.port()));
  fw.handle(a);
  fw.handle(b);
  ASSERT_TRUE(a.wait());
  ASSERT_TRUE(b.wait());
  script.join();
  EXPECT_EQ(a.header().error, 0);
  EXPECT_EQ(b.header().error, -ENOENT);
}

// A reply for an id never sent breaks the link: the MKDIR in flight gets
// EIO (it may have happened), the GETATTR is sent again on the next link.
TEST(RemoteForwarder, ABadReplyBreaksTheLinkAndOnlyIdempotentRequestsAreResent) {
  FakeServer fake;
  std::thread script([&] {
    fake.accept();
    fake.read_request();  // GETATTR
    fake.read_request();  // MKDIR
    fake.reply(999999, 1);
    fake.accept();  // the forwarder reconnects
    auto [id3, h3] = fake.read_request();
    EXPECT_EQ(h3.opcode, uint32_t(FUSE_GETATTR));
    fake.reply(id3, h3.unique);
  });
  AsyncRequest get(getattr(1));
  fuse_mkdir_in mk{};
  AsyncRequest mkdir(RequestBuilder(FUSE_MKDIR, 1, 2).arg(mk).bytes());
  Forwarder fw(forwarder_options(fake.port()));
  fw.handle(get);
  fw.handle(mkdir);
  ASSERT_TRUE(mkdir.wait());
  EXPECT_EQ(mkdir.header().error, -EIO);
  EXPECT_EQ(mkdir.header().unique, 2u);
  ASSERT_TRUE(get.wait());
  EXPECT_EQ(get.header().error, 0);
  EXPECT_EQ(get.completions(), 1);
  script.join();
  EXPECT_GE(fw.counters().resent.load(), 1u);
}

// A server that starts a reply and stalls: the request is answered EIO
// once the timeout passes, not left hanging.
TEST(RemoteForwarder, AReplyThatStallsHalfWayIsAnsweredWithinTheTimeout) {
  FakeServer fake;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  std::thread script([&] {
    fake.accept();
    auto [id, h] = fake.read_request();
    FrameHeader frame = make_header(FrameType::kReply, sizeof(fuse_out_header), id);
    fuse_out_header out{sizeof(fuse_out_header), 0, h.unique};
    iovec iov[2] = {{&frame, sizeof(frame)}, {&out, 8}};  // half of the FUSE header
    EXPECT_TRUE(writev_full(fake.fd(), iov));
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return done; });
  });
  AsyncRequest req(getattr(77));
  Forwarder fw(forwarder_options(fake.port(), 0.5));
  const auto t0 = std::chrono::steady_clock::now();
  fw.handle(req);
  ASSERT_TRUE(req.wait(5s));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 3s);
  EXPECT_EQ(req.header().error, -EIO);
  EXPECT_EQ(req.header().unique, 77u);
  {
    std::lock_guard lock(mu);
    done = true;
  }
  cv.notify_all();
  script.join();
}

// --- Sessions on a shared backend --------------------------------------------

std::vector<uint8_t> entry_reply(uint64_t unique, uint64_t nodeid, int32_t error = 0) {
  fuse_out_header out{uint32_t(sizeof(fuse_out_header) + sizeof(fuse_entry_out)), error, unique};
  fuse_entry_out entry{};
  entry.nodeid = nodeid;
  std::vector<uint8_t> bytes(sizeof(out) + sizeof(entry));
  std::memcpy(bytes.data(), &out, sizeof(out));
  std::memcpy(bytes.data() + sizeof(out), &entry, sizeof(entry));
  return bytes;
}

// A READDIRPLUS reply with one record per (name, nodeid).
std::vector<uint8_t> direntplus_reply(const std::vector<std::pair<std::string, uint64_t>>& ents) {
  std::vector<uint8_t> bytes(sizeof(fuse_out_header));
  for (const auto& [name, nodeid] : ents) {
    fuse_direntplus d{};
    d.entry_out.nodeid = nodeid;
    d.dirent.namelen = uint32_t(name.size());
    const size_t at = bytes.size();
    bytes.resize(at + FUSE_DIRENTPLUS_SIZE(&d));
    std::memcpy(bytes.data() + at, &d, FUSE_NAME_OFFSET_DIRENTPLUS);
    std::memcpy(bytes.data() + at + FUSE_NAME_OFFSET_DIRENTPLUS, name.data(), name.size());
  }
  fuse_out_header out{uint32_t(bytes.size()), 0, 9};
  std::memcpy(bytes.data(), &out, sizeof(out));
  return bytes;
}

TEST(RemoteLedger, CountsTheLookupsRepliesGiveOut) {
  LookupLedger ledger;
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(1, 10));
  ledger.on_reply(FUSE_MKDIR, 1, entry_reply(2, 10));
  ledger.on_reply(FUSE_CREATE, 1, entry_reply(3, 11));
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(4, 12, -ENOENT));  // an error gives nothing
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(5, 0));            // nor a negative entry
  ledger.on_reply(FUSE_GETATTR, 1, entry_reply(6, 13));          // nor another opcode
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(7, kRootIno));     // the root is never forgotten
  auto short_reply = entry_reply(8, 14);
  short_reply.resize(sizeof(fuse_out_header) + 8);
  ledger.on_reply(FUSE_LOOKUP, 1, short_reply);
  ledger.on_reply(FUSE_READDIRPLUS, 1, direntplus_reply({{".", 1}, {"..", 1}, {"x", 10}, {"y", 15}}));
  EXPECT_EQ(ledger.held(10), 3u);
  EXPECT_EQ(ledger.held(11), 1u);
  EXPECT_EQ(ledger.held(15), 1u);
  EXPECT_EQ(ledger.held(12) + ledger.held(13) + ledger.held(14) + ledger.held(kRootIno), 0u);
  // A record cut off at the end of the reply is not counted.
  auto cut = direntplus_reply({{"z", 16}, {"w", 17}});
  cut.resize(cut.size() - 1);
  ledger.on_reply(FUSE_READDIRPLUS, 1, cut);
  EXPECT_EQ(ledger.held(16), 1u);
  EXPECT_EQ(ledger.held(17), 0u);
  EXPECT_EQ(ledger.inodes(), 4u);
  auto all = ledger.take_all();
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<std::pair<uint64_t, uint64_t>>{{10, 3}, {11, 1}, {15, 1}, {16, 1}}));
  EXPECT_EQ(ledger.inodes(), 0u);
}

// An OPEN, OPENDIR or CREATE reply: header, [fuse_entry_out,] fuse_open_out.
std::vector<uint8_t> open_reply(uint32_t opcode, uint64_t fh, uint64_t created = 0,
                                int32_t error = 0) {
  std::vector<uint8_t> bytes(sizeof(fuse_out_header));
  if (opcode == FUSE_CREATE) {
    fuse_entry_out entry{};
    entry.nodeid = created;
    bytes.resize(bytes.size() + sizeof(entry));
    std::memcpy(bytes.data() + sizeof(fuse_out_header), &entry, sizeof(entry));
  }
  fuse_open_out open{};
  open.fh = fh;
  const size_t at = bytes.size();
  bytes.resize(at + sizeof(open));
  std::memcpy(bytes.data() + at, &open, sizeof(open));
  fuse_out_header out{uint32_t(bytes.size()), error, 3};
  std::memcpy(bytes.data(), &out, sizeof(out));
  return bytes;
}

// The handles a session's replies gave out, less those its device released,
// are what its end must close.
TEST(RemoteLedger, KeepsTheHandlesLeftOpen) {
  LookupLedger ledger;
  ledger.on_reply(FUSE_OPEN, 20, open_reply(FUSE_OPEN, 100));
  ledger.on_reply(FUSE_OPENDIR, 21, open_reply(FUSE_OPENDIR, 101));
  ledger.on_reply(FUSE_CREATE, 1, open_reply(FUSE_CREATE, 102, 22));
  ledger.on_reply(FUSE_OPEN, 23, open_reply(FUSE_OPEN, 103, 0, -EACCES));  // refused: none
  auto cut = open_reply(FUSE_OPEN, 104);
  cut.resize(cut.size() - 1);
  ledger.on_reply(FUSE_OPEN, 24, cut);  // too short: none
  EXPECT_EQ(ledger.handles(), 3u);
  EXPECT_EQ(ledger.held(22), 1u) << "CREATE also gives out a lookup";

  fuse_release_in rel{};
  rel.fh = 100;
  ledger.on_release(RequestBuilder(FUSE_RELEASE, 20, 5).arg(rel).bytes());
  rel.fh = 999;  // not this session's: nothing
  ledger.on_release(RequestBuilder(FUSE_RELEASE, 20, 6).arg(rel).bytes());
  EXPECT_EQ(ledger.handles(), 2u);

  auto left = ledger.take_handles();
  std::sort(left.begin(), left.end(), [](const auto& a, const auto& b) { return a.fh < b.fh; });
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].fh, 101u);
  EXPECT_EQ(left[0].ino, 21u);
  EXPECT_TRUE(left[0].directory);
  EXPECT_EQ(left[1].fh, 102u);
  EXPECT_EQ(left[1].ino, 22u) << "a created file's handle is on the new inode";
  EXPECT_FALSE(left[1].directory);
  EXPECT_EQ(ledger.handles(), 0u);
}

TEST(RemoteLedger, ForgetsAreCutToWhatTheSessionHolds) {
  LookupLedger ledger;
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(1, 10));
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(2, 10));
  fuse_forget_in f{1000};
  std::vector<uint8_t> forget = RequestBuilder(FUSE_FORGET, 10, 3).arg(f).bytes();
  ledger.on_forget(forget);
  std::memcpy(&f, forget.data() + sizeof(fuse_in_header), sizeof(f));
  EXPECT_EQ(f.nlookup, 2u);
  EXPECT_EQ(ledger.held(10), 0u);

  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(4, 11));
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(5, 12));
  ledger.on_reply(FUSE_LOOKUP, 1, entry_reply(6, 12));
  // Three entries claimed, two carried: 1 of 11 (held 1), 5 of 12 (held 2).
  fuse_batch_forget_in b{3, 0};
  const fuse_forget_one ones[2] = {{11, 1}, {12, 5}};
  std::vector<uint8_t> batch = RequestBuilder(FUSE_BATCH_FORGET, 0, 7).arg(b).arg(ones).bytes();
  ledger.on_forget(batch);
  fuse_forget_one back[2];
  std::memcpy(back, batch.data() + sizeof(fuse_in_header) + sizeof(b), sizeof(back));
  EXPECT_EQ(back[0].nlookup, 1u);
  EXPECT_EQ(back[1].nlookup, 2u);
  EXPECT_EQ(ledger.inodes(), 0u);
  // Not held at all (another session's inode, or the root): forgets nothing.
  f.nlookup = 7;
  forget = RequestBuilder(FUSE_FORGET, kRootIno, 8).arg(f).bytes();
  ledger.on_forget(forget);
  std::memcpy(&f, forget.data() + sizeof(fuse_in_header), sizeof(f));
  EXPECT_EQ(f.nlookup, 0u);
  // Too short to carry its argument: left alone for the session to refuse.
  std::vector<uint8_t> stub = RequestBuilder(FUSE_FORGET, 10, 9).bytes();
  ledger.on_forget(stub);
  EXPECT_EQ(stub, RequestBuilder(FUSE_FORGET, 10, 9).bytes());
}

// One device of a server: a forwarder with its own session, and requests
// sent through it as root.
class Device {
 public:
  explicit Device(uint16_t port) : fw_(forwarder_options(port)) {
    AsyncRequest init(testing::init_request());
    fw_.handle(init);
    EXPECT_TRUE(init.wait());
    EXPECT_EQ(init.header().error, 0);
  }
  // Sends `builder`'s request as root; the reply's error and its bytes.
  std::pair<int32_t, std::vector<uint8_t>> call(RequestBuilder builder) {
    builder.header().uid = 0;
    builder.header().gid = 0;
    builder.header().unique = next_unique_++;
    auto req = std::make_unique<AsyncRequest>(builder.bytes());
    fw_.handle(*req);
    if (!req->wait()) return {-ETIMEDOUT, {}};
    std::vector<uint8_t> reply(req->reply_len());
    const iovec& out = req->out[0];
    std::memcpy(reply.data(), out.iov_base, reply.size());
    return {req->header().error, reply};
  }
  void send(RequestBuilder builder) {  // a request without a reply (FORGET)
    builder.header().unique = next_unique_++;
    forgets_.push_back(std::make_unique<AsyncRequest>(builder.bytes()));
    fw_.handle(*forgets_.back());
    forgets_.back()->wait();
  }
  // MKNOD of a regular file `name` in the root: its inode, or 0.
  uint64_t mknod(const std::string& name) {
    fuse_mknod_in in{};
    in.mode = S_IFREG | 0644;
    auto [error, reply] = call(std::move(RequestBuilder(FUSE_MKNOD, kRootIno).arg(in).name(name)));
    return error == 0 ? entry_of(reply) : 0;
  }
  uint64_t lookup(const std::string& name) {
    auto [error, reply] = call(std::move(RequestBuilder(FUSE_LOOKUP, kRootIno).name(name)));
    return error == 0 ? entry_of(reply) : 0;
  }
  int32_t unlink(const std::string& name) {
    return call(std::move(RequestBuilder(FUSE_UNLINK, kRootIno).name(name))).first;
  }
  int32_t getattr(uint64_t ino) {
    fuse_getattr_in in{};
    return call(std::move(RequestBuilder(FUSE_GETATTR, ino).arg(in))).first;
  }
  // Inodes in use on the backend (statfs: files - free).
  uint64_t inodes_used() {
    auto [error, reply] = call(RequestBuilder(FUSE_STATFS, kRootIno));
    fuse_statfs_out st{};
    if (error != 0 || reply.size() < sizeof(fuse_out_header) + sizeof(st)) return ~0ull;
    std::memcpy(&st, reply.data() + sizeof(fuse_out_header), sizeof(st));
    return st.st.files - st.st.ffree;
  }
  void stop() { fw_.stop(); }

 private:
  static uint64_t entry_of(const std::vector<uint8_t>& reply) {
    fuse_entry_out e{};
    if (reply.size() < sizeof(fuse_out_header) + sizeof(e)) return 0;
    std::memcpy(&e, reply.data() + sizeof(fuse_out_header), sizeof(e));
    return e.nodeid;
  }
  Forwarder fw_;
  uint64_t next_unique_ = 100;
  std::vector<std::unique_ptr<AsyncRequest>> forgets_;
};

// Two devices on one server: one's DESTROY gives back its own lookups only;
// a FORGET cannot take another session's; a device gone past the grace
// period loses its session, and the backend frees what only it held.
TEST(RemoteSessions, EachSessionEndsAloneAndGivesBackItsLookups) {
  ServerOptions o;
  o.listen = Endpoint{"127.0.0.1", 0};
  o.session_grace_s = 0.2;
  Server server(std::move(o), std::make_unique<Memfs>(MemfsOptions{}));
  server.start();
  Device a(server.bound().port), b(server.bound().port);
  const uint64_t base = b.inodes_used();
  const uint64_t ino_a = a.mknod("a"), ino_b = b.mknod("b");
  ASSERT_NE(ino_a, 0u);
  ASSERT_NE(ino_b, 0u);
  ASSERT_EQ(b.lookup("a"), ino_a);  // b holds a lookup on "a" too
  ASSERT_EQ(b.unlink("a"), 0);
  ASSERT_EQ(b.unlink("b"), 0);
  EXPECT_EQ(b.inodes_used(), base + 2) << "unlinked, but held by lookups";

  // a's DESTROY: b's lookups (on "a" and "b") stay; the backend-wide
  // destroy() would have freed both.
  EXPECT_EQ(a.call(RequestBuilder(FUSE_DESTROY, 0)).first, 0);
  EXPECT_EQ(b.inodes_used(), base + 2);
  EXPECT_EQ(b.getattr(ino_a), 0);
  EXPECT_EQ(b.getattr(ino_b), 0);
  // a's session awaits INIT again; a FORGET from it takes nothing of b's.
  EXPECT_NE(a.getattr(kRootIno), 0);
  EXPECT_EQ(a.call(RequestBuilder(FUSE_INIT, 0).arg([] {
                  fuse_init_in in{};
                  in.major = 7;
                  in.minor = FUSE_KERNEL_MINOR_VERSION;
                  return in;
                }()))
                .first,
            0);
  fuse_forget_in many{1000};
  a.send(std::move(RequestBuilder(FUSE_FORGET, ino_b).arg(many)));
  a.send(std::move(RequestBuilder(FUSE_FORGET, ino_a).arg(many)));
  EXPECT_EQ(b.getattr(ino_b), 0);
  EXPECT_EQ(b.inodes_used(), base + 2);
  // b forgets "a" (more than it holds: cut to its one lookup): freed.
  b.send(std::move(RequestBuilder(FUSE_FORGET, ino_a).arg(many)));
  EXPECT_EQ(b.inodes_used(), base + 1);

  // b vanishes: past the grace period its session ends and "b" is freed.
  EXPECT_EQ(server.sessions(), 2u);
  b.stop();
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  while (server.sessions() > 1 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(server.sessions(), 1u);
  EXPECT_EQ(a.inodes_used(), base);
  a.stop();
  server.stop();
}

}  // namespace
}  // namespace dpfs::remote
