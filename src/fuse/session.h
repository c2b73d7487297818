// The FUSE session: one per mount or device.
//
// Owns the FUSE protocol between a tenant kernel and a backend: INIT
// negotiation (version, feature flags, max_write/max_pages/max_readahead,
// time granularity), decoding and validating every request against what it
// actually carries, dispatch by opcode, and the rule that every request gets
// exactly one reply. It knows nothing of how bytes travel (see Request).
//
// Safe for concurrent use: several workers call handle() at once. INIT and
// DESTROY are the only requests that change session state.
#pragma once

#include <linux/fuse.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "backend/backend.h"
#include "backend/policy.h"
#include "fuse/handler.h"
#include "fuse/passthrough_abi.h"
#include "fuse/passthrough_files.h"
#include "fuse/request.h"
#include "util/rate_limited_log.h"
#include "util/thread_annotations.h"

namespace dpfs::fuse {

// What INIT negotiated: all a session needs to serve without seeing INIT
// again (a successor process of the one that took it).
struct InitState {
  uint32_t proto_minor = 0;
  uint32_t max_write = 0;
  uint64_t flags = 0;  // FUSE_* init flags, both words
};

struct SessionOptions {
  uint32_t max_write = 1u << 20;      // largest WRITE/READ payload
  uint32_t max_readahead = 1u << 20;  // upper bound; the kernel's value wins if smaller
  uint32_t max_background = 64;
  double entry_timeout = 1.0;  // defaults a backend may use
  double attr_timeout = 1.0;
  bool writeback_cache = false;
  // Off: every xattr request answers ENOSYS, which the kernel remembers, so it
  // stops asking -- notably the security.capability lookup it makes before
  // every WRITE (virtiofsd's default).
  bool xattr = true;
  // The host's policy for this tenant, when its backend is wrapped in a
  // PolicyBackend: the session applies the way back -- host ids in the
  // attributes it encodes become the tenant's (Identity::guest_uid), and
  // LISTXATTR leaves out the names the tenant may not use.
  std::shared_ptr<const HostPolicy> policy;
  // FUSE passthrough: registers host files with this session's kernel
  // (borrowed; outlives the session). Null: none (virtio-fs: the kernel is
  // a guest's). Used where the backend names host files
  // (Capabilities::host_files), the kernel offers passthrough and the
  // writeback cache is off (the kernel takes one or the other).
  BackingFiles* backing_files = nullptr;
  std::string name = "dpfs";  // for logs
  // Called (on the worker that took INIT) with what INIT negotiated, for a
  // successor process to restore (docs/restart.md); may be empty.
  std::function<void(const InitState&)> on_init;
};

// One opcode's totals: requests answered, errors among them, and the time
// from handle() to the reply, summed.
struct OpStats {
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t total_ns = 0;
};

class FuseSession final : public RequestHandler {
 public:
  // The protocol this build speaks (<linux/fuse.h>) and the oldest it accepts.
  static constexpr uint32_t kMajor = FUSE_KERNEL_VERSION;
  static constexpr uint32_t kMinor = FUSE_KERNEL_MINOR_VERSION;
  static constexpr uint32_t kMinMinor = 12;
  static constexpr size_t kMaxOpcode = 64;

  FuseSession(Backend& backend, SessionOptions options);
  ~FuseSession();
  FuseSession(const FuseSession&) = delete;
  FuseSession& operator=(const FuseSession&) = delete;

  // Decodes one request and hands it to the backend. The request's
  // complete() is called exactly once, now or when the backend answers.
  void handle(Request& req) override;

  // The buffer sizes a transport must offer: the largest request the kernel
  // may send (a WRITE of max_write) and the largest reply (a READ of max_write).
  size_t max_request_size() const override { return request_size_for(options_.max_write); }
  size_t max_reply_size() const override { return reply_size_for(options_.max_write); }
  // The same for a session whose max_write is `max_write` (a forwarder's).
  static size_t request_size_for(uint32_t max_write);
  static size_t reply_size_for(uint32_t max_write);

