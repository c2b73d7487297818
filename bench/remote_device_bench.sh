#!/usr/bin/env bash
# dpfs-bench (a userspace virtio-fs driver) against a vhost-user device that
# serves memfs itself ("local") and one that forwards to a dpfs server on
# loopback ("remote"), 4K random reads at depth 1 and 32, two rounds. Prints
# a Markdown table: path, depth, ops/s, mean/p50/p99 µs, device and server
# CPU µs per op (utime + stime of each process; the server's from
# /proc/PID/stat), errors; the load before and after on stderr. Results:
# docs/REMOTE_BENCHMARKS.md. Needs root and a build.
#   BUILD=build   the build directory (dpfs, dpfs-bench)
#   DURATION=5    seconds per run
#   ROUNDS=2      rounds of (local, remote)
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
B=$BUILD
DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2}
[[ -x $B/dpfs && -x $B/dpfs-bench ]] || die "$B: dpfs or dpfs-bench not built"
W=$(mktemp -d /tmp/rmt-dbench.XXXXXX)
trap 'rm -rf "$W"' EXIT
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
wait_socket() {
  for _ in $(seq 100); do [[ -S $W/vu.sock ]] && break; sleep 0.05; done
}
run() { # label devpid serverpid
  local d s0 s1 out
  for d in 1 32; do
    s0=0; [[ -n ${3:-} ]] && s0=$(ticks "$3")
    out=$("$B/dpfs-bench" --socket "$W/vu.sock" --workload randread --depth $d \
      --duration "$DURATION" --device-pid "$2" --json)
    s1=0; [[ -n ${3:-} ]] && s1=$(ticks "$3")
    python3 -c '
import json,sys
r=json.loads(sys.argv[1]); srv=(int(sys.argv[4])-int(sys.argv[3]))/100*1e6/r["ops"]
v=[sys.argv[2], sys.argv[5], "%.0f" % r["ops_per_s"], "%.1f" % r["lat_mean_us"], "%.1f" % r["lat_p50_us"], "%.1f" % r["lat_p99_us"], "%.1f" % r["device_cpu_us_per_op"], "%.1f" % srv, str(r["errors"])]
print("| " + " | ".join(v) + " |")
' "$out" "$1" "$s0" "$s1" "$d"
  done
}
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| path | depth | ops/s | mean µs | p50 µs | p99 µs | device CPU µs/op | server CPU µs/op | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for _ in $(seq "$ROUNDS"); do
  rm -f "$W/vu.sock"
  "$B/dpfs" serve --vhost-user "$W/vu.sock" --backend memfs --threads 1 >"$W/local.log" 2>&1 &
  L=$!
  wait_socket
  run local $L
  kill $L
  wait $L
  rm -f "$W/vu.sock" "$W/server.log"
  "$B/dpfs" serve --listen tcp://127.0.0.1:0 --backend memfs >"$W/server.log" 2>&1 &
  S=$!
  P=""
  for _ in $(seq 100); do
    P=$(grep -o 'tcp://127.0.0.1:[0-9]*' "$W/server.log" | sed 's/.*://' || true)
    [[ -n $P ]] && break
    sleep 0.05
  done
  [[ -n $P ]] || die "the server did not listen: $(cat "$W/server.log")"
  "$B/dpfs" serve --vhost-user "$W/vu.sock" --backend "remote://127.0.0.1:$P" --threads 1 \
    >"$W/device.log" 2>&1 &
  D=$!
  wait_socket
  run remote $D $S
  kill $D
  wait $D
  kill $S
  wait $S
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
