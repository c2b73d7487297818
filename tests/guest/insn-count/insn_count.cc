// A QEMU TCG plugin that counts the guest instructions executed, split into
// kernel and user mode, and writes the counts to a file each time the guest
// executes a marker instruction (mark.cc), so a guest workload can bracket a
// job with two marks and the difference is what the job cost the guest.
//
//   qemu-system-x86_64 -plugin PATH/dpfs-insn-count.so,out=FILE[,cpu=NAME:PID]...
//
// FILE gets one line when the plugin is installed, one per executed marker,
// one at QEMU's exit:
//
//   insn-count api=1 vcpus=N mode=inline|callback
//   mark SEQ insns=TOTAL kernel=K user=U ns=MONOTONIC_NS [NAME=CPU_NS]...
//   exit insns=TOTAL kernel=K user=U
//
// SEQ counts the marks from 0. NAME=CPU_NS is the host CPU time (ns, from
// /proc/PID/task/*/schedstat) of the process PID and all its descendants,
// read while the marking vCPU waits: e.g. the vhost-user daemon and the NFS
// server, so a job's device and server CPU come from the same two instants as
// its guest instruction count (virtiofsd serves from a child it forks after
// QEMU connects: the descendants are why).
//
// Counting: each translated block adds its instruction count when it starts
// executing (an inline add with one vCPU, exact; a callback into per-vCPU
// counters with several, whose totals are read unsynchronised at a mark). A
// block is kernel mode when its address is in the upper half of the x86-64
// address space. A block that an exception leaves early still counts whole:
// the error is a few instructions per fault, far under a per-I/O cost of
// thousands.
#include <dirent.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "qemu_plugin_api.h"

extern "C" {
QEMU_PLUGIN_EXPORT int qemu_plugin_version = kQemuPluginApiVersion;
QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* info, int argc,
                                           char** argv);
}

namespace {

// The marker: `nopl 0x53465044(%rax)` ("DPFS" as the displacement): a
// multi-byte no-op no compiler emits with that displacement. mark.cc
// executes it.
constexpr std::array<unsigned char, 7> kMarker = {0x0f, 0x1f, 0x80, 0x44, 0x50, 0x46, 0x53};

// One vCPU: counters the inline add updates in place.
uint64_t g_kernel = 0;
uint64_t g_user = 0;

// Several vCPUs: one pair per vCPU, updated by that vCPU's thread only.
struct alignas(64) VcpuCount {
  std::atomic<uint64_t> kernel{0};
  std::atomic<uint64_t> user{0};
};
std::unique_ptr<VcpuCount[]> g_vcpus;
int g_n_vcpus = 1;

struct Watched {
  std::string name;
  long pid;
};
std::vector<Watched> g_watched;

FILE* g_out = nullptr;
uint64_t g_marks = 0;  // only the marking vCPU writes it (one marker at a time)

struct Totals {
  uint64_t kernel = 0;
  uint64_t user = 0;
};

Totals totals() {
  if (!g_vcpus) return {g_kernel, g_user};
  Totals t;
  for (int i = 0; i < g_n_vcpus; ++i) {
    t.kernel += g_vcpus[i].kernel.load(std::memory_order_relaxed);
    t.user += g_vcpus[i].user.load(std::memory_order_relaxed);
  }
  return t;
}

// The first number in FILE (0 if it cannot be read).
uint64_t read_first_number(const std::string& path) {
  FILE* f = std::fopen(path.c_str(), "re");
  if (f == nullptr) return 0;
  unsigned long long v = 0;
  if (std::fscanf(f, "%llu", &v) != 1) v = 0;
  std::fclose(f);
  return v;
}

// CPU time (ns) of `pid`'s threads and, recursively, of its children's.
// Threads and processes that exited are not counted: the daemons measured
// here keep theirs for the whole run.
uint64_t tree_cpu_ns(long pid, int depth = 0) {
  if (depth > 8) return 0;
  const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = ::opendir(task_dir.c_str());
  if (dir == nullptr) return 0;
  uint64_t ns = 0;
  std::vector<long> children;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const std::string task = task_dir + "/" + e->d_name;
    ns += read_first_number(task + "/schedstat");
    if (FILE* f = std::fopen((task + "/children").c_str(), "re")) {
      long child = 0;
      while (std::fscanf(f, "%ld", &child) == 1) children.push_back(child);
      std::fclose(f);
    }
  }
  ::closedir(dir);
  for (long child : children) ns += tree_cpu_ns(child, depth + 1);
  return ns;
}

