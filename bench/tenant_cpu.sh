#!/usr/bin/env bash
# What the tenant pays per I/O, in guest instructions: the paper's headline
# (DPFS, SYSTOR '23: the host runs fewer instructions per I/O when its file
# system client is a virtio-fs device than with its own kernel NFS client),
# measured in one command. docs/TENANT_CPU.md is its report.
#
# One TCG guest per case and round (tests/guest/run-guest.sh), with the
# insn-count plugin (tests/guest/insn-count) loaded into QEMU; the guest runs
# tests/guest/workloads/tenant-cpu.sh: fio (libaio, direct=1) 4 KiB random
# reads and writes at depth 1 and 16, 1 MiB sequential reads and writes at
# depth 1, each bracketed by two markers at which the plugin writes the
# guest's instruction count and the host CPU time of the device and the NFS
# server; each job also runs once doing one I/O, whose cost (fio's start-up
# and exit) is subtracted. Cases:
#
#   dpfs-nfs3, dpfs-nfs4  the guest mounts virtio-fs from
#                         `dpfs serve --backend nfs://127.0.0.1/EXPORT/CASE?version=N`
#   knfs3, knfs4          the guest mounts the same export with its own kernel's
#                         NFS client (vers=3 / vers=4.0, TCP, over virtio-net
#                         and QEMU's user network)
#   dpfs-pt, virtiofsd    dpfs's passthrough backend and QEMU's virtiofsd
#                         (-o cache=none) over the same directory: the same
#                         guest driver, so only the device differs
#
# ganesha (bench/ganesha.sh) serves the export on 127.0.0.1; everything runs
# in a network namespace of its own (tests/guest/netns.sh). Per I/O: guest
# instructions (kernel and user mode), the guest's CPU time (its /proc/stat),
# the device's host CPU (dpfs or virtiofsd, all threads and children) and
# ganesha's. Instruction counts do not depend on the machine's load; times
# do, so a busy machine gets a warning, not a refusal.
#
# Needs root, qemu-system-x86 (TCG plugins: Debian's is built with them),
# qemu-system-common (virtiofsd), linux-image-amd64, busybox-static, cpio,
# fio, gcc, nfs-ganesha(-vfs), rpcbind, libnfs-utils, iproute2, python3,
# gnuplot-nox.
#
# Environment:
#   RUNTIME=5        seconds per time-based fio job
#   SIZE=64m         the data file
#   JOBS=all         or a comma list: randread-4k-qd1 randread-4k-qd16
#                    randwrite-4k-qd1 randwrite-4k-qd16 read-1m-qd1 write-1m-qd1
#   CASES="dpfs-nfs3 knfs3 dpfs-nfs4 knfs4 dpfs-pt virtiofsd"
#   ROUNDS=2         rounds; even rounds run the cases in reverse order
#   GUEST_MEM=512M
#   OUT=docs/TENANT_CPU.md   its generated section is rewritten (OUT=none: none)
#   IMG=docs/img     where tenant_cpu.png goes
#   RESULTS=build/bench/tenant-cpu   consoles, plugin output, results.tsv
#   BUILD=build      dpfs, dpfs-insn-count.so, dpfs-insn-mark (Release,
#                    built unless SKIP_BUILD=1); DPFS= another dpfs binary
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNTIME=${RUNTIME:-5}
SIZE=${SIZE:-64m}
JOBS=${JOBS:-all}
CASES=${CASES:-dpfs-nfs3 knfs3 dpfs-nfs4 knfs4 dpfs-pt virtiofsd}
ROUNDS=${ROUNDS:-2}
GUEST_MEM=${GUEST_MEM:-512M}
OUT=${OUT:-docs/TENANT_CPU.md}
[[ $OUT = none ]] || OUT=$(bench_abs "$OUT")
IMG=$(bench_abs "${IMG:-docs/img}")
RESULTS=$(bench_abs "${RESULTS:-$BUILD/bench/tenant-cpu}")
DPFS=${DPFS:-$BUILD/dpfs}
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
PLUGIN=$BUILD/dpfs-insn-count.so
MARK=$BUILD/dpfs-insn-mark
GUEST=$ROOT/tests/guest

