// The remote transport's wire format and both of its ends, in process: a
// Forwarder against a real Server (memfs), and against a scripted fake
// server that answers out of order, with garbage, or not at all.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <poll.h>
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
#include "backend/null/null.h"
#include "daemon/config.h"
#include "fuse/session.h"
#include "remote/forwarder.h"
#include "remote/remote_backend.h"
#include "remote/server.h"
#include "remote/session_table.h"
#include "remote/wire.h"
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
  h.version = 1;
  EXPECT_NE(check_header(h, 100).find("version 1"), std::string::npos);
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
  EXPECT_FALSE(judge(FrameType::kChallenge, sizeof(ChallengePayload), Stage::kChallenge).refused());
  EXPECT_FALSE(judge(FrameType::kError, kMaxErrorText, Stage::kChallenge).refused());
  EXPECT_TRUE(judge(FrameType::kError, kMaxErrorText + 1, Stage::kWelcome).refused());
  EXPECT_FALSE(judge(FrameType::kReply, kMaxPayload, Stage::kReplies).refused());
  EXPECT_TRUE(judge(FrameType::kReply, kMaxPayload + 1, Stage::kReplies).refused());
  EXPECT_TRUE(judge(FrameType::kRequest, 10, Stage::kReplies).refused());
  FrameHeader other = make_header(FrameType::kHello, sizeof(HelloPayload));
  other.version = 1;
  EXPECT_TRUE(check_frame(other, Stage::kHello).tell_peer);  // told in our format why
  other.magic = 0x20544547;                                  // "GET "
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

// A frame's MAC is HMAC-SHA256(key, sequence || header || payload), the
// sequence counting the frames of its direction.
TEST(RemoteWire, FrameMacsCoverSequenceHeaderAndPayload) {
  Mac key{};
  key[0] = 7;
  FrameMac mac(key);
  const std::string payload = "a FUSE request";
  const FrameHeader h = make_header(FrameType::kRequest, uint32_t(payload.size()), 9, 4096);
  auto expected = [&](uint64_t seq, const std::string& body) {
    std::string msg(reinterpret_cast<const char*>(&seq), 8);
    msg.append(reinterpret_cast<const char*>(&h), sizeof(h));
    msg += body;
    Mac out{};
    unsigned len = 0;
    HMAC(EVP_sha256(), key.data(), int(key.size()),
         reinterpret_cast<const unsigned char*>(msg.data()), msg.size(), out.data(), &len);
    return out;
  };
  EXPECT_TRUE(same_mac(mac.next(h, payload.data()), expected(0, payload)));
  // Split over buffers, the same bytes: the same MAC, at the next sequence.
  std::string copy = payload;
  const iovec split[2] = {{copy.data(), 3}, {copy.data() + 3, copy.size() - 3}};
  EXPECT_TRUE(same_mac(mac.next(h, std::span<const iovec>(split)), expected(1, payload)));
  EXPECT_EQ(mac.sequence(), 2u);
  copy[0] ^= 1;
  EXPECT_FALSE(same_mac(mac.next(h, copy.data()), expected(2, payload)));
  // The directions' keys differ, and depend on the secret and both nonces.
  HelloPayload hello{};
  Nonce n{};
  const FrameKeys k = frame_keys("secret", hello, n);
  EXPECT_FALSE(same_mac(k.device_to_server, k.server_to_device));
  n[0] = 1;
  EXPECT_FALSE(same_mac(k.device_to_server, frame_keys("secret", hello, n).device_to_server));
  EXPECT_FALSE(same_mac(k.device_to_server, frame_keys("other", hello, {}).device_to_server));
  EXPECT_TRUE(frames_authenticated(true, false));
  EXPECT_FALSE(frames_authenticated(true, true));
  EXPECT_FALSE(frames_authenticated(false, false));
}

// A session token is the server key's; sealing is its own inverse and
// binds the handshake; a proof needs the token.
TEST(RemoteWire, SessionTokensAreTheServersAndTravelSealed) {
  Mac key{}, other_key{};
  other_key[5] = 1;
  const Mac token = session_token(key, 42);
  EXPECT_FALSE(same_mac(token, session_token(key, 43)));
  EXPECT_FALSE(same_mac(token, session_token(other_key, 42)));
  HelloPayload hello{};
  Nonce n{};
  const Mac sealed = seal_token("secret", hello, n, token);
  EXPECT_FALSE(same_mac(sealed, token));
  EXPECT_TRUE(same_mac(seal_token("secret", hello, n, sealed), token));
  EXPECT_FALSE(same_mac(seal_token("wrong", hello, n, sealed), token));
  n[3] = 1;
  EXPECT_FALSE(same_mac(seal_token("secret", hello, n, sealed), token));
  EXPECT_FALSE(same_mac(session_proof(token, hello, n), session_proof(Mac{}, hello, n)));
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
  using daemon::Config;
  using daemon::ConfigError;
  Config cfg;
  daemon::apply_toml(
      cfg, "[remote]\nlisten = \"tcp://127.0.0.1:0\"\nconnections = 4\ntimeout = 2.5\n", "t");
  daemon::finish(cfg);
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
    EXPECT_THROW(daemon::apply_flag(c, key, value), ConfigError) << key << " " << value;
  }

  Config device;
  daemon::apply_flag(device, "backend.type", "remote://10.0.0.1:7070");
  daemon::finish(device);
  EXPECT_EQ(device.backend.kind, BackendKind::kRemote);
  EXPECT_EQ(device.backend.arg, "//10.0.0.1:7070");

  Config both;
  daemon::apply_flag(both, "backend.type", "remote://h:1");
  daemon::apply_flag(both, "remote.listen", "tcp://127.0.0.1:1");
  EXPECT_THROW(daemon::finish(both), ConfigError);
  Config vhost;  // a virtio-fs device may forward too
  daemon::apply_flag(vhost, "backend.type", "remote://h:1");
  daemon::apply_flag(vhost, "vhost_user.socket", "/tmp/x.sock");
  daemon::finish(vhost);
  EXPECT_EQ(vhost.devices.at(0).backend.kind, BackendKind::kRemote);
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
  const uint8_t* reply_data() const { return out_buf_.data() + sizeof(fuse_out_header); }
  template <typename T>
  T payload() const {
    T v;
    std::memcpy(&v, reply_data(), sizeof(v));
    return v;
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
  fw.forward(init);
  ASSERT_TRUE(init.wait());
  ASSERT_EQ(init.header().error, 0);
  ASSERT_EQ(init.header().unique, 1u);

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = size_t(t); i < reqs.size(); i += 4) fw.forward(*reqs[i]);
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
  fw.forward(init);
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
  fw.forward(req);
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
  util::UniqueFd listen_, conn_;
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
  fw.forward(a);
  fw.forward(b);
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
  fw.forward(get);
  fw.forward(mkdir);
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
  fw.forward(req);
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

