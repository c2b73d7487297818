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
W=$(mktemp -d /tmp/dpfs-kv-bench.XXXXXX)
PORT=$((20000 + RANDOM % 20000))
REDIS_PID="" DEV_PID=""
cleanup() {
  [[ -n $DEV_PID ]] && bench_stop_pid "$DEV_PID"
  [[ -n $REDIS_PID ]] && bench_stop_pid "$REDIS_PID"
  rm -rf "$W"
}
trap cleanup EXIT
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

redis-server --port "$PORT" --bind 127.0.0.1 --save '' --appendonly no --dir "$W" \
  --logfile "$W/redis.log" &
REDIS_PID=$!
for _ in $(seq 100); do redis-cli -p "$PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
URL=redis://127.0.0.1:$PORT/bench
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
      r0=$(ticks "$REDIS_PID")
      out=$("$B/dpfs-bench" --socket "$W/vu.sock" --workload "$workload" --depth "$depth" \
        --duration "$DURATION" --warmup 1 --file-size "$FILE_SIZE" --no-verify \
        --device-pid "$DEV_PID" --json)
      r1=$(ticks "$REDIS_PID")
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
      r0=$(ticks "$REDIS_PID")
      csv=$(redis-benchmark -p "$PORT" -t "$test" -d 4096 -c "$clients" -n $((clients == 1 ? 40000 : 200000)) \
        -r 16384 --csv -q 2>/dev/null | tail -1)
      r1=$(ticks "$REDIS_PID")
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