if [[ ${DPFS_TENANT_CPU_NETNS:-} != 1 ]]; then
  bench_need_root "ganesha, virtiofsd, network namespaces"
  bench_need qemu-system-x86_64=qemu-system-x86 cpio=cpio fio=fio gcc=gcc python3=python3 \
    "$VIRTIOFSD=qemu-system-common" /usr/bin/ganesha.nfsd="nfs-ganesha nfs-ganesha-vfs" \
    /usr/sbin/rpcbind=rpcbind nfs-ls=libnfs-utils unshare=util-linux ip=iproute2
  [[ $OUT = none ]] || bench_need gnuplot=gnuplot-nox
  for c in $CASES; do
    case $c in
      dpfs-nfs3 | dpfs-nfs4 | knfs3 | knfs4 | dpfs-pt | virtiofsd) ;;
      *) die "unknown case $c (cases: dpfs-nfs3 knfs3 dpfs-nfs4 knfs4 dpfs-pt virtiofsd)" ;;
    esac
  done
  [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS wants a positive number"
  [[ $RUNTIME =~ ^[1-9][0-9]*$ ]] || die "RUNTIME wants whole seconds"
  # Instruction counts are the metric and do not depend on load; the times
  # beside them do.
  bench_is_idle || log "load average $(bench_load) >= MAX_LOAD=$MAX_LOAD: instruction counts are" \
    "unaffected, the times (IOPS, CPU per I/O) are noisier; measuring anyway"
  bench_build dpfs dpfs-insn-count dpfs-insn-mark
  [[ -x $DPFS ]] || die "$DPFS not found"
  grep -q 'Could not load plugin' <<<"$(qemu-system-x86_64 -machine none -display none \
    -plugin /nonexistent-plugin.so 2>&1 || true)" ||
    die "this QEMU takes no -plugin (built without TCG plugins)"
  LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
  export DPFS_TENANT_CPU_NETNS=1 RUNTIME SIZE JOBS CASES ROUNDS GUEST_MEM OUT IMG RESULTS BUILD DPFS \
    VIRTIOFSD LOAD_BEFORE
  exec "$GUEST/netns.sh" bash "$ROOT/bench/tenant_cpu.sh"
fi

# ---- in the namespace ----------------------------------------------------------
WORK=$(mktemp -d /tmp/dpfs-tenant-cpu.XXXXXX)
chmod 755 "$WORK"
EXPORT=$WORK/export
SHARE=$WORK/share
mkdir -m 755 "$EXPORT" "$SHARE"
DEVICE_PID=""
cleanup() {
  local rc=$?
  bench_stop_pid "$DEVICE_PID"
  stop_ganesha
  if ((rc != 0)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=bench/ganesha.sh
source "$ROOT/bench/ganesha.sh"
start_ganesha || die "ganesha did not start"

rm -rf "$RESULTS"
mkdir -p "$RESULTS"
TAG=tenant

# run_case CASE ROUND: one guest running every job on CASE.
run_case() {
  local c=$1 r=$2 sock=$WORK/$1.sock target=() watch=() v spec rc=0
  local name=$c.r$r
  rm -f "$sock"
  case $c in
    dpfs-nfs3 | dpfs-nfs4)
      v=${c#dpfs-nfs}
      install -d -m 755 "$EXPORT/$c"
      echo "$DPFS serve --backend nfs://127.0.0.1/EXPORT/$c?version=$v --vhost-user SOCK --tag $TAG" \
        >"$RESULTS/$c.cmd"
      "$DPFS" serve --backend "nfs://127.0.0.1$EXPORT/$c?version=$v" --vhost-user "$sock" \
        --tag "$TAG" >"$RESULTS/$name.device.log" 2>&1 &
      DEVICE_PID=$!
      ;;
    knfs3 | knfs4)
      install -d -m 755 "$EXPORT/$c"
      if [[ $c = knfs3 ]]; then v=vers=3,proto=tcp,mountproto=tcp,nolock,port=2049; else v=vers=4.0,proto=tcp,port=2049; fi
      echo "the guest kernel's NFS client: mount -t nfs -o $v 10.0.2.2:/EXPORT/$c" >"$RESULTS/$c.cmd"
      target=(--nfs "10.0.2.2:$EXPORT/$c" --nfs-opts "$v")
      ;;
    dpfs-pt)
      echo "$DPFS serve --backend passthrough:SHARE --vhost-user SOCK --tag $TAG" >"$RESULTS/$c.cmd"
      "$DPFS" serve --backend "passthrough:$SHARE" --vhost-user "$sock" --tag "$TAG" \
        >"$RESULTS/$name.device.log" 2>&1 &
      DEVICE_PID=$!
      ;;
    virtiofsd)
      echo "$VIRTIOFSD --socket-path=SOCK -o source=SHARE -o cache=none" >"$RESULTS/$c.cmd"
      "$VIRTIOFSD" --socket-path="$sock" -o source="$SHARE" -o cache=none \
        >"$RESULTS/$name.device.log" 2>&1 &
      DEVICE_PID=$!
      ;;
  esac
  [[ -n $DEVICE_PID ]] && { target=(--socket "$sock" --tag "$TAG"); watch+=("cpu=device:$DEVICE_PID"); }
  [[ $c = *nfs* ]] && watch+=("cpu=server:$GANESHA_PID")
  spec="$PLUGIN,out=$RESULTS/$name.marks"
  for w in ${watch[@]+"${watch[@]}"}; do spec+=",$w"; done
  log "round $r: $c ($(date +%T))"
  "$GUEST/run-guest.sh" "${target[@]}" --workload "$GUEST/workloads/tenant-cpu.sh" --fio \
    --bin "$MARK" --plugin "$spec" --mem "$GUEST_MEM" --timeout 900 --quiet \
    --append "tenant.runtime=$RUNTIME tenant.size=$SIZE tenant.jobs=$JOBS" \
    --log "$RESULTS/$name.console" >"$RESULTS/$name.run-guest" 2>&1 || rc=$?
  bench_stop_pid "$DEVICE_PID"
  DEVICE_PID=""
  if ((rc != 0)); then
    tail -n 40 "$RESULTS/$name.run-guest" >&2
    die "$c, round $r: run-guest.sh exit $rc (console: $RESULTS/$name.console)"
  fi
}

read -ra cases <<<"$CASES"
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order=("${cases[@]}"); else mapfile -t order < <(printf '%s\n' "${cases[@]}" | tac); fi
  for c in "${order[@]}"; do run_case "$c" "$r"; done
done
stop_ganesha

{
  echo "runtime=$RUNTIME size=$SIZE jobs=$JOBS rounds=$ROUNDS cases=$CASES"
  echo "commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine=Linux $(uname -r), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1))"
  echo "qemu=$(qemu-system-x86_64 --version | head -1)"
  echo "load=before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$RESULTS/meta.txt"
python3 "$ROOT/bench/tenant_cpu_report.py" "$RESULTS" "$OUT" "$IMG" || die "the report failed"
if [[ $OUT != none ]]; then
  bench_scrub "$OUT"
  log "wrote $OUT and $IMG/tenant_cpu.png"
fi
log "results: $RESULTS/results.tsv"
