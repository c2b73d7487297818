// dpfs-bench (tools/dpfs_bench/) against real devices: every workload
// against a dpfs vhost-user device (ops counted, no errors, written data read
// back), every hostile case against dpfs (the daemon lives, serves the next
// request, logs the broken queue or the malformed request), and one run
// against QEMU's virtiofsd to show the driver works unchanged there.
//
// Runs are short (0.3 s); the whole suite takes about 15 s, and the race
// cases (0.5 s each, on passthrough and memfs) about 30 s more.
#include <sys/socket.h>
#include <sys/un.h>

#include <map>

#include "mount_fixture.h"

#ifndef DPFS_BENCH
#error "DPFS_BENCH must name the dpfs-bench binary"
#endif

namespace dpfs::itest {
namespace {

constexpr const char* kVirtiofsd = "/usr/lib/qemu/virtiofsd";

// A device process serving a vhost-user socket in a private directory, its
// output in a log file.
class DeviceProcess {
 public:
  DeviceProcess() {
    char tmpl[] = "/tmp/dpfs-bench-test.XXXXXX";
    if (::mkdtemp(tmpl)) dir_ = tmpl;
    socket_ = dir_ + "/dev.sock";
    log_ = dir_ + "/device.log";
  }
  ~DeviceProcess() {
    stop();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }

  const std::string& dir() const { return dir_; }
  const std::string& socket() const { return socket_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return read_text_file(log_); }

  // Starts `args` and waits for the socket and, in the log, `ready` (what
  // dpfs logs once its device serves; virtiofsd logs that it waits for a
  // front-end); "" or what went wrong.
  std::string start(const std::vector<std::string>& args,
                    const std::string& ready = "in the guest: mount") {
    if (dir_.empty()) return "mkdtemp failed";
    auto argv = make_argv(args);
    const int log_fd = ::open(log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (log_fd < 0) return "cannot create " + log_ + ": " + errname(errno);
    ::fflush(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(log_fd, 1);
      ::dup2(log_fd, 2);
      ::execv(argv[0], argv.data());
      dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
      ::_exit(127);
    }
    ::close(log_fd);
    for (int i = 0; i < 500; ++i) {
      struct stat st {};
      if (::stat(socket_.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) &&
          log().find(ready) != std::string::npos) {
        return "";
      }
      if (std::string e = check_alive(); !e.empty()) return e;
      std::this_thread::sleep_for(10ms);
    }
    return "no socket " + socket_ + " after 5 s; log:\n" + log();
  }

  // "" while it runs; otherwise how it ended, with its log.
  std::string check_alive() {
    if (pid_ <= 0) return "the device is not running";
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return "the device died (status " + std::to_string(status) + "); log:\n" + log();
    }
    if (const std::string crash = crash_line(log()); !crash.empty()) {
      return "a serving process crashed: " + crash + "\nlog:\n" + log();
    }
    return "";
  }

