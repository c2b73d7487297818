#!/usr/bin/env bash
# Installs, builds and runs every test: unit and integration tests (real
# /dev/fuse mounts, as root), the same under ASan+UBSan, and the libFuzzer
# targets for a bounded time. Needs root and /dev/fuse; fails loudly without.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

[[ $(id -u) == 0 ]] || { echo "test: must run as root (FUSE mounts)" >&2; exit 1; }
[[ -c /dev/fuse ]] || { echo "test: /dev/fuse is missing (modprobe fuse)" >&2; exit 1; }

step() { printf '\n=== %s\n' "$*"; }
# GoogleTest prints failures only: what went wrong is what the log shows.
export GTEST_BRIEF=1

step "build (RelWithDebInfo)"
bash scripts/build.sh build
step "tests"
ctest --test-dir build --output-on-failure --timeout 900
step "POSIX suites through the remote transport (server + device on loopback, ~15 s)"
DPFS_TEST_REMOTE=memfs build/dpfs_integration_tests \
  --gtest_filter='PosixTest.*:IoTest.*:ReaddirTest.*:XattrTest.*:LockTest.*'

tls=$(mktemp -d)
bash scripts/test-certs.sh "$tls" ca server device
tls_flags() { echo "--remote-tls-cert $tls/$1.pem --remote-tls-key $tls/$1.key --remote-tls-ca $tls/ca.pem"; }
step "POSIX suite through the remote transport with TLS (~5 s)"
DPFS_TEST_REMOTE=memfs DPFS_TEST_REMOTE_ARGS="$(tls_flags server)" \
  DPFS_TEST_SERVE_ARGS="$(tls_flags device)" build/dpfs_integration_tests --gtest_filter='PosixTest.*:IoTest.*'
rm -rf "$tls"

# On tmpfs, io_uring = auto would choose system calls: forced on, so the
# suites go through the ring.
step "POSIX suites on passthrough (export on a tmpfs: tmpfs's limits; ~40 s)"
DPFS_TEST_EXPORT_TMPFS=1 DPFS_TEST_BACKEND='passthrough:{dir}' \
  DPFS_TEST_SERVE_ARGS='--passthrough-io-uring on' build/dpfs_integration_tests \
  --gtest_filter='PosixTest.*:IoTest.*:ReaddirTest.*:XattrTest.*:LockTest.*:ConcurrencyTest.*:ExerciserTest.HundredThousandOps'

# The POSIX suites (and the concurrency stress test, ~10 s) through the NFS
# backend against a real ganesha (started by the harness), on NFSv3 (~30 s)
# and NFSv4 (~35 s). Excluded: what NFS or the
# server does not do, each with its reason in docs/nfs.md.
nfs_excluded="IoTest.Fallocate*:IoTest.SeekDataAndHole:IoTest.HugeSparseSizes"
nfs_excluded+=":PosixTest.ForgetThenLookupAgain:PosixTest.OTmpfileThenLinkat"
nfs_excluded+=":PosixTest.RenameNoreplace:PosixTest.RenameExchange:PosixTest.RmdirOpenDirectory"
nfs_excluded+=":PosixTest.UtimensatNoFollowChangesTheLink:PosixTest.StatfsAndFreeSpace"
nfs_excluded+=":PosixTest.WriteAndTruncateByNonRootDropPrivileges"
step "POSIX suites on the NFS backend, NFSv3 (ganesha on loopback)"
DPFS_TEST_BACKEND='nfs://127.0.0.1{dir}?version=3' build/dpfs_integration_tests \
  --gtest_filter="PosixTest.*:IoTest.*:ReaddirTest.*:LockTest.*:ConcurrencyTest.*-${nfs_excluded}:PosixTest.UtimensatExplicitNanoseconds"
step "POSIX suites on the NFS backend, NFSv4"
DPFS_TEST_BACKEND='nfs://127.0.0.1{dir}?version=4' build/dpfs_integration_tests \
  --gtest_filter="PosixTest.*:IoTest.*:ReaddirTest.*:LockTest.*:ConcurrencyTest.*-${nfs_excluded}"

step "build (ASan+UBSan)"
BUILD_TYPE=Debug bash scripts/build.sh build-asan -DDPFS_SANITIZE=ON
step "tests under ASan+UBSan"
# Every test, but of the guest tests (TCG guests, 20-40 s each, the same
# device code as the RelWithDebInfo pass ran) only those where front-ends
# misbehave or vanish; dpfs-bench's hostile cases drive the device directly.
# Nor the comparison with the guest kernel's NFS client (half of it runs no
# dpfs code; 55 s under ASan): GuestNfsTest.BasicWorkload* (35-40 s) stays.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  GTEST_FILTER="-$(printf 'GuestTest.%s:' BasicWorkloadThenLaterGuestsReadItBack TwoRequestQueues \
    FileExerciserInGuest PackedVirtqueues DeviceSurvivesGuestReboot OnDisconnectExit \
    BasicWorkloadOnPassthrough DeviceForwardsToARemoteServer)Versions/GuestNfsTest.PosixSuite*" \
  ctest --test-dir build-asan --output-on-failure --timeout 1200

step "fuzz (libFuzzer, ${FUZZ_SECONDS:-15} s per target)"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER=clang++ \
  -DDPFS_FUZZ=ON -DDPFS_SANITIZE=ON >/dev/null
fuzzers=$(cd tests/fuzz && ls *_fuzz.cc | sed 's/\.cc$//')
# shellcheck disable=SC2086
cmake --build build-fuzz -j"$(nproc)" --target $fuzzers
for name in $fuzzers; do
  f=build-fuzz/$name
  corpus=$(mktemp -d)
  TMPDIR=$corpus "$f" -max_total_time="${FUZZ_SECONDS:-15}" -rss_limit_mb=2048 -print_final_stats=1 "$corpus" \
    2>&1 | tail -n 12
  rm -rf "$corpus"
done
step "all tests passed"
