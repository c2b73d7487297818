// A vhost-user connection, back-end side: one front-end (QEMU) on a connected
// unix socket, whose requests are read with their fds, validated, and turned
// into calls on a VhostUserDevice.
//
//   Listener listener("/run/dpfs/fs0.sock");
//   Connection conn(listener.accept(), device, "fs0");
//   conn.serve();                       // or: epoll on conn.fd(), on_readable()
//
// Error policy (every tenant byte is hostile input):
// - A malformed request (a header with a bad version or flags or a size over
//   kMaxPayloadSize, a payload whose size is not exactly its type's, an fd
//   count that does not match, a vring index >= queue_num(), a ring size that
//   is 0, over 32768 or (split rings) not a power of two, features that were
//   not offered, a request whose reply this back-end cannot give), a
//   truncated control message (MSG_CTRUNC), an I/O error or EOF: one log line,
//   the connection is closed and the device gets disconnect(). The daemon and
//   other connections carry on.
// - A well-formed request that the device refuses (it returns an errno), or
//   that this back-end does not support (unknown request numbers included):
//   one log line; if the front-end asked for an ack (need_reply with REPLY_ACK
//   negotiated) the ack says failure (u64 1); the connection carries on.
//   Without an ack the front-end does not learn of the failure; QEMU 7.2 asks
//   for acks on SET_MEM_TABLE, ADD/REM_MEM_REG and SET_BACKEND_REQ_FD whenever
//   REPLY_ACK is negotiated, so devices should offer it.
// - Every fd that arrives is either moved to the device (as a UniqueFd) or
//   closed before the next message is read, on every path.
#pragma once

#include <cerrno>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "util/rate_limited_log.h"
#include "util/unique_fd.h"
#include "vhost_user/message.h"

namespace dpfs::vhost_user {

// What a vhost-user device (virtio-fs) implements for Connection. The
// connection calls it on the thread that drives the connection, one call at a
// time, and only after validating the request: indexes are < queue_num(),
// ring sizes are valid, features are a subset of what was offered, memory
// regions are non-empty and do not wrap. Methods that return int return 0 or
// a negative errno (refusal: see the error policy above).
//
// Ring life cycle (vhost-user.rst "Ring states"): a ring starts stopped and
// disabled. It starts when its kick fd is set (or with no fd: polling), and
// stops on get_vring_base(). Enabling is the connection's business:
// - without VHOST_USER_F_PROTOCOL_FEATURES negotiated, the connection calls
//   set_vring_enable(i, true) for every ring right after set_features();
// - with it, after set_features() rings are disabled (the connection calls
//   set_vring_enable(i, false) for every ring) and only the front-end's
//   SET_VRING_ENABLE enables them.
// The connection makes those calls when SET_FEATURES changes whether the bit
// is negotiated (and on the first SET_FEATURES), not on every SET_FEATURES.
class VhostUserDevice {
 public:
  explicit VhostUserDevice(std::string log_name = "vhost-user device",
                           util::RateLimitedLog::Limits log_limits = {})
      : log_(std::move(log_name), log_limits) {}
  virtual ~VhostUserDevice() = default;

  // The channel for every line a front-end can cause on this device. It
  // outlives connections, so that a front-end that reconnects in a loop
  // meets the same limit; Connection writes its lines through it too.
  util::RateLimitedLog& log() { return log_; }

  // The virtio feature bits offered (GET_FEATURES), e.g. VIRTIO_F_VERSION_1,
  // VIRTIO_RING_F_INDIRECT_DESC, VIRTIO_RING_F_EVENT_IDX. The connection adds
  // VHOST_USER_F_PROTOCOL_FEATURES (it implements protocol features) and
  // removes VHOST_F_LOG_ALL (no dirty logging: no migration).
  virtual uint64_t features() const = 0;
  // The protocol features offered (GET_PROTOCOL_FEATURES), masked by the
  // connection to Connection::kSupportedProtocolFeatures. Offer at least MQ
  // and REPLY_ACK; CONFIGURE_MEM_SLOTS makes QEMU use ADD/REM_MEM_REG.
  virtual uint64_t protocol_features() const = 0;
  // Number of virtqueues (virtio-fs: 1 hiprio + N request queues), 1..256
  // (the kick/call/err index is 8 bits). Constant for the device's life.
  virtual uint32_t queue_num() const = 0;
  // GET_MAX_MEM_SLOTS: how many regions add_mem_reg() may hold at once.
  virtual uint32_t max_mem_slots() const = 0;