  // Waits up to 10 s for it to exit by itself; its wait status, or -1.
  int wait_exit() {
    for (int i = 0; i < 1000 && pid_ > 0; ++i) {
      int status = 0;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return status;
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

  void stop() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    for (int i = 0; i < 300 && ::waitpid(pid_, nullptr, WNOHANG) != pid_; ++i) {
      std::this_thread::sleep_for(10ms);
    }
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    pid_ = -1;
  }

 private:
  std::string dir_, socket_, log_;
  pid_t pid_ = -1;
};

// The value of "key": in a JSON object printed by dpfs-bench --json, as text
// ("" if absent).
std::string json_field(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\": ";
  const size_t at = json.find(k);
  if (at == std::string::npos) return "";
  size_t start = at + k.size();
  if (json[start] == '"') {
    const size_t end = json.find('"', start + 1);
    return json.substr(start + 1, end - start - 1);
  }
  const size_t end = json.find_first_of(",}", start);
  return json.substr(start, end - start);
}

double json_number(const std::string& json, const std::string& key) {
  const std::string v = json_field(json, key);
  return v.empty() || v == "null" ? -1 : std::stod(v);
}

std::vector<std::string> bench_args(const DeviceProcess& dev, std::vector<std::string> extra) {
  std::vector<std::string> args{DPFS_BENCH, "--socket", dev.socket(), "--device-pid",
                                std::to_string(dev.pid())};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// A short JSON run that must succeed with ops counted and no errors;
// returns its JSON.
std::string run_ok(const DeviceProcess& dev, const std::string& workload,
                   std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"--workload",  workload, "--duration", "0.3", "--warmup", "0.05",
                                "--file-size", "1M",     "--files",    "50",  "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  const RunResult r = run(bench_args(dev, args), 30s);
  EXPECT_EQ(r.exit_code(), 0) << workload << ": " << r.describe();
  EXPECT_GT(json_number(r.out, "ops"), 0) << workload << ": " << r.describe();
  EXPECT_EQ(json_field(r.out, "errors"), "0") << workload << ": " << r.describe();
  EXPECT_GT(json_number(r.out, "lat_p99_us"), 0) << r.out;
  EXPECT_GE(json_number(r.out, "device_cpu_us_per_op"), 0) << r.out;
  return r.out;
}

// The device's log once it printed its stats (SIGUSR1, passed on by the
// supervisor to the serving process): the lines up to `last`, which the
// statistics print last (the queues come after the requests and the
// backend's counters). Fails the test if they never come.
std::string stats_in_log(const DeviceProcess& dev,
                         const std::string& last = "queue 1 (requests): ") {
  const size_t before = dev.log().size();
  ::kill(dev.pid(), SIGUSR1);
  for (int i = 0; i < 500; ++i) {
    const std::string log = dev.log();
    if (log.find(last, before) != std::string::npos) return log;
    std::this_thread::sleep_for(10ms);
  }
  ADD_FAILURE() << "no statistics (" << last << ") in the log 5 s after SIGUSR1:\n" << dev.log();
  return dev.log();
}

class BenchTest : public ::testing::Test {
 protected:
  // memfs on two request queues, `threads` workers.
  void start_dpfs(std::vector<std::string> extra = {}, int threads = 2) {
    std::vector<std::string> args{dpfs_binary(), "serve",        "--backend",
                                  "memfs",       "--vhost-user", dev_.socket()};
    for (const char* a : {"--tag", "dpfs", "--request-queues", "2", "--threads"}) args.push_back(a);
    args.push_back(std::to_string(threads));
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_EQ(dev_.start(args), "");
  }

  DeviceProcess dev_;
};

TEST_F(BenchTest, EveryWorkloadAgainstDpfs) {
  ASSERT_NO_FATAL_FAILURE(start_dpfs());
  for (const char* w : {"getattr", "lookup", "open-read", "randread", "seqread", "metadata"}) {
    run_ok(dev_, w, {"--depth", "4"});
  }
  // Writes are read back after the run: every written block, every page's
  // stamp (offset and run) and filler.
  for (const char* w : {"randwrite", "seqwrite"}) {
    const std::string json = run_ok(dev_, w, {"--depth", "4"});
    EXPECT_NE(json_field(json, "verified").find("read back and verified"), std::string::npos)
        << json;
    EXPECT_GT(json_number(json, "mb_per_s"), 0) << json;
  }
  // 1 MiB sequential, the largest READ/WRITE dpfs allows.
  run_ok(dev_, "seqwrite", {"--block-size", "1M", "--depth", "2"});
  run_ok(dev_, "seqread", {"--block-size", "1M", "--depth", "2"});
  EXPECT_EQ(dev_.check_alive(), "");
}

// Both sides polling, two dpfs workers: a worker paused by the control
// thread while polling (queues being set up) must poll again afterwards --
// sleeping with kicks switched off (VRING_USED_F_NO_NOTIFY) left the second
// queue unserved before the fix.
TEST_F(BenchTest, SeveralQueuesAndThreadsPolling) {
  ASSERT_NO_FATAL_FAILURE(start_dpfs({"--poll"}, 2));
  const std::string json =
      run_ok(dev_, "getattr", {"--queues", "2", "--threads", "2", "--depth", "16", "--poll"});
  EXPECT_EQ(json_field(json, "request_queues"), "2") << json;
  // Both queues were served.
  const std::string log = stats_in_log(dev_, "queue 2 (requests): ");
  EXPECT_EQ(log.find("queue 1 (requests): 0 requests"), std::string::npos) << log;
  EXPECT_EQ(log.find("queue 2 (requests): 0 requests"), std::string::npos) << log;
  EXPECT_NE(log.find("queue 2 (requests): "), std::string::npos) << log;
}

// The numbers of the statistics line "queue 1 (requests): N requests, E
// errors, ..., K kicks, ...": {N, K}, or {-1, -1}.
std::pair<long, long> requests_and_kicks(const std::string& log) {
  const size_t at = log.rfind("queue 1 (requests): ");
  if (at == std::string::npos) return {-1, -1};
  const std::string line = log.substr(at, log.find('\n', at) - at);
  const size_t kicks = line.find(" kicks");
  if (kicks == std::string::npos) return {-1, -1};
  const size_t start = line.rfind(' ', kicks - 1) + 1;
  return {std::stol(line.substr(line.find(": ") + 2)),
          std::stol(line.substr(start, kicks - start))};
}

// Adaptive polling: a worker woken by a kick polls on, kicks off, while
// requests keep coming within its budget -- one request at a time, each
// sent as the last is answered, needs almost no kick after the first.
// Without a budget the same run takes a kick for a good share of its
// requests (how many depends on how fast the device is: one that finds the
// next request when it re-checks its ring before sleeping needs no kick for
// it), several times the share with one.
TEST_F(BenchTest, AdaptivePollingTakesRequestsWithoutKicks) {
  // The largest budget (10 ms): a busy machine may delay the driver by a
  // few milliseconds now and then.
  ASSERT_NO_FATAL_FAILURE(start_dpfs({"--poll-budget", "10000"}, 1));
  const std::string polled = run_ok(dev_, "getattr", {"--depth", "1"});
  const auto [requests, kicks] = requests_and_kicks(stats_in_log(dev_));
  ASSERT_GT(requests, 100) << polled;
  EXPECT_LT(kicks * 4, requests) << "kicks " << kicks << " for " << requests << " requests";
  dev_.stop();

  ASSERT_NO_FATAL_FAILURE(start_dpfs({"--poll-budget", "0"}, 1));
  const std::string slept = run_ok(dev_, "getattr", {"--depth", "1"});
  const auto [requests0, kicks0] = requests_and_kicks(stats_in_log(dev_));
  ASSERT_GT(requests0, 100) << slept;
  // kicks0 / requests0 > 4 * kicks / requests, without dividing.
  EXPECT_GT(double(kicks0) * double(requests), 4.0 * double(kicks + 1) * double(requests0))
      << "without a budget: " << kicks0 << " kicks for " << requests0
      << " requests; with one: " << kicks << " for " << requests;
}

// `backend` behind a vhost-user device with one worker, busy-polling or not.
void start_one_worker(DeviceProcess& dev, const std::string& backend, bool poll,
                      const std::vector<std::string>& more = {}) {
  std::vector<std::string> args{dpfs_binary(),  "serve",      "--backend", backend,
                                "--vhost-user", dev.socket(), "--threads", "1"};
  if (poll) args.push_back("--poll");
  args.insert(args.end(), more.begin(), more.end());
  ASSERT_EQ(dev.start(args), "");
}

// Random 4k writes at depth 32, read back and verified, then random reads:
// the two runs' JSON.
std::pair<std::string, std::string> write_then_read_at_depth_32(const DeviceProcess& dev) {
  std::string wrote = run_ok(dev, "randwrite", {"--depth", "32"});
  EXPECT_NE(json_field(wrote, "verified").find("read back and verified"), std::string::npos)
      << wrote;
  return {std::move(wrote), run_ok(dev, "randread", {"--depth", "32"})};
}

// The passthrough backend on one worker, at depth 32, every READ and WRITE
// through io_uring (`always`): random writes (read back and verified) and
// random reads (every page's stamp checked), whose submissions must batch --
// one io_uring_enter per request would mean the worker starts each
// request's I/O on its own. Event-driven worker and busy-polling worker.
class BenchPassthroughTest : public ::testing::TestWithParam<bool> {};

TEST_P(BenchPassthroughTest, DepthThirtyTwoBatchesIoUringSubmissions) {
  const bool poll = GetParam();
  DeviceProcess dev;
  const std::string share = dev.dir() + "/share";
  ASSERT_EQ(::mkdir(share.c_str(), 0755), 0) << errname(errno);
  ASSERT_NO_FATAL_FAILURE(
      start_one_worker(dev, "passthrough:" + share, poll, {"--passthrough-io-uring", "always"}));
  const auto [wrote, read] = write_then_read_at_depth_32(dev);
  const std::string log = stats_in_log(dev);
  const UringCounters c = last_uring_counters(log);
  // Every READ and WRITE went through the ring (warm-up ops included).
  EXPECT_GE(double(c.ops), json_number(wrote, "ops") + json_number(read, "ops")) << log;
  EXPECT_GT(c.submits, 0) << log;
  EXPECT_GE(double(c.ops), 2.0 * double(c.submits))
      << "fewer than 2 operations per io_uring_enter at depth 32; log:\n"
      << log;
  EXPECT_NE(log.find("1 worker rings, 0 fallback rings"), std::string::npos) << log;
  EXPECT_EQ(dev.check_alive(), "");
}

INSTANTIATE_TEST_SUITE_P(Workers, BenchPassthroughTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Polling" : "EventDriven"; });

// The NFS backend behind a vhost-user device with one worker, at depth 32:
// the worker drives its NFS connection from its own event loop (no loop
// thread: the RPCs of a batch go out at its end, the answers are read and
// the tenant's buffers filled on the worker), event-driven and busy-polling.
// Writes are read back and verified, reads checked page by page.
class BenchNfsTest : public ::testing::TestWithParam<bool> {};

TEST_P(BenchNfsTest, WorkerDrivesItsConnection) {
  const bool poll = GetParam();
  std::string problem = environment_problem();
  ASSERT_TRUE(problem.empty()) << problem;
  NfsServer& server = NfsServer::shared(&problem);
  ASSERT_TRUE(problem.empty()) << problem;
  const std::string dir = server.fresh_dir(poll ? "bench-poll" : "bench-event");
  ASSERT_FALSE(dir.empty());
  DeviceProcess dev;
  ASSERT_NO_FATAL_FAILURE(start_one_worker(dev, NfsServer::url(dir, 3), poll));
  const auto [wrote, read] = write_then_read_at_depth_32(dev);
  // (In the device's own process, the supervisor's child.)
  const pid_t serving = served_by(dev.log(), "vhost-user ");
  ASSERT_GT(serving, 0) << dev.log();
  EXPECT_GE(threads_named(serving, "dpfs").size(), 2u) << "no workers: the wrong process?";
  EXPECT_EQ(threads_named(serving, "dpfs-nfs-"), std::vector<std::string>{})
      << "a loop thread between the worker and its connection";
  const std::string log = stats_in_log(dev);
  const size_t at = log.rfind("nfs connection 0: driven by a worker, ");
  ASSERT_NE(at, std::string::npos) << log;
  const double rpcs =
      std::stod(log.substr(at + std::string("nfs connection 0: driven by a worker, ").size()));
  EXPECT_GE(rpcs, json_number(wrote, "ops") + json_number(read, "ops")) << log;
  EXPECT_EQ(dev.check_alive(), "");
}

INSTANTIATE_TEST_SUITE_P(Workers, BenchNfsTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "Polling" : "EventDriven"; });

TEST_F(BenchTest, TableAndUsageErrors) {
  ASSERT_NO_FATAL_FAILURE(start_dpfs());
  RunResult r = run(bench_args(dev_, {"--duration", "0.1", "--warmup", "0", "--label", "dpfs"}));
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("dpfs: getattr on " + dev_.socket()), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("p99.9 us"), std::string::npos) << r.out;

  r = run(bench_args(dev_, {"--workload", "nonsense"}));
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_NE(r.err.find("unknown workload nonsense"), std::string::npos) << r.describe();

  r = run({DPFS_BENCH, "--socket", dev_.dir() + "/nothing.sock"});
  EXPECT_EQ(r.exit_code(), 2) << r.describe();
  EXPECT_NE(r.err.find("cannot connect"), std::string::npos) << r.describe();
}

// What dpfs must log for each hostile case ("" for cases it simply serves).
struct HostileExpectation {
  const char* name;
  const char* log_line;
};

class BenchHostileTest : public BenchTest,
                         public ::testing::WithParamInterface<HostileExpectation> {};

TEST_P(BenchHostileTest, DeviceSurvivesAndReports) {
  ASSERT_NO_FATAL_FAILURE(start_dpfs());
  const HostileExpectation& c = GetParam();
  const size_t log_before = dev_.log().size();
  const RunResult r = run(bench_args(dev_, {"--hostile", c.name}), 30s);
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find(std::string("hostile ") + c.name + ": ok"), std::string::npos)
      << r.describe();
  EXPECT_NE(r.out.find("a new connection was served"), std::string::npos) << r.describe();
  ASSERT_EQ(dev_.check_alive(), "");
  const std::string log = dev_.log().substr(log_before);
  if (*c.log_line) {
    EXPECT_NE(log.find(c.log_line), std::string::npos) << log;
  }
  // And it goes on serving real work.
  run_ok(dev_, "getattr");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BenchHostileTest,
    ::testing::Values(HostileExpectation{"loop", "queue 2 is broken"},
                      HostileExpectation{"outside-memory", "queue 2 is broken"},
                      HostileExpectation{"crosses-end", "queue 2 is broken"},
                      HostileExpectation{"bad-next", "queue 2 is broken"},
                      HostileExpectation{"bad-head", "queue 2 is broken"},
                      HostileExpectation{"wrapped-index", "queue 2 is broken"},
                      HostileExpectation{"readable-after-writable", "queue 2 is broken"},
                      HostileExpectation{"indirect", "queue 2 is broken"},
                      HostileExpectation{"duplicate-head", ""},
                      HostileExpectation{"shrink-memory", "guest memory faulted"},
                      HostileExpectation{"truncated-header", "cannot hold a request header"},
                      HostileExpectation{"oversized-header", "header says 1048576 bytes"},
                      HostileExpectation{"short-length", "malformed FUSE request"},
                      HostileExpectation{"lying-write", "malformed FUSE request"},
                      HostileExpectation{"tiny-reply-buffer", "cannot hold a reply header"},
                      HostileExpectation{"unknown-opcode", ""},
                      HostileExpectation{"kick-storm", ""},
                      HostileExpectation{"vanish", "front-end gone"}),
    [](const auto& info) {
      std::string n = info.param.name;
      std::replace(n.begin(), n.end(), '-', '_');
      return n;
    });

// The race cases (tools/dpfs_bench/race.h): a second front-end thread
// rewrites names, header fields, sizes and descriptors of requests in
// flight. On passthrough the export is DIR/race/export and the tree `..`
// reaches from its root, DIR/race, must not change: dpfs-bench checks it
// after every batch of answers, and this test checks it again on its own
// (names, types, sizes, contents). On memfs there is no outside: the device
// must survive and serve no name with a '/'.
constexpr const char* kRaceCases[] = {
    "race-mkdir",  "race-create", "race-mknod",  "race-symlink", "race-link",       "race-unlink",
    "race-rename", "race-xattr",  "race-header", "race-sizes",   "race-descriptors"};

// Every entry under `root` but the export: path -> type, size and content.
std::map<std::string, std::string> host_tree(const std::filesystem::path& root,
                                             const std::filesystem::path& skip) {
  namespace fs = std::filesystem;
  std::map<std::string, std::string> tree;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
       ++it) {
    if (it->path() == skip) {
      it.disable_recursion_pending();
      continue;
    }
    const auto status = it->symlink_status();
    std::string what = std::to_string(int(status.type()));
    if (status.type() == fs::file_type::regular) what += ":" + read_text_file(it->path());
    if (status.type() == fs::file_type::symlink)
      what += ":" + fs::read_symlink(it->path()).string();
    tree[fs::relative(it->path(), root).string()] = what;
  }
  return tree;
}

class BenchRaceTest
    : public ::testing::TestWithParam<std::tuple<const char* /*backend*/, const char* /*case*/>> {};

TEST_P(BenchRaceTest, NothingEscapesAndTheDeviceServesOn) {
  const std::string backend = std::get<0>(GetParam());
  const std::string name = std::get<1>(GetParam());
  DeviceProcess dev;
  const std::string outside = dev.dir() + "/race";
  const std::string share = outside + "/export";
  ASSERT_EQ(::mkdir(outside.c_str(), 0755), 0) << errname(errno);
  ASSERT_EQ(::mkdir(share.c_str(), 0755), 0) << errname(errno);
  // What a host keeps beside an export, and the canaries dpfs-bench aims at
  // (planted here, so that the test's own listing covers them).
  ASSERT_EQ(::mkdir((outside + "/host-dir").c_str(), 0700), 0);
  ASSERT_EQ(::mkdir((outside + "/race-canary-dir").c_str(), 0755), 0);
  for (const char* f : {"host-dir/secret", "race-canary-file", "race-canary-move"}) {
    std::ofstream(outside + "/" + f) << f << ": outside the export\n";
  }
  const auto before = host_tree(outside, share);
  const bool passthrough = backend == "passthrough";
  std::vector<std::string> args{dpfs_binary(),      "serve",
                                "--backend",        passthrough ? "passthrough:" + share : "memfs",
                                "--vhost-user",     dev.socket(),
                                "--request-queues", "2",
                                "--threads",        "2"};
  // race-xattr checks that a uid-1000 tenant never gets a trusted.* name
  // past the backend's own check; with the default policy the session would
  // refuse and hide trusted.* before the backend saw it.
  for (const char* a : {"--xattr-namespaces", "user,trusted"}) args.push_back(a);
  ASSERT_EQ(dev.start(args), "");
  // The socket file exists from bind(); wait for listen() too.
  for (int i = 0;; ++i) {
    const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", dev.socket().c_str());
    const int connected = ::connect(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    const int err = errno;
    ::close(s);
    if (connected == 0) break;
    errno = err;
    ASSERT_LT(i, 500) << "the device does not listen on " << dev.socket() << ": " << errname(errno);
    std::this_thread::sleep_for(10ms);
  }
  std::vector<std::string> bench{"--hostile", name, "--race-seconds", "0.5"};
  if (passthrough) {
    for (const std::string& a :
         {std::string("--export-dir"), share, std::string("--outside"), outside}) {
      bench.push_back(a);
    }
  }
  const RunResult r = run(bench_args(dev, bench), 60s);
  EXPECT_EQ(r.exit_code(), 0) << r.describe();
  EXPECT_NE(r.out.find("hostile " + name + ": ok"), std::string::npos) << r.describe();
  EXPECT_NE(r.out.find("a new connection was served"), std::string::npos) << r.describe();
  if (passthrough) {
    EXPECT_NE(r.out.find("nothing changed outside " + outside), std::string::npos) << r.describe();
  }
  EXPECT_EQ(host_tree(outside, share), before) << "the tree beside the export changed";
  ASSERT_EQ(dev.check_alive(), "");
  run_ok(dev, "getattr");
}

INSTANTIATE_TEST_SUITE_P(Cases, BenchRaceTest,
                         ::testing::Combine(::testing::Values("passthrough", "memfs"),
                                            ::testing::ValuesIn(kRaceCases)),
                         [](const auto& info) {
                           std::string n =
                               std::string(std::get<0>(info.param)) + "_" + std::get<1>(info.param);
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

// Every case the tool knows is in one of the lists above.
TEST(BenchHostileList, AllCasesCovered) {
  const RunResult r = run({DPFS_BENCH, "--list-hostile"});
  ASSERT_EQ(r.exit_code(), 0) << r.describe();
  const auto lines = lines_of(r.out);
  EXPECT_EQ(lines.size(), 18u + std::size(kRaceCases)) << r.out;
  for (const char* c : kRaceCases) {
    EXPECT_NE(r.out.find(std::string(c) + " "), std::string::npos) << c << " not listed:\n"
                                                                   << r.out;
  }
}

// The same driver against QEMU's virtiofsd: set-up, INIT, reads and writes
// read back, and the device's CPU found in its sandboxed child.
TEST(BenchVirtiofsd, WorksUnchanged) {
  DeviceProcess dev;
  ASSERT_EQ(::access(kVirtiofsd, X_OK), 0)
      << kVirtiofsd << " is missing: apt-get install qemu-system-common";
  const std::string share = dev.dir() + "/share";
  ASSERT_EQ(::mkdir(share.c_str(), 0755), 0);
  ASSERT_EQ(dev.start({kVirtiofsd, "--socket-path=" + dev.socket(), "-o", "source=" + share, "-o",
                       "cache=none"},
                      "Waiting for vhost-user socket connection"),
            "");
  const std::string json = run_ok(dev, "randwrite", {"--depth", "4"});
  EXPECT_NE(json_field(json, "verified").find("read back and verified"), std::string::npos) << json;
  EXPECT_GT(json_number(json, "device_cpu_us_per_op"), 0) << json;
}

// The supervisor (src/daemon/supervisor.h): two memfs devices, each served
// by a sandboxed process of its own. One is killed as a memory bug would
// kill it while the other serves a run; the other does not notice, the
// killed one is started again on its socket and serves the next front-end.
class SupervisorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    other_ = dev_.dir() + "/b.sock";
    config_ = dev_.dir() + "/dpfs.toml";
    std::ofstream(config_) << "[[device]]\nsocket = \"" << dev_.socket()
                           << "\"\ntag = \"a\"\n[device.backend]\ntype = \"memfs\"\n"
                           << "[[device]]\nsocket = \"" << other_
                           << "\"\ntag = \"b\"\n[device.backend]\ntype = \"memfs\"\n";
  }

  // The process the log last named for `tag`'s device; -1 if none.
  pid_t served_by(const std::string& tag) const {
    return itest::served_by(dev_.log(), "vhost-user " + tag + " (");
  }
  // Waits up to 10 s for `tag`'s device to be served by a process other
  // than `old`, and for that process to serve; its pid, or -1.
  pid_t wait_served(const std::string& tag, pid_t old = -1) const {
    for (int i = 0; i < 1000; ++i) {
      const pid_t pid = served_by(tag);
      if (pid > 0 && pid != old && ::kill(pid, 0) == 0) {
        // Serving once its sandbox is entered: seccomp mode 2.
        if (read_text_file("/proc/" + std::to_string(pid) + "/status").find("Seccomp:\t2") !=
            std::string::npos) {
          return pid;
        }
      }
      std::this_thread::sleep_for(10ms);
    }
    return -1;
  }

  DeviceProcess dev_;
  std::string other_, config_;
};

TEST_F(SupervisorTest, ACrashedDeviceProcessCostsOneTenant) {
  const std::string stats = dev_.dir() + "/stats.sock";
  ASSERT_EQ(dev_.start({dpfs_binary(), "serve", "--config", config_, "--stats-socket", stats}), "");
  const pid_t a = wait_served("a"), b = wait_served("b");
  ASSERT_GT(a, 0) << dev_.log();
  ASSERT_GT(b, 0) << dev_.log();
  EXPECT_NE(a, b);
  EXPECT_NE(a, dev_.pid());
  // Neither holds the other's listening socket: its inode is not among
  // the other process's descriptors.
  auto socket_inode = [](const std::string& path) {
    for (const std::string& line : lines_of(read_text_file("/proc/net/unix"))) {
      if (line.size() > path.size() && line.ends_with(" " + path)) {
        std::istringstream f(line);
        std::string field;
        for (int i = 0; i < 7; ++i) f >> field;
        return "socket:[" + field + "]";
      }
    }
    return std::string("(no socket " + path + ")");
  };
  auto holds = [](pid_t pid, const std::string& link) {
    std::error_code ec;
    for (const auto& e :
         std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
      if (std::filesystem::read_symlink(e.path(), ec).string() == link) return true;
    }
    return false;
  };
  const std::string a_socket = socket_inode(dev_.socket()), b_socket = socket_inode(other_);
  EXPECT_TRUE(holds(a, a_socket)) << a_socket;
  EXPECT_FALSE(holds(a, b_socket)) << b_socket;
  EXPECT_TRUE(holds(b, b_socket)) << b_socket;
  EXPECT_FALSE(holds(b, a_socket)) << a_socket;

  run_ok(dev_, "getattr", {"--depth", "4"});
  // b serves a 2 s run; once it is under way (b's process is using CPU),
  // a's process dies as a memory bug would kill it.
  RunResult b_run;
  std::thread runner([&] {
    b_run = run({DPFS_BENCH, "--socket", other_, "--workload", "randwrite", "--depth", "4",
                 "--duration", "2", "--warmup", "0", "--file-size", "1M", "--json"},
                30s);
  });
  const long before = cpu_ticks(b);
  for (int i = 0; i < 500 && cpu_ticks(b) < before + 5; ++i) std::this_thread::sleep_for(10ms);
  ASSERT_EQ(::kill(a, SIGSEGV), 0);
  runner.join();
  EXPECT_EQ(b_run.exit_code(), 0) << b_run.describe();
  EXPECT_GT(json_number(b_run.out, "ops"), 0) << b_run.out;
  EXPECT_EQ(json_field(b_run.out, "errors"), "0") << b_run.out;
  EXPECT_NE(json_field(b_run.out, "verified").find("read back and verified"), std::string::npos)
      << b_run.out;
  EXPECT_EQ(served_by("b"), b) << "b's process was never replaced";
  EXPECT_EQ(::kill(b, 0), 0) << "b's process is gone";

  // a's crash is one line, and a new process serves a's socket.
  const pid_t a2 = wait_served("a", a);
  ASSERT_GT(a2, 0) << dev_.log();
  // (SIGSEGV; SIGABRT in a sanitized build, whose runtime reports it.)
  EXPECT_NE(crash_line(dev_.log())
                .find("vhost-user a (" + dev_.socket() + "): serving process " + std::to_string(a) +
                      " died of SIG"),
            std::string::npos)
      << dev_.log();
  run_ok(dev_, "getattr", {"--depth", "4"});

  // Statistics come from both processes, through the supervisor.
  const RunResult st = run({dpfs_binary(), "stats", stats});
  ASSERT_EQ(st.exit_code(), 0) << st.describe();
  for (const std::string& socket : {dev_.socket(), other_}) {
    EXPECT_NE(st.out.find("(" + socket + "): queue 1 (requests): "), std::string::npos) << st.out;
  }
  // SIGTERM: both stop, the supervisor removes the socket files and says
  // (exit 1) that a process crashed.
  ASSERT_EQ(::kill(dev_.pid(), SIGTERM), 0);
  const int status = dev_.wait_exit();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status << "\n" << dev_.log();
  EXPECT_EQ(::access(dev_.socket().c_str(), F_OK), -1);
  EXPECT_EQ(::access(other_.c_str(), F_OK), -1);
  EXPECT_EQ(::kill(a2, 0), -1) << "a's process outlived the supervisor";
  EXPECT_EQ(::kill(b, 0), -1) << "b's process outlived the supervisor";
}

// A device process killed (SIGKILL) twice under a front-end that keeps
// reading: the supervisor keeps the front-end's connection, the set-up
// journal and the rings' records, and each new process replays the one,
// resumes the others and restores the FUSE session (docs/restart.md). The
// front-end sees no closed connection, no error and no request lost or
// answered twice (dpfs-bench checks every used entry it gets against
// what it has in flight). The null backend: nothing of it dies with the
// process.
TEST_F(SupervisorTest, AKilledDeviceProcessIsReplacedUnderItsFrontEnd) {
  std::ofstream(config_) << "[[device]]\nsocket = \"" << dev_.socket()
                         << "\"\ntag = \"a\"\n[device.backend]\ntype = \"null\"\n";
  const std::string stats = dev_.dir() + "/stats.sock";
  ASSERT_EQ(dev_.start({dpfs_binary(), "serve", "--config", config_, "--stats-socket", stats}), "");
  pid_t a = wait_served("a");
  ASSERT_GT(a, 0) << dev_.log();
  EXPECT_NE(run({dpfs_binary(), "stats", stats}).out.find("no front-end connection to keep"),
            std::string::npos);
  RunResult run_result;
  std::thread runner([&] {
    run_result = run({DPFS_BENCH, "--socket", dev_.socket(), "--workload", "randread", "--depth",
                      "8", "--duration", "3", "--warmup", "0", "--json"},
                     60s);
  });
  for (int kill = 0; kill < 2; ++kill) {
    // Under way: the device process is using CPU.
    const long before = cpu_ticks(a);
    for (int i = 0; i < 500 && cpu_ticks(a) < before + 10; ++i) std::this_thread::sleep_for(10ms);
    if (kill == 0) {
      const std::string during = run({dpfs_binary(), "stats", stats}).out;
      EXPECT_NE(during.find("front-end connection kept for a successor ("), std::string::npos)
          << during;
    }
    ASSERT_EQ(::kill(a, SIGKILL), 0);
    const pid_t next = wait_served("a", a);
    ASSERT_GT(next, 0) << dev_.log();
    a = next;
  }
  runner.join();
  EXPECT_EQ(run_result.exit_code(), 0) << run_result.describe() << "\n" << dev_.log();
  EXPECT_GT(json_number(run_result.out, "ops"), 0) << run_result.out;
  EXPECT_EQ(json_field(run_result.out, "errors"), "0") << run_result.out;
  const std::string log = dev_.log();
  size_t taken = 0;
  for (size_t at = 0;
       (at = log.find("took the front-end connection over", at)) != std::string::npos; ++at) {
    ++taken;
  }
  EXPECT_EQ(taken, 2u) << log;
  EXPECT_NE(log.find("the FUSE session restored"), std::string::npos) << log;
  EXPECT_EQ(log.find("lost its connection"), std::string::npos) << log;
  // It serves on, and stops cleanly (exit 1: processes crashed).
  run_ok(dev_, "getattr", {"--depth", "4"});
  ASSERT_EQ(::kill(dev_.pid(), SIGTERM), 0);
  const int status = dev_.wait_exit();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1) << status << "\n" << dev_.log();
}

}  // namespace
}  // namespace dpfs::itest
