#!/usr/bin/env bash
# 4k random reads (direct=1, 5 s) on a local FUSE mount of dpfs's passthrough
# backend, at depth 1 (psync) and 32 (libaio), with the daemon's CPU time per
# read (utime+stime of all its threads, io-wq workers included).
#
#   bench/passthrough_fuse_bench.sh [dpfs serve options...]
#   SHARE=tmpfs bench/passthrough_fuse_bench.sh --passthrough-io-uring on
#
# SHARE=disk (default): the exported directory is on /tmp's file system;
# SHARE=tmpfs: on a fresh tmpfs. BUILD=build-dir (default build). Needs root, fio.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bench_need_root "it mounts"
bench_need fio=fio
B=$(mktemp -d /tmp/dpfs-pt-bench.XXXXXX)
mkdir -p "$B/src" "$B/mnt"
[[ ${SHARE:-disk} = tmpfs ]] && mount -t tmpfs tmpfs "$B/src"
"$BUILD/dpfs" serve --backend "passthrough:$B/src" --fuse-mount "$B/mnt" --threads 2 "$@" \
  >"$B/log" 2>&1 &
P=$!
cleanup() {
  kill "$P" 2>/dev/null && wait "$P" || true
  [[ ${SHARE:-disk} = tmpfs ]] && umount "$B/src"
  rm -rf "$B"
}
trap cleanup EXIT
for _ in $(seq 50); do grep -qs " $B/mnt " /proc/mounts && break; sleep 0.1; done
fio --name=prep --filename="$B/mnt/data" --size=64m --rw=write --bs=1M --direct=1 --minimal >/dev/null
ticks=$(getconf CLK_TCK)
for qd in 1 32; do
  engine=psync
  ((qd > 1)) && engine=libaio
  c0=$(awk '{print $14 + $15}' "/proc/$P/stat")
  out=$(fio --name=r --filename="$B/mnt/data" --size=64m --rw=randread --bs=4k --direct=1 \
    --ioengine=$engine --iodepth=$qd --runtime=5 --time_based --output-format=terse \
    --terse-version=3)
  c1=$(awk '{print $14 + $15}' "/proc/$P/stat")
  kib=$(cut -d';' -f6 <<<"$out")
  iops=$(cut -d';' -f8 <<<"$out")
  ios=$((kib / 4))
  echo "qd$qd: $iops IOPS, daemon $(((c1 - c0) * 1000000 / ticks / (ios > 0 ? ios : 1))) µs CPU per read"
done
