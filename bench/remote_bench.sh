#!/usr/bin/env bash
# The cost of the remote hop: the same backend served on a FUSE mount
# locally, and through a remote device (--backend remote://) and a server
# (--listen) on loopback, in one run, with the same fio jobs (4k random
# reads at depth 1 and 32; libaio, O_DIRECT). Around every job it reads the
# CPU time of each dpfs process (utime + stime, all threads, /proc/PID/stat)
# and divides it by the I/Os fio completed. Prints a Markdown table (the
# one in docs/REMOTE_BENCHMARKS.md).
#
# Needs root (mounts), /dev/fuse, fio, python3, a build of dpfs.
#
# Environment:
#   BUILD=build        dpfs build directory
#   BACKEND=null       the backend both ways serve (null: "zero", 1 TiB)
#   RUNTIME=10         seconds per fio job
#   THREADS=2          device --threads
#   CONNECTIONS=2      --remote-connections
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-$ROOT/build}
[[ $BUILD = /* ]] || BUILD=$ROOT/$BUILD
DPFS=$BUILD/dpfs
BACKEND=${BACKEND:-null}
RUNTIME=${RUNTIME:-10}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-2}

log() { printf '[remote_bench] %s\n' "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}
[[ $(id -u) == 0 ]] || die "must run as root (FUSE mounts)"
[[ -x $DPFS ]] || die "no dpfs at $DPFS (build it, or set BUILD)"
command -v fio >/dev/null || die "fio is missing (apt-get install fio)"

WORK=$(mktemp -d /tmp/dpfs-remote-bench.XXXXXX)
MNT=$WORK/mnt
mkdir -p "$MNT"
PIDS=()
cleanup() {
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

wait_mounted() {
  for _ in $(seq 100); do
    awk -v m="$MNT" '$5 == m && $0 ~ /fuse.dpfs/ { f = 1 } END { exit !f }' /proc/self/mountinfo &&
      return 0
    sleep 0.1
  done
  die "dpfs did not mount $MNT; logs in $WORK"
}

# The file fio reads: null's "zero", or a file written first on memfs.
prepare_file() {
  if [[ $BACKEND == null ]]; then
    FILE=$MNT/zero
  else
    FILE=$MNT/data
    fio --name=fill --filename="$FILE" --rw=write --bs=1M --size=1G --direct=1 >/dev/null
  fi
}

# run_jobs NAME PID... : fio jobs on $FILE; one result line per job.
run_jobs() {
  local name=$1
  shift
  for depth in 1 32; do
    local before=() after=()
    for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
    fio --name=r --filename="$FILE" --size=1G --rw=randread --bs=4k --iodepth=$depth \
      --ioengine=libaio --direct=1 --time_based --runtime="$RUNTIME" --numjobs=1 \
      --lat_percentiles=1 --output-format=json >"$WORK/fio.json"
    for p in "$@"; do after+=("$(cpu_ticks "$p")"); done
    python3 - "$name" "$depth" "$WORK/fio.json" "$(getconf CLK_TCK)" \
      "${before[*]}" "${after[*]}" <<'EOF'
import json, sys
name, depth, path, hz, before, after = sys.argv[1:7]
r = json.load(open(path))["jobs"][0]["read"]
ios = r["total_ios"]
clat = r["clat_ns"]
cpu = [(int(a) - int(b)) / int(hz) * 1e6 / ios for a, b in zip(after.split(), before.split())]
pct = clat.get("percentile", {})
print(f"| {name} | {depth} | {r['iops']:.0f} | {clat['mean'] / 1000:.1f} | "
      f"{pct.get('50.000000', 0) / 1000:.1f} | {pct.get('99.000000', 0) / 1000:.1f} | "
      + " + ".join(f"{c:.1f}" for c in cpu) + (f" = {sum(cpu):.1f}" if len(cpu) > 1 else "") + " |")
EOF
  done
}

echo "| path | depth | IOPS | mean µs | p50 µs | p99 µs | dpfs CPU µs per read (device + server) |"
echo "|---|---|---|---|---|---|---|"

log "local: $BACKEND on $MNT"
"$DPFS" serve --backend "$BACKEND" --fuse-mount "$MNT" --threads "$THREADS" --no-xattr \
  >"$WORK/local.log" 2>&1 &
LOCAL=$!
PIDS+=("$LOCAL")
wait_mounted
prepare_file
run_jobs local "$LOCAL"
kill "$LOCAL"
wait "$LOCAL" || die "the local daemon failed; see $WORK/local.log"

log "remote: $BACKEND behind a server on loopback"
"$DPFS" serve --listen tcp://127.0.0.1:0 --backend "$BACKEND" --no-xattr >"$WORK/server.log" 2>&1 &
SERVER=$!
PIDS+=("$SERVER")
for _ in $(seq 100); do
  PORT=$(grep -o 'listening on tcp://127.0.0.1:[0-9]*' "$WORK/server.log" | sed 's/.*://') || true
  [[ -n ${PORT:-} ]] && break
  sleep 0.1
done
[[ -n ${PORT:-} ]] || die "the server did not listen; see $WORK/server.log"
"$DPFS" serve --backend "remote://127.0.0.1:$PORT" --fuse-mount "$MNT" --threads "$THREADS" \
  --remote-connections "$CONNECTIONS" --no-xattr >"$WORK/device.log" 2>&1 &
DEVICE=$!
PIDS+=("$DEVICE")
wait_mounted
prepare_file
run_jobs remote "$DEVICE" "$SERVER"
kill "$DEVICE"
wait "$DEVICE" || die "the device failed; see $WORK/device.log"
kill "$SERVER"
wait "$SERVER" || die "the server failed; see $WORK/server.log"
