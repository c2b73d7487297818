#!/usr/bin/env bash
# Device benchmark: dpfs's virtio-fs device against QEMU's virtiofsd, both
# driven by dpfs-bench (a userspace virtio-fs driver: no guest, no VM exits),
# on the same work in one run.
#
#   dpfs       build/dpfs serve --backend memfs --vhost-user SOCK --threads 1
#   virtiofsd  /usr/lib/qemu/virtiofsd -o source=DIR -o cache=none, DIR on a
#              tmpfs (QEMU 7.2's C daemon; it serves one connection and
#              exits, so it is started afresh for every run)
#
# One request queue and one device thread each: virtiofsd has one request
# queue (and one thread serving it). Every job of JOBS runs on each device,
# then the depth sweeps (getattr and 4k random reads at each of DEPTHS) for
# the plots. dpfs-bench reads the device's CPU time (all threads, and
# virtiofsd's sandboxed child) around the measured interval.
#
# Then the polling goal: dpfs with the null backend and --poll, one worker
# pinned to CPU 0, one polling driver thread pinned to CPU 1, GETATTR at
# depth 32; and `perf record -g` of dpfs during a second such run.
#
# Results (one JSON per run, perf output, meta.json) go to
# $BUILD/bench/device-results; bench/device_bench_report.py turns them into
# docs/BENCHMARKS.md and the PNG plots in docs/img/ (gnuplot).
#
# Needs root (perf), /usr/lib/qemu/virtiofsd (apt: qemu-system-common),
# gnuplot (apt: gnuplot-nox), perf (apt: linux-perf), python3.
#
# Environment:
#   DURATION=2        seconds measured per run (WARMUP=0.5 before)
#   MAX_LOAD=0.5      the 1-minute load it refuses at; FORCE=1 measures anyway
#                     and marks the report provisional
#   DEPTHS="1 2 4 8 16 32 64 128"   the sweeps' queue depths
#   BUILD=build       dpfs build directory (Release build made there unless
#                     SKIP_BUILD=1)
#   FILE_SIZE=64M     the data file of the I/O workloads
#   PERF=1            0: skip the perf profile
#   POLL_RUNS=3       runs of the polling goal
#   OUT=docs/BENCHMARKS.md  IMG=docs/img
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION=${DURATION:-2}
WARMUP=${WARMUP:-0.5}
DEPTHS=${DEPTHS:-1 2 4 8 16 32 64 128}
FILE_SIZE=${FILE_SIZE:-64M}
PERF=${PERF:-1}
POLL_RUNS=${POLL_RUNS:-3}
OUT=$(bench_abs "${OUT:-docs/BENCHMARKS.md}")
IMG=$(bench_abs "${IMG:-docs/img}")
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
DPFS=$BUILD/dpfs
BENCH=$BUILD/dpfs-bench
RESULTS=$BUILD/bench/device-results

# The standard jobs: name, then dpfs-bench arguments.
JOBS=(
  "getattr-qd1|--workload getattr --depth 1"
  "getattr-qd32|--workload getattr --depth 32"
  "lookup-qd32|--workload lookup --depth 32"
  "open-read-qd32|--workload open-read --depth 32"
  "randread-4k-qd1|--workload randread --depth 1"
  "randread-4k-qd32|--workload randread --depth 32"
  "randwrite-4k-qd32|--workload randwrite --depth 32"
  "seqread-128k-qd8|--workload seqread --block-size 128K --depth 8"
  "seqwrite-128k-qd8|--workload seqwrite --block-size 128K --depth 8"
  "seqread-1m-qd8|--workload seqread --block-size 1M --depth 8"
  "seqwrite-1m-qd8|--workload seqwrite --block-size 1M --depth 8"
  "metadata-qd32|--workload metadata --depth 32"
)
for d in $DEPTHS; do
  JOBS+=("sweep-getattr-qd$d|--workload getattr --depth $d")
  JOBS+=("sweep-randread-qd$d|--workload randread --depth $d")
done

bench_require_idle device_bench

WORK=$(mktemp -d /tmp/dpfs-device-bench.XXXXXX)
SHARE=$(mktemp -d /dev/shm/dpfs-device-bench.XXXXXX)  # virtiofsd's tmpfs directory
DPFS_PID=""
VFS_PID=""

