#!/usr/bin/env bash
# The cost of the remote hop: the same backend served on a FUSE mount
# locally, and through a remote device (--backend remote://) and a server
# (--listen) on loopback, with the same fio jobs (4k random reads at depth 1
# and 32; libaio, O_DIRECT). Around every job it reads the CPU time of each
# dpfs process (utime + stime, all threads, /proc/PID/stat) and divides it
# by the I/Os fio completed. REPEAT rounds alternate the two paths; the
# table (as in docs/REMOTE_BENCHMARKS.md) shows, per path and depth, the
# round with the median IOPS, and the range of all rounds.
#
# Needs root (mounts), /dev/fuse, fio, python3, a build of dpfs.
#
# Environment:
#   BUILD=build        dpfs build directory
#   BACKEND=null       the backend both ways serve (null: "zero", 1 TiB)
#   RUNTIME=10         seconds per fio job
#   REPEAT=3           rounds
#   THREADS=2          device --threads
#   CONNECTIONS=2      --remote-connections
#   TLS=0              1: also the remote path with TLS (remote.tls_*, throwaway
#                      certificates made here with the openssl CLI)
#   DPFS_ARGS="--no-xattr --null-direct-io"   more flags for every dpfs
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DPFS=$BUILD/dpfs
BACKEND=${BACKEND:-null}
RUNTIME=${RUNTIME:-10}
REPEAT=${REPEAT:-3}
THREADS=${THREADS:-2}
CONNECTIONS=${CONNECTIONS:-2}
TLS=${TLS:-0}
DPFS_ARGS=${DPFS_ARGS---no-xattr --null-direct-io}

bench_need_root "FUSE mounts"
[[ -x $DPFS ]] || die "no dpfs at $DPFS (build it, or set BUILD)"
bench_need fio=fio python3=python3