TEST(RemoteSessionTable, CountsTheLookupsGivenOut) {
  SessionTable table;
  table.gave_lookup(10);
  table.gave_lookup(10);
  table.gave_lookup(11);
  table.gave_lookup(0);         // a negative entry gives nothing
  table.gave_lookup(kRootIno);  // the root is never forgotten
  table.gave_lookup(10);
  table.gave_lookup(15);
  EXPECT_EQ(table.held(10), 3u);
  EXPECT_EQ(table.held(11), 1u);
  EXPECT_EQ(table.held(15), 1u);
  EXPECT_EQ(table.held(kRootIno), 0u);
  EXPECT_EQ(table.inodes(), 3u);
  auto all = table.take_all();
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (std::vector<std::pair<uint64_t, uint64_t>>{{10, 3}, {11, 1}, {15, 1}}));
  EXPECT_EQ(table.inodes(), 0u);
}

// A session's request as the server serves it: the typed replies of a real
// session over memfs fill the table, and only those that reached the device.
class TableRequest final : public SessionRequest {
 public:
  TableRequest(SessionTable& table, std::vector<uint8_t> bytes, size_t out_size = 1 << 16)
      : table_(table), bytes_(std::move(bytes)), out_(out_size) {
    in_iov_ = {bytes_.data(), bytes_.size()};
    out_iov_ = {out_.data(), out_.size()};
    in = std::span<const iovec>(&in_iov_, 1);
    out = std::span<const iovec>(&out_iov_, 1);
    forget_given();
  }
  void complete(size_t len) override { give_to(table_, len); }
  const fuse_out_header& header() const {
    return *reinterpret_cast<const fuse_out_header*>(out_.data());
  }
  template <typename T>
  T payload() const {
    T v;
    std::memcpy(&v, out_.data() + sizeof(fuse_out_header), sizeof(v));
    return v;
  }

 private:
  SessionTable& table_;
  std::vector<uint8_t> bytes_, out_;
  iovec in_iov_{}, out_iov_{};
};

TEST(RemoteSessionTable, FilledFromTheTypedRepliesThatReachedTheDevice) {
  Memfs memfs;
  fuse::FuseSession session(memfs, {});
  SessionTable table;
  auto serve = [&](std::vector<uint8_t> bytes, size_t out_size = 1 << 16) {
    auto r = std::make_unique<TableRequest>(table, std::move(bytes), out_size);
    session.handle(*r);
    return r;
  };
  ASSERT_EQ(serve(testing::init_request())->header().error, 0);
  fuse_mkdir_in mk{0755, 022};
  const uint64_t dir =
      serve(RequestBuilder(FUSE_MKDIR).arg(mk).name("d").bytes())->payload<fuse_entry_out>().nodeid;
  EXPECT_EQ(table.held(dir), 1u);
  serve(RequestBuilder(FUSE_LOOKUP).name("d").bytes());
  EXPECT_EQ(table.held(dir), 2u);
  EXPECT_EQ(serve(RequestBuilder(FUSE_LOOKUP).name("nothing").bytes())->header().error, -ENOENT);
  // A reply that does not fit the device's buffer is answered EIO: it gave
  // nothing.
  auto cut = serve(RequestBuilder(FUSE_LOOKUP).name("d").bytes(), sizeof(fuse_out_header) + 8);
  EXPECT_EQ(cut->header().error, -EIO);
  EXPECT_EQ(table.held(dir), 2u);
  // CREATE: a lookup and a handle on the new file.
  fuse_create_in cr{};
  cr.flags = O_RDWR;
  cr.mode = S_IFREG | 0644;
  auto created = serve(RequestBuilder(FUSE_CREATE).arg(cr).name("f").bytes());
  const uint64_t file = created->payload<fuse_entry_out>().nodeid;
  EXPECT_EQ(table.held(file), 1u);
  EXPECT_EQ(table.handles(), 1u);
  // OPENDIR: a directory handle. READDIRPLUS: a lookup per entry but "."
  // and "..".
  fuse_open_in op{};
  const uint64_t dh =
      serve(RequestBuilder(FUSE_OPENDIR, kRootIno).arg(op).bytes())->payload<fuse_open_out>().fh;
  fuse_read_in rd{};
  rd.fh = dh;
  rd.size = 4096;
  EXPECT_EQ(serve(RequestBuilder(FUSE_READDIRPLUS, kRootIno).arg(rd).bytes())->header().error, 0);
  EXPECT_EQ(table.held(dir), 3u);
  EXPECT_EQ(table.held(file), 2u);
  EXPECT_EQ(table.held(kRootIno), 0u);
  auto left = table.take_handles();
  std::sort(left.begin(), left.end(), [](const auto& a, const auto& b) { return a.fh < b.fh; });
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].ino, file);
  EXPECT_FALSE(left[0].directory);
  EXPECT_EQ(left[1].ino, kRootIno);
  EXPECT_TRUE(left[1].directory);
  for (const auto& [ino, n] : table.take_all()) memfs.forget(ino, n);
}