cleanup() {
  local rc=$?
  bench_stop_pid "$DPFS_PID"
  bench_stop_pid "$VFS_PID"
  rm -rf "$WORK" "$SHARE"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_socket() {  # wait_socket SOCK PID LOG
  for _ in $(seq 100); do
    [[ -S $1 ]] && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.05
  done
  cat "$3" >&2
  die "no socket $1"
}

# start_dpfs NAME [serve flags...]: one dpfs for a series of runs.
start_dpfs() {
  local name=$1
  shift
  bench_stop_pid "$DPFS_PID"
  rm -f "$WORK/dpfs.sock"
  "$@" >"$RESULTS/$name.log" 2>&1 &
  DPFS_PID=$!
  wait_socket "$WORK/dpfs.sock" "$DPFS_PID" "$RESULTS/$name.log"
}

start_virtiofsd() {
  rm -f "$WORK/vfs.sock"
  "$VIRTIOFSD" --socket-path="$WORK/vfs.sock" -o source="$SHARE" -o cache=none \
    >>"$RESULTS/virtiofsd.log" 2>&1 &
  VFS_PID=$!
  wait_socket "$WORK/vfs.sock" "$VFS_PID" "$RESULTS/virtiofsd.log"
}

# bench DEVICE JOB SOCK PID ARGS...: one run; its JSON (or its error) kept.
bench() {
  local device=$1 job=$2 sock=$3 pid=$4
  shift 4
  local out=$RESULTS/$device.$job.json
  if ! "$BENCH" --socket "$sock" --device-pid "$pid" --label "$device" --json \
    --duration "$DURATION" --warmup "$WARMUP" --file-size "$FILE_SIZE" "$@" \
    >"$out" 2>"$RESULTS/$device.$job.err"; then
    log "$device $job: dpfs-bench failed: $(tail -1 "$RESULTS/$device.$job.err")"
  fi
}

# ---------------------------------------------------------------------------

bench_need_root "perf, /dev/shm, virtiofsd's sandbox"
bench_need "$VIRTIOFSD=qemu-system-common" gnuplot=gnuplot-nox python3=python3 taskset=util-linux
if [[ $PERF = 1 ]]; then bench_need perf=linux-perf; fi
bench_build dpfs dpfs-bench
rm -rf "$RESULTS"
mkdir -p "$RESULTS"

LOAD_BEFORE=$(cat /proc/loadavg)
log "load before: $LOAD_BEFORE"

dpfs_cmd=("$DPFS" serve --backend memfs --memfs-capacity 4G --vhost-user "$WORK/dpfs.sock"
  --tag dpfs --threads 1)
start_dpfs dpfs "${dpfs_cmd[@]}"
for job in "${JOBS[@]}"; do
  name=${job%%|*}
  # shellcheck disable=SC2206
  args=(${job#*|})
  log "dpfs      $name"
  bench dpfs "$name" "$WORK/dpfs.sock" "$DPFS_PID" "${args[@]}"
  log "virtiofsd $name"
  start_virtiofsd
  bench virtiofsd "$name" "$WORK/vfs.sock" "$VFS_PID" "${args[@]}"
  bench_stop_pid "$VFS_PID"  # it exits by itself once the front-end is gone
  VFS_PID=""
done

# Scaling: 1 and 2 request queues, a worker for each, the driver with a
# thread for each (as a guest kernel spreads requests over queues by CPU).
SCALE_QUEUES=${SCALE_QUEUES:-1 2}
for nq in $SCALE_QUEUES; do
  scale_cmd=("$DPFS" serve --backend memfs --memfs-capacity 4G --vhost-user "$WORK/dpfs.sock"
    --tag dpfs --threads "$nq" --request-queues "$nq")
  start_dpfs "dpfs-scale-$nq" "${scale_cmd[@]}"
  for w in getattr randread; do
    log "dpfs      scaling: $w, $nq request queue(s), depth 32 each"
    bench dpfs "scale-$w-q$nq" "$WORK/dpfs.sock" "$DPFS_PID" --workload "$w" --depth 32 \
      --queues "$nq" --threads "$nq"
  done
done

# The polling goal: one dpfs worker on CPU 0, one polling driver on CPU 1.
poll_cmd=(taskset -c 0 "$DPFS" serve --backend null --vhost-user "$WORK/dpfs.sock" --tag dpfs
  --threads 1 --poll)
start_dpfs dpfs-poll "${poll_cmd[@]}"
poll_args=(--workload getattr --depth 32 --poll)
bench_poll() {
  local job=$1
  shift
  taskset -c 1 "$BENCH" --socket "$WORK/dpfs.sock" --device-pid "$DPFS_PID" --label dpfs --json \
    --duration "$DURATION" --warmup "$WARMUP" "${poll_args[@]}" "$@" >"$RESULTS/poll.$job.json" \
    2>"$RESULTS/poll.$job.err" || log "poll $job: $(tail -1 "$RESULTS/poll.$job.err")"
}
# Other work on the machine preempts the pinned pollers: several runs, the
# report shows each with the load at the time.
for i in $(seq "$POLL_RUNS"); do
  log "dpfs polling goal run $i"
  cut -d' ' -f1 /proc/loadavg >"$RESULTS/poll.getattr-qd32-$i.load"
  bench_poll "getattr-qd32-$i"
done
# The same device with an event-driven driver (sleeping on calls).
poll_args=(--workload getattr --depth 32)
bench_poll getattr-qd32-driver-events
poll_args=(--workload getattr --depth 32 --poll)
if [[ $PERF = 1 ]]; then
  log "perf record of dpfs during a polling run"
  bench_poll getattr-qd32-perf &
  bench_job=$!
  sleep "$WARMUP"
  # DWARF unwinding: the build has no frame pointers.
  perf record -F 999 --call-graph dwarf,8192 -p "$DPFS_PID" -o "$RESULTS/perf.data" \
    -- sleep "$DURATION" >/dev/null 2>&1 || log "perf record failed"
  wait $bench_job || true
  perf report -i "$RESULTS/perf.data" --no-children --stdio --percent-limit 1 -g none \
    2>/dev/null | grep -v '^#' | grep -v '^$' >"$RESULTS/perf-self.txt" || true
  perf report -i "$RESULTS/perf.data" --children --stdio --percent-limit 4 -g none \
    2>/dev/null | grep -v '^#' | grep -v '^$' >"$RESULTS/perf-children.txt" || true
fi
bench_stop_pid "$DPFS_PID"
DPFS_PID=""

LOAD_AFTER=$(cat /proc/loadavg)
log "load after: $LOAD_AFTER"

job_names=""
for job in "${JOBS[@]}"; do job_names+="${job%%|*} "; done
python3 - "$RESULTS/meta.json" <<EOF
import json, sys
json.dump({
  "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
  "cpu": "$(lscpu | sed -n 's/^Model name: *//p' | head -1)",
  "cores": $(nproc),
  "kernel": "$(uname -r)",
  "load_before": "$LOAD_BEFORE",
  "load_after": "$LOAD_AFTER",
  "provisional": $([[ ${FORCE:-0} == 1 ]] && echo True || echo False),
  "commit": "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)",
  "build_type": "$(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD/CMakeCache.txt")",
  "virtiofsd": "$("$VIRTIOFSD" --version 2>&1 | head -1)",
  "duration": "$DURATION", "warmup": "$WARMUP", "file_size": "$FILE_SIZE",
  "depths": "$DEPTHS", "poll_runs": $POLL_RUNS, "scale_queues": "$SCALE_QUEUES",
  "jobs": "$job_names",
  "dpfs_cmd": "${dpfs_cmd[*]}",
  "poll_cmd": "${poll_cmd[*]}",
  "virtiofsd_cmd": "$VIRTIOFSD --socket-path=SOCK -o source=TMPFS_DIR -o cache=none",
  "bench_cmd": "$BENCH --socket SOCK --device-pid PID --json --duration $DURATION --warmup $WARMUP --file-size $FILE_SIZE",
}, open(sys.argv[1], "w"), indent=1)
EOF
python3 "$ROOT/bench/device_bench_report.py" "$RESULTS" "$OUT" "$IMG"
bench_scrub "$OUT"
log "wrote $OUT and $IMG/device_*.png"