void on_mark(unsigned int /*vcpu_index*/, void* /*userdata*/) {
  const Totals t = totals();
  timespec now{};
  ::clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t ns = static_cast<uint64_t>(now.tv_sec) * 1000000000u + now.tv_nsec;
  std::string cpu;
  for (const Watched& w : g_watched) {
    cpu += " " + w.name + "=" + std::to_string(tree_cpu_ns(w.pid));
  }
  std::fprintf(g_out,
               "mark %" PRIu64 " insns=%" PRIu64 " kernel=%" PRIu64 " user=%" PRIu64 " ns=%" PRIu64
               "%s\n",
               g_marks++, t.kernel + t.user, t.kernel, t.user, ns, cpu.c_str());
  std::fflush(g_out);
}

void on_tb_exec(unsigned int vcpu_index, void* userdata) {
  // userdata: the block's instruction count << 1 | kernel mode
  const auto v = reinterpret_cast<uintptr_t>(userdata);
  VcpuCount& c = g_vcpus[std::min<unsigned>(vcpu_index, g_n_vcpus - 1)];
  auto& counter = (v & 1) != 0 ? c.kernel : c.user;
  counter.store(counter.load(std::memory_order_relaxed) + (v >> 1), std::memory_order_relaxed);
}

void on_tb_translate(qemu_plugin_id_t /*id*/, qemu_plugin_tb* tb) {
  const size_t n = qemu_plugin_tb_n_insns(tb);
  const bool kernel = (qemu_plugin_tb_vaddr(tb) >> 63) != 0;
  if (g_vcpus) {
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
                                         reinterpret_cast<void*>((n << 1) | (kernel ? 1 : 0)));
  } else {
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                             kernel ? &g_kernel : &g_user, n);
  }
  if (kernel) return;  // the marker runs in user mode
  for (size_t i = 0; i < n; ++i) {
    qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
    if (qemu_plugin_insn_size(insn) == kMarker.size() &&
        std::memcmp(qemu_plugin_insn_data(insn), kMarker.data(), kMarker.size()) == 0) {
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_mark, QEMU_PLUGIN_CB_NO_REGS, nullptr);
    }
  }
}

void on_exit(qemu_plugin_id_t /*id*/, void* /*userdata*/) {
  const Totals t = totals();
  std::fprintf(g_out, "exit insns=%" PRIu64 " kernel=%" PRIu64 " user=%" PRIu64 "\n",
               t.kernel + t.user, t.kernel, t.user);
  std::fclose(g_out);
  g_out = nullptr;
}

// Refuses to load with one line on QEMU's log.
int refuse(const std::string& why) {
  qemu_plugin_outs(("dpfs-insn-count: " + why + "\n").c_str());
  return -1;
}

}  // namespace

int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t* /*info*/, int argc, char** argv) {
  std::string out;
  for (int i = 0; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg.starts_with("out=")) {
      out = arg.substr(4);
    } else if (arg.starts_with("cpu=")) {
      // cpu=NAME:PID
      const std::string_view v = arg.substr(4);
      const size_t colon = v.rfind(':');
      char* end = nullptr;
      const std::string pid_text(colon == std::string_view::npos ? "" : v.substr(colon + 1));
      const long pid = std::strtol(pid_text.c_str(), &end, 10);
      if (colon == 0 || colon == std::string_view::npos || pid <= 0 || *end != '\0') {
        return refuse("cpu= wants NAME:PID, not " + std::string(v));
      }
      g_watched.push_back({std::string(v.substr(0, colon)), pid});
    } else {
      return refuse("unknown argument " + std::string(arg) + " (out=FILE, cpu=NAME:PID)");
    }
  }
  if (out.empty()) return refuse("out=FILE is required");
  g_out = std::fopen(out.c_str(), "ae");
  if (g_out == nullptr) return refuse("cannot open " + out + ": " + std::strerror(errno));

  g_n_vcpus = std::max(1, qemu_plugin_n_max_vcpus());
  if (g_n_vcpus > 1) g_vcpus = std::make_unique<VcpuCount[]>(g_n_vcpus);
  std::fprintf(g_out, "insn-count api=%d vcpus=%d mode=%s\n", kQemuPluginApiVersion, g_n_vcpus,
               g_vcpus ? "callback" : "inline");
  std::fflush(g_out);

  qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb_translate);
  qemu_plugin_register_atexit_cb(id, on_exit, nullptr);
  return 0;
}