// The handles a session's replies gave out, less those its device released,
// are what its end must close.
TEST(RemoteSessionTable, KeepsTheHandlesLeftOpen) {
  SessionTable table;
  table.gave_handle(20, 100, false);
  table.gave_handle(21, 101, true);
  table.gave_handle(22, 102, false);
  table.gave_lookup(22);
  EXPECT_EQ(table.handles(), 3u);

  fuse_release_in rel{};
  rel.fh = 100;
  table.on_release(RequestBuilder(FUSE_RELEASE, 20, 5).arg(rel).bytes());
  rel.fh = 999;  // not this session's: nothing
  table.on_release(RequestBuilder(FUSE_RELEASE, 20, 6).arg(rel).bytes());
  EXPECT_EQ(table.handles(), 2u);

  auto left = table.take_handles();
  std::sort(left.begin(), left.end(), [](const auto& a, const auto& b) { return a.fh < b.fh; });
  ASSERT_EQ(left.size(), 2u);
  EXPECT_EQ(left[0].fh, 101u);
  EXPECT_EQ(left[0].ino, 21u);
  EXPECT_TRUE(left[0].directory);
  EXPECT_EQ(left[1].fh, 102u);
  EXPECT_EQ(left[1].ino, 22u) << "a created file's handle is on the new inode";
  EXPECT_FALSE(left[1].directory);
  EXPECT_EQ(table.handles(), 0u);
}

TEST(RemoteSessionTable, ForgetsAreCutToWhatTheSessionHolds) {
  SessionTable table;
  table.gave_lookup(10);
  table.gave_lookup(10);
  fuse_forget_in f{1000};
  std::vector<uint8_t> forget = RequestBuilder(FUSE_FORGET, 10, 3).arg(f).bytes();
  table.on_forget(forget);
  std::memcpy(&f, forget.data() + sizeof(fuse_in_header), sizeof(f));
  EXPECT_EQ(f.nlookup, 2u);
  EXPECT_EQ(table.held(10), 0u);

  table.gave_lookup(11);
  table.gave_lookup(12);
  table.gave_lookup(12);
  // Three entries claimed, two carried: 1 of 11 (held 1), 5 of 12 (held 2).
  fuse_batch_forget_in b{3, 0};
  const fuse_forget_one ones[2] = {{11, 1}, {12, 5}};
  std::vector<uint8_t> batch = RequestBuilder(FUSE_BATCH_FORGET, 0, 7).arg(b).arg(ones).bytes();
  table.on_forget(batch);
  fuse_forget_one back[2];
  std::memcpy(back, batch.data() + sizeof(fuse_in_header) + sizeof(b), sizeof(back));
  EXPECT_EQ(back[0].nlookup, 1u);
  EXPECT_EQ(back[1].nlookup, 2u);
  EXPECT_EQ(table.inodes(), 0u);
  // Not held at all (another session's inode, or the root): forgets nothing.
  f.nlookup = 7;
  forget = RequestBuilder(FUSE_FORGET, kRootIno, 8).arg(f).bytes();
  table.on_forget(forget);
  std::memcpy(&f, forget.data() + sizeof(fuse_in_header), sizeof(f));
  EXPECT_EQ(f.nlookup, 0u);
  // Too short to carry its argument: left alone for the session to refuse.
  std::vector<uint8_t> stub = RequestBuilder(FUSE_FORGET, 10, 9).bytes();
  table.on_forget(stub);
  EXPECT_EQ(stub, RequestBuilder(FUSE_FORGET, 10, 9).bytes());
}

// A session may name only the node ids it holds (and the root) and the
// handles it opened: ESTALE and EBADF otherwise.
TEST(RemoteSessionTable, ChecksNodeIdsAndHandlesAgainstWhatTheSessionHolds) {
  SessionTable table;
  auto check = [&](RequestBuilder b) { return table.check(b.bytes()); };
  fuse_getattr_in ga{};
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_GETATTR, kRootIno).arg(ga))), 0);
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_GETATTR, 10).arg(ga))), ESTALE);
  table.gave_lookup(10);
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_GETATTR, 10).arg(ga))), 0);
  EXPECT_EQ(check(RequestBuilder(FUSE_STATFS, 11)), ESTALE);

  fuse_read_in rd{};
  rd.fh = 100;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), EBADF);
  table.gave_handle(10, 100, false);
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), 0);
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 11).arg(rd))), ESTALE);
  fuse_write_in wr{};
  wr.fh = 101;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_WRITE, 10).arg(wr))), EBADF);
  // GETATTR and SETATTR name a handle only when their flags say so.
  ga.fh = 101;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_GETATTR, 10).arg(ga))), 0);
  ga.getattr_flags = FUSE_GETATTR_FH;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_GETATTR, 10).arg(ga))), EBADF);
  fuse_setattr_in sa{};
  sa.fh = 101;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_SETATTR, 10).arg(sa))), 0);
  sa.valid = FATTR_FH;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_SETATTR, 10).arg(sa))), EBADF);
  fuse_lk_in lk{};
  lk.fh = 101;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_SETLKW, 10).arg(lk))), EBADF);
  fuse_lseek_in ls{};
  ls.fh = 100;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_LSEEK, 10).arg(ls))), 0);
  // Node ids inside the arguments.
  fuse_link_in ln{11};
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_LINK, 10).arg(ln).name("x"))), ESTALE);
  fuse_rename2_in rn{};
  rn.newdir = 11;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_RENAME2, 10).arg(rn).name("a").name("b"))), ESTALE);
  rn.newdir = kRootIno;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_RENAME2, 10).arg(rn).name("a").name("b"))), 0);
  fuse_copy_file_range_in cp{};
  cp.fh_in = 100;
  cp.nodeid_out = 11;
  cp.fh_out = 100;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_COPY_FILE_RANGE, 10).arg(cp))), ESTALE);
  cp.nodeid_out = 10;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_COPY_FILE_RANGE, 10).arg(cp))), 0);
  cp.fh_out = 5;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_COPY_FILE_RANGE, 10).arg(cp))), EBADF);
  // TMPFILE, like CREATE, gives out a lookup and a handle.
  table.gave_lookup(13);
  table.gave_handle(13, 102, false);
  EXPECT_EQ(table.held(13), 1u);
  wr.fh = 102;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_WRITE, 13).arg(wr))), 0);
  // Released: gone. A handle given out twice (a backend without handles
  // gives out 0 each time) stays until both are released.
  fuse_release_in rel{};
  rel.fh = 100;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_RELEASE, 10).arg(rel))), 0);
  table.on_release(RequestBuilder(FUSE_RELEASE, 10).arg(rel).bytes());
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), EBADF);
  table.gave_handle(10, 0, false);
  table.gave_handle(10, 0, false);
  rel.fh = 0;
  table.on_release(RequestBuilder(FUSE_RELEASE, 10).arg(rel).bytes());
  rd.fh = 0;
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), 0);
  table.on_release(RequestBuilder(FUSE_RELEASE, 10).arg(rel).bytes());
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), EBADF);
  // A backend that does not open (ENOSYS): the kernel then reads with fh 0.
  table.opens_nothing();
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), 0);
  // Forgotten: no longer this session's.
  fuse_forget_in f{1};
  std::vector<uint8_t> forget = RequestBuilder(FUSE_FORGET, 10).arg(f).bytes();
  table.on_forget(forget);
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_READ, 10).arg(rd))), ESTALE);
  // Nothing to check: INIT, FORGET of another's node (cut to nothing);
  // arguments missing: the session refuses them itself.
  EXPECT_EQ(check(RequestBuilder(FUSE_INIT, 0)), 0);
  EXPECT_EQ(check(std::move(RequestBuilder(FUSE_FORGET, 12).arg(f))), 0);
  EXPECT_EQ(check(RequestBuilder(FUSE_READ, kRootIno)), 0);
}

