#!/bin/bash
# dpfs's passthrough backend against QEMU's virtiofsd (-o cache=none) over the
# same directory on /tmp's file system, both driven by dpfs-bench (a userspace
# virtio-fs driver: no guest), 4k random reads of a 64 MiB file (in the page
# cache) at depth 1 and 32, 3 s each after 1 s of warm-up; one device thread
# each (dpfs --threads 1). Prints ops/s, latency and the device's CPU per op.
#
#   BUILD=build bench/passthrough_device_bench.sh   (dpfs and dpfs-bench built there)
#   DPFS_ARGS="--passthrough-io-uring off" ...      extra dpfs serve options
#   DPFS_BEFORE=/path/to/older/dpfs ...            also that binary, as "dpfs-before"
#   WORKLOADS="randread randwrite" ...             dpfs-bench workloads (default randread)
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
B=${BUILD:-$ROOT/build}
[[ $B = /* ]] || B=$ROOT/$B
W=$(mktemp -d /tmp/pt-devb.XXXX); mkdir -p $W/share
# The data file is written (by dpfs-bench, through dpfs) and synced before
# any measured run: otherwise the first run shares the CPUs with ext4's
# writeback of 64 MiB.
$B/dpfs serve --backend passthrough:$W/share --vhost-user $W/s.sock --threads 1 > $W/prepare.log 2>&1 &
P=$!
for i in $(seq 100); do [ -S $W/s.sock ] && break; sleep 0.05; done; sleep 0.3
$B/dpfs-bench --socket $W/s.sock --workload randread --duration 0.5 --warmup 0 --file-size 64M > /dev/null 2>&1
kill $P 2>/dev/null; wait $P 2>/dev/null; sync
for wl in ${WORKLOADS:-randread}; do
for qd in 1 32; do
  for dev in dpfs-pt ${DPFS_BEFORE:+dpfs-before} virtiofsd; do
    rm -f $W/s.sock
    if [ $dev = dpfs-before ]; then
      $DPFS_BEFORE serve --backend passthrough:$W/share --vhost-user $W/s.sock --threads 1 ${DPFS_ARGS:-} > $W/$dev.log 2>&1 &
    elif [ $dev = dpfs-pt ]; then
      $B/dpfs serve --backend passthrough:$W/share --vhost-user $W/s.sock --threads 1 ${DPFS_ARGS:-} > $W/$dev.log 2>&1 &
    else
      /usr/lib/qemu/virtiofsd --socket-path=$W/s.sock -o source=$W/share -o cache=none > $W/$dev.log 2>&1 &
    fi
    P=$!
    for i in $(seq 100); do [ -S $W/s.sock ] && break; sleep 0.05; done; sleep 0.3
    $B/dpfs-bench --socket $W/s.sock --device-pid $P --label $dev --workload $wl --depth $qd --duration 3 --warmup 1 --file-size 64M --json > $W/$dev.$wl.$qd.json 2>$W/$dev.$wl.$qd.err
    python3 -c "import json,sys; d=json.load(open('$W/$dev.$wl.$qd.json')); print('$dev $wl qd$qd', 'ops/s=%.0f'%d['ops_per_s'], 'lat_mean=%.1f'%d['lat_mean_us'], 'p99=%.1f'%d['lat_p99_us'], 'dev_cpu_us/op=%s'%d['device_cpu_us_per_op'], 'errors=%s'%d['errors'])" 2>/dev/null || { echo "$dev $wl qd$qd failed: $(tail -2 $W/$dev.$wl.$qd.err)"; }
    kill $P 2>/dev/null; wait $P 2>/dev/null
  done
done
done
rm -rf $W
