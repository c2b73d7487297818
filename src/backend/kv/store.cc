#include "backend/kv/store.h"

#include <fmt/format.h>
#include <hiredis/hiredis.h>
#include <spdlog/spdlog.h>

#include <cstring>

#include "backend/kv/fan.h"

namespace dpfs::kv {
namespace {

constexpr auto kRetryAfter = std::chrono::milliseconds(100);
// A command redirected more often than this meets a store that sends it
// round in circles: it fails.
constexpr int kMaxRedirects = 16;

// Errors a cluster answers while it changes (a failover, a slot moving):
// the command goes again after the map is refreshed.
bool transient(std::string_view error) {
  return error.starts_with("TRYAGAIN") || error.starts_with("CLUSTERDOWN") ||
         error.starts_with("MASTERDOWN") || error.starts_with("LOADING");
}

}  // namespace

struct Store::Pending {
  Words argv;
  Done done;
  Clock::time_point deadline;
  unsigned lane = 0;
  uint16_t slot = 0;
  int redirects = 0;
  Node* ask = nullptr;  // an ASK named this node, for the next try only
};

class LaneHook final : public WorkerHook {
 public:
  explicit LaneHook(Lane& lane) : lane_(lane) {}
  ~LaneHook() override { lane_.give_back(); }
  int fd() const override { return lane_.wait_fd(); }
  void on_readable() override { lane_.on_readable(); }
  void flush() override { lane_.flush(); }
  bool poll() override { return lane_.poll(); }

