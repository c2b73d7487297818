#!/bin/sh
# Guest workload (busybox sh): what an earlier guest left on the file system,
# read back by a later one -- a new QEMU on the same daemon socket, which
# must keep its files across front-ends.
#
# 1. If dpfs-basic/MANIFEST.md5 exists (basic.sh ran before), every file in
#    it must match: "readback: basic's N files intact".
# 2. Pattern files whose bytes the host can produce with the same commands
#    (seq, yes, head): written if dpfs-readback/ is missing ("write" phase),
#    else only read ("verify" phase). Either way each is read back after
#    dropping the page cache and printed as "READBACK <phase> <name> <md5>"
#    for the host to compare with its own md5 of the same bytes.
# Exits 1 on any mismatch.
set -u
M=${DPFS_MNT:-/mnt}
D=$M/dpfs-readback
fails=0
fail() { fails=$((fails + 1)); echo "FAIL: $*"; }

if [ -f "$M/dpfs-basic/MANIFEST.md5" ]; then
  n=$(wc -l <"$M/dpfs-basic/MANIFEST.md5")
  if (cd "$M/dpfs-basic" && md5sum -c -s MANIFEST.md5); then
    echo "readback: basic's $n files intact"
  else
    fail "basic's files changed"
    (cd "$M/dpfs-basic" && md5sum -c MANIFEST.md5 2>&1 | grep -v ': OK$' | head -n 20)
  fi
else
  echo "readback: no dpfs-basic/MANIFEST.md5"
fi

# name|command producing its bytes (the host runs the same commands)
patterns='seq|seq 1 250000
yes|yes dpfs-readback-0123456789 | head -c 3000017
small|seq 7 13
empty|head -c 0 /dev/zero'

if [ -d "$D" ]; then
  phase=verify
else
  phase=write
  mkdir "$D" || fail "mkdir $D"
  echo "$patterns" | while IFS='|' read -r name cmd; do
    sh -c "$cmd" >"$D/$name" || echo "FAIL: write $name"
  done
  sync
fi
echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
echo "$patterns" | while IFS='|' read -r name cmd; do
  if [ -f "$D/$name" ]; then
    echo "READBACK $phase $name $(md5sum "$D/$name" | cut -d' ' -f1)"
  else
    echo "READBACK $phase $name missing"
  fi
done
echo "readback: phase $phase, $fails failed"
[ $fails = 0 ]
