#!/usr/bin/env bash
# FUSE over io_uring against read/write: the same dpfs binary, the same
# backend and the same fio job, served once with --fuse-io-uring off and once
# with --fuse-io-uring on, one right after the other (the modes alternate for
# every job, so both see the same machine within the same minute).
#
# For each backend (null: reads "zero" in the root; memfs: a file written
# first), each job (4k random reads and writes, libaio, O_DIRECT, depth 1 and
# 32) and each mode it reports IOPS, mean and p99 completion latency, and CPU
# time per I/O: the daemon's (the sum of its threads' run time from
# /proc/PID/task/*/schedstat, which includes the kernel's copying done on
# its threads), fio's (usr + sys), and the whole machine's (/proc/stat).
# Prints a Markdown table on stdout (docs/FUSE_BENCHMARKS.md, section "FUSE
# over io_uring").
#
# It sets /sys/module/fuse/parameters/enable_uring to 1 for the run and puts
# back what it found. Needs root, /dev/fuse, fio, python3, a built dpfs.
#
# Environment:
#   RUNTIME=10       seconds per fio job and mode
#   REPEAT=1         rounds of (read/write, io_uring) per job; the table shows,
#                    for each mode, the round with the median IOPS
#   QUIET_WAIT=30    before each job, wait up to this many seconds for the
#                    machine to be idle (others using under a quarter of a CPU)
#   THREADS=$(nproc) dpfs --threads
#   DPFS_ARGS=--no-xattr  more dpfs serve flags (as bench/fuse_bench.sh)
#   BUILD=build      where dpfs was built
#   FILE_SIZE=256M   the memfs data file
#   BACKENDS="null memfs"
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNTIME=${RUNTIME:-10}
REPEAT=${REPEAT:-1}
QUIET_WAIT=${QUIET_WAIT:-30}
THREADS=${THREADS:-$(nproc)}
DPFS_ARGS=${DPFS_ARGS---no-xattr}
FILE_SIZE=${FILE_SIZE:-256M}
BACKENDS=${BACKENDS:-null memfs}
DPFS=$BUILD/dpfs
PARAM=/sys/module/fuse/parameters/enable_uring

JOBS=(
  "randread-4k-qd1|--rw=randread --bs=4k --iodepth=1"
  "randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
  "randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1"
  "randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
)
FIO_COMMON="--ioengine=libaio --direct=1 --time_based --runtime=$RUNTIME --numjobs=1 \
--lat_percentiles=1 --output-format=json"

bench_need_root "it mounts, and sets $PARAM"
[[ -f $PARAM ]] || die "$PARAM not found: this kernel has no FUSE over io_uring (6.14+)"
[[ -x $DPFS ]] || die "$DPFS not found (bash scripts/build.sh)"
bench_need fio=fio python3=python3

WORK=$(mktemp -d /tmp/dpfs-uring-bench.XXXXXX)
SAVED_PARAM=$(cat "$PARAM")
DAEMON_PID=""
MNT=""

stop_daemon() {
  if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID" 2>/dev/null || true
    for _ in $(seq 100); do
      kill -0 "$DAEMON_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  DAEMON_PID=""
  if [[ -n $MNT ]] && is_mounted "$MNT"; then umount -l "$MNT" 2>/dev/null || true; fi
}

