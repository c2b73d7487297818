#!/bin/sh
# dpfs-exerciser (tools/exerciser.cc: fsx-style, every byte verified) on the
# virtio-fs mount: one run with mmap, one with --no-mmap. Needs the binary in
# the guest: run-guest.sh --bin build/dpfs-exerciser.
# Ops per run: EXERCISER_OPS in the environment, else exerciser.ops=N on the
# kernel command line (run-guest.sh --append), else 20000.
ops=${EXERCISER_OPS:-}
if [ -z "$ops" ]; then
  for arg in $(cat /proc/cmdline); do
    case $arg in exerciser.ops=*) ops=${arg#exerciser.ops=} ;; esac
  done
fi
ops=${ops:-20000}
mnt=${DPFS_MNT:-/mnt}
ex=$(command -v dpfs-exerciser || echo /usr/local/bin/dpfs-exerciser)
if [ ! -x "$ex" ]; then
  echo "exerciser: FAIL no dpfs-exerciser in the guest (run-guest.sh --bin)"
  exit 1
fi

status=0
run() {  # run NAME ARGS...: run the exerciser, print its last lines
  name=$1; shift
  t0=$(cut -d' ' -f1 /proc/uptime)
  "$ex" "$@" >/tmp/$name.out 2>&1
  rc=$?
  t1=$(cut -d' ' -f1 /proc/uptime)
  if [ $rc = 0 ]; then
    tail -n 2 /tmp/$name.out | sed "s/^/exerciser $name: /"
  else
    # the op log and the mismatch report: show them whole (bounded)
    tail -n 80 /tmp/$name.out | sed "s/^/exerciser $name: /"
    echo "exerciser $name: FAIL exit $rc ($*)"
    status=1
  fi
  echo "exerciser $name: $t0 -> $t1 s uptime"
}

run mmap -N "$ops" -S 7 "$mnt/exerciser.dat"
run no-mmap -N "$ops" -S 11 --no-mmap "$mnt/exerciser-nommap.dat"
rm -f "$mnt"/exerciser*.dat* 2>/dev/null
echo "exerciser: done, status $status"
exit $status
