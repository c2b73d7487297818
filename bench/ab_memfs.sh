#!/usr/bin/env bash
# A/B of two dpfs binaries on the same work, alternated, in one run:
#   bench/ab_memfs.sh OLD_DPFS NEW_DPFS   (DUR=seconds per run, default 3)
# memfs, one worker, driven by build/dpfs-bench (the same driver for both).
set -u
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH=$ROOT/build/dpfs-bench
OLD=$1 NEW=$2
run() { # bin label workload depth
  local sock=/tmp/ab.$$.sock; rm -f $sock
  $1 serve --backend memfs --vhost-user $sock --threads 1 >/tmp/ab.$2.log 2>&1 &
  local pid=$!
  for i in $(seq 100); do [[ -S $sock ]] && break; sleep 0.05; done
  sleep 0.2
  $BENCH --socket $sock --workload $3 --depth $4 --duration ${DUR:-3} --warmup 0.5 --device-pid $pid --json 2>/dev/null | python3 -c "import json,sys; d=json.load(sys.stdin); print('$2 $3 qd$4', round(d['ops_per_s']), 'ops/s', d['device_cpu_us_per_op'], 'us/op', d['lat_p50_us'], 'p50')"
  kill $pid; wait $pid 2>/dev/null
}
for w in "getattr 32" "randread 32" "randwrite 32" "getattr 1"; do
  set -- $w
  for round in 1 2; do
    run $OLD before $1 $2
    run $NEW after $1 $2
  done
done
