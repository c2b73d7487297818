#!/usr/bin/env bash
# FUSE benchmark: dpfs against libfuse on the same machine, in one run.
#
# Mounts, one after the other:
#   dpfs-null        build/dpfs serve --backend null   (reads "zero" in the root)
#   dpfs-memfs       build/dpfs serve --backend memfs  (a file written first)
#   libfuse-null     libfuse's example/null.c          (the mount point is the file)
#   libfuse-passthrough_ll  libfuse's example/passthrough_ll.c over a tmpfs
# and runs the same fio jobs on each (4k random reads at depth 1 and 32, 1 MiB
# sequential reads and writes; libaio, O_DIRECT). Around every job it reads
# the daemon's CPU time (utime + stime of /proc/PID/stat, all threads) and
# divides it by the I/Os fio completed. Results go to docs/FUSE_BENCHMARKS.md
# (written by bench/fuse_bench_report.py from build/bench/results).
#
# The libfuse examples are compiled from /usr/share/doc/libfuse3-dev/examples
# (apt: libfuse3-dev) into $BUILD/bench; nothing of them is kept in the tree.
#
# Needs root (mounts), /dev/fuse, fio, gcc, pkg-config, python3.
#
# Environment:
#   RUNTIME=10        seconds per fio job
#   REPEAT=1          rounds over all daemons; the report takes, for each
#                     daemon and job, the round with the median IOPS
#   QUIET_WAIT=60     before each job, wait up to this many seconds for the
#                     machine to be idle (others using under a quarter of a CPU)
#   THREADS=$(nproc)  dpfs --threads
#   DPFS_ARGS=--no-xattr  more dpfs serve flags. --no-xattr: neither libfuse
#                     example implements xattrs, so the kernel stops sending
#                     GETXATTR security.capability before every WRITE; dpfs
#                     answers the same way with it.
#   BUILD=build       dpfs build directory (a Release build is made there
#                     unless SKIP_BUILD=1)
#   FILE_SIZE=256M    size of the data file for memfs and passthrough_ll
#   TARGETS="dpfs-null dpfs-memfs dpfs-passthrough libfuse-null libfuse-passthrough_ll"
#   FUSE_URING=0      1: let dpfs use FUSE over io_uring (its default, fuse.io_uring
#                     = auto) by setting the fuse module's enable_uring for the
#                     run, as a host that wants it would (restored after); 0:
#                     leave the module as it is. libfuse 3.14 has no io_uring.
#   OUT=docs/FUSE_BENCHMARKS.md
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNTIME=${RUNTIME:-10}
REPEAT=${REPEAT:-1}
QUIET_WAIT=${QUIET_WAIT:-60}
THREADS=${THREADS:-$(nproc)}
DPFS_ARGS=${DPFS_ARGS---no-xattr}
FILE_SIZE=${FILE_SIZE:-256M}
TARGETS=${TARGETS:-dpfs-null dpfs-memfs dpfs-passthrough libfuse-null libfuse-passthrough_ll}
OUT=$(bench_abs "${OUT:-docs/FUSE_BENCHMARKS.md}")
EXAMPLES=${EXAMPLES:-/usr/share/doc/libfuse3-dev/examples}
DPFS=$BUILD/dpfs
BENCH_BIN=$BUILD/bench

# The fio jobs: name, then fio arguments. NULL_SIZE spans the null files
# (dpfs null: 1 TiB, libfuse null: 4 GiB).
NULL_SIZE=4G
JOBS=(
  "randread-4k-qd1|--rw=randread --bs=4k --iodepth=1"
  "randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
  "read-1m-qd8|--rw=read --bs=1M --iodepth=8"
  "write-1m-qd8|--rw=write --bs=1M --iodepth=8"
  "randwrite-4k-qd32|--rw=randwrite --bs=4k --iodepth=32"
)
FIO_COMMON="--ioengine=libaio --direct=1 --time_based --runtime=$RUNTIME --numjobs=1 \
--lat_percentiles=1 --output-format=json"

