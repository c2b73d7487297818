#!/usr/bin/env bash
# NFS backend benchmark: fio through a dpfs FUSE mount whose backend is an
# NFS export (nfs-ganesha, VFS FSAL, on 127.0.0.1), with the latency split
# into the NFS round trip and dpfs's own time, and the same jobs on:
#   dpfs-nfs3     build/dpfs serve --backend nfs://127.0.0.1/EXPORT?version=3
#   dpfs-nfs4     the same over NFSv4.0
#   dpfs-memfs    build/dpfs serve --backend memfs      (dpfs + FUSE, no NFS)
#   export        the exported directory itself         (no FUSE, no NFS)
# (The kernel's NFS client would be the natural peer; it cannot mount on this
# machine: "mount -t nfs" fails with "No such device".)
#
# dpfs is started afresh for every job, so the mean NFS round trip it logs at
# exit ("nfs connection I: N RPCs answered, mean round trip X us", one line per
# connection, weighted by RPCs here: from the
# RPC's send to its answer's callback, i.e. libnfs, loopback TCP and ganesha)
# belongs to that job. At depth 1 one 4k I/O is one RPC, so
#   dpfs's own time = fio's mean completion latency - the mean round trip
# (the tenant's kernel, FUSE, the session, the backend and the loop hand-off).
#
# Needs root, /dev/fuse, fio, python3, nfs-ganesha(-vfs), rpcbind.
# Environment: RUNTIME=10 (s per job), BUILD=build, FILE_SIZE=256M,
# OUT=docs/NFS_BENCHMARKS.md, DPFS_ARGS (more serve flags),
# TARGETS="dpfs-nfs3 dpfs-nfs4 dpfs-memfs export" (a subset to run).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNTIME=${RUNTIME:-10}
FILE_SIZE=${FILE_SIZE:-256M}
OUT=$(bench_abs "${OUT:-docs/NFS_BENCHMARKS.md}")
export DPFS_ARGS=${DPFS_ARGS:---no-xattr}
DPFS=$BUILD/dpfs
TARGETS=${TARGETS:-dpfs-nfs3 dpfs-nfs4 dpfs-memfs export}

JOBS=(
  "randread-4k-qd1|--rw=randread --bs=4k --iodepth=1"
  "randwrite-4k-qd1|--rw=randwrite --bs=4k --iodepth=1"
  "randread-4k-qd32|--rw=randread --bs=4k --iodepth=32"
  "read-1m-qd8|--rw=read --bs=1M --iodepth=8"
  "write-1m-qd8|--rw=write --bs=1M --iodepth=8"
)
FIO_COMMON="--ioengine=libaio --direct=1 --time_based --runtime=$RUNTIME --numjobs=1 \
--output-format=json"

bench_need_root "it mounts, and runs nfs-ganesha"
bench_need fio=fio python3=python3 /usr/bin/ganesha.nfsd="nfs-ganesha nfs-ganesha-vfs" \
  /usr/sbin/rpcbind=rpcbind nfs-ls=libnfs-utils
[[ -x $DPFS ]] || die "$DPFS not built (cmake --build $BUILD)"

WORK=$(mktemp -d /tmp/dpfs-nfs-bench.XXXXXX)
EXPORT=$WORK/export
MNT=$WORK/mnt
RESULTS=$WORK/results
mkdir -p "$EXPORT" "$MNT" "$RESULTS"
DPFS_PID=""
# shellcheck source=bench/ganesha.sh
source "$ROOT/bench/ganesha.sh"

cleanup() {
  bench_stop_pid "$DPFS_PID"
  if mountpoint -q "$MNT"; then umount -l "$MNT" || true; fi
  stop_ganesha
  rm -rf "$WORK"
}
trap cleanup EXIT
start_ganesha || die "cannot start ganesha"

# start_dpfs BACKEND: serves BACKEND at $MNT.
start_dpfs() {
  # shellcheck disable=SC2086
  "$DPFS" serve --backend "$1" --fuse-mount "$MNT" $DPFS_ARGS >"$WORK/dpfs.log" 2>&1 &
  DPFS_PID=$!
  for _ in $(seq 100); do
    grep -q "session up" "$WORK/dpfs.log" 2>/dev/null && return 0
    sleep 0.05
  done
  die "dpfs did not mount: $(cat "$WORK/dpfs.log")"
}
stop_dpfs() {
  kill "$DPFS_PID"
  wait "$DPFS_PID" || true
  DPFS_PID=""
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for target in $TARGETS; do
  for job in "${JOBS[@]}"; do
    name=${job%%|*}
    args=${job#*|}
    dir=$MNT
    case $target in
      dpfs-nfs3) start_dpfs "nfs://127.0.0.1$EXPORT?version=3" ;;
      dpfs-nfs4) start_dpfs "nfs://127.0.0.1$EXPORT?version=4" ;;
      dpfs-memfs) start_dpfs memfs ;;
      export) dir=$EXPORT ;;
    esac
    file=$dir/bench.dat
    [[ -f $file ]] || fio --name=layout --filename="$file" --size="$FILE_SIZE" --rw=write \
      --bs=1M --ioengine=psync --end_fsync=1 --output=/dev/null
    before=0
    [[ -n $DPFS_PID ]] && before=$(cpu_ticks "$DPFS_PID")
    log "$target $name"
    # shellcheck disable=SC2086
    fio --name="$name" --filename="$file" --size="$FILE_SIZE" $args $FIO_COMMON \
      >"$RESULTS/$target.$name.json"
    if [[ -n $DPFS_PID ]]; then
      echo $(($(cpu_ticks "$DPFS_PID") - before)) >"$RESULTS/$target.$name.ticks"
      stop_dpfs
      # One line per connection: the mean over all of them, by RPCs.
      grep -o "[0-9]* RPCs answered, mean round trip [0-9.]* us" "$WORK/dpfs.log" |
        awk '{n += $1; t += $1 * $7} END {if (n) printf "%.2f\n", t / n}' \
        >"$RESULTS/$target.$name.rtt" || true
    fi
  done
  [[ $target == dpfs-memfs ]] || rm -f "$EXPORT/bench.dat"