  // SET_FEATURES: the features the driver accepted (a subset of features()
  // plus VHOST_USER_F_PROTOCOL_FEATURES). May come more than once.
  virtual int set_features(uint64_t features) = 0;
  // SET_PROTOCOL_FEATURES, a subset of protocol_features(). Informational.
  virtual int set_protocol_features(uint64_t /*features*/) { return 0; }
  // SET_OWNER: the session starts. Informational.
  virtual int set_owner() { return 0; }

  // SET_MEM_TABLE: replaces the whole memory table (regions in order, each
  // with the fd to mmap it from, MAP_SHARED at region.mmap_offset). Rings
  // keep their user addresses; translate them again.
  virtual int set_mem_table(std::vector<MemoryRegionFd> regions) = 0;
  // ADD_MEM_REG (CONFIGURE_MEM_SLOTS): adds one region.
  virtual int add_mem_reg(MemoryRegionFd region) = 0;
  // REM_MEM_REG: removes the region with this guest address, user address
  // and size (the mmap offset is to be ignored, vhost-user.rst).
  virtual int rem_mem_reg(const MemoryRegion& region) = 0;

  // SET_VRING_NUM: the ring's size. 1..32768, a power of two unless
  // VIRTIO_F_RING_PACKED was negotiated.
  virtual int set_vring_num(uint32_t index, uint32_t num) = 0;
  // SET_VRING_ADDR: front-end user addresses of the three parts of the ring
  // (translate through MemoryRegion::userspace_addr); addr.flags is 0.
  virtual int set_vring_addr(uint32_t index, const VringAddr& addr) = 0;
  // SET_VRING_BASE: the next available index to process. Split rings: <=
  // 0xffff (checked). Packed rings: bits 0-14 the index, bit 15 the wrap
  // counter (QEMU 7.2); not checked further here.
  virtual int set_vring_base(uint32_t index, uint32_t base) = 0;
  // GET_VRING_BASE: stops the ring (no more processing, in-flight requests
  // completed or abandoned as the device sees fit) and returns the next
  // available index it would have processed (same encoding as
  // set_vring_base). libvhost-user also drops the kick and call fds here.
  virtual uint32_t get_vring_base(uint32_t index) = 0;
  // Every ring fd below arrives non-blocking (the connection sets O_NONBLOCK).
  // SET_VRING_KICK: the eventfd the driver kicks; an empty fd (no-fd bit)
  // means poll the ring. Starts the ring.
  virtual int set_vring_kick(uint32_t index, util::UniqueFd fd) = 0;
  // SET_VRING_CALL: the eventfd to signal used buffers; empty: no interrupts.
  virtual int set_vring_call(uint32_t index, util::UniqueFd fd) = 0;
  // SET_VRING_ERR: the eventfd to signal ring errors; empty: none.
  virtual int set_vring_err(uint32_t index, util::UniqueFd fd) = 0;
  // SET_VRING_ENABLE (and the implicit enables above).
  virtual int set_vring_enable(uint32_t index, bool enable) = 0;

  // SET_BACKEND_REQ_FD (protocol feature BACKEND_REQ): the socket for
  // back-end initiated requests. By default it is closed.
  virtual int set_backend_req_fd(util::UniqueFd /*fd*/) { return 0; }
  // SET_STATUS / GET_STATUS (protocol feature STATUS only): the virtio
  // device status byte.
  virtual int set_status(uint8_t /*status*/) { return -EOPNOTSUPP; }
  virtual uint8_t get_status() const { return 0; }

  // RESET_DEVICE, and RESET_OWNER (which QEMU 7.2 sends instead when
  // RESET_DEVICE was not negotiated: hw/virtio/vhost-user.c
  // vhost_user_reset_device): stop and disable every ring, forget the
  // memory table and all ring state; the front-end configures it again.
  virtual void reset_device() = 0;
  // The front-end went away or the connection was closed on an error: the
  // same as reset_device(), and drop every fd the connection handed over.
  // Called exactly once per Connection (also from its destructor).
  virtual void disconnect() = 0;

