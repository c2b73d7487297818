#!/bin/sh
# Guest workload for bench/guest_bench.sh: fio jobs on the virtio-fs mount,
# each bracketed by console markers the host watches to sample the daemon's
# CPU time:
#   JOB-BEGIN <name>      printed, then a 1 s pause before fio starts
#   JOB-END <name>        printed as soon as fio has finished
#   FIO-JSON-BEGIN <name> ... fio's JSON ... FIO-JSON-END <name>
#                         printed after JOB-END (outside the CPU window)
#   BENCH-ERROR <name> <status>  when a fio run fails
# Jobs: 4k random reads and writes at iodepth 1 and 32 and 1 MiB sequential
# reads and writes at iodepth 8 (libaio, direct=1, time-based, on a file
# written beforehand), then small-file metadata: fio's filecreate, filestat
# and filedelete engines over NFILES files. The numbers are TCG-bound: the
# guest is the bottleneck (NOTES.md); the daemon's CPU per I/O is the point.
# Knobs (kernel command line, via run-guest.sh --append): bench.runtime=S
# (default 8), bench.size=SIZE (64m), bench.nfiles=N (3000),
# bench.jobs="a,b,..." (default: all).
set -u
M=${DPFS_MNT:-/mnt}
D=$M/dpfs-bench
RUNTIME=8 SIZE=64m NFILES=3000 JOBS=all
for a in $(cat /proc/cmdline); do
  case $a in
    bench.runtime=*) RUNTIME=${a#*=} ;;
    bench.size=*) SIZE=${a#*=} ;;
    bench.nfiles=*) NFILES=${a#*=} ;;
    bench.jobs=*) JOBS=${a#*=} ;;
  esac
done
command -v fio >/dev/null || { echo "BENCH-ERROR setup no-fio"; exit 1; }
rm -rf "$D"; mkdir -p "$D/meta" || { echo "BENCH-ERROR setup mkdir"; exit 1; }
echo "BENCH-CONFIG runtime=$RUNTIME size=$SIZE nfiles=$NFILES jobs=$JOBS kernel=$(uname -r) fio=$(fio --version)"
rc=0

want() { [ "$JOBS" = all ] && return 0; case ",$JOBS," in *",$1,"*) return 0 ;; esac; return 1; }

# run NAME FIO-ARGS...: one measured fio run
run() {
  name=$1; shift
  want "$name" || return 0
  echo "JOB-BEGIN $name"
  sleep 1
  fio --name="$name" --lat_percentiles=1 --output-format=json --output="/tmp/$name.json" "$@" \
    >"/tmp/$name.err" 2>&1
  s=$?
  echo "JOB-END $name"
  if [ $s != 0 ]; then
    echo "BENCH-ERROR $name $s"; cat "/tmp/$name.err"; rc=1
  fi
  echo "FIO-JSON-BEGIN $name"
  cat "/tmp/$name.json" 2>/dev/null
  echo "FIO-JSON-END $name"
  rm -f "/tmp/$name.json" "/tmp/$name.err"
}

# The data file, written once outside any CPU window (fio would lay it out).
F=$D/data
t0=$(cut -d" " -f1 /proc/uptime)
fio --name=prep --filename="$F" --size="$SIZE" --rw=write --bs=1M --ioengine=libaio \
  --iodepth=8 --direct=1 --minimal >/tmp/prep.out 2>&1 || { echo "BENCH-ERROR prep $?"; cat /tmp/prep.out; exit 1; }
echo "BENCH-PREP wrote $SIZE (guest uptime $t0 s to $(cut -d" " -f1 /proc/uptime) s)"

IO="--filename=$F --size=$SIZE --ioengine=libaio --direct=1 --time_based --runtime=$RUNTIME"
run randread-4k-qd1   $IO --rw=randread  --bs=4k --iodepth=1
run randread-4k-qd32  $IO --rw=randread  --bs=4k --iodepth=32
run randwrite-4k-qd1  $IO --rw=randwrite --bs=4k --iodepth=1
run randwrite-4k-qd32 $IO --rw=randwrite --bs=4k --iodepth=32
run read-1m-qd8       $IO --rw=read      --bs=1M --iodepth=8
run write-1m-qd8      $IO --rw=write     --bs=1M --iodepth=8
rm -f "$F"

# Small files: every job uses the same job name (meta) so they share the
# files meta.0.0 .. meta.0.N-1 in $D/meta.
MF="--directory=$D/meta --nrfiles=$NFILES --filesize=4k --openfiles=1 --bs=4k --fallocate=none"
meta() {
  name=$1; shift
  want "$name" || return 0
  run "$name" $MF --filename_format='meta.$jobnum.$filenum' "$@"
}
meta meta-create --ioengine=filecreate --create_on_open=1
# filestat lays out (writes 4k into) files shorter than filesize: do that
# outside the CPU window, so the measured pass only opens and stats.
if want meta-stat; then
  fio --name=meta-prep $MF --filename_format='meta.$jobnum.$filenum' --ioengine=filestat \
    --minimal >/tmp/mprep.out 2>&1 || { echo "BENCH-ERROR meta-prep $?"; cat /tmp/mprep.out; rc=1; }
fi
meta meta-stat --ioengine=filestat
meta meta-delete --ioengine=filedelete
rm -rf "$D"
echo "BENCH-DONE rc=$rc"
exit $rc