WORK=$(mktemp -d /tmp/dpfs-bench.XXXXXX)
RESULTS=$BENCH_BIN/results  # kept after the run: bench/fuse_bench_report.py rereads it
DAEMON_PID=""
MOUNTS=()   # FUSE mounts to take down, most recent last
TMPFS=()    # tmpfs mounts of ours

mount_type() { awk -v m="$1" '$5 == m { for (i = 7; $i != "-"; i++); t = $(i + 1) } END { print t }' \
  /proc/self/mountinfo; }

# Stops the running daemon (SIGTERM; both dpfs and libfuse unmount on it)
# and makes sure its mount is gone.
stop_daemon() {
  local mnt=$1
  bench_stop_pid "$DAEMON_PID" 10
  DAEMON_PID=""
  if is_mounted "$mnt"; then
    fusermount3 -u "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
  fi
}

URING_PARAM=/sys/module/fuse/parameters/enable_uring
SAVED_URING=""
cleanup() {
  local rc=$?
  local m
  if [[ -n $SAVED_URING ]]; then echo "$SAVED_URING" >"$URING_PARAM" 2>/dev/null || true; fi
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do stop_daemon "${MOUNTS[i]}"; done
  for m in "${TMPFS[@]}"; do umount -l "$m" 2>/dev/null || true; done
  for m in "${MOUNTS[@]}" "${TMPFS[@]}"; do
    is_mounted "$m" && log "WARNING: $m is still mounted"
  done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------
# Preconditions and builds

bench_need_root "it mounts file systems"
[[ -r /dev/fuse && -w /dev/fuse ]] || die "/dev/fuse is not usable"
bench_need fio=fio gcc=gcc pkg-config=pkg-config python3=python3 fusermount3=fuse3
pkg-config --exists fuse3 || die "fuse3 development files not found: apt-get install -y libfuse3-dev"

mkdir -p "$BENCH_BIN"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
for ex in null passthrough_ll; do
  src=$EXAMPLES/$ex.c
  if [[ ! -f $src && -f $src.gz ]]; then
    zcat "$src.gz" >"$WORK/$ex.c"
    src=$WORK/$ex.c
  fi
  [[ -f $src ]] || die "$EXAMPLES/$ex.c not found (apt: libfuse3-dev)"
  # shellcheck disable=SC2046
  gcc -O2 -I"$EXAMPLES" -o "$BENCH_BIN/$ex" "$src" $(pkg-config --cflags --libs fuse3) ||
    die "compiling libfuse's $ex"
done
log "built libfuse's null and passthrough_ll into $BENCH_BIN"

# dpfs's /dev/fuse transport: io_uring where the module allows it.
if [[ ${FUSE_URING:-0} = 1 && -w $URING_PARAM ]]; then
  SAVED_URING=$(cat "$URING_PARAM")
  echo 1 >"$URING_PARAM"
  DPFS_TRANSPORT="FUSE over io_uring (fuse.io_uring = auto, the module's enable_uring set for the run)"
else
  DPFS_TRANSPORT="/dev/fuse read and write (enable_uring: $(cat "$URING_PARAM" 2>/dev/null || echo absent))"
fi
# Other work on the machine skews every number here: say so in the report.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_BEFORE%% *}" -v n="$(nproc)" 'BEGIN { exit !(l > n / 4) }'; then
  log "WARNING: load average $LOAD_BEFORE on $(nproc) CPUs; results will be noisy"
fi

if [[ " $TARGETS " = *" dpfs-"* ]]; then bench_build dpfs; fi

# ---------------------------------------------------------------------------
# Mounting

# Waits until `mnt` is a FUSE mount served by DAEMON_PID; fails loudly.
wait_for_mount() {
  local mnt=$1 daemon_log=$2
  for _ in $(seq 200); do
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
      cat "$daemon_log" >&2 || true
      die "the daemon for $mnt exited before mounting (its log is above)"
    fi
    if is_mounted "$mnt" && [[ $(mount_type "$mnt") = fuse* ]] && stat "$mnt" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.05
  done
  cat "$daemon_log" >&2 || true
  die "$mnt did not come up as a FUSE mount within 10 s (daemon log above)"
}

# A fresh tmpfs on DIR (once per run) for a passthrough daemon to serve.
tmpfs_source() {
  mkdir -p "$1"
  if ! is_mounted "$1"; then
    mount -t tmpfs -o size=2G tmpfs "$1" || die "mounting a tmpfs on $1"
    TMPFS+=("$1")
  fi
}

# Starts the daemon of `target`; sets DAEMON_PID, MNT (the mount) and FILE
# (what fio uses), and echoes the daemon command line into $RESULTS.
start_target() {
  local target=$1
  local daemon_log=$WORK/$target.log
  local -a cmd
  local size=$NULL_SIZE
  case $target in
    dpfs-null)
      MNT=$WORK/$target; mkdir -p "$MNT"
      # shellcheck disable=SC2206
      cmd=("$DPFS" serve --backend null --fuse-mount "$MNT" --threads "$THREADS" $DPFS_ARGS)
      FILE=$MNT/zero
      ;;
    dpfs-memfs)
      MNT=$WORK/$target; mkdir -p "$MNT"
      # shellcheck disable=SC2206
      cmd=("$DPFS" serve --backend memfs --fuse-mount "$MNT" --threads "$THREADS" $DPFS_ARGS)
      FILE=$MNT/data
      size=$FILE_SIZE
      ;;
    libfuse-null)
      # null.c serves one file, and the mount point is that file.
      MNT=$WORK/$target; : >"$MNT"
      cmd=("$BENCH_BIN/null" -f "$MNT")
      FILE=$MNT
      ;;
    dpfs-passthrough)
      # The passthrough backend over a tmpfs of its own, as passthrough_ll's;
      # FUSE passthrough (fuse.passthrough) on unless DPFS_ARGS turn it off.
      local src=$WORK/tmpfs-dpfs
      tmpfs_source "$src"
      MNT=$WORK/$target; mkdir -p "$MNT"
      # shellcheck disable=SC2206
      cmd=("$DPFS" serve --backend "passthrough:$src" --fuse-mount "$MNT" --threads "$THREADS"
        $DPFS_ARGS)
      FILE=$MNT/data
      size=$FILE_SIZE
      ;;
    libfuse-passthrough_ll)
      local src=$WORK/tmpfs-src
      tmpfs_source "$src"
      MNT=$WORK/$target; mkdir -p "$MNT"
      cmd=("$BENCH_BIN/passthrough_ll" -f -o source="$src" "$MNT")
      FILE=$MNT/data
      size=$FILE_SIZE
      ;;
    *) die "unknown target $target" ;;
  esac
  log "$target: ${cmd[*]}"
  "${cmd[@]}" >"$daemon_log" 2>&1 &
  DAEMON_PID=$!
  MOUNTS+=("$MNT")
  wait_for_mount "$MNT" "$daemon_log"
  echo "${cmd[*]}" | sed "s|$WORK|\$WORK|g; s|$ROOT/||g" >"$RESULTS/$target.cmd"
  SIZE=$size
  echo "$FILE $SIZE" | sed "s|$WORK|\$WORK|g" >"$RESULTS/$target.file"
  if [[ $FILE = "$MNT/data" ]]; then
    # The data file, written before anything is measured.
    head -c "$FILE_SIZE" /dev/urandom >"$FILE" || die "writing $FILE"
  fi
  [[ -f $FILE ]] || die "$FILE is not a regular file on the $target mount"
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# Runs every fio job on the mounted target; results in $RESULTS/round$2.
run_jobs() {
  local target=$1 dir=$RESULTS/round$2 job name args before after busy_before busy_after
  mkdir -p "$dir"
  for job in "${JOBS[@]}"; do
    name=${job%%|*}
    args=${job#*|}
    kill -0 "$DAEMON_PID" 2>/dev/null || die "the $target daemon died"
    # shellcheck disable=SC2086
    local fio_cmd="fio --name=$name --filename=FILE --size=SIZE $args $FIO_COMMON"
    bench_wait_quiet
    before=$(cpu_ticks "$DAEMON_PID")
    busy_before=$(bench_busy_ticks)
    # shellcheck disable=SC2086
    fio --name="$name" --filename="$FILE" --size="$SIZE" $args $FIO_COMMON \
      >"$dir/$target.$name.json" 2>"$dir/$target.$name.err" ||
      { cat "$dir/$target.$name.err" >&2; die "fio $name on $target"; }
    after=$(cpu_ticks "$DAEMON_PID")
    busy_after=$(bench_busy_ticks)
    echo "$((after - before))" >"$dir/$target.$name.cpu"
    echo "$((busy_after - busy_before))" >"$dir/$target.$name.busy"
    echo "$fio_cmd" >"$RESULTS/$name.fiocmd"
    log "$target $name: $(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read"] if j["read"]["total_ios"] else j["write"]
print("%.0f IOPS, %.1f MB/s" % (d["iops"], d["bw_bytes"] / 1e6))' "$dir/$target.$name.json")"
  done
}

