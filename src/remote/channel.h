// The byte stream under the remote transport's frames: a connected TCP
// socket, plain or with TLS over it. Both ends (remote::Server and
// remote::Forwarder) read and write frames only through a Channel.
//
// Plain: readv/writev on the socket, straight from and into the request's
// buffers. TLS (OpenSSL, TLS 1.3, certificates on both sides): OpenSSL
// encrypts from the caller's buffers into its records and decrypts in its
// own buffer and copies out, so TLS adds the cipher and one copy each way;
// frames up to a record (16 KiB) are gathered into one record so that a
// small request costs one record and one send(2), as plain writev does.
//
// Concurrency: one thread reads while one other thread writes (callers
// keep writes whole under a lock of their own); shutdown() from any
// thread. A blocked read never keeps a write from proceeding (and the
// other way round): a TLS channel's socket is non-blocking and its lock is
// not held while waiting.
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <span>
#include <string>

#include "remote/wire.h"
#include "util/unique_fd.h"

namespace dpfs::remote {

class Channel {
 public:
  explicit Channel(util::UniqueFd fd) : fd_(std::move(fd)) {}
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;
  virtual ~Channel() = default;

  // Completes the connection within `timeout_s` (the TLS handshake; nothing
  // for plain TCP). "" or why it failed, for one log line. On a failure
  // that retrying will not fix (a certificate refused, a peer that does not
  // speak TLS) *fatal is set.
  virtual std::string start(double timeout_s, bool* fatal) = 0;

  // Reads exactly `len` bytes; false on EOF, error or timeout (errno set:
  // 0 for a clean EOF, EAGAIN for a timeout, EPROTO for a TLS error whose
  // text error() gives).
  virtual bool read_full(void* dst, size_t len) = 0;
  // Reads exactly `len` bytes into `iov` (which holds at least that many).
  virtual bool readv_full(std::span<const iovec> iov, size_t len) = 0;
  // read_full() for the start of a frame: waits for its first byte as long
  // as it takes (an idle peer is not a failure; shutdown() ends the wait),
  // then reads the rest under the receive timeout.
  virtual bool read_frame_start(void* dst, size_t len) = 0;
  // Writes all of `iov` (consumed as it goes). False on error or timeout
  // (errno set). Never raises SIGPIPE.
  virtual bool writev_full(std::span<iovec> iov) = 0;
  // How long one read or write call may wait; 0 means forever.
  virtual void set_timeouts(double receive_s, double send_s) = 0;
  // What the last failure with errno `err` was, for a log line.
  virtual std::string error(int err) const;

  // --- Without waiting (the server's handshake loop) ---
  //
  // Each call does what it can at once and says what it waits for; the
  // caller polls the socket (edge-triggered: a kWant* comes only after the
  // socket said EAGAIN). kEof: the peer closed. kFailed: errno set (EPROTO:
  // a TLS error, error() has it).
  enum class Io { kDone, kWantRead, kWantWrite, kEof, kFailed };
  // A step of start() (the TLS handshake; kDone at once for plain TCP).
  // On kFailed, *why says why for one log line.
  virtual Io start_some(std::string* why) = 0;
  // Reads or writes up to `len` bytes (at least one on kDone): *n of them.
  virtual Io read_some(void* dst, size_t len, size_t* n) = 0;
  virtual Io write_some(const void* src, size_t len, size_t* n) = 0;

  // Shared-secret mode without TLS: the MACs of the frames each way
  // (wire.h, FrameMac); null otherwise. Set by the handshake before the
  // connection is shared; send_mac is used under the writer's lock,
  // receive_mac by the reader.
  std::unique_ptr<FrameMac> send_mac, receive_mac;

  // Ends both directions: blocked reads and writes return. Safe from any thread.
  void shutdown();
  int fd() const { return fd_.get(); }

 protected:
  util::UniqueFd fd_;
};

// Plain TCP.
std::unique_ptr<Channel> plain_channel(util::UniqueFd fd);

// Where a TLS end finds its certificate, its key and the CA its peers'
// certificates must be signed by (PEM files).
struct TlsFiles {
  std::string cert, key, ca;
  bool enabled() const { return !cert.empty(); }
};

// An OpenSSL context for one end: its certificate and key, and the CA it
// verifies its peers against. A server requires a client certificate; a
// device also checks the server's certificate names the host it dialled.
// Safe for concurrent use.
class TlsContext {
 public:
  enum class Role { kServer, kDevice };
  // Throws std::invalid_argument with what to fix (a file missing or not
  // PEM, a key that is not the certificate's).
  TlsContext(const TlsFiles& files, Role role);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  // A TLS channel on connected `fd`; its start() runs the handshake. For a
  // device, `peer_host` is the name or address the server's certificate
  // must carry.
  std::unique_ptr<Channel> channel(util::UniqueFd fd, const std::string& peer_host = "");

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dpfs::remote
