#!/bin/sh
# Guest workload: a short fio run on the virtio-fs mount (run-guest.sh puts fio
# into the guest because this script mentions it). Proves fio runs in the
# guest and that verified random writes and reads go through; the numbers are
# TCG-bound and are not a benchmark (NOTES.md).
# Knobs: FIO_SIZE (16m), FIO_RUNTIME (5).
set -u
M=${DPFS_MNT:-/mnt}
D=$M/dpfs-fio
rm -rf "$D"; mkdir -p "$D" || exit 1
command -v fio >/dev/null || { echo "fio-smoke: no fio in the guest"; exit 1; }
rc=0
# verified random writes, then a read-back verification pass
fio --name=wverify --directory="$D" --size="${FIO_SIZE:-16m}" --bs=4k \
    --rw=randwrite --ioengine=psync --verify=crc32c --do_verify=1 \
    --verify_fatal=1 --minimal >"/tmp/fio-w.out" 2>&1 || rc=1
[ $rc = 0 ] && echo "fio-smoke: verified randwrite ok" || { echo "fio-smoke: randwrite/verify FAILED"; cat "/tmp/fio-w.out"; }
fio --name=rread --directory="$D" --filename=wverify.0.0 --size="${FIO_SIZE:-16m}" \
    --bs=4k --rw=randread --ioengine=libaio --iodepth=8 --direct=1 \
    --time_based --runtime="${FIO_RUNTIME:-5}" --output-format=terse >"/tmp/fio-r.out" 2>&1 || rc=1
if [ $rc = 0 ]; then
  # terse v3: field 8 is read IOPS
  echo "fio-smoke: randread libaio depth 8 direct: $(cut -d';' -f8 "/tmp/fio-r.out" | tail -n1) IOPS (TCG guest)"
else
  echo "fio-smoke: randread FAILED"; cat "/tmp/fio-r.out"
fi
rm -rf "$D"
exit $rc
