// The vhost-user front-end: the role QEMU plays towards a virtio-fs device
// (dpfs, virtiofsd). Connects to the device's socket, negotiates features
// and protocol features, shares the memfd memory with SET_MEM_TABLE and
// hands each virtqueue's layout and eventfds over.
//
// Message layouts come from the device side's vhost_user/message.h; the
// sequence follows QEMU 7.2 (hw/virtio/vhost-user.c, vhost.c). Every
// request that has no reply of its own asks for a REPLY_ACK when the device
// offers it, so a refusal is an error here and not a silent hang later.
//
// Not thread-safe; set-up happens before the driver threads start.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "driver_queue.h"
#include "shared_memory.h"
#include "util/unique_fd.h"

namespace dpfs::bench {

class Frontend {
 public:
  // Connects to the device's unix socket; throws std::runtime_error saying
  // what to fix.
  explicit Frontend(const std::string& socket_path);
  Frontend(const Frontend&) = delete;
  Frontend& operator=(const Frontend&) = delete;

  // The whole set-up: features, owner, memory table, and every queue in
  // `queues` (queue i is virtqueue queues[i]->index()) started and enabled.
  // Throws std::runtime_error on any refusal.
  void start(const SharedMemory& mem, std::span<DriverQueue* const> queues);

  // The number of virtqueues the device has (GET_QUEUE_NUM; 0 before
  // start() or without the MQ protocol feature).
  uint32_t queue_num() const { return queue_num_; }
  uint64_t features() const { return features_; }

  // Closes the socket without any farewell (a front-end that vanished).
  void vanish() { socket_.reset(); }

  // One request, for the hostile cases too: sends it (with fds) and, when
  // it has a reply or asks for an ack, returns that u64. Throws on I/O
  // errors.
  uint64_t request(uint32_t request, std::span<const uint8_t> payload,
                   std::span<const int> fds = {}, bool has_reply = false);
  uint64_t request_u64(uint32_t request, uint64_t value, std::span<const int> fds = {});

 private:
  void send(uint32_t request, uint32_t flags, std::span<const uint8_t> payload,
            std::span<const int> fds);
  uint64_t receive_u64(uint32_t request);
  void vring_state(uint32_t request, uint32_t index, uint32_t num);

  std::string path_;
  util::UniqueFd socket_;
  uint64_t features_ = 0;
  uint64_t protocol_features_ = 0;
  uint32_t queue_num_ = 0;
};

}  // namespace dpfs::bench
