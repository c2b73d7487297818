#!/usr/bin/env bash
# The redis backend through a vhost-user device, against the floor a plain
# Redis client reaches on the same server: dpfs-bench (a userspace virtio-fs
# driver) does 4 KiB random reads and writes at depth 1 and 32 on a device
# serving redis://127.0.0.1:PORT/bench; redis-benchmark does GET and SET of
# 4 KiB values with 1 and 32 connections. Both on one redis-server of its
# own on loopback (no persistence), ROUNDS rounds. Prints Markdown tables
# (ops/s, latencies, the device's and the server's CPU per op) for
# docs/KV_BENCHMARKS.md; the load before and after on stderr.
#
# DPFS-KV (SYSTOR 2023), RAMCloud over RDMA, reported 62.6 µs per 4 KiB read
# and 70.8 µs per write at depth 1: the goal for the mean latency here.
#
#   BUILD=build   the build directory (dpfs, dpfs-bench)
#   DURATION=5    seconds per run
#   ROUNDS=2
#   FILE_SIZE=64M the data file
#   DPFS_ARGS=    more `dpfs serve` options (say, --poll-budget 0)
#   CLUSTER=N     a Redis Cluster of N masters (no replicas) instead of one
#                 server: chunks spread over them, redis-benchmark --cluster;
#                 the redis CPU column sums every node's
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
B=$BUILD
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
FILE_SIZE=${FILE_SIZE:-64M}
bench_need redis-server=redis-server redis-benchmark=redis-tools python3=python3
[[ -x $B/dpfs && -x $B/dpfs-bench ]] || die "$B: dpfs or dpfs-bench not built"
bench_require_idle "the redis backend benchmark"
CLUSTER=${CLUSTER:-0}
W=$(mktemp -d /tmp/dpfs-kv-bench.XXXXXX)
# A cluster's bus port is the port + 10000: both below 65536.
PORT=$((12000 + RANDOM % 20000))
REDIS_PIDS=() DEV_PID=""
cleanup() {
  [[ -n $DEV_PID ]] && bench_stop_pid "$DEV_PID"
  for pid in "${REDIS_PIDS[@]}"; do bench_stop_pid "$pid"; done
  rm -rf "$W"
}
trap cleanup EXIT
# CPU ticks of every redis-server.
ticks() {
  local sum=0 pid
  for pid in "${REDIS_PIDS[@]}"; do sum=$((sum + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done
  echo "$sum"
}

start_redis() {  # PORT [ARGS...]
  local port=$1
  shift
  mkdir -p "$W/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$W/$port" \
    --logfile "$W/$port/redis.log" "$@" &
  REDIS_PIDS+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
}
if ((CLUSTER > 0)); then
  nodes=() hosts=""
  for i in $(seq 0 $((CLUSTER - 1))); do
    start_redis $((PORT + i)) --cluster-enabled yes --cluster-config-file "$W/nodes-$i.conf"
    nodes+=("127.0.0.1:$((PORT + i))")
    hosts+="${hosts:+,}127.0.0.1:$((PORT + i))"
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$W/create.log" 2>&1 ||
    die "redis-cli --cluster create failed: $(cat "$W/create.log")"
  for _ in $(seq 200); do
    ok=1
    for i in $(seq 0 $((CLUSTER - 1))); do
      redis-cli -p $((PORT + i)) cluster info | grep -q cluster_state:ok || ok=0
    done
    ((ok)) && break
    sleep 0.05
  done
  URL=redis://$hosts/bench
  BENCH_CLUSTER=(--cluster)
else
  start_redis "$PORT"
  URL=redis://127.0.0.1:$PORT/bench
  BENCH_CLUSTER=()
fi
"$B/dpfs" kv format "$URL" >/dev/null
# shellcheck disable=SC2086
"$B/dpfs" serve --backend "$URL" --vhost-user "$W/vu.sock" --threads 1 --processes single \
  --log-level warn ${DPFS_ARGS:-} >"$W/dpfs.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 100); do [[ -S $W/vu.sock ]] && break; sleep 0.05; done
[[ -S $W/vu.sock ]] || die "the device did not start: $(cat "$W/dpfs.log")"

log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| client | job | depth | ops/s | mean µs | p50 µs | p99 µs | device CPU µs/op | redis CPU µs/op |"
echo "|---|---|--:|--:|--:|--:|--:|--:|--:|"
for round in $(seq "$ROUNDS"); do
  for workload in randread randwrite; do
    for depth in 1 32; do
      r0=$(ticks)
      out=$("$B/dpfs-bench" --socket "$W/vu.sock" --workload "$workload" --depth "$depth" \
        --duration "$DURATION" --warmup 1 --file-size "$FILE_SIZE" --no-verify \
        --device-pid "$DEV_PID" --json)
      r1=$(ticks)
      python3 -c '
import json, sys
r = json.loads(sys.argv[1])
srv = (int(sys.argv[3]) - int(sys.argv[2])) / 100 * 1e6 / max(r["ops"], 1)
v = ["dpfs device (round %s)" % sys.argv[6], sys.argv[4], sys.argv[5], "%.0f" % r["ops_per_s"],
     "%.1f" % r["lat_mean_us"], "%.1f" % r["lat_p50_us"], "%.1f" % r["lat_p99_us"],
     "%.1f" % r["device_cpu_us_per_op"], "%.1f" % srv]
if r["errors"]: v[0] += " (%d errors: %s)" % (r["errors"], r["first_error"])
print("| " + " | ".join(v) + " |")
' "$out" "$r0" "$r1" "$workload" "$depth" "$round"
    done
  done
  # The floor: a plain client, 4 KiB values, the same server.
  for clients in 1 32; do
    for test in set get; do
      r0=$(ticks)
      csv=$(redis-benchmark "${BENCH_CLUSTER[@]}" -p "$PORT" -t "$test" -d 4096 -c "$clients" -n $((clients == 1 ? 40000 : 200000)) \
        -r 16384 --csv -q 2>/dev/null | tail -1)
      r1=$(ticks)
      python3 -c '
import csv, sys
row = next(csv.reader([sys.argv[1]]))
ops = float(row[1]); n = float(sys.argv[6])
srv = (int(sys.argv[3]) - int(sys.argv[2])) / 100 * 1e6 / n
us = lambda ms: "%.1f" % (float(ms) * 1000)
print("| redis-benchmark (round %s) | %s 4K | %s | %.0f | %s | %s | %s | - | %.1f |" % (
    sys.argv[7], sys.argv[4].upper(), sys.argv[5], ops, us(row[2]), us(row[4]), us(row[6]), srv))
' "$csv" "$r0" "$r1" "$test" "$clients" "$((clients == 1 ? 40000 : 200000))" "$round"
    done
  done
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
