#!/usr/bin/env bash
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
#   DURATION=3 WARMUP=1                            seconds measured and warmed up per run
#   MARKDOWN=1                                     a Markdown table instead of a line per run
set -u
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-1}
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
bench_need "$VIRTIOFSD=qemu-system-common" python3=python3
[[ -x $BUILD/dpfs && -x $BUILD/dpfs-bench ]] || die "$BUILD: dpfs or dpfs-bench not built"
W=$(mktemp -d /tmp/pt-devb.XXXX)
mkdir -p "$W/share"
trap 'rm -rf "$W"' EXIT
wait_socket() {
  for _ in $(seq 100); do [[ -S $W/s.sock ]] && break; sleep 0.05; done
  sleep 0.3
}
# The data file is written (by dpfs-bench, through dpfs) and synced before
# any measured run: otherwise the first run shares the CPUs with ext4's
# writeback of 64 MiB.
"$BUILD/dpfs" serve --backend "passthrough:$W/share" --vhost-user "$W/s.sock" --threads 1 \
  >"$W/prepare.log" 2>&1 &
P=$!
wait_socket
"$BUILD/dpfs-bench" --socket "$W/s.sock" --workload randread --duration 0.5 --warmup 0 \
  --file-size 64M >/dev/null 2>&1
kill $P 2>/dev/null
wait $P 2>/dev/null
sync
if [[ ${MARKDOWN:-0} = 1 ]]; then
  echo "| device | workload | depth | ops/s | mean µs | p99 µs | device CPU µs/op | errors |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|"
fi
for wl in ${WORKLOADS:-randread}; do
  for qd in 1 32; do
    for dev in dpfs-pt ${DPFS_BEFORE:+dpfs-before} virtiofsd; do
      rm -f "$W/s.sock"
      if [[ $dev = dpfs-before ]]; then
        # shellcheck disable=SC2086
        "$DPFS_BEFORE" serve --backend "passthrough:$W/share" --vhost-user "$W/s.sock" --threads 1 \
          ${DPFS_ARGS:-} >"$W/$dev.log" 2>&1 &
      elif [[ $dev = dpfs-pt ]]; then
        # shellcheck disable=SC2086
        "$BUILD/dpfs" serve --backend "passthrough:$W/share" --vhost-user "$W/s.sock" --threads 1 \
          ${DPFS_ARGS:-} >"$W/$dev.log" 2>&1 &
      else
        "$VIRTIOFSD" --socket-path="$W/s.sock" -o source="$W/share" -o cache=none >"$W/$dev.log" 2>&1 &
      fi
      P=$!
      wait_socket
      run=$W/$dev.$wl.$qd
      "$BUILD/dpfs-bench" --socket "$W/s.sock" --device-pid $P --label "$dev" --workload "$wl" \
        --depth $qd --duration "$DURATION" --warmup "$WARMUP" --file-size 64M --json \
        >"$run.json" 2>"$run.err"
      python3 - "$run.json" "$dev" "$wl" "$qd" "${MARKDOWN:-0}" <<'PY' 2>/dev/null ||
import json, sys
path, dev, wl, qd, markdown = sys.argv[1:6]
d = json.load(open(path))
if markdown == "1":
    print(f"| {dev} | {wl} | {qd} | {d['ops_per_s']:.0f} | {d['lat_mean_us']:.1f} "
          f"| {d['lat_p99_us']:.1f} | {d['device_cpu_us_per_op']} | {d['errors']} |")
else:
    print(f"{dev} {wl} qd{qd}", "ops/s=%.0f" % d["ops_per_s"], "lat_mean=%.1f" % d["lat_mean_us"],
          "p99=%.1f" % d["lat_p99_us"], "dev_cpu_us/op=%s" % d["device_cpu_us_per_op"],
          "errors=%s" % d["errors"])
PY
        if [[ ${MARKDOWN:-0} = 1 ]]; then
          echo "| $dev | $wl | $qd | failed: $(tail -1 "$run.err") | | | | |"
        else
          echo "$dev $wl qd$qd failed: $(tail -2 "$run.err")"
        fi
      kill $P 2>/dev/null
      wait $P 2>/dev/null
    done
  done
done
