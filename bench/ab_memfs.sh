#!/usr/bin/env bash
# A/B of two dpfs binaries on the same work, alternated, in one run:
#   bench/ab_memfs.sh OLD_DPFS NEW_DPFS
# memfs, one worker pinned to CPU 0, driven by build/dpfs-bench (the same
# driver for both) pinned to CPU 1. DUR=seconds per run (default 3),
# ROUNDS=alternating pairs per workload (default 2), WORKLOADS="getattr:32
# randread:32 ..." (workload:depth), OLD_ARGS/NEW_ARGS=more `dpfs serve`
# options for each, BUILD=build: where the driver, dpfs-bench, is. The device's CPU time includes its child processes (a
# supervisor's serving process).
set -u
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
BENCH=$BUILD/dpfs-bench
OLD=$1 NEW=$2
run() { # bin label workload depth extra-args
  local sock=/tmp/ab.$$.sock; rm -f $sock /tmp/ab.$2.log  # the previous run's log would say "ready"
  taskset -c 0 $1 serve --backend memfs --vhost-user $sock --threads 1 $5 >/tmp/ab.$2.log 2>&1 &
  local pid=$!
  for _ in $(seq 100); do grep -q 'in the guest: mount' /tmp/ab.$2.log && break; sleep 0.05; done
  taskset -c 1 $BENCH --socket $sock --workload $3 --depth $4 --duration ${DUR:-3} --warmup 0.5 --device-pid $pid --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('$2 $3 qd$4', round(d['ops_per_s']), 'ops/s', d['device_cpu_us_per_op'], 'us/op', d['lat_p50_us'], 'p50')"
  kill $pid; wait $pid 2>/dev/null
}
for w in ${WORKLOADS:-getattr:32 randread:32 randwrite:32 getattr:1}; do
  for _ in $(seq "${ROUNDS:-2}"); do
    run $OLD before ${w%:*} ${w#*:} "${OLD_ARGS:-}"
    run $NEW after ${w%:*} ${w#*:} "${NEW_ARGS:-}"
  done
done