for round in $(seq "$REPEAT"); do
  for target in $TARGETS; do
    log "round $round of $REPEAT: $target"
    start_target "$target"
    run_jobs "$target" "$round"
    stop_daemon "$MNT"
    is_mounted "$MNT" && die "$MNT still mounted after stopping its daemon"
  done
done

# ---------------------------------------------------------------------------
# The report

mkdir -p "$(dirname "$OUT")"
CPU_MODEL=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
NPROC=$(nproc)
KERNEL=$(uname -r)
CLK_TCK=$(getconf CLK_TCK)
FIO_VERSION=$(fio --version)
FUSE_VERSION=$(pkg-config --modversion fuse3)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
JOB_NAMES="${JOBS[*]%%|*}"
# The command line as text, for the report (the quotes are meant literally).
# shellcheck disable=SC2089
INVOCATION="RUNTIME=$RUNTIME REPEAT=$REPEAT QUIET_WAIT=$QUIET_WAIT THREADS=$THREADS \
FILE_SIZE=$FILE_SIZE DPFS_ARGS='$DPFS_ARGS' TARGETS='$TARGETS' FUSE_URING=${FUSE_URING:-0} bench/fuse_bench.sh"
if [[ ${SKIP_BUILD:-0} = 1 ]]; then
  BUILD_CMD="(SKIP_BUILD=1: an existing ${BUILD#"$ROOT"/}/dpfs)"