// One device of a server: a forwarder with its own session, and requests
// sent through it as root.
class Device {
 public:
  explicit Device(uint16_t port) : fw_(forwarder_options(port)) {
    AsyncRequest init(testing::init_request());
    fw_.forward(init);
    EXPECT_TRUE(init.wait());
    EXPECT_EQ(init.header().error, 0);
  }
  // Sends `builder`'s request as root; the reply's error and its bytes.
  std::pair<int32_t, std::vector<uint8_t>> call(RequestBuilder builder) {
    builder.header().uid = 0;
    builder.header().gid = 0;
    builder.header().unique = next_unique_++;
    auto req = std::make_unique<AsyncRequest>(builder.bytes());
    fw_.forward(*req);
    if (!req->wait()) return {-ETIMEDOUT, {}};
    std::vector<uint8_t> reply(req->reply_len());
    const iovec& out = req->out[0];
    std::memcpy(reply.data(), out.iov_base, reply.size());
    return {req->header().error, reply};
  }
  void send(RequestBuilder builder) {  // a request without a reply (FORGET)
    builder.header().unique = next_unique_++;
    forgets_.push_back(std::make_unique<AsyncRequest>(builder.bytes()));
    fw_.forward(*forgets_.back());
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
  // OPEN of `ino` for reading: its handle (the error if negative).
  int64_t open(uint64_t ino) {
    fuse_open_in in{};
    auto [error, reply] = call(std::move(RequestBuilder(FUSE_OPEN, ino).arg(in)));
    fuse_open_out o{};
    if (error != 0 || reply.size() < sizeof(fuse_out_header) + sizeof(o)) return error;
    std::memcpy(&o, reply.data() + sizeof(fuse_out_header), sizeof(o));
    return int64_t(o.fh);
  }
  int32_t read(uint64_t ino, uint64_t fh) {
    fuse_read_in in{};
    in.fh = fh;
    in.size = 4096;
    return call(std::move(RequestBuilder(FUSE_READ, ino).arg(in))).first;
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

// A device that names another session's node id or handle gets ESTALE or
// EBADF, not its files; once it looked the file up itself, the node id is
// its own too, but the other's handle never is.
TEST(RemoteSessions, ADeviceCannotUseAnotherSessionsNodeIdsOrHandles) {
  auto server = memfs_server();
  Device a(server->bound().port), b(server->bound().port);
  const uint64_t ino = a.mknod("a-file");
  ASSERT_NE(ino, 0u);
  const int64_t fh = a.open(ino);
  ASSERT_GT(fh, 0);
  ASSERT_EQ(a.read(ino, uint64_t(fh)), 0);
  EXPECT_EQ(b.getattr(ino), -ESTALE);
  EXPECT_EQ(b.read(ino, uint64_t(fh)), -ESTALE);
  fuse_link_in ln{ino};
  EXPECT_EQ(b.call(std::move(RequestBuilder(FUSE_LINK, kRootIno).arg(ln).name("stolen"))).first,
            -ESTALE);
  EXPECT_EQ(b.lookup("stolen"), 0u) << "the LINK reached the backend";
  ASSERT_EQ(b.lookup("a-file"), ino);
  EXPECT_EQ(b.getattr(ino), 0);
  EXPECT_EQ(b.read(ino, uint64_t(fh)), -EBADF);
  const int64_t own = b.open(ino);
  ASSERT_GT(own, 0);
  EXPECT_EQ(b.read(ino, uint64_t(own)), 0);
  EXPECT_EQ(a.read(ino, uint64_t(own)), -EBADF);
  a.stop();
  b.stop();
  server->stop();
}

// A device spoken by hand from wire.h, for what a Forwarder would not send.
class RawDevice {
 public:
  explicit RawDevice(uint16_t port, const char* source = "127.0.0.1") {
    fd_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, source, &a.sin_addr);
    bound_ = ::bind(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    a.sin_port = htons(port);
    ::inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    connected_ = bound_ && ::connect(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    set_timeouts(fd_.get(), 5, 5);
  }
  bool connected() const { return connected_; }
  int fd() const { return fd_.get(); }

  // Completes the handshake with `secret`, joining session `join` with
  // `token` if given; "" or what went wrong.
  std::string handshake(const std::string& secret, std::optional<uint64_t> join = {},
                        const Mac& token = {}) {
    random_bytes(hello_.device_nonce.data(), kNonceSize);
    hello_.max_write = 1 << 20;
    if (join) {
      hello_.flags = kHelloJoin;
      hello_.session_id = *join;
    }
    if (!send_raw(FrameType::kHello, &hello_, sizeof(hello_))) return "sending HELLO";
    FrameHeader h;
    ChallengePayload c{};
    if (!read_full(fd(), &h, sizeof(h)) || h.type != uint8_t(FrameType::kChallenge) ||
        !read_full(fd(), &c, sizeof(c))) {
      return "no CHALLENGE";
    }
    AuthPayload auth{device_proof(secret, hello_, c.server_nonce), Mac{}};
    if (join) auth.session_proof = session_proof(token, hello_, c.server_nonce);
    if (!send_raw(FrameType::kAuth, &auth, sizeof(auth))) return "sending AUTH";
    if (!read_full(fd(), &h, sizeof(h))) return "no WELCOME";
    if (h.type == uint8_t(FrameType::kError)) {
      std::vector<uint8_t> text(h.length);
      read_full(fd(), text.data(), text.size());
      return "refused: " + error_text(text);
    }
    if (h.type != uint8_t(FrameType::kWelcome) || !read_full(fd(), &welcome_, sizeof(welcome_))) {
      return "no WELCOME";
    }
    if (frames_authenticated(!secret.empty(), false)) {
      const FrameKeys keys = frame_keys(secret, hello_, c.server_nonce);
      send_mac_ = std::make_unique<FrameMac>(keys.device_to_server);
      receive_mac_ = std::make_unique<FrameMac>(keys.server_to_device);
      Mac trailer;
      if (!read_full(fd(), trailer.data(), trailer.size()) ||
          !same_mac(trailer, receive_mac_->next(h, &welcome_))) {
        return "WELCOME fails its MAC check";
      }
    }
    token_ = seal_token(secret, hello_, c.server_nonce, welcome_.sealed_token);
    return "";
  }
  const WelcomePayload& welcome() const { return welcome_; }
  const Mac& token() const { return token_; }

  // A REQUEST frame with its MAC (when the frames carry one), computed
  // before `corrupt` flips a byte of the payload; `replay` sends it again.
  bool request(const std::vector<uint8_t>& fuse, uint64_t id, bool corrupt = false,
               bool replay = false) {
    std::vector<uint8_t> payload = fuse;
    const FrameHeader h = make_header(FrameType::kRequest, uint32_t(payload.size()), id, 1 << 16);
    Mac mac{};
    if (send_mac_) mac = send_mac_->next(h, payload.data());
    if (corrupt) payload[payload.size() / 2] ^= 0x20;
    iovec iov[3] = {{const_cast<FrameHeader*>(&h), sizeof(h)},
                    {payload.data(), payload.size()},
                    {mac.data(), send_mac_ ? mac.size() : 0}};
    if (!writev_full(fd(), iov)) return false;
    if (!replay) return true;
    iovec again[3] = {{const_cast<FrameHeader*>(&h), sizeof(h)},
                      {payload.data(), payload.size()},
                      {mac.data(), send_mac_ ? mac.size() : 0}};
    return writev_full(fd(), again);
  }
  // Reads a REPLY (and checks its MAC): the FUSE error, or 1 if none came.
  int32_t reply(uint64_t* id = nullptr) {
    FrameHeader h;
    if (!read_full(fd(), &h, sizeof(h)) || h.type != uint8_t(FrameType::kReply)) return 1;
    std::vector<uint8_t> payload(h.length);
    if (!read_full(fd(), payload.data(), payload.size())) return 1;
    if (receive_mac_) {
      Mac trailer;
      if (!read_full(fd(), trailer.data(), trailer.size()) ||
          !same_mac(trailer, receive_mac_->next(h, payload.data()))) {
        return 1;
      }
    }
    if (id) *id = h.id;
    fuse_out_header out{};
    if (payload.size() < sizeof(out)) return 1;
    std::memcpy(&out, payload.data(), sizeof(out));
    return out.error;
  }
  // Whether the server closes the connection within 5 s (what it sends
  // before does not matter).
  bool closed_by_server() {
    char buf[4096];
    for (;;) {
      const ssize_t n = ::recv(fd(), buf, sizeof(buf), 0);
      if (n == 0) return true;
      if (n < 0) return errno == ECONNRESET;
    }
  }

 private:
  bool send_raw(FrameType type, const void* payload, uint32_t len) {
    FrameHeader h = make_header(type, len);
    iovec iov[2] = {{&h, sizeof(h)}, {const_cast<void*>(payload), len}};
    return writev_full(fd(), iov);
  }
  util::UniqueFd fd_;
  bool bound_ = false, connected_ = false;
  HelloPayload hello_{};
  WelcomePayload welcome_{};
  Mac token_{};
  std::unique_ptr<FrameMac> send_mac_, receive_mac_;
};

// A session is joined only with the token the server issued for it (sealed
// in the WELCOME that made it): without it, or with a wrong one, the
// connection is refused; an id the server does not know gets a new session.
TEST(RemoteSessions, JoiningASessionTakesItsToken) {
  auto server = memfs_server();
  const uint16_t port = server->bound().port;
  RawDevice first(port);
  ASSERT_EQ(first.handshake(""), "");
  EXPECT_TRUE(first.welcome().flags & kWelcomeNewSession);
  EXPECT_TRUE(first.welcome().flags & kWelcomeNeedsInit);
  const uint64_t id = first.welcome().session_id;
  ASSERT_NE(id, 0u);

  RawDevice second(port);
  ASSERT_EQ(second.handshake("", id, first.token()), "");
  EXPECT_EQ(second.welcome().session_id, id);
  EXPECT_FALSE(second.welcome().flags & kWelcomeNewSession);

  Mac wrong = first.token();
  wrong[0] ^= 1;
  RawDevice thief(port);
  EXPECT_NE(thief.handshake("", id, wrong).find("wrong token"), std::string::npos);
  EXPECT_TRUE(thief.closed_by_server());
  RawDevice guesser(port);  // the id alone (a zero proof)
  EXPECT_NE(guesser.handshake("", id).find("wrong token"), std::string::npos);
  EXPECT_TRUE(guesser.closed_by_server());

  RawDevice stranger(port);
  ASSERT_EQ(stranger.handshake("", id + 1, first.token()), "");
  EXPECT_NE(stranger.welcome().session_id, id);
  EXPECT_TRUE(stranger.welcome().flags & kWelcomeNewSession);
  EXPECT_EQ(server->sessions(), 2u);
  server->stop();
}

// With a shared secret, frames carry a MAC with a sequence number: a frame
// altered in transit, or sent twice, ends the connection before it reaches
// the session.
TEST(RemoteFrames, ATamperedOrReplayedFrameEndsTheConnection) {
  const std::string secret = "the shared secret, 32 bytes long";
  auto server = memfs_server(secret);
  const uint16_t port = server->bound().port;
  std::vector<uint8_t> init = testing::init_request();
  {
    RawDevice d(port);
    ASSERT_EQ(d.handshake(secret), "");
    ASSERT_TRUE(d.request(init, 1));
    EXPECT_EQ(d.reply(), 0);
    ASSERT_TRUE(d.request(getattr(2), 2));
    EXPECT_EQ(d.reply(), 0);
    ASSERT_TRUE(d.request(getattr(3), 3, /*corrupt=*/true));
    EXPECT_TRUE(d.closed_by_server());
  }
  {
    RawDevice d(port);
    ASSERT_EQ(d.handshake(secret), "");
    ASSERT_TRUE(d.request(init, 1));
    EXPECT_EQ(d.reply(), 0);
    ASSERT_TRUE(d.request(getattr(2), 2, false, /*replay=*/true));
    EXPECT_EQ(d.reply(), 0);  // the first
    EXPECT_TRUE(d.closed_by_server());
  }
  // A Forwarder with the secret speaks it.
  ForwarderOptions o = forwarder_options(port);
  o.secret = secret;
  Forwarder fw(o);
  AsyncRequest req(init), get(getattr(5));
  fw.forward(req);
  ASSERT_TRUE(req.wait());
  EXPECT_EQ(req.header().error, 0);
  fw.forward(get);
  ASSERT_TRUE(get.wait());
  EXPECT_EQ(get.header().error, 0);
  fw.stop();
  server->stop();
}

// Connections from `sources`, opened without pause until destroyed, each
// left idle (or, every other one, with one byte of a header): a flood that
// never authenticates.
class Flood {
 public:
  Flood(uint16_t port, std::vector<const char*> sources, size_t per_round)
      : thread_([this, port, sources, per_round] {
          while (!stop_.load()) {
            for (const char* source : sources) {
              for (size_t i = 0; i < per_round && !stop_.load(); ++i) {
                auto d = std::make_unique<RawDevice>(port, source);
                if (d->connected() && i % 2 == 1) ::send(d->fd(), "D", 1, MSG_NOSIGNAL);
                if (d->connected()) ++connections_;
                std::lock_guard lock(mu_);
                held_.push_back(std::move(d));
              }
            }
            // The attacker keeps what the server keeps, and re-opens what
            // it closes.
            std::lock_guard lock(mu_);
            if (held_.size() > 600) {
              std::erase_if(held_, [](const auto& d) {
                char c;
                const ssize_t n = ::recv(d->fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
                return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK);
              });
            }
          }
        }) {}
  ~Flood() {
    stop_ = true;
    thread_.join();
  }
  uint64_t connections() const { return connections_.load(); }

 private:
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> connections_{0};
  std::mutex mu_;
  std::vector<std::unique_ptr<RawDevice>> held_;
  std::thread thread_;
};

std::unique_ptr<Server> capped_server(unsigned total, unsigned per_address, double timeout_s) {
  ServerOptions o;
  o.listen = Endpoint{"127.0.0.1", 0};
  o.max_handshakes = total;
  o.max_handshakes_per_address = per_address;
  o.handshake_timeout_s = timeout_s;
  auto server = std::make_unique<Server>(std::move(o), std::make_unique<Memfs>(MemfsOptions{}));
  server->start();
  return server;
}

// Idle and slow connections from 127.0.0.2 and 127.0.0.3, opened without
// pause, never keep a device from 127.0.0.1 out: each address holds at
// most its share of the pending handshakes, a newcomer takes the place of
// the oldest of the biggest crowd, and none of them holds a thread.
TEST(RemoteHandshakes, AFloodOfIdleConnectionsKeepsNoDeviceOut) {
  auto server = capped_server(8, 4, 2.0);
  const uint16_t port = server->bound().port;
  Flood flood(port, {"127.0.0.2", "127.0.0.3"}, 50);
  const auto flood_start = std::chrono::steady_clock::now();
  while (flood.connections() < 400 && std::chrono::steady_clock::now() - flood_start < 10s) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_GE(flood.connections(), 400u) << "the flood did not get going";
  EXPECT_LE(server->handshakes(), 8u);
  for (int round = 0; round < 3; ++round) {
    const auto t0 = std::chrono::steady_clock::now();
    AsyncRequest init(testing::init_request()), get(getattr(9));
    {
      Forwarder fw(forwarder_options(port, 5.0, 2));
      fw.forward(init);
      ASSERT_TRUE(init.wait(5s));
      EXPECT_EQ(init.header().error, 0);
      fw.forward(get);
      ASSERT_TRUE(get.wait(5s));
      EXPECT_EQ(get.header().error, 0);
      fw.stop();
    }
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms)
        << "round " << round << ": the device waited behind the flood";
  }
  EXPECT_LE(server->handshakes(), 8u);
  server->stop();
}

// The per-address cap: of 10 idle connections from one address, 4 wait in
// the handshake and the other 6 are closed at once; the 4 are closed at the
// handshake timeout.
TEST(RemoteHandshakes, ThePerAddressCapClosesTheExtras) {
  auto server = capped_server(64, 4, 1.0);
  const uint16_t port = server->bound().port;
  std::vector<std::unique_ptr<RawDevice>> idle;
  for (int i = 0; i < 10; ++i) {
    idle.push_back(std::make_unique<RawDevice>(port, "127.0.0.2"));
    ASSERT_TRUE(idle.back()->connected());
  }
  // Closed ones read EOF within the poll; pending ones stay silent.
  auto closed = [&](int timeout_ms) {
    std::vector<pollfd> fds;
    for (auto& d : idle) fds.push_back({d->fd(), POLLIN, 0});
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    size_t n = 0;
    while (std::chrono::steady_clock::now() < until) {
      ::poll(fds.data(), fds.size(), 50);
      n = 0;
      for (const pollfd& p : fds) n += (p.revents & (POLLIN | POLLHUP)) != 0;
      if (n == 6) break;
    }
    return n;
  };
  EXPECT_EQ(closed(800), 6u);
  EXPECT_EQ(server->handshakes(), 4u);
  // From another address, a device is still served.
  {
    AsyncRequest init(testing::init_request());
    Forwarder fw(forwarder_options(port));
    fw.forward(init);
    ASSERT_TRUE(init.wait());
    EXPECT_EQ(init.header().error, 0);
    fw.stop();
  }
  const auto deadline = std::chrono::steady_clock::now() + 3s;
  while (server->handshakes() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(20ms);
  }
  EXPECT_EQ(server->handshakes(), 0u) << "the handshake timeout did not close the idle ones";
  server->stop();
}

// --- RemoteBackend -------------------------------------------------------------
// A device's FUSE session over a RemoteBackend: requests as a transport
// hands them to the session, answered from a server's session over memfs
// (or a scripted fake).

// The device's session and its backend, connected to `port`.
struct DeviceSession {
  explicit DeviceSession(uint16_t port, uint32_t max_write = 1u << 20)
      : backend(options(port, max_write)) {
    fuse::SessionOptions o;
    o.name = "device";
    o.max_write = max_write;
    session = std::make_unique<fuse::FuseSession>(backend, o);
  }
  static ForwarderOptions options(uint16_t port, uint32_t max_write) {
    ForwarderOptions o = forwarder_options(port, 2.0);
    o.max_write = max_write;
    return o;
  }
  // Sends one request through the session and waits for its reply.
  std::unique_ptr<AsyncRequest> call(std::vector<uint8_t> bytes, size_t out = 1 << 16) {
    auto req = std::make_unique<AsyncRequest>(std::move(bytes), out);
    session->handle(*req);
    EXPECT_TRUE(req->wait()) << "no reply";
    return req;
  }
  fuse_init_out init() {
    auto req = call(testing::init_request());
    EXPECT_EQ(req->header().error, 0);
    return req->payload<fuse_init_out>();
  }

  RemoteBackend backend;
  std::unique_ptr<fuse::FuseSession> session;
};

std::unique_ptr<Server> server_over(std::unique_ptr<Backend> backend, uint32_t max_write) {
  ServerOptions o;
  o.listen = Endpoint{"127.0.0.1", 0};
  o.session.max_write = max_write;
  auto server = std::make_unique<Server>(std::move(o), std::move(backend));
  server->start();
  return server;
}

TEST(RemoteBackend, TheDeviceOffersWhatTheServersBackendGrants) {
  // memfs has POSIX and flock locks; the server takes WRITEs of 64 KiB.
  auto memfs = server_over(std::make_unique<Memfs>(MemfsOptions{}), 64 << 10);
  DeviceSession a(memfs->bound().port);
  const fuse_init_out granted = a.init();
  EXPECT_TRUE(granted.flags & FUSE_POSIX_LOCKS);
  EXPECT_TRUE(granted.flags & FUSE_FLOCK_LOCKS);
  EXPECT_TRUE(granted.flags & FUSE_DO_READDIRPLUS);
  EXPECT_EQ(granted.max_write, 64u << 10) << "the device offered more than the server takes";
  // The null backend has no locks: neither has a device over it.
  auto null = server_over(std::make_unique<NullBackend>(NullOptions{}), 1 << 20);
  DeviceSession b(null->bound().port);
  const fuse_init_out plain = b.init();
  EXPECT_FALSE(plain.flags & FUSE_POSIX_LOCKS);
  EXPECT_FALSE(plain.flags & FUSE_FLOCK_LOCKS);
  EXPECT_EQ(plain.max_write, 1u << 20);
}

TEST(RemoteBackend, FilesMadeThroughTheDeviceAreTheServersFiles) {
  auto server = server_over(std::make_unique<Memfs>(MemfsOptions{}), 1 << 20);
  DeviceSession d(server->bound().port);
  d.init();
  fuse_mkdir_in mk{};
  mk.mode = 0755;
  auto dir = d.call(RequestBuilder(FUSE_MKDIR, 1, 10).arg(mk).name("dir").bytes());
  ASSERT_EQ(dir->header().error, 0);
  const uint64_t dir_ino = dir->payload<fuse_entry_out>().nodeid;
  fuse_create_in cr{};
  cr.mode = S_IFREG | 0644;
  cr.flags = O_RDWR;
  auto file = d.call(RequestBuilder(FUSE_CREATE, dir_ino, 11).arg(cr).name("file").bytes());
  ASSERT_EQ(file->header().error, 0);
  const uint64_t ino = file->payload<fuse_entry_out>().nodeid;
  const uint64_t fh =
      reinterpret_cast<const fuse_open_out*>(file->reply_data() + sizeof(fuse_entry_out))->fh;
  fuse_write_in w{};
  w.fh = fh;
  w.size = 11;
  auto wrote = d.call(RequestBuilder(FUSE_WRITE, ino, 12).arg(w).raw("hello world").bytes());
  ASSERT_EQ(wrote->header().error, 0);
  EXPECT_EQ(wrote->payload<fuse_write_out>().size, 11u);
  fuse_read_in r{};
  r.fh = fh;
  r.offset = 6;
  r.size = 100;
  auto read = d.call(RequestBuilder(FUSE_READ, ino, 13).arg(r).bytes());
  ASSERT_EQ(read->header().error, 0);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(read->reply_data()),
                        read->reply_len() - sizeof(fuse_out_header)),
            "world");
  // The listing, READDIRPLUS: "file" with its attributes.
  fuse_open_in op{};
  auto opened = d.call(RequestBuilder(FUSE_OPENDIR, dir_ino, 14).arg(op).bytes());
  ASSERT_EQ(opened->header().error, 0);
  fuse_read_in rd{};
  rd.fh = opened->payload<fuse_open_out>().fh;
  rd.size = 4096;
  auto list = d.call(RequestBuilder(FUSE_READDIRPLUS, dir_ino, 15).arg(rd).bytes());
  ASSERT_EQ(list->header().error, 0);
  std::vector<std::string> names;
  for (size_t at = 0; at < list->reply_len() - sizeof(fuse_out_header);) {
    const auto* e = reinterpret_cast<const fuse_direntplus*>(list->reply_data() + at);
    names.emplace_back(e->dirent.name, e->dirent.namelen);
    if (names.back() == "file") {
      EXPECT_EQ(e->entry_out.nodeid, ino);
      EXPECT_EQ(e->entry_out.attr.size, 11u);
    }
    at += FUSE_DIRENTPLUS_SIZE(e);
  }
  EXPECT_EQ(names, (std::vector<std::string>{".", "..", "file"}));
  // An unknown node id is the server's to refuse.
  fuse_getattr_in g{};
  EXPECT_EQ(d.call(RequestBuilder(FUSE_GETATTR, 987654, 16).arg(g).bytes())->header().error,
            -ESTALE);
}

// A server that answers the device's INIT properly and then each request
// with what the test scripts.
class ScriptedServer {
 public:
  ScriptedServer() {
    thread_ = std::thread([this] {
      fake_.accept();
      auto [id, init] = fake_.read_request();
      EXPECT_EQ(init.opcode, uint32_t(FUSE_INIT));
      fuse_init_out out{};
      out.major = 7;
      out.minor = FUSE_KERNEL_MINOR_VERSION;
      out.flags = FUSE_DO_READDIRPLUS | FUSE_MAX_PAGES;
      out.max_write = 1 << 20;
      answer(id, init.unique, 0, &out, sizeof(out));
      for (;;) {
        std::unique_lock lock(mu_);
        if (script_.empty()) return;
        auto step = std::move(script_.front());
        script_.erase(script_.begin());
        lock.unlock();
        auto [rid, h] = fake_.read_request();
        EXPECT_EQ(h.opcode, step.opcode);
        answer(rid, h.unique, step.error, step.payload.data(), step.payload.size());
      }
    });
  }
  ~ScriptedServer() {
    ::shutdown(fake_.fd(), SHUT_RDWR);
    thread_.join();
  }
  uint16_t port() const { return fake_.port(); }
  void then(uint32_t opcode, int32_t error, std::vector<char> payload = {}) {
    std::lock_guard lock(mu_);
    script_.push_back({opcode, error, std::move(payload)});
  }

