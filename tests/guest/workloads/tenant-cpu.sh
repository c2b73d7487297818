#!/bin/sh
# Guest workload for bench/tenant_cpu.sh: what each fio job costs the guest,
# with the insn-count plugin (tests/guest/insn-count) loaded into QEMU.
#
# Every fio run is bracketed by two runs of dpfs-insn-mark (--bin
# build/dpfs-insn-mark), each of which makes the plugin write the guest's
# instruction count so far (and the watched host processes' CPU time); the
# guest's /proc/stat cpu line is read just outside the bracket. Nothing is
# printed inside a bracket (the serial console costs guest instructions).
# Each job runs twice: NAME-base, the same fio command doing one I/O (fio's
# start-up and exit, to subtract), then NAME, time-based. After each run:
#   TENANT-RUN NAME MARK0 MARK1 STATUS
#   TENANT-STAT NAME <cpu line before> | <cpu line after>
#   TENANT-JSON-BEGIN NAME ... fio's JSON ... TENANT-JSON-END NAME
# MARK0/MARK1: the plugin's mark numbers (0, 1, ...) of the bracket.
# Jobs (libaio, direct=1, on a file written first, outside any bracket):
#   randread-4k-qd1 randread-4k-qd16 randwrite-4k-qd1 randwrite-4k-qd16
#   read-1m-qd1 write-1m-qd1
# Knobs (kernel command line, run-guest.sh --append): tenant.runtime=S
# (default 5), tenant.size=SIZE (64m), tenant.jobs=a,b (default: all).
set -u
PATH=/usr/local/bin:$PATH
M=${DPFS_MNT:-/mnt}
D=$M/dpfs-tenant-cpu
RUNTIME=5 SIZE=64m JOBS=all
# shellcheck disable=SC2013  # the command line is words
for a in $(cat /proc/cmdline); do
  case $a in
    tenant.runtime=*) RUNTIME=${a#*=} ;;
    tenant.size=*) SIZE=${a#*=} ;;
    tenant.jobs=*) JOBS=${a#*=} ;;
  esac
done
for tool in fio dpfs-insn-mark; do
  command -v $tool >/dev/null || { echo "TENANT-ERROR setup no-$tool"; exit 1; }
done
rm -rf "$D"; mkdir -p "$D" || { echo "TENANT-ERROR setup mkdir"; exit 1; }
echo "TENANT-CONFIG runtime=$RUNTIME size=$SIZE jobs=$JOBS kernel=$(uname -r) fio=$(fio --version) cpus=$(grep -c ^processor /proc/cpuinfo)"
F=$D/data
fio --name=prep --filename="$F" --size="$SIZE" --rw=write --bs=1M --ioengine=libaio \
  --iodepth=8 --direct=1 --minimal >/tmp/prep.out 2>&1 || { echo "TENANT-ERROR prep $?"; cat /tmp/prep.out; exit 1; }

want() { [ "$JOBS" = all ] && return 0; case ",$JOBS," in *",$1,"*) return 0 ;; esac; return 1; }

mark=0 rc=0
# measure NAME FIO-ARGS...: one bracketed fio run
measure() {
  name=$1; shift
  s0=$(head -n1 /proc/stat)
  dpfs-insn-mark
  fio --name="$name" --output-format=json --output="/tmp/$name.json" "$@" >"/tmp/$name.err" 2>&1
  s=$?
  dpfs-insn-mark
  s1=$(head -n1 /proc/stat)
  echo "TENANT-RUN $name $mark $((mark + 1)) $s"
  mark=$((mark + 2))
  echo "TENANT-STAT $name $s0 | $s1"
  if [ $s != 0 ]; then echo "TENANT-ERROR $name $s"; cat "/tmp/$name.err"; rc=1; fi
  echo "TENANT-JSON-BEGIN $name"
  cat "/tmp/$name.json" 2>/dev/null
  echo "TENANT-JSON-END $name"
  rm -f "/tmp/$name.json" "/tmp/$name.err"
}

# job NAME RW BS DEPTH
job() {
  want "$1" || return 0
  common="--filename=$F --size=$SIZE --ioengine=libaio --direct=1 --rw=$2 --bs=$3 --iodepth=$4"
  # shellcheck disable=SC2086  # $common is a list of options
  measure "$1-base" $common --io_size="$3"
  # shellcheck disable=SC2086
  measure "$1" $common --time_based --runtime="$RUNTIME"
}

job randread-4k-qd1 randread 4k 1
job randread-4k-qd16 randread 4k 16
job randwrite-4k-qd1 randwrite 4k 1
job randwrite-4k-qd16 randwrite 4k 16
job read-1m-qd1 read 1M 1
job write-1m-qd1 write 1M 1
rm -f "$F"
echo "TENANT-DONE marks=$mark"
exit $rc
