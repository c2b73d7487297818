// dpfs-bench: a userspace virtio-fs driver that drives any vhost-user-fs
// device (dpfs, QEMU's virtiofsd) the way a guest kernel would, to measure
// the device alone and to send it what no well-behaved kernel sends.
//
//   dpfs-bench --socket SOCK --workload getattr --depth 32 --duration 5 --json
//   dpfs-bench --socket SOCK --hostile all
//   dpfs-bench --socket SOCK --hostile race --export-dir DIR/export --outside DIR
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <stdexcept>

#include "device.h"
#include "engine.h"
#include "hostile.h"
#include "report.h"
#include "util/size.h"
#include "workloads.h"

namespace {

// "4K", "128K", "1M", "64M", "2G" or plain bytes.
uint64_t parse_size(const std::string& text) {
  uint64_t bytes = 0;
  if (dpfs::util::parse_size(text, &bytes) != dpfs::util::SizeParse::kOk) {
    throw std::invalid_argument("size " + text + ": use a number with K, M or G");
  }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace dpfs::bench;
  CLI::App app(
      "dpfs-bench drives a virtio-fs device over vhost-user (the role QEMU and a guest kernel "
      "play): it shares memory, sets up the hiprio queue and N request queues, sends FUSE_INIT, "
      "then keeps DEPTH FUSE requests in flight per request queue and reports ops/s, MB/s, "
      "latency and CPU per op. Works with dpfs and QEMU's virtiofsd alike.",
      "dpfs-bench");
  std::string socket, workload_name = "getattr", hostile, label = "device";
  std::string file_size = "64M", block_size;
  uint32_t depth = 1, queues = 1, files = 1000;
  unsigned threads = 1;
  double duration = 5, warmup = 1;
  bool poll = false, json = false, no_verify = false, list = false;
  pid_t device_pid = 0;
  dpfs::bench::HostileOptions hostile_options;

  std::string names;
  for (const auto& n : workload_names()) names += (names.empty() ? "" : ", ") + n;
  app.add_option("--socket", socket, "the device's vhost-user socket")->required();
  app.add_option(
      "--workload", workload_name,
      "what to send (default getattr): " + names +
          ". getattr: GETATTR of the root (a no-op round trip); lookup: LOOKUP, GETATTR, "
          "FORGET over --files names; open-read: OPEN, 4K READ, RELEASE; randread/randwrite: "
          "random blocks (default 4K); seqread/seqwrite: sequential blocks (default "
          "128K); metadata: CREATE, SETATTR, RELEASE, UNLINK, FORGET. FORGET goes on the "
          "request queue (no reply); every request counts as one op");
  app.add_option("--depth", depth, "requests in flight per request queue, 1..256 (default 1)")
      ->check(CLI::Range(1, 256));
  app.add_option("--queues", queues, "request queues to use, 1..64 (default 1)")
      ->check(CLI::Range(1, 64));
  app.add_option("--threads", threads,
                 "driver threads; request queue i goes to thread (i-1) % threads (default 1)")
      ->check(CLI::Range(1, 64));
  app.add_option("--duration", duration, "seconds measured (default 5)")
      ->check(CLI::Range(0.01, 3600.0));
  app.add_option("--warmup", warmup, "seconds run before measuring (default 1)")
      ->check(CLI::Range(0.0, 600.0));
  app.add_option("--file-size", file_size,
                 "size of the data file the I/O workloads use (default 64M)");
  app.add_option("--block-size", block_size,
                 "bytes per READ/WRITE (default 4K random, 128K sequential)");
  app.add_option("--files", files, "lookup: how many names it creates and looks up (default 1000)");
  app.add_flag("--poll", poll, "spin on the used rings instead of sleeping on call eventfds");
  app.add_option("--device-pid", device_pid, "the device's pid, to report its CPU time per op");
  app.add_option("--label", label, "the device's name in the report (default \"device\")");
  app.add_flag("--json", json, "one JSON object on stdout instead of the table");
  app.add_flag("--no-verify", no_verify, "write workloads: do not read back what was written");
  app.add_option("--hostile", hostile,
                 "instead of a workload, run a hostile case (or \"all\", or \"race\": the "
                 "race-* cases, where a second thread rewrites names, header fields, sizes and "
                 "descriptors of requests in flight) and check that the device survives it; "
                 "--list-hostile names them");
  app.add_option("--export-dir", hostile_options.export_dir,
                 "race cases: the directory a passthrough device exports; names like ../x are "
                 "aimed from its root at --outside");
  app.add_option("--outside", hostile_options.outside,
                 "race cases: a directory outside the export (its parent, say) that must not "
                 "change; dpfs-bench plants canary files in it, records the tree (types, modes, "
                 "owners, sizes, times, contents, xattrs) and fails a case that changes it");
  app.add_option("--race-seconds", hostile_options.race_seconds,
                 "race cases: how long each races at most (default 1)")
      ->check(CLI::Range(0.01, 600.0));
  app.add_flag("--list-hostile", list, "list the hostile cases and exit");
  app.footer(
      "Output: a table (with a progress line on a terminal) or, with --json, the fields ops, "
      "ops_per_s, mb_per_s, lat_mean_us, lat_p50_us, lat_p99_us, lat_p999_us, "
      "driver_cpu_us_per_op, device_cpu_us_per_op (null without --device-pid), errors, "
      "first_error, verified. Exit status 0 only if no request failed.");
  // Listing needs no socket.
  if (std::find(argv + 1, argv + argc, std::string("--list-hostile")) != argv + argc) {
    for (const auto& c : hostile_cases())
      std::printf("%-24s %s\n", c.name.c_str(), c.description.c_str());
    return 0;
  }
  CLI11_PARSE(app, argc, argv);

  try {
    if (!hostile.empty()) {
      const int failed = run_hostile(socket, hostile, hostile_options);
      return failed == 0 ? 0 : 1;
    }
    WorkloadOptions wo;
    wo.file_size = parse_size(file_size);
    wo.block_size = block_size.empty() ? 0 : uint32_t(parse_size(block_size));
    wo.files = files;
    wo.verify = !no_verify;
    auto workload = make_workload(workload_name, wo);
    if (!workload) {
      std::fprintf(stderr, "dpfs-bench: unknown workload %s; use one of: %s\n",
                   workload_name.c_str(), names.c_str());
      return 2;
    }
    DeviceOptions d;
    d.socket = socket;
    d.request_queues = queues;
    d.depth = depth;
    d.data_size = workload->data_size();
    Device device(d);
    workload->prepare(device);

    RunOptions ro;
    ro.threads = threads;
    ro.duration = duration;
    ro.warmup = warmup;
    ro.poll = poll;
    ro.device_pid = device_pid;
    ro.progress = !json && ::isatty(2) && duration >= 2;
    const RunResult r = run_workload(device, *workload, ro);

    RunDescription desc{label,
                        socket,
                        std::string(workload->name()),
                        queues,
                        depth,
                        std::min<unsigned>(threads, queues),
                        workload->data_size(),
                        poll,
                        warmup};
    if (workload->op_bytes() == 0) desc.block_size = 0;
    std::fputs((json ? format_json(desc, r) : format_table(desc, r)).c_str(), stdout);
    return r.errors == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dpfs-bench: %s\n", e.what());
    return 2;
  }
}