else
  BUILD_CMD="cmake -S . -B ${BUILD#"$ROOT"/} -DCMAKE_BUILD_TYPE=Release && cmake --build ${BUILD#"$ROOT"/} --target dpfs"
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
# shellcheck disable=SC2090
export LOAD_BEFORE LOAD_AFTER CPU_MODEL NPROC KERNEL CLK_TCK FIO_VERSION FUSE_VERSION COMMIT DATE \
  JOB_NAMES RUNTIME REPEAT THREADS FILE_SIZE NULL_SIZE TARGETS INVOCATION BUILD_CMD DPFS_TRANSPORT
python3 -c '
import json, os, sys
keys = "LOAD_BEFORE LOAD_AFTER CPU_MODEL NPROC KERNEL CLK_TCK FIO_VERSION FUSE_VERSION COMMIT DATE \
JOB_NAMES RUNTIME REPEAT THREADS FILE_SIZE NULL_SIZE TARGETS INVOCATION BUILD_CMD DPFS_TRANSPORT".split()
json.dump({k: os.environ[k] for k in keys}, open(sys.argv[1], "w"), indent=1)' "$RESULTS/meta.json"
python3 "$ROOT/bench/fuse_bench_report.py" "$RESULTS" "$OUT" || die "writing the report"
bench_scrub "$OUT"
log "wrote $OUT (results kept in $RESULTS)"