 private:
  util::RateLimitedLog log_;
};

// One front-end connection. Not thread-safe: one thread calls on_readable()
// or serve() and close(); the device is called on that thread.
// REQUIRES: the device outlives the connection.
class Connection {
 public:
  // Protocol features this connection can carry out; what the device offers
  // is masked by it.
  static constexpr uint64_t kSupportedProtocolFeatures =
      protocol_feature::kMq | protocol_feature::kReplyAck | protocol_feature::kBackendReq |
      protocol_feature::kBackendSendFd | protocol_feature::kHostNotifier |
      protocol_feature::kResetDevice | protocol_feature::kConfigureMemSlots |
      protocol_feature::kStatus;

  // Takes a connected AF_UNIX stream socket, blocking or not. `name` prefixes
  // the log lines ("vhost-user fs0: ...").
  Connection(util::UniqueFd socket, VhostUserDevice& device, std::string name);
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  // Closes the connection if still open (device.disconnect()).
  ~Connection();

  // The socket, to poll for readability; -1 once closed.
  int fd() const { return socket_.get(); }
  bool connected() const { return socket_.get() >= 0; }

  // Processes every request that can be read without blocking (a partial one
  // is kept until the rest arrives). Returns false once the connection is
  // closed (EOF, an error, a malformed request), after device.disconnect().
  bool on_readable();

  // Processes requests until the connection closes; blocks (also on a
  // nonblocking socket, with poll). For tests and one-connection daemons.
  void serve();

  // Closes the connection from this side (daemon shutdown) and calls
  // device.disconnect(). Idempotent.
  void close();

  // The journal (docs/restart.md): called after each request the device
  // took (not refused), with its bytes (header and payload) and duplicates
  // of the fds that came with it, so that a successor can replay them.
  using Journal =
      std::function<void(std::span<const uint8_t> bytes, std::vector<util::UniqueFd> fds)>;
  void set_journal(Journal journal) { journal_ = std::move(journal); }
  // Takes a request of a journal as if the front-end had just sent it,
  // answering nothing. The same checks apply. Returns false (one line
  // logged) if it does not parse or the device refused it.
  bool replay(std::span<const uint8_t> bytes, std::vector<util::UniqueFd> fds);

  // What was negotiated so far (0 before SET_FEATURES / SET_PROTOCOL_FEATURES).
  uint64_t acked_features() const { return acked_features_; }
  uint64_t acked_protocol_features() const { return acked_protocol_features_; }

 private:
  enum class ReadStatus { kMessage, kWouldBlock, kClosed };
  enum class Outcome { kOk, kRefused, kFatal };

  ReadStatus read_message(bool block);
  bool process_one(bool block);  // false = closed or nothing more to read
  Outcome dispatch(Message& message, std::vector<util::UniqueFd>& fds, std::string* error);
  Outcome handle_vring_file(const Message& message, util::UniqueFd fd, std::string* error);
  bool check_index(uint32_t index, std::string* error) const;
  void apply_initial_enable(uint64_t previous, bool first);
  bool send_reply(const std::vector<uint8_t>& bytes);
  void fail(const std::string& what);  // logs one line and closes

  uint64_t offered_features() const;
  uint64_t offered_protocol_features() const;
  bool reply_ack() const { return (acked_protocol_features_ & protocol_feature::kReplyAck) != 0; }

  util::UniqueFd socket_;
  VhostUserDevice& device_;
  std::string name_;
  uint32_t queue_num_;

  // The message being read: header and payload bytes so far, and the fds
  // that came with them.
  uint8_t buffer_[kHeaderSize + kMaxPayloadSize];
  size_t have_ = 0;
  std::vector<util::UniqueFd> fds_;

  uint64_t acked_features_ = 0;
  uint64_t acked_protocol_features_ = 0;
  bool features_set_ = false;
  unsigned refusals_ = 0;
  Journal journal_;
  bool replaying_ = false;  // replies go nowhere
};

}  // namespace dpfs::vhost_user
