// The store the KV backend keeps its file systems in: one Redis server, or
// a Redis Cluster whose every command goes to the master that serves its
// key's slot.
//
// Each node has `lanes` connections (Links). Commands sent to one node on
// one lane run and are answered in the order sent; nothing is ordered
// between nodes or lanes.
//
// In a cluster, the slot map comes from CLUSTER SLOTS at start-up and again
// whenever a node redirects a command (MOVED), goes away or says the
// cluster is failing over (CLUSTERDOWN, TRYAGAIN): such a command is sent
// again, to the node the new map names, every 100 ms until its deadline.
// ASK redirections (a slot being moved) are followed for that one command.
// The tenant never sees a redirection; it sees EIO only when no node
// answered by the deadline.
//
// Lanes: each node has a connection (Link) on every lane, and a lane's
// connections are driven together, by a transport worker that adopted the
// lane (adopt_lane: the worker's commands go out and their answers come
// back on the worker) or else by a loop thread of the lane's own.
//
// Thread-safe. Answers run on the lanes' drivers.
#pragma once

#include <array>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "backend/kv/cluster.h"
#include "backend/kv/link.h"
#include "backend/kv/url.h"
#include "backend/worker_hook.h"
#include "util/rate_limited_log.h"
#include "util/unique_function.h"

namespace dpfs::kv {

class Store {
 public:
  // Connects to what discover() found the URL's seeds to be.
  Store(const KvUrl& url, const Topology& topology, unsigned lanes);
  ~Store();  // what is pending fails (null)
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  bool cluster() const { return cluster_; }
  // The lane the calling thread drives, else the next lane in turn.
  unsigned lane();

  // A worker takes a lane no other worker drives; null when every lane
  // has one. The hook hands the lane back when destroyed.
  std::unique_ptr<WorkerHook> adopt_lane();
  // On a thread that drives one of this store's lanes: drives it until
  // `done()` or `deadline`, and true. Elsewhere false at once (the caller
  // waits its own way: the lane's driver will answer).
  bool drive_until(const std::function<bool()>& done, Clock::time_point deadline);

  // Sends `argv` to the node that serves `key`, on its connection `lane`.
  // `done` runs exactly once, on a connection's thread, with the reply or
  // null (no node answered by the URL's timeout).
  void submit(std::string_view key, std::vector<std::string> argv, Done done, unsigned lane);
  // The same with words the caller keeps too (to send them again, changed,
  // once `done` has run: the store reads them only until then).
  using Words = std::shared_ptr<std::vector<std::string>>;
  void submit(std::string_view key, Words argv, Done done, unsigned lane);
  // The same to the node that serves `slot`.
  void submit_slot(uint16_t slot, std::vector<std::string> argv, Done done, unsigned lane);
  // Waits until `replicas` replicas of each master hold every command sent
  // there since the last wait (WAIT on each connection that carried any),
  // then done(0); done(EIO) when they did not within half the URL's
  // timeout, or a master that carried some is gone (what it took may be
  // lost with it).
  void wait_replicas(int replicas, util::UniqueFunction<void(int)> done);

  // One slot of each master (a command meant for every master goes to
  // these).
  std::vector<uint16_t> master_slots() const;

  // A line per connection, and the cluster's map refreshes.
  std::vector<std::string> stats() const;

 private:
  struct Node {
    Endpoint at;
    std::vector<std::unique_ptr<Link>> links;  // one per lane
    // Per link: a command went there since the last wait_replicas().
    std::unique_ptr<std::atomic<bool>[]> sent;
  };
  struct Pending;

  void send_new(uint16_t slot, Words argv, Done done, unsigned lane);
  void send(const std::shared_ptr<Pending>& p, Node* node);
  void answered(const std::shared_ptr<Pending>& p, Node* node, const struct redisReply* r);
  void retry_later(std::shared_ptr<Pending> p);
  // The index of the node at `at`, made on first use; -1 past kMaxNodes or
  // when closing. REQUIRES: mu_.
  int node_at(const Endpoint& at);
  Node* node_of(uint16_t slot) const;
  void install(const SlotMap& map);
  bool refresh();  // a new map from any node that gives one
  void want_refresh();
  void timer_loop();

  // A store that names nodes without end (a hostile one) gets no more.
  static constexpr size_t kMaxNodes = 64;

  const KvUrl url_;
  const unsigned lanes_;
  std::vector<std::unique_ptr<Lane>> lane_drivers_;  // lanes_ of them
  util::RateLimitedLog log_{"redis cluster"};
  const bool cluster_;
  std::atomic<uint64_t> next_lane_{0};

  mutable std::mutex mu_;                     // guards making nodes and changing the map
  std::vector<std::unique_ptr<Node>> owned_;  // guarded by mu_
  std::array<std::atomic<Node*>, kMaxNodes> nodes_{};
  std::array<std::atomic<uint8_t>, kSlots> slot_node_{};  // index into nodes_
  std::vector<uint16_t> master_slots_;                    // guarded by mu_
  bool closing_ = false;                                  // guarded by mu_

  // Commands waiting to go again, and the map refresh they wait for.
  std::mutex timer_mu_;
  std::condition_variable timer_cv_;
  std::multimap<Clock::time_point, std::shared_ptr<Pending>> later_;  // guarded by timer_mu_
  bool refresh_wanted_ = false;                                       // guarded by timer_mu_
  bool stop_ = false;                                                 // guarded by timer_mu_
  std::atomic<uint64_t> refreshes_{0};
  std::atomic<uint64_t> redirects_{0};
  std::atomic<uint64_t> retries_{0};
  std::thread timer_;
};

}  // namespace dpfs::kv