cleanup() {
  local rc=$?
  stop_daemon
  if [[ $SAVED_PARAM = Y || $SAVED_PARAM = 1 ]]; then echo 1 >"$PARAM"; else echo 0 >"$PARAM"; fi
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo 1 >"$PARAM"

# Starts dpfs on `backend` in `mode`; sets DAEMON_PID, MNT, FILE, SIZE.
start_dpfs() {
  local backend=$1 mode=$2
  MNT=$WORK/$backend-$mode
  mkdir -p "$MNT"
  # shellcheck disable=SC2206
  local cmd=("$DPFS" serve --backend "$backend" --fuse-mount "$MNT" --threads "$THREADS"
    --fuse-io-uring "$mode" $DPFS_ARGS)
  "${cmd[@]}" >"$WORK/$backend-$mode.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 200); do
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/$backend-$mode.log" >&2; die "dpfs exited"; }
    is_mounted "$MNT" && stat "$MNT" >/dev/null 2>&1 && break
    sleep 0.05
  done
  is_mounted "$MNT" || die "$MNT did not come up"
  if [[ $backend = null ]]; then
    FILE=$MNT/zero
    SIZE=4G
  else
    FILE=$MNT/data
    SIZE=$FILE_SIZE
    head -c "$FILE_SIZE" /dev/urandom >"$FILE" || die "writing $FILE"
  fi
  if [[ $mode = on ]]; then
    # Logged once the rings are registered, which may be after the mount
    # answers its first request.
    for _ in $(seq 50); do
      grep -q "FUSE over io_uring: on" "$WORK/$backend-$mode.log" && break
      sleep 0.05
    done
    grep -q "FUSE over io_uring: on" "$WORK/$backend-$mode.log" ||
      { cat "$WORK/$backend-$mode.log" >&2; die "dpfs did not serve through io_uring"; }
  fi
}

daemon_ns() {
  local pid=$1 total=0 t
  for t in /proc/"$pid"/task/*/schedstat; do
    read -r ns _ <"$t" || continue
    total=$((total + ns))
  done
  echo "$total"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
RESULTS=$WORK/results
: >"$RESULTS"
for backend in $BACKENDS; do
  for job in "${JOBS[@]}"; do
    name=${job%%|*}
    args=${job#*|}
    for _ in $(seq "$REPEAT"); do
    for mode in off on; do
      start_dpfs "$backend" "$mode"
      bench_wait_quiet
      before=$(daemon_ns "$DAEMON_PID")
      busy_before=$(bench_busy_ticks)
      # shellcheck disable=SC2086
      fio --name="$name" --filename="$FILE" --size="$SIZE" $args $FIO_COMMON \
        >"$WORK/out.json" 2>"$WORK/fio.err" || { cat "$WORK/fio.err" >&2; die "fio $name"; }
      after=$(daemon_ns "$DAEMON_PID")
      busy_after=$(bench_busy_ticks)
      python3 - "$WORK/out.json" "$backend" "$name" "$mode" "$((after - before))" \
        "$((busy_after - busy_before))" "$(getconf CLK_TCK)" "$RUNTIME" >>"$RESULTS" <<'EOF'
import json, sys
path, backend, name, mode, daemon_ns, busy, hz, runtime = sys.argv[1:]
j = json.load(open(path))["jobs"][0]
d = j["read"] if j["read"]["total_ios"] else j["write"]
ios = d["total_ios"]
# fio's own CPU: usr_cpu and sys_cpu are percentages of one CPU over the job.
fio_s = (j["usr_cpu"] + j["sys_cpu"]) / 100.0 * float(runtime)
# Completion latency with submission (lat_ns; --lat_percentiles=1 puts the
# percentiles there).
lat = d["lat_ns"]
p99 = lat.get("percentile", d["clat_ns"].get("percentile", {})).get("99.000000", 0)
print("|".join(str(x) for x in [backend, name, mode, "%.0f" % d["iops"],
      "%.1f" % (lat["mean"] / 1000), "%.1f" % (p99 / 1000),
      "%.2f" % (int(daemon_ns) / 1000.0 / ios), "%.2f" % (fio_s * 1e6 / ios),
      "%.2f" % (int(busy) / float(hz) * 1e6 / ios)]))
EOF
      log "$(tail -1 "$RESULTS")"
      stop_daemon
    done
    done
  done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), Linux $(uname -r), $(nproc) CPUs" \
  "($(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)), $(fio --version)," \
  "dpfs $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
  "load average before $LOAD_BEFORE, after $LOAD_AFTER."
echo
echo "RUNTIME=$RUNTIME REPEAT=$REPEAT QUIET_WAIT=$QUIET_WAIT THREADS=$THREADS" \
  "DPFS_ARGS='$DPFS_ARGS' FILE_SIZE=$FILE_SIZE BACKENDS='$BACKENDS' bench/fuse_uring_bench.sh"
echo
python3 - "$RESULTS" <<'EOF'
import sys
rows = {}
for line in open(sys.argv[1]):
    f = line.strip().split("|")
    rows.setdefault((f[0], f[1], f[2]), []).append(f)
print("| backend | job | transport | IOPS (median round) | IOPS range | mean lat µs | p99 lat µs "
      "| daemon CPU µs/IO | fio CPU µs/IO | machine CPU µs/IO |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
for key, runs in rows.items():
    runs.sort(key=lambda f: float(f[3]))
    m = runs[len(runs) // 2]
    spread = "%s-%s" % (runs[0][3], runs[-1][3])
    label = "io_uring" if key[2] == "on" else "read/write"
    print("| %s | %s | %s | %s | %s | %s |" % (key[0], key[1], label, m[3], spread,
                                               " | ".join(m[4:])))
EOF
