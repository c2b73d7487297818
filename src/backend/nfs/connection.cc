#include "backend/nfs/connection.h"

// clang-format off: libnfs's headers depend on this order.
#include <nfsc/libnfs.h>
#include <nfsc/libnfs-raw.h>
#include <nfsc/libnfs-raw-nfs.h>
#include <nfsc/libnfs-raw-nfs4.h>
// clang-format on

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>

// libnfs 4.0 exports the root handle of a mounted context but declares it
// only in its private header; struct nfs_fh is {int len; char *val;} there
// (and forward-declared in libnfs-raw.h).
extern "C" {
struct nfs_fh {
  int len;
  char* val;
};
struct nfs_fh* nfs_get_rootfh(struct nfs_context* nfs);
// Also exported but private: libnfs 4.0 turns reconnecting on after an
// NFSv3 mount only; an NFSv4 context needs it set by hand.
void rpc_set_autoreconnect(struct rpc_context* rpc, int num_retries);
}

namespace dpfs::nfs {
namespace {

// How long a Call that failed without an answer waits before it is sent
// again, and how often the loop wakes to let libnfs expire RPCs.
constexpr auto kRetryPause = std::chrono::milliseconds(200);
constexpr int kPollMs = 100;

// libnfs's last error, which may be none.
const char* error_text(rpc_context* rpc) {
  const char* e = rpc_get_error(rpc);
  return e != nullptr ? e : "connection failed";
}

}  // namespace

Connection::Connection(const ConnectionOptions& options, int index)
    : options_(options), index_(index) {
  nfs_ = nfs_init_context();
  if (nfs_ == nullptr) throw std::runtime_error("nfs: cannot create a libnfs context");
  auto fail = [&](const std::string& what) {
    std::string msg = fmt::format("nfs://{}{}: {}: {}", options_.url.server,
                                  options_.url.export_path, what, nfs_get_error(nfs_));
    nfs_destroy_context(nfs_);
    nfs_ = nullptr;
    throw std::runtime_error(msg);
  };
  if (options_.url.port != 0) {
    // libnfs takes a fixed NFS port only from a URL argument.
    const std::string url = fmt::format("nfs://{}{}?nfsport={}", options_.url.server,
                                        options_.url.export_path, options_.url.port);
    nfs_url* parsed = nfs_parse_url_dir(nfs_, url.c_str());
    if (parsed == nullptr) fail("bad URL");
    nfs_destroy_url(parsed);
  }
  nfs_set_version(nfs_, options_.url.version == 4 ? NFS_V4 : NFS_V3);
  // Requests go out as root; the tenant's uid and gid are set explicitly on
  // what it creates, and the kernel checks permissions (default_permissions).
  nfs_set_uid(nfs_, 0);
  nfs_set_gid(nfs_, 0);
  nfs_set_autoreconnect(nfs_, -1);
  if (nfs_mount(nfs_, options_.url.server.c_str(), options_.url.export_path.c_str()) != 0) {
    fail(options_.url.port != 0
             ? fmt::format("mount failed (is an NFS server answering on port {}, exporting "
                           "this path to this host?)",
                           options_.url.port)
             : std::string("mount failed (is an NFS server with rpcbind answering there, "
                           "exporting this path to this host?)"));
  }
  rpc_ = nfs_get_rpc_context(nfs_);
  rpc_set_autoreconnect(rpc_, -1);
  const nfs_fh* root = nfs_get_rootfh(nfs_);
  const int max_fh = options_.url.version == 4 ? NFS4_FHSIZE : NFS3_FHSIZE;
  if (root == nullptr || root->len <= 0 || root->len > max_fh) fail("no root file handle");
  root_fh_.assign(root->val, size_t(root->len));
  readmax_ = nfs_get_readmax(nfs_);
  writemax_ = nfs_get_writemax(nfs_);
  event_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (event_fd_ < 0) fail("eventfd");
  thread_ = std::thread([this] { loop(); });
}

Connection::~Connection() {
  shutdown();
  if (event_fd_ >= 0) ::close(event_fd_);
}

void Connection::shutdown() {
  if (nfs_ == nullptr) return;
  stop_ = true;
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
  if (thread_.joinable()) thread_.join();
  if (answered_ > 0) {
    spdlog::info("nfs connection {}: {} RPCs answered, mean round trip {:.1f} us", index_,
                 answered_,
                 std::chrono::duration<double, std::micro>(round_trips_).count() / double(answered_));
  }
  // From here on the calling thread owns the context. Calls never sent, or
  // waiting for a retry, are answered here; those in flight are cancelled
  // by libnfs (their callbacks run with an error). What their completions
  // submit is answered at once (closed_).
  std::vector<std::unique_ptr<Call>> unsent;
  {
    std::lock_guard lock(mu_);
    closed_ = true;
    unsent.swap(incoming_);
  }
  for (auto& call : unsent) call->complete(RPC_STATUS_CANCEL, nullptr);
  auto retries = std::move(retries_);
  for (auto& [when, call] : retries) call->complete(RPC_STATUS_CANCEL, nullptr);
  nfs_context* nfs = nfs_;
  nfs_ = nullptr;
  nfs_destroy_context(nfs);
}

void Connection::submit(std::unique_ptr<Call> call) {
  call->deadline = Clock::now() + options_.timeout;
  call->connection = this;
  {
    std::unique_lock lock(mu_);
    if (closed_) {
      lock.unlock();
      return call->complete(RPC_STATUS_CANCEL, nullptr);
    }
    incoming_.push_back(std::move(call));
  }
  const uint64_t one = 1;
  (void)!::write(event_fd_, &one, sizeof one);
}

void Connection::on_reply(rpc_context*, int status, void* data, void* private_data) {
  auto* call = static_cast<Call*>(private_data);
  call->connection->finish(call, status, data);
}

void Connection::send(std::unique_ptr<Call> call) {
  if (Clock::now() >= call->deadline) return call->complete(RPC_STATUS_TIMEOUT, nullptr);
  // libnfs stamps each RPC with the context's timeout when it is sent, in
  // whole seconds: give this one what is left of its deadline.
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(call->deadline -
                                                                          Clock::now());
  nfs_set_timeout(nfs_, int(std::max<int64_t>(1, (left.count() + 999) / 1000) * 1000));
  call->sent = Clock::now();
  Call* raw = call.release();  // libnfs holds it until on_reply
  if (raw->send(rpc_, &Connection::on_reply, raw) == 0) return;
  call.reset(raw);
  if (call->idempotent && Clock::now() + kRetryPause < call->deadline) {
    retry_later(std::move(call));
    return;
  }
  spdlog::warn("nfs connection {}: cannot send an RPC: {}", index_, error_text(rpc_));
  call->complete(RPC_STATUS_ERROR, nullptr);
}

void Connection::finish(Call* raw, int status, void* res) {
  std::unique_ptr<Call> call(raw);
  if (status == RPC_STATUS_SUCCESS) {
    ++answered_;
    round_trips_ += Clock::now() - call->sent;
  }
  // Every NFSv3 *3res and the v4 COMPOUND4res begin with their status.
  // "Try again later": NFS3ERR_JUKEBOX is NFS4ERR_DELAY; NFS4ERR_GRACE while
  // a restarted server waits for its clients to reclaim state.
  const int nfs_status = status == RPC_STATUS_SUCCESS && res != nullptr ? *static_cast<int*>(res) : 0;
  const bool jukebox = nfs_status == NFS3ERR_JUKEBOX || nfs_status == NFS4ERR_GRACE;
  const bool lost = status == RPC_STATUS_ERROR;
  if ((jukebox || lost) && !stop_ && call->idempotent &&
      Clock::now() + kRetryPause < call->deadline) {
    retry_later(std::move(call));
    return;
  }
  if (lost && !stop_) {
    spdlog::warn("nfs connection {}: an RPC failed: {}", index_, error_text(rpc_));
  }
  call->complete(status, res);
}

void Connection::retry_later(std::unique_ptr<Call> call) {
  retries_.emplace_back(Clock::now() + kRetryPause, std::move(call));
}

void Connection::loop() {
  std::vector<std::unique_ptr<Call>> batch;
  while (!stop_) {
    pollfd fds[2] = {{rpc_get_fd(rpc_), short(rpc_which_events(rpc_)), 0},
                     {event_fd_, POLLIN, 0}};
    const int n = ::poll(fds, 2, kPollMs);
    if (n < 0 && errno != EINTR) {
      spdlog::error("nfs connection {}: poll: {}", index_, strerror(errno));
      break;
    }
    if (fds[1].revents & POLLIN) {
      uint64_t count;
      (void)!::read(event_fd_, &count, sizeof count);
      {
        std::lock_guard lock(mu_);
        batch.swap(incoming_);
      }
      for (auto& call : batch) send(std::move(call));
      batch.clear();
    }
    // Also with no events: libnfs expires timed-out RPCs in rpc_service().
    if (rpc_service(rpc_, fds[0].fd >= 0 ? fds[0].revents : 0) < 0) {
      // Once a second at most: a broken socket fails every poll.
      const auto now = Clock::now();
      if (now - last_error_log_ >= std::chrono::seconds(1)) {
        last_error_log_ = now;
        spdlog::warn("nfs connection {}: {}", index_, error_text(rpc_));
      }
    }
    if (!retries_.empty()) {
      const auto now = Clock::now();
      std::vector<std::unique_ptr<Call>> due;
      std::erase_if(retries_, [&](auto& entry) {
        if (entry.first > now) return false;
        due.push_back(std::move(entry.second));
        return true;
      });
      for (auto& call : due) send(std::move(call));
    }
  }
}

}  // namespace dpfs::nfs