 private:
  struct Step {
    uint32_t opcode;
    int32_t error;
    std::vector<char> payload;
  };
  void answer(uint64_t id, uint64_t unique, int32_t error, const void* payload, size_t len) {
    std::vector<char> reply(sizeof(fuse_out_header) + len);
    fuse_out_header out{};
    out.len = uint32_t(reply.size());
    out.error = error;
    out.unique = unique;
    std::memcpy(reply.data(), &out, sizeof(out));
    if (len != 0) std::memcpy(reply.data() + sizeof(out), payload, len);
    fake_.send(FrameType::kReply, reply.data(), uint32_t(reply.size()), id);
  }
  FakeServer fake_;
  std::mutex mu_;
  std::vector<Step> script_;
  std::thread thread_;
};

template <class T>
std::vector<char> bytes_of(const T& v) {
  const char* p = reinterpret_cast<const char*>(&v);
  return {p, p + sizeof(v)};
}

TEST(RemoteBackend, AMalformedReplyIsEioAndTheDeviceServesOn) {
  ScriptedServer server;
  // LOOKUP answered with half an entry.
  server.then(FUSE_LOOKUP, 0, std::vector<char>(40, 'x'));
  // GETATTR answered with a positive "errno".
  server.then(FUSE_GETATTR, 5);
  // READDIR whose one record claims a name longer than the reply.
  fuse_dirent record{};
  record.namelen = 200;
  std::vector<char> listing = bytes_of(record);
  listing.resize(FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + 8), 'n');
  server.then(FUSE_READDIR, 0, listing);
  // WRITE that claims more bytes written than were sent.
  fuse_write_out wo{};
  wo.size = 4096;
  server.then(FUSE_WRITE, 0, bytes_of(wo));
  // A good GETATTR: the link and the session are still up.
  fuse_attr_out attr{};
  attr.attr.ino = 1;
  attr.attr.mode = S_IFDIR | 0755;
  attr.attr.nlink = 2;
  attr.attr_valid = 3;
  server.then(FUSE_GETATTR, 0, bytes_of(attr));

