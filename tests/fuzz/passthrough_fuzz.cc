// libFuzzer target: sequences of FUSE requests, built from fuzzer bytes
// (fuzz_session.h), into a session backed by the passthrough backend over a
// fresh directory per input, with plain system calls (io_uring off, so every
// reply is given before handle() returns).
//
// Besides what every session target checks, a finding is any trace of the
// tenant outside its directory: the sandbox that holds the export also holds
// a file and a directory next to it, and after each input they must be as
// they were and nothing else may have appeared there.
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>

#include "backend/passthrough/passthrough.h"
#include "fuzz_session.h"

namespace {

namespace fs = std::filesystem;

constexpr char kOutsideText[] = "outside the export";

struct Sandbox {
  fs::path dir;
  fs::path root() const { return dir / "export"; }
  fs::path outside_file() const { return dir / "outside"; }
  fs::path outside_dir() const { return dir / "outside-dir"; }
};

Sandbox& sandbox() {
  static Sandbox box = [] {
    // libFuzzer may leave without running atexit handlers: CI points TMPDIR
    // at a directory it removes.
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/dpfs-passthrough-fuzz.XXXXXX";
    if (!::mkdtemp(tmpl.data())) std::abort();
    Sandbox b{tmpl};
    std::ofstream(b.outside_file()) << kOutsideText;
    ::chmod(b.outside_file().c_str(), 0644);
    fs::create_directory(b.outside_dir());
    ::chmod(b.outside_dir().c_str(), 0755);
    std::atexit([] {
      std::error_code ignored;
      fs::remove_all(sandbox().dir, ignored);
    });
    return b;
  }();
  return box;
}

// Aborts (a finding) unless the sandbox holds exactly the export, the file
// and the directory, unchanged.
void check_confined(const Sandbox& box) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(box.dir)) names.insert(e.path().filename());
  if (names != std::set<std::string>{"export", "outside", "outside-dir"}) {
    std::fprintf(stderr, "passthrough_fuzz: the sandbox %s changed outside the export\n",
                 box.dir.c_str());
    std::abort();
  }
  struct stat st {};
  std::string text;
  std::getline(std::ifstream(box.outside_file()), text);
  if (::lstat(box.outside_file().c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
      (st.st_mode & 07777) != 0644 || st.st_uid != 0 || st.st_nlink != 1 || text != kOutsideText) {
    std::fprintf(stderr, "passthrough_fuzz: %s was changed\n", box.outside_file().c_str());
    std::abort();
  }
  if (::lstat(box.outside_dir().c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
      (st.st_mode & 07777) != 0755 || st.st_uid != 0 || !fs::is_empty(box.outside_dir())) {
    std::fprintf(stderr, "passthrough_fuzz: %s was changed\n", box.outside_dir().c_str());
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Sandbox& box = sandbox();
  std::error_code ignored;
  fs::remove_all(box.root(), ignored);
  if (!fs::create_directory(box.root())) std::abort();
  {
    dpfs::PassthroughOptions options;
    options.root = box.root();
    options.io_uring = dpfs::UringMode::kOff;
    options.max_fds = 64;  // the descriptor bound, exercised
    dpfs::Passthrough passthrough(options);
    dpfs::fuse::FuseSession session(passthrough, {});
    dpfs::fuzz::run_input(session, passthrough, data, size);
  }
  check_confined(box);
  return 0;
}