WORK=$(mktemp -d /tmp/dpfs-remote-bench.XXXXXX)
MNT=$WORK/mnt
ROWS=$WORK/rows.jsonl
mkdir -p "$MNT"
PIDS=()
cleanup() {
  umount "$MNT" 2>/dev/null || umount -l "$MNT" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

wait_mounted() {
  for _ in $(seq 100); do
    awk -v m="$MNT" '$5 == m && $0 ~ /fuse.dpfs/ { f = 1 } END { exit !f }' /proc/self/mountinfo &&
      return 0
    sleep 0.1
  done
  die "dpfs did not mount $MNT; logs in $WORK"
}

# The file fio reads: null's "zero", or a file written first on memfs.
prepare_file() {
  if [[ $BACKEND == null ]]; then
    FILE=$MNT/zero
  else
    FILE=$MNT/data
    fio --name=fill --filename="$FILE" --rw=write --bs=1M --size=1G --direct=1 >/dev/null
  fi
}

# One fio job's result and the CPU each dpfs process spent, as a JSON line.
record() {
  python3 -c '
import json, sys
name, depth, path, hz, before, after = sys.argv[1:7]
r = json.load(open(path))["jobs"][0]["read"]
lat = r["lat_ns"]
pct = lat.get("percentile", {})
cpu = [(int(a) - int(b)) / int(hz) * 1e6 / r["total_ios"]
       for a, b in zip(after.split(), before.split())]
print(json.dumps({"path": name, "depth": int(depth), "iops": r["iops"],
                  "mean": lat["mean"] / 1e3, "p50": pct.get("50.000000", 0) / 1e3,
                  "p99": pct.get("99.000000", 0) / 1e3, "cpu": cpu}))
' "$@"
}

# run_jobs NAME PID... : the fio jobs on $FILE, one line each to $ROWS.
run_jobs() {
  local name=$1
  shift
  for depth in 1 32; do
    local before=() after=()
    for p in "$@"; do before+=("$(cpu_ticks "$p")"); done
    fio --name=r --filename="$FILE" --size=1G --rw=randread --bs=4k --iodepth=$depth \
      --ioengine=libaio --direct=1 --time_based --runtime="$RUNTIME" --numjobs=1 \
      --lat_percentiles=1 --output-format=json >"$WORK/fio.json"
    for p in "$@"; do after+=("$(cpu_ticks "$p")"); done
    record "$name" "$depth" "$WORK/fio.json" "$(getconf CLK_TCK)" "${before[*]}" "${after[*]}" \
      >>"$ROWS"
  done
}

run_local() {
  log "local: $BACKEND on $MNT"
  # shellcheck disable=SC2086
  "$DPFS" serve --backend "$BACKEND" --fuse-mount "$MNT" --threads "$THREADS" $DPFS_ARGS \
    >"$WORK/local.log" 2>&1 &
  local daemon=$!
  PIDS+=("$daemon")
  wait_mounted
  prepare_file
  run_jobs local "$daemon"
  kill "$daemon"
  wait "$daemon" || die "the local daemon failed; see $WORK/local.log"
}

tls_flags() {
  echo "--remote-tls-cert $WORK/pki/$1.pem --remote-tls-key $WORK/pki/$1.key" \
    "--remote-tls-ca $WORK/pki/ca.pem"
}

# run_remote NAME [tls]
run_remote() {
  local name=$1 server_flags="" device_flags=""
  if [[ ${2:-} == tls ]]; then
    server_flags=$(tls_flags server)
    device_flags=$(tls_flags device)
  fi
  log "$name: $BACKEND behind a server on loopback"
  # Not the last path's log: the grep below could read its port before the
  # new server's shell truncates the file.
  rm -f "$WORK/server.log"
  # shellcheck disable=SC2086
  "$DPFS" serve --listen tcp://127.0.0.1:0 --backend "$BACKEND" $DPFS_ARGS $server_flags \
    >"$WORK/server.log" 2>&1 &
  local server=$!
  PIDS+=("$server")
  local port=""
  for _ in $(seq 100); do
    port=$(grep -o 'listening on tcp://127.0.0.1:[0-9]*' "$WORK/server.log" | sed 's/.*://') || true
    [[ -n $port ]] && break
    sleep 0.1
  done
  [[ -n $port ]] || die "the server did not listen; see $WORK/server.log"
  # shellcheck disable=SC2086
  "$DPFS" serve --backend "remote://127.0.0.1:$port" --fuse-mount "$MNT" --threads "$THREADS" \
    --remote-connections "$CONNECTIONS" $DPFS_ARGS $device_flags >"$WORK/device.log" 2>&1 &
  local device=$!
  PIDS+=("$device")
  wait_mounted
  prepare_file
  run_jobs "$name" "$device" "$server"
  kill "$device"
  wait "$device" || die "the device failed; see $WORK/device.log"
  kill "$server"
  wait "$server" || die "the server failed; see $WORK/server.log"
}

if [[ $TLS == 1 ]]; then bash "$ROOT/scripts/test-certs.sh" "$WORK/pki" ca server device; fi
log "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$REPEAT"); do
  log "round $round of $REPEAT"
  run_local
  run_remote remote
  if [[ $TLS == 1 ]]; then run_remote remote-tls tls; fi
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

cat >"$WORK/report.py" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("| path | depth | IOPS (median round) | IOPS range | mean µs | p50 µs | p99 µs "
      "| dpfs CPU µs per read: device + server |")
print("|---|---|---|---|---|---|---|---|")
for path in ("local", "remote", "remote-tls"):
    for depth in (1, 32):
        runs = sorted((r for r in rows if r["path"] == path and r["depth"] == depth),
                      key=lambda r: r["iops"])
        if not runs:
            continue
        m = runs[len(runs) // 2]
        cpu = " + ".join(f"{c:.1f}" for c in m["cpu"])
        if len(m["cpu"]) > 1:
            cpu += f" = {sum(m['cpu']):.1f}"
        print(f"| {path} | {depth} | {m['iops']:.0f} | {runs[0]['iops']:.0f}..{runs[-1]['iops']:.0f} "
              f"| {m['mean']:.1f} | {m['p50']:.1f} | {m['p99']:.1f} | {cpu} |")
EOF
python3 "$WORK/report.py" "$ROWS"
