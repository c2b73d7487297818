#!/usr/bin/env bash
# How long a tenant waits when its device process is killed (docs/restart.md):
# a supervised dpfs device (--processes per-device, the null backend)
# serves dpfs-bench (randread, depth 1), whose device process is killed
# with SIGKILL KILLS times, once a second; the supervisor's successor takes
# the front-end connection over. Prints, per round, the slowest request
# (lat_max_us: the pause, as the front-end saw it), the errors (must be 0)
# and the p50 beside a round with no kill; and the same for a second
# tenant (device "other", its own process) served meanwhile, whose
# process nobody kills.
#
#   BUILD=build   the build directory (dpfs, dpfs-bench)
#   KILLS=2       kills per round (the supervisor gives a device up after 5
#                 crashes within a minute: KILLS x ROUNDS stays below)
#   ROUNDS=2
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
B=$BUILD
KILLS=${KILLS:-2}
ROUNDS=${ROUNDS:-2}
bench_need python3=python3
[[ -x $B/dpfs && -x $B/dpfs-bench ]] || die "$B: dpfs or dpfs-bench not built"
bench_require_idle "the restart benchmark"
W=$(mktemp -d /tmp/dpfs-restart-bench.XXXXXX)
DEV_PID=""
cleanup() {
  [[ -n $DEV_PID ]] && bench_stop_pid "$DEV_PID"
  rm -rf "$W"
}
trap cleanup EXIT
cat >"$W/dpfs.toml" <<EOF
[[device]]
socket = "$W/vu.sock"
tag = "restart"
[device.backend]
type = "null"
[[device]]
socket = "$W/other.sock"
tag = "other"
[device.backend]
type = "null"
EOF
"$B/dpfs" serve --config "$W/dpfs.toml" --processes per-device >"$W/dpfs.log" 2>&1 &
DEV_PID=$!
for _ in $(seq 200); do [[ -S $W/vu.sock && -S $W/other.sock ]] && break; sleep 0.05; done
[[ -S $W/vu.sock ]] || die "the device did not start: $(cat "$W/dpfs.log")"
serving() { sed -n 's/.*vhost-user restart .*: served by process \([0-9]*\).*/\1/p' "$W/dpfs.log" | tail -1; }

log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "| round | tenant | kills | ops | errors | p50 µs | p99 µs | slowest request µs |"
echo "|---|---|--:|--:|--:|--:|--:|--:|"
row() {  # JSON ROUND TENANT KILLS
  python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("| %s | %s | %s | %d | %d | %.1f | %.1f | %.0f |" % (sys.argv[2], sys.argv[3], sys.argv[4],
      r["ops"], r["errors"], r["lat_p50_us"], r["lat_p99_us"], r["lat_max_us"]))
' "$@"
}
for round in $(seq "$ROUNDS"); do
  for kills in 0 "$KILLS"; do
    "$B/dpfs-bench" --socket "$W/vu.sock" --workload randread --depth 1 \
      --duration $((kills + 2)) --warmup 0 --json >"$W/run.json" &
    bench=$!
    "$B/dpfs-bench" --socket "$W/other.sock" --workload randread --depth 1 \
      --duration $((kills + 2)) --warmup 0 --json >"$W/other.json" &
    other=$!
    for _ in $(seq "$kills"); do
      sleep 1
      kill -KILL "$(serving)"
    done
    wait "$bench" "$other"
    row "$W/run.json" "$round" "killed" "$kills"
    row "$W/other.json" "$round" "other" 0
  done
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
log "takeovers in the log: $(grep -c 'took the front-end connection over' "$W/dpfs.log")"