done

python3 - "$RESULTS" "$OUT" "$RUNTIME" "$FILE_SIZE" "$(getconf CLK_TCK)" <<'EOF'
import json, os, sys, datetime
results, out, runtime, size, hz = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
jobs = ["randread-4k-qd1", "randwrite-4k-qd1", "randread-4k-qd32", "read-1m-qd8", "write-1m-qd8"]
targets = ["dpfs-nfs3", "dpfs-nfs4", "dpfs-memfs", "export"]
def load(t, j):
    with open(f"{results}/{t}.{j}.json") as f:
        job = json.load(f)["jobs"][0]
    d = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
    ticks = rtt = None
    if os.path.exists(f"{results}/{t}.{j}.ticks"):
        ticks = int(open(f"{results}/{t}.{j}.ticks").read())
    if os.path.exists(f"{results}/{t}.{j}.rtt"):
        txt = open(f"{results}/{t}.{j}.rtt").read().split()
        rtt = float(txt[0]) if txt else None
    return d, ticks, rtt
lines = ["# NFS backend benchmarks", "",
         f"Generated by `bench/nfs_bench.sh` on {datetime.date.today()} ("
         f"{os.cpu_count()} CPUs). fio {runtime} s "
         f"per job, libaio, O_DIRECT, one {size} file. nfs-ganesha (VFS FSAL) serves the export "
         "on 127.0.0.1 (on the same 2 CPUs as dpfs and fio); dpfs-nfs3 and dpfs-nfs4 are dpfs FUSE "
         "mounts of it (NFSv3 and NFSv4.0); "
         "dpfs-memfs the same FUSE path with no NFS; export is fio on the exported directory "
         "itself. The kernel's NFS client cannot mount here (no nfs module), so it is not in "
         f"the table. Load average at the end: {os.getloadavg()[0]:.1f}. DPFS_ARGS: `{os.environ.get('DPFS_ARGS', '--no-xattr')}`.", "",
         f"Reproduce: `RUNTIME={runtime} FILE_SIZE={size} bash bench/nfs_bench.sh` (as root).", "",
         "| target | job | IOPS | MiB/s | mean lat (us) | p99 (us) | NFS round trip (us) | dpfs own (us) | daemon CPU/IO (us) |",
         "|---|---|---|---|---|---|---|---|---|"]
for t in targets:
    for j in jobs:
        try:
            d, ticks, rtt = load(t, j)
        except (OSError, ValueError, KeyError, IndexError):
            continue
        ios = d["total_ios"] or 1
        lat = d["clat_ns"]["mean"] / 1000
        p99 = d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000
        own = f"{lat - rtt:.1f}" if (rtt is not None and "qd1" in j) else ""
        cpu = f"{ticks / hz / ios * 1e6:.1f}" if ticks is not None else ""
        lines.append(f"| {t} | {j} | {d['iops']:.0f} | {d['bw'] / 1024:.1f} | {lat:.1f} | {p99:.1f} | "
                     f"{'' if rtt is None else f'{rtt:.1f}'} | {own} | {cpu} |")
lines += ["",
          "NFS round trip: dpfs's mean time from sending an RPC to its answer's callback "
          "(libnfs, loopback TCP, ganesha, the disk's page cache), logged by the backend at exit. "
          "dpfs own = mean latency - round trip, at depth 1 where one I/O is one RPC: the "
          "tenant's kernel and FUSE, the session, the backend and the way to the socket and back "
          "(each FUSE worker drives its own connection; no other thread in between). The published system (DPFS, SYSTOR '23) reports 38.6 us of "
          "device overhead and 52.9 us of userspace NFS at 4k on a BlueField-2.", ""]
open(out, "w").write("\n".join(lines))
print("\n".join(lines))
EOF
bench_scrub "$OUT"
log "wrote $OUT"