 private:
  Lane& lane_;
};

Store::Store(const KvUrl& url, const Topology& topology, unsigned lanes)
    : url_(url), lanes_(std::max(lanes, 1u)), cluster_(topology.cluster) {
  for (unsigned i = 0; i < lanes_; ++i) {
    lane_drivers_.push_back(std::make_unique<Lane>(fmt::format("redis-{}", i)));
  }
  install(topology.map);
  if (cluster_) timer_ = std::thread([this] { timer_loop(); });
}

Store::~Store() {
  std::multimap<Clock::time_point, std::shared_ptr<Pending>> left;
  {
    std::lock_guard lock(timer_mu_);
    stop_ = true;
    left.swap(later_);
  }
  timer_cv_.notify_all();
  if (timer_.joinable()) timer_.join();
  for (auto& [when, p] : left) p->done(nullptr);
  // Nothing drives the links from here on; then they fail what they hold,
  // and answered() sends nothing again (a closed link fails it at once).
  for (auto& lane : lane_drivers_) lane->close();
  {
    std::lock_guard lock(mu_);
    closing_ = true;
  }
  for (auto& n : owned_) {
    for (auto& l : n->links) l->close();
  }
  owned_.clear();
  lane_drivers_.clear();
}

unsigned Store::lane() {
  if (Lane* here = Lane::driven_here()) {
    for (unsigned i = 0; i < lanes_; ++i) {
      if (lane_drivers_[i].get() == here) return i;
    }
  }
  return unsigned(next_lane_.fetch_add(1, std::memory_order_relaxed) % lanes_);
}

std::unique_ptr<WorkerHook> Store::adopt_lane() {
  for (auto& lane : lane_drivers_) {
    if (lane->adopt()) return std::make_unique<LaneHook>(*lane);
  }
  return nullptr;
}

bool Store::drive_until(const std::function<bool()>& done, Clock::time_point deadline) {
  Lane* here = Lane::driven_here();
  for (auto& lane : lane_drivers_) {
    if (lane.get() == here) {
      here->drive_until(done, deadline);
      return true;
    }
  }
  return false;
}

int Store::node_at(const Endpoint& at) {
  for (size_t i = 0; i < owned_.size(); ++i) {
    if (owned_[i]->at == at) return int(i);
  }
  if (closing_ || owned_.size() >= kMaxNodes) return -1;
  auto n = std::make_unique<Node>();
  n->at = at;
  n->sent = std::make_unique<std::atomic<bool>[]>(lanes_);
  for (unsigned i = 0; i < lanes_; ++i) {
    n->links.push_back(std::make_unique<Link>(*lane_drivers_[i], at.host, at.port, url_.timeout,
                                              fmt::format("redis {}:{} #{}", at.host, at.port, i),
                                              cluster_ ? WhenDown::kFail : WhenDown::kWait));
  }
  nodes_[owned_.size()].store(n.get(), std::memory_order_release);
  owned_.push_back(std::move(n));
  return int(owned_.size() - 1);
}

void Store::install(const SlotMap& map) {
  std::lock_guard lock(mu_);
  master_slots_.clear();
  std::vector<bool> listed(map.masters.size(), false);
  for (const SlotMap::Range& r : map.ranges) {
    const int node = node_at(map.masters[r.node]);
    if (node < 0) continue;
    for (uint32_t s = r.first; s <= r.last; ++s) {
      slot_node_[s].store(uint8_t(node), std::memory_order_relaxed);
    }
    if (!listed[r.node]) {
      listed[r.node] = true;
      master_slots_.push_back(r.first);
    }
  }
}

std::vector<uint16_t> Store::master_slots() const {
  std::lock_guard lock(mu_);
  return master_slots_;
}

void Store::submit(std::string_view key, std::vector<std::string> argv, Done done, unsigned lane) {
  submit(key, std::make_shared<std::vector<std::string>>(std::move(argv)), std::move(done), lane);
}

void Store::submit(std::string_view key, Words argv, Done done, unsigned lane) {
  send_new(cluster_ ? key_slot(key) : 0, std::move(argv), std::move(done), lane);
}

void Store::submit_slot(uint16_t slot, std::vector<std::string> argv, Done done, unsigned lane) {
  send_new(slot, std::make_shared<std::vector<std::string>>(std::move(argv)), std::move(done),
           lane);
}

void Store::send_new(uint16_t slot, Words argv, Done done, unsigned lane) {
  auto p = std::make_shared<Pending>();
  p->argv = std::move(argv);
  p->done = std::move(done);
  p->deadline = Clock::now() + url_.timeout;
  p->lane = lane;
  p->slot = slot;
  send(p, node_of(slot));
}

Store::Node* Store::node_of(uint16_t slot) const {
  return nodes_[slot_node_[slot].load(std::memory_order_relaxed)].load(std::memory_order_acquire);
}

void Store::send(const std::shared_ptr<Pending>& p, Node* node) {
  Command c;
  c.borrowed = p->argv.get();  // p lives until c.done has run: it holds p
  c.deadline = p->deadline;
  c.asking = p->ask != nullptr;
  if (p->ask != nullptr) {
    node = p->ask;
    p->ask = nullptr;
  }
  c.done = [this, p, node](const redisReply* r) { answered(p, node, r); };
  const size_t lane = p->lane % node->links.size();
  node->sent[lane].store(true, std::memory_order_relaxed);
  node->links[lane]->submit(std::move(c));
}

void Store::wait_replicas(int replicas, util::UniqueFunction<void(int)> done) {
  const auto wait_ms = std::to_string(std::max<int64_t>(url_.timeout.count() / 2, 1));
  std::vector<Link*> sent;
  {
    std::lock_guard lock(mu_);
    for (const auto& n : owned_) {
      for (size_t i = 0; i < n->links.size(); ++i) {
        if (n->sent[i].exchange(false, std::memory_order_relaxed))
          sent.push_back(n->links[i].get());
      }
    }
  }
  if (sent.empty()) return done(0);
  auto fan = std::make_shared<Fan>(sent.size(), std::move(done));
  for (Link* link : sent) {
    // On that very connection: WAIT counts what its own client sent.
    link->submit({"WAIT", std::to_string(replicas), wait_ms}, [fan, replicas](const redisReply* r) {
      const bool ok = r != nullptr && r->type == REDIS_REPLY_INTEGER && r->integer >= replicas;
      fan->one(ok ? 0 : EIO);
    });
  }
}

void Store::answered(const std::shared_ptr<Pending>& p, Node* node, const redisReply* r) {
  if (!cluster_) return p->done(r);
  if (r == nullptr) {
    // The node went away (or never answered): a failover may be under way.
    if (Clock::now() >= p->deadline) return p->done(nullptr);
    want_refresh();
    return retry_later(p);
  }
  if (r->type != REDIS_REPLY_ERROR) return p->done(r);
  const std::string_view error(r->str, r->len);
  if (std::optional<Redirect> to = parse_redirect(error, node->at)) {
    redirects_.fetch_add(1, std::memory_order_relaxed);
    if (++p->redirects > kMaxRedirects) {
      log_.warn("kv: a command was redirected {} times; the cluster's map keeps changing",
                kMaxRedirects);
      return p->done(r);
    }
    Node* target = nullptr;
    {
      std::lock_guard lock(mu_);
      const int index = node_at(to->to);
      if (index < 0) return p->done(r);
      target = owned_[size_t(index)].get();
      // MOVED: the slot is that node's now; the rest of the map may have
      // changed too.
      if (!to->ask) slot_node_[to->slot].store(uint8_t(index), std::memory_order_relaxed);
    }
    if (!to->ask) want_refresh();
    if (to->ask) p->ask = target;
    return send(p, target);
  }
  if (transient(error) && Clock::now() < p->deadline) {
    want_refresh();
    return retry_later(p);
  }
  p->done(r);
}

void Store::retry_later(std::shared_ptr<Pending> p) {
  retries_.fetch_add(1, std::memory_order_relaxed);
  std::unique_lock lock(timer_mu_);
  if (stop_) {
    lock.unlock();
    return p->done(nullptr);
  }
  later_.emplace(Clock::now() + kRetryAfter, std::move(p));
  lock.unlock();
  timer_cv_.notify_one();
}

void Store::want_refresh() {
  std::lock_guard lock(timer_mu_);
  refresh_wanted_ = true;
  timer_cv_.notify_one();
}

bool Store::refresh() {
  std::vector<Endpoint> ask;
  {
    std::lock_guard lock(mu_);
    for (const auto& n : owned_) ask.push_back(n->at);
  }
  for (const Endpoint& seed : url_.servers) {
    if (std::find(ask.begin(), ask.end(), seed) == ask.end()) ask.push_back(seed);
  }
  for (const Endpoint& at : ask) {
    // A short wait per node: a dead one must not hold the others up.
    const SlotsAnswer a = ask_slots(at, std::chrono::milliseconds(300));
    if (!a.map || !a.map->complete()) continue;  // that node's view is not whole yet
    install(*a.map);
    refreshes_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void Store::timer_loop() {
  Clock::time_point last_refresh{};
  std::unique_lock lock(timer_mu_);
  while (!stop_) {
    const auto now = Clock::now();
    if (refresh_wanted_ && now - last_refresh >= kRetryAfter) {
      refresh_wanted_ = false;
      last_refresh = now;
      lock.unlock();
      const bool refreshed = refresh();
      lock.lock();
      if (!refreshed) refresh_wanted_ = true;  // again on the next turn
      continue;
    }
    std::vector<std::shared_ptr<Pending>> due;
    while (!later_.empty() && later_.begin()->first <= now) {
      due.push_back(std::move(later_.begin()->second));
      later_.erase(later_.begin());
    }
    if (!due.empty()) {
      lock.unlock();
      for (auto& p : due) {
        send(p, node_of(p->slot));
      }
      lock.lock();
      continue;
    }
    auto until = now + std::chrono::seconds(1);
    if (!later_.empty()) until = std::min(until, later_.begin()->first);
    if (refresh_wanted_) until = std::min(until, last_refresh + kRetryAfter);
    timer_cv_.wait_until(lock, until);
  }
}

std::vector<std::string> Store::stats() const {
  std::vector<std::string> lines;
  {
    std::lock_guard lock(mu_);
    for (unsigned i = 0; i < lanes_; ++i) {
      uint64_t answered = 0;
      for (const auto& n : owned_) answered += n->links[i]->answered();
      lines.push_back(fmt::format("redis lane {}: {}, {} commands answered", i,
                                  lane_drivers_[i]->driver(), answered));
    }
    for (const auto& n : owned_) {
      for (const auto& l : n->links) lines.push_back(l->stats());
    }
  }
  if (cluster_) {
    lines.push_back(fmt::format("redis cluster: {} map refreshes, {} redirections, {} retries",
                                refreshes_.load(std::memory_order_relaxed),
                                redirects_.load(std::memory_order_relaxed),
                                retries_.load(std::memory_order_relaxed)));
  }
  return lines;
}

}  // namespace dpfs::kv