  DeviceSession d(server.port());
  d.init();
  EXPECT_EQ(d.call(RequestBuilder(FUSE_LOOKUP, 1, 20).name("a").bytes())->header().error, -EIO);
  fuse_getattr_in g{};
  EXPECT_EQ(d.call(RequestBuilder(FUSE_GETATTR, 1, 21).arg(g).bytes())->header().error, -EIO);
  fuse_read_in rd{};
  rd.size = 4096;
  EXPECT_EQ(d.call(RequestBuilder(FUSE_READDIR, 1, 22).arg(rd).bytes())->header().error, -EIO);
  fuse_write_in w{};
  w.size = 5;
  EXPECT_EQ(d.call(RequestBuilder(FUSE_WRITE, 1, 23).arg(w).raw("12345").bytes())->header().error,
            -EIO);
  auto good = d.call(RequestBuilder(FUSE_GETATTR, 1, 24).arg(g).bytes());
  ASSERT_EQ(good->header().error, 0);
  EXPECT_EQ(good->payload<fuse_attr_out>().attr.mode, uint32_t(S_IFDIR | 0755));
  EXPECT_EQ(good->payload<fuse_attr_out>().attr_valid, 3u);
  EXPECT_EQ(d.backend.counters().failed.load(), 0u) << "a malformed payload is not a link failure";
}

}  // namespace
}  // namespace dpfs::remote
