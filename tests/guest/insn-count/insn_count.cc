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
//   mark SEQ insns=TOTAL kernel=K user=U rep=R ns=MONOTONIC_NS [NAME=CPU_NS]...
//   exit insns=TOTAL kernel=K user=U rep=R
//
// SEQ counts the marks from 0. NAME=CPU_NS is the host CPU time (ns; utime +
// stime of /proc/PID/stat, which keeps the time of exited threads, in clock
// ticks: 10 ms) of the process PID and all its descendants, read while the
// marking vCPU waits: e.g. the vhost-user daemon and the NFS server, so a
// job's device and server CPU come from the same two instants as its guest
// instruction count (virtiofsd serves from a child it forks after QEMU
// connects: the descendants are why).
//
// R, of TOTAL: the repeated iterations of rep-prefixed string instructions
// (rep movsb, rep stosq, ...). TCG executes each iteration after the first
// as a block of that one instruction, so TOTAL counts a 4 KiB `rep movsb`
// 4096 times where a CPU's "instructions retired" counts it once (the
// guest kernel copies with rep movsb under -cpu max, which has ERMS/FSRM).
// TOTAL - R is the count a PMU would give.
//
// Counting: each translated block adds its instruction count when it starts
// executing (an inline add with one vCPU, exact; a callback into per-vCPU
// counters with several, whose totals are read unsynchronised at a mark). A
// block is kernel mode when its address is in the upper half of the x86-64
// address space. A block that an exception leaves early still counts whole:
// the error is a few instructions per fault, far under a per-I/O cost of
// thousands.
#include <dirent.h>
#include <unistd.h>

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
uint64_t g_rep = 0;

// Several vCPUs: one pair per vCPU, updated by that vCPU's thread only.
struct alignas(64) VcpuCount {
  std::atomic<uint64_t> kernel{0};
  std::atomic<uint64_t> user{0};
  std::atomic<uint64_t> rep{0};
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
  uint64_t rep = 0;
};

Totals totals() {
  if (!g_vcpus) return {g_kernel, g_user, g_rep};
  Totals t;
  for (int i = 0; i < g_n_vcpus; ++i) {
    t.kernel += g_vcpus[i].kernel.load(std::memory_order_relaxed);
    t.user += g_vcpus[i].user.load(std::memory_order_relaxed);
    t.rep += g_vcpus[i].rep.load(std::memory_order_relaxed);
  }
  return t;
}

// Whether `insn` is a string instruction with a rep/repe/repne prefix
// (Intel SDM vol. 2, "REP/REPE/REPZ/REPNE/REPNZ"): legacy prefixes, then an
// optional REX, then INS, OUTS, MOVS, CMPS, STOS, LODS or SCAS.
bool is_rep_string(const qemu_plugin_insn* insn) {
  const auto* b = static_cast<const unsigned char*>(qemu_plugin_insn_data(insn));
  const size_t n = qemu_plugin_insn_size(insn);
  bool rep = false;
  size_t i = 0;
  for (; i < n; ++i) {
    const unsigned char p = b[i];
    if (p == 0xf2 || p == 0xf3) {
      rep = true;
    } else if (!(p == 0x66 || p == 0x67 || p == 0x2e || p == 0x36 || p == 0x3e || p == 0x26 ||
                 p == 0x64 || p == 0x65 || p == 0xf0)) {
      break;
    }
  }
  if (i < n && (b[i] & 0xf0) == 0x40) ++i;  // REX
  if (!rep || i >= n) return false;
  const unsigned char op = b[i];
  return (op >= 0x6c && op <= 0x6f) || (op >= 0xa4 && op <= 0xa7) || (op >= 0xaa && op <= 0xaf);
}

// utime + stime of a process (all its threads, those that exited too), in
// clock ticks: fields 14 and 15 of /proc/PID/stat, after the parenthesised
// command name (which may hold spaces and parentheses: the last ')' ends it).
uint64_t process_ticks(long pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "re");
  if (f == nullptr) return 0;
  char buf[1024];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');
  unsigned long long utime = 0, stime = 0;
  // After ")": state (field 3), fields 4..13, then utime (14) and stime (15).
  if (p == nullptr || std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
                                  &utime, &stime) != 2) {
    return 0;
  }
  return utime + stime;
}

// CPU time (ns) of `pid` and, recursively, of its children (those alive).
uint64_t tree_cpu_ns(long pid, int depth = 0) {
  if (depth > 8) return 0;
  static const long ticks_per_s = ::sysconf(_SC_CLK_TCK);
  uint64_t ns = process_ticks(pid) * (1000000000u / static_cast<uint64_t>(ticks_per_s));
  const std::string task_dir = "/proc/" + std::to_string(pid) + "/task";
  DIR* dir = ::opendir(task_dir.c_str());
  if (dir == nullptr) return ns;
  std::vector<long> children;
  while (const dirent* e = ::readdir(dir)) {
    if (e->d_name[0] == '.') continue;
    const std::string task = task_dir + "/" + e->d_name;
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
               "mark %" PRIu64 " insns=%" PRIu64 " kernel=%" PRIu64 " user=%" PRIu64 " rep=%" PRIu64
               " ns=%" PRIu64 "%s\n",
               g_marks++, t.kernel + t.user, t.kernel, t.user, t.rep, ns, cpu.c_str());
  std::fflush(g_out);
}

void add(std::atomic<uint64_t>& counter, uint64_t n) {
  counter.store(counter.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}

void on_tb_exec(unsigned int vcpu_index, void* userdata) {
  // userdata: the block's instruction count << 2 | rep iteration << 1 | kernel mode
  const auto v = reinterpret_cast<uintptr_t>(userdata);
  VcpuCount& c = g_vcpus[std::min<unsigned>(vcpu_index, g_n_vcpus - 1)];
  add((v & 1) != 0 ? c.kernel : c.user, v >> 2);
  if ((v & 2) != 0) add(c.rep, 1);
}

void on_tb_translate(qemu_plugin_id_t /*id*/, qemu_plugin_tb* tb) {
  const size_t n = qemu_plugin_tb_n_insns(tb);
  const bool kernel = (qemu_plugin_tb_vaddr(tb) >> 63) != 0;
  // A block of one rep-prefixed string instruction: an iteration after the
  // first (the first ran in the block that reached it; TCG ends a block
  // after such an instruction and loops on it alone).
  const bool rep = n == 1 && is_rep_string(qemu_plugin_tb_get_insn(tb, 0));
  if (g_vcpus) {
    qemu_plugin_register_vcpu_tb_exec_cb(
        tb, on_tb_exec, QEMU_PLUGIN_CB_NO_REGS,
        reinterpret_cast<void*>((n << 2) | (rep ? 2 : 0) | (kernel ? 1 : 0)));
  } else {
    qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64,
                                             kernel ? &g_kernel : &g_user, n);
    if (rep) qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &g_rep, 1);
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
  std::fprintf(g_out,
               "exit insns=%" PRIu64 " kernel=%" PRIu64 " user=%" PRIu64 " rep=%" PRIu64 "\n",
               t.kernel + t.user, t.kernel, t.user, t.rep);
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
