#!/usr/bin/env bash
# Installs, checks the format, builds and runs every test: unit and
# integration tests (real /dev/fuse mounts, as root), the same under
# ASan+UBSan, clang-tidy's checks (.clang-tidy), and the libFuzzer targets for
# a bounded time. Needs root and /dev/fuse; fails loudly without.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

[[ $(id -u) == 0 ]] || { echo "test: must run as root (FUSE mounts)" >&2; exit 1; }
[[ -c /dev/fuse ]] || { echo "test: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }

step() { printf '\n=== %s\n' "$*"; }
# GoogleTest prints failures only: what went wrong is what the log shows.
export GTEST_BRIEF=1

step "format (clang-format --dry-run over every C++ file)"
clang-format --dry-run -Werror $(git ls-files '*.cc' '*.h')

# Debug information: line tables only (-g1), which is what stack traces and
# sanitizer reports print; the full variable information only slows the
# build.
step "build (RelWithDebInfo)"
bash scripts/build.sh build -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -g1 -DNDEBUG"
# One sanitized tree for the tests and the fuzz targets: clang, ASan+UBSan,
# and libFuzzer's coverage instrumentation (the tests link without its
# runtime; the sanitizer runtime has the coverage hooks). -O1: ASan's usual
# level, twice as fast to run as -O0 for the same reports. It builds in the
# background, at low priority, while the release tests run: those drive one
# TCG guest or one round trip at a time and leave a core idle.
step "build (ASan+UBSan, clang, with the libFuzzer targets): started in the background"
asan_log=$(mktemp)
BUILD_TYPE=Debug nice -n 10 bash scripts/build.sh build-asan -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS_DEBUG="-O1 -g1" -DDPFS_SANITIZE=ON -DDPFS_FUZZ=ON >"$asan_log" 2>&1 &
asan_build=$!

# The release build runs every test: the unit tests, and every integration
# test, among them the conformance suites on every configuration of
# tests/integration/backends.h (memfs, null, passthrough on a tmpfs export
# with io_uring forced on, NFSv3 and v4 against a ganesha the tests start,
# remote over loopback, with and without TLS; a test a backend cannot pass
# by design skips with the reason), the guests (TCG, 15-40 s each, most too
# slow under ASan) and everything about the sandbox and the per-device
# processes, whose seccomp allow-list a sanitized build cannot use
# (src/daemon/config.h).
step "tests (release: unit, and every integration test)"
build/dpfs_unit_tests
build/dpfs_integration_tests

step "waiting for the ASan+UBSan build"
if ! wait "$asan_build"; then
  tail -n 60 "$asan_log"
  echo "test: the ASan+UBSan build failed (above)" >&2
  exit 1
fi
# clang-tidy reads the clang build's compile commands.
step "lint (clang-tidy, the checks in .clang-tidy, over src/)"
run-clang-tidy -quiet -p build-asan -j"$(nproc)" "$(pwd)/src/.*\.cc\$" >/tmp/dpfs-tidy.log 2>&1 ||
  { grep -E 'error:|warning:' -A3 /tmp/dpfs-tidy.log; exit 1; }
step "tests under ASan+UBSan"
# Every ctest entry but `guests` (TCG, two to three times slower under ASan;
# the release pass ran them, and dpfs-bench's hostile and race cases drive
# the device here as a misbehaving front-end would), `sandbox` (a sanitized
# dpfs serves with --sandbox none: LeakSanitizer needs /proc;
# src/daemon/config.h) and the conformance configurations other than memfs
# and null, which the release pass ran: under ASan each would add 40-85 s
# (measured: passthrough 77 s, remote 42 s, remote_tls 51 s, nfs3 64 s,
# nfs4 85 s, most of it ExerciserTest; memfs 72 s, null 1 s), and their
# backends have tests of their own here (passthrough_test.cc, nfs_test.cc,
# remote_test.cc, fuse_uring_test.cc for FUSE over io_uring, the fuzz
# targets; passthrough_kernel_io's data path is the kernel's). The redis
# backend, the newest, runs its suite here too on one server; its cluster
# row's routing is driven here by KvClusterTest and KvHostileTest (in
# `integration`). Drop a name from the list to run one.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure --timeout 1200 \
  -E '^(guests|sandbox|conformance/(memfs_uring|passthrough|passthrough_kernel_io|nfs3|nfs4|remote|remote_tls|redis_cluster))$'

step "fuzz (libFuzzer, ${FUZZ_SECONDS:-10} s per target)"
fuzzers=$(cd tests/fuzz && ls *_fuzz.cc | sed 's/\.cc$//')
for name in $fuzzers; do
  f=build-asan/$name
  corpus=$(mktemp -d)
  TMPDIR=$corpus "$f" -max_total_time="${FUZZ_SECONDS:-10}" -rss_limit_mb=2048 -print_final_stats=1 "$corpus" \
    2>&1 | tail -n 12
  rm -rf "$corpus"
done
step "all tests passed"