  bool initialized() const { return initialized_.load(std::memory_order_acquire); }
  // Serves as if INIT had negotiated `state` (a successor of the process
  // that took INIT). False, nothing changed, if this session would not
  // have negotiated it: a minor version or flags it does not speak, a
  // max_write above its own.
  bool restore(const InitState& state);
  // Forgets the negotiated session when its tenant went away without
  // DESTROY (a front-end disconnected): the next request must be INIT.
  void reset() override;
  // True once DESTROY was handled (a transport may stop serving).
  bool destroyed() const override { return destroyed_.load(std::memory_order_acquire); }
  std::unique_ptr<WorkerHook> attach_worker() override { return backend_.attach_worker(); }
  uint32_t proto_minor() const { return proto_minor_.load(std::memory_order_relaxed); }
  uint64_t negotiated_flags() const { return flags_.load(std::memory_order_relaxed); }
  uint32_t max_write() const { return max_write_.load(std::memory_order_relaxed); }
  const SessionOptions& options() const { return options_; }
  // The totals of `opcode` so far (0: opcodes past kMaxOpcode), summed over
  // the threads that answered requests. Any thread, while the session runs.
  OpStats stats(uint32_t opcode) const;
  Backend& backend() { return backend_; }
  // This session's log lines that its tenant can cause (malformed requests,
  // INIT): rate-limited per session, so one tenant's flood neither floods
  // the operator's log nor silences the other tenants.
  util::RateLimitedLog& log() { return log_; }

  // Called by replies when they are encoded; records statistics.
  void finish(Request& req, int error);

  // The open files the kernel reads and writes itself; null unless INIT
  // negotiated FUSE passthrough.
  PassthroughFiles* passthrough_files() {
    return (flags_.load(std::memory_order_relaxed) & passthrough_abi::kInitPassthrough) != 0
               ? passthrough_.get()
               : nullptr;
  }
  // Statistics lines of the session's own (passthrough); empty if none.
  std::vector<std::string> extra_stats() const;

 private:
  void handle_init(Request& req, IovReader& in, uint64_t unique);
  // Completes `req` with a header-only error reply and counts it.
  void answer_error(Request& req, uint64_t unique, int error);
  void dispatch(Request& req, const fuse_in_header& hdr, IovReader& in);

  Backend& backend_;
  SessionOptions options_;
  // What INIT negotiated. Written by handle_init() and reset() under
  // init_mu_ (this session's: one tenant's INITs never wait for another's);
  // read by every worker without it. Each field is atomic, and
  // initialized_'s release store publishes them: a worker that sees
  // initialized() sees the fields of that INIT or a later one. A second INIT
  // racing requests (a guest kernel renegotiating after a reset) may show
  // one request fields of two INITs; each field is valid on its own.
  std::mutex init_mu_;
  std::atomic<bool> initialized_{false};
  std::atomic<bool> destroyed_{false};
  std::atomic<uint32_t> proto_minor_{0};
  std::atomic<uint64_t> flags_{0};  // negotiated FUSE_* init flags (both words)
  std::atomic<uint32_t> max_write_{0};
  // Made when options_.backing_files is set; used once INIT negotiated it.
  std::unique_ptr<PassthroughFiles> passthrough_;
  // Statistics: one block per thread that finishes requests, written by
  // that thread alone (single-writer counters: no locked instruction, no
  // cache line another worker writes) and summed by stats(). A block is
  // made the first time a thread finishes one of this session's requests,
  // and lives as long as the session.
  struct ThreadStats;
  ThreadStats& thread_stats();
  const uint64_t id_;  // this session, for each thread's cache of its block
  mutable util::Mutex stats_mu_;
  std::vector<std::unique_ptr<ThreadStats>> thread_stats_ DPFS_GUARDED_BY(stats_mu_);
  util::RateLimitedLog log_;
};

// Encodes a header-only error reply for `unique` into `out`; returns its
// length (0 if `out` cannot hold a header). For transports that must answer
// a request the session never saw.
size_t encode_error(std::span<const iovec> out, uint64_t unique, int errno_value);

// Name of an opcode for logs ("LOOKUP"), or "UNKNOWN".
const char* opcode_name(uint32_t opcode);

}  // namespace dpfs::fuse
