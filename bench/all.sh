#!/usr/bin/env bash
# Every comparison, one after the other, each rewriting its page in docs/
# (docs/benchmarking.md says how to use it):
#
#   part         script(s)                        writes
#   device       device_bench.sh                  BENCHMARKS.md, img/device_*.png
#   passthrough  passthrough_device_bench.sh      PASSTHROUGH_BENCHMARKS.md: its "Latest run"
#   fuse         fuse_bench.sh                    FUSE_BENCHMARKS.md (to "FUSE over io_uring")
#   fuse-uring   fuse_uring_bench.sh              FUSE_BENCHMARKS.md: "FUSE over io_uring",
#                                                 its "Latest run"
#   nfs          nfs_bench.sh                     NFS_BENCHMARKS.md
#   nfs-device   nfs_device_bench.sh              NFS_DEVICE_BENCHMARKS.md
#   remote       remote_bench.sh,                 REMOTE_BENCHMARKS.md: its "Latest run"
#                remote_device_bench.sh
#   guest        guest_bench.sh                   GUEST_BENCHMARKS.md (a TCG guest: slow)
#   tenant-cpu   tenant_cpu.sh                    TENANT_CPU.md: its generated section,
#                                                 img/tenant_cpu.png (TCG guests: slow)
#
# A "Latest run" section sits between two HTML comments naming the part; the
# hand-written text around it is kept.
#
# Numbers taken on a busy machine are noise. Before the first part the
# 1-minute load must be under MAX_LOAD; before each later part it must fall
# under it within SETTLE seconds (the previous part's own load takes a minute
# or two to decay). Otherwise it stops, naming the part and the load: nothing
# is measured on a busy machine. FORCE=1 goes on at once, whatever the load
# (the pages say "provisional"). The tenant-cpu part only warns: its metric,
guest instructions, does not depend on the load. At the end every page written is checked for the
# measuring machine's paths and name; any found fails the run.
#
# Environment:
#   PARTS="device passthrough fuse fuse-uring nfs nfs-device remote guest tenant-cpu"
#   QUICK=1        a smoke run: tiny durations, one round; the pages go to a
#                  fresh directory under /tmp (printed), never to docs/
#   DOCS=docs      where the pages go (not with QUICK=1)
#   BUILD=build    built (Release) once here unless SKIP_BUILD=1
#   MAX_LOAD=0.5   SETTLE=300   FORCE=0
# Each part's own variables (DURATION, RUNTIME, REPEAT, ...) pass through to
# its script; QUICK=1 sets its own.
set -euo pipefail
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_PARTS="device passthrough fuse fuse-uring nfs nfs-device remote guest tenant-cpu"
PARTS=${PARTS:-$ALL_PARTS}
QUICK=${QUICK:-0}
SETTLE=${SETTLE:-300}
URING_PARAM=/sys/module/fuse/parameters/enable_uring

for part in $PARTS; do
  [[ " $ALL_PARTS " = *" $part "* ]] || die "unknown part $part (parts: $ALL_PARTS)"
done

if [[ $QUICK = 1 ]]; then
  [[ -z ${DOCS:-} ]] || die "QUICK=1 writes its pages to a scratch directory of its own; unset DOCS"
  SCRATCH=$(mktemp -d /tmp/dpfs-bench-quick.XXXXXX)
  DOCS=$SCRATCH/docs
  RUNS=$SCRATCH/runs
  # The pages that keep hand-written text are spliced into copies.
  mkdir -p "$DOCS"
  cp "$ROOT"/docs/*BENCHMARKS.md "$ROOT"/docs/TENANT_CPU.md "$DOCS"/
else
  DOCS=$(bench_abs "${DOCS:-docs}")
  RUNS=$BUILD/bench/all
fi
rm -rf "$RUNS"
mkdir -p "$RUNS" "$DOCS/img"

# ---------------------------------------------------------------------------
# What each part needs, checked for all of them before the first one runs.

bench_need_root "the parts mount file systems, run virtiofsd and nfs-ganesha"
for part in $PARTS; do
  case $part in
    device) bench_need /usr/lib/qemu/virtiofsd=qemu-system-common gnuplot=gnuplot-nox \
      taskset=util-linux python3=python3 ;;
    passthrough) bench_need /usr/lib/qemu/virtiofsd=qemu-system-common python3=python3 ;;
    fuse) bench_need fio=fio gcc=gcc pkg-config=pkg-config fusermount3=fuse3 ;;
    fuse-uring)
      bench_need fio=fio
      [[ -f $URING_PARAM ]] ||
        die "fuse-uring: this kernel has no FUSE over io_uring ($URING_PARAM); leave the part out of PARTS"
      ;;
    nfs | nfs-device) bench_need fio=fio /usr/bin/ganesha.nfsd="nfs-ganesha nfs-ganesha-vfs" \
      /usr/sbin/rpcbind=rpcbind nfs-ls=libnfs-utils ;;
    remote) bench_need fio=fio ;;
    guest) bench_need qemu-system-x86_64=qemu-system-x86 cpio=cpio fio=fio \
      /usr/lib/qemu/virtiofsd=qemu-system-common busybox=busybox-static ;;
    tenant-cpu) bench_need qemu-system-x86_64=qemu-system-x86 cpio=cpio fio=fio gcc=gcc \
      /usr/lib/qemu/virtiofsd=qemu-system-common busybox=busybox-static gnuplot=gnuplot-nox \
      /usr/bin/ganesha.nfsd="nfs-ganesha nfs-ganesha-vfs" /usr/sbin/rpcbind=rpcbind \
      nfs-ls=libnfs-utils ip=iproute2 ;;
  esac
done
build_targets=(dpfs dpfs-bench)
[[ " $PARTS " != *" tenant-cpu "* ]] || build_targets+=(dpfs-insn-count dpfs-insn-mark)
bench_build "${build_targets[@]}"
export BUILD SKIP_BUILD=1

# ---------------------------------------------------------------------------
# Running a part

# quick VAR=VALUE...: Q holds the variables a smoke run sets (none otherwise).
Q=()
quick() {
  Q=()
  if [[ $QUICK = 1 ]]; then Q=("$@"); fi
}

# run_script PART SCRIPT [VAR=VALUE...]: the script's stdout to
# $RUNS/PART.out (appended), its log to $RUNS/PART.log and the terminal.
run_script() {
  local part=$1 script=$2
  shift 2
  log "$part: $* bench/$script"
  env "$@" bash "$ROOT/bench/$script" >>"$RUNS/$part.out" 2> >(tee -a "$RUNS/$part.log" >&2)
}

# splice DOC PART ANCHOR LEVEL BODY: the part's section in DOC, after the
# line ANCHOR (a heading; the first "# " line if empty), with a LEVEL
# heading ("##"), its text from the file BODY; the old one replaced.
splice() {
  python3 - "$@" <<'EOF'
import re, sys
doc, part, anchor, level, body = sys.argv[1:6]
begin = f"<!-- bench/all.sh {part}: generated, rewritten by every run -->"
end = f"<!-- bench/all.sh {part}: end -->"
text = open(doc).read()
section = f"{begin}\n{level} Latest run (`bench/all.sh`, part {part})\n\n{open(body).read().strip()}\n{end}\n"
if begin in text and end in text:
    i, j = text.index(begin), text.index(end) + len(end)
    text = text[:i] + section.rstrip("\n") + text[j:]
else:
    lines = text.split("\n")
    at = next((n for n, l in enumerate(lines) if (l == anchor if anchor else l.startswith("# "))), None)
    if at is None:
        sys.exit(f"{doc}: no line {anchor or '# ...'} to put the {part} section after")
    lines[at + 1:at + 1] = [""] + section.rstrip("\n").split("\n")
    text = "\n".join(lines)
open(doc, "w").write(text)
EOF
}

# The header of a spliced section: when, what, on what, at what load.
run_header() {
  echo "Run $(date -u '+%Y-%m-%d %H:%M UTC') at commit" \
    "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "($(sed -n 's/^CMAKE_BUILD_TYPE:[A-Z]*=//p' "$BUILD/CMakeCache.txt" 2>/dev/null) build)," \
    "Linux $(uname -r), $(nproc) CPUs ($(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1))," \
    "load average before $1, after $(cut -d' ' -f1-3 /proc/loadavg)."
  if [[ ${FORCE:-0} = 1 ]] && ! awk -v l="${1%% *}" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'; then
    echo "**Provisional**: measured with FORCE=1 on a machine that was not idle."
  fi
  if [[ $QUICK = 1 ]]; then echo "**Smoke run** (QUICK=1): the numbers mean nothing."; fi
}

WRITTEN=()  # pages written, relative to DOCS

run_part() {
  local part=$1 load
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  case $part in
    device)
      quick DURATION=0.3 WARMUP=0.1 "DEPTHS=1 32" POLL_RUNS=1 PERF=0 "SCALE_QUEUES=1 2"
      run_script device device_bench.sh OUT="$DOCS/BENCHMARKS.md" IMG="$DOCS/img" "${Q[@]}"
      WRITTEN+=(BENCHMARKS.md img/device_ops_vs_depth.png img/device_p99_vs_depth.png)
      ;;
    passthrough)
      local workloads=${WORKLOADS:-randread randwrite}
      quick DURATION=0.3 WARMUP=0.1
      run_script passthrough passthrough_device_bench.sh MARKDOWN=1 WORKLOADS="$workloads" "${Q[@]}"
      {
        run_header "$load"
        echo
        echo "\`WORKLOADS=\"$workloads\" bench/passthrough_device_bench.sh\`: dpfs's passthrough"
        echo "backend (dpfs-pt) and virtiofsd over the same directory on /tmp's file system,"
        echo "one device thread each, 4 KiB blocks of a 64 MiB file in the page cache."
        echo
        cat "$RUNS/passthrough.out"
      } >"$RUNS/passthrough.md"
      splice "$DOCS/PASSTHROUGH_BENCHMARKS.md" passthrough "" "##" "$RUNS/passthrough.md"
      WRITTEN+=(PASSTHROUGH_BENCHMARKS.md)
      ;;
    fuse)
      quick RUNTIME=1 REPEAT=1 QUIET_WAIT=0 FILE_SIZE=16M
      run_script fuse fuse_bench.sh OUT="$DOCS/FUSE_BENCHMARKS.md" "${Q[@]}"
      WRITTEN+=(FUSE_BENCHMARKS.md)
      ;;
    fuse-uring)
      quick RUNTIME=1 REPEAT=1 QUIET_WAIT=0 FILE_SIZE=16M
      run_script fuse-uring fuse_uring_bench.sh "${Q[@]}"
      { run_header "$load"; echo; cat "$RUNS/fuse-uring.out"; } >"$RUNS/fuse-uring.md"
      splice "$DOCS/FUSE_BENCHMARKS.md" fuse-uring "## FUSE over io_uring" "###" "$RUNS/fuse-uring.md"
      WRITTEN+=(FUSE_BENCHMARKS.md)
      ;;
    nfs)
      quick RUNTIME=1 FILE_SIZE=16M
      run_script nfs nfs_bench.sh OUT="$DOCS/NFS_BENCHMARKS.md" "${Q[@]}"
      WRITTEN+=(NFS_BENCHMARKS.md)
      ;;
    nfs-device)
      quick DURATION=0.3 FILE_SIZE=16M
      run_script nfs-device nfs_device_bench.sh OUT="$DOCS/NFS_DEVICE_BENCHMARKS.md" "${Q[@]}"
      WRITTEN+=(NFS_DEVICE_BENCHMARKS.md)
      ;;
    remote)
      quick RUNTIME=1 REPEAT=1
      run_script remote remote_bench.sh "${Q[@]}"
      mv "$RUNS/remote.out" "$RUNS/remote-fuse.out"
      quick DURATION=0.3 ROUNDS=1
      run_script remote remote_device_bench.sh "${Q[@]}"
      {
        run_header "$load"
        echo
        echo "On a FUSE mount, \`bench/remote_bench.sh\` (fio 4k random reads, null backend):"
        echo
        cat "$RUNS/remote-fuse.out"
        echo
        echo "On the device, \`bench/remote_device_bench.sh\` (dpfs-bench 4k random reads, memfs):"
        echo
        cat "$RUNS/remote.out"
      } >"$RUNS/remote.md"
      splice "$DOCS/REMOTE_BENCHMARKS.md" remote "" "##" "$RUNS/remote.md"
      WRITTEN+=(REMOTE_BENCHMARKS.md)
      ;;
    guest)
      quick RUNTIME=1 SIZE=8m NFILES=50 JOBS=randread-4k-qd1,meta-stat "TARGETS=dpfs virtiofsd"
      run_script guest guest_bench.sh OUT="$DOCS/GUEST_BENCHMARKS.md" "${Q[@]}"
      WRITTEN+=(GUEST_BENCHMARKS.md)
      ;;
    tenant-cpu)
      quick RUNTIME=1 ROUNDS=1 JOBS=randread-4k-qd1 "CASES=dpfs-nfs3 knfs3"
      run_script tenant-cpu tenant_cpu.sh OUT="$DOCS/TENANT_CPU.md" IMG="$DOCS/img" \
        RESULTS="$RUNS/tenant-cpu" "${Q[@]}"
      WRITTEN+=(TENANT_CPU.md img/tenant_cpu.png)
      ;;
  esac
}

# Waits up to $1 seconds for the 1-minute load to fall under MAX_LOAD;
# refuses to go on to PART if it does not (unless FORCE=1).
settle() {
  local part=$1 wait=$2 waited=0
  [[ ${FORCE:-0} != 1 ]] || wait=0  # it measures anyway: no use waiting
  while ! bench_is_idle && ((waited < wait)); do
    ((waited == 0)) && log "$part: load average $(bench_load); waiting up to $wait s for it to fall under $MAX_LOAD"
    sleep 5
    waited=$((waited + 5))
  done
  SETTLED=$waited
  bench_is_idle && return 0
  [[ ${FORCE:-0} = 1 ]] || SUMMARY+=("$part: not run, load average $(bench_load) >= $MAX_LOAD")
  if ((waited > 0)); then
    bench_require_idle "part $part (after waiting $waited s)"
  else
    bench_require_idle "part $part"
  fi
}

# ---------------------------------------------------------------------------

SUMMARY=()
PART=""  # the part running
summary() {
  local rc=$?
  if [[ -n $PART ]]; then
    SUMMARY+=("$PART: FAILED after $((SECONDS - start)) s; its log: $RUNS/$PART.log")
  fi
  log "summary (pages in ${DOCS#"$ROOT"/}, logs in $RUNS):"
  printf '  %s\n' "${SUMMARY[@]}" >&2
  exit $rc
}
trap summary EXIT

first=1
total_start=$SECONDS
for part in $PARTS; do
  if [[ $part = tenant-cpu ]]; then
    SETTLED=0  # counts instructions: the load does not change them (tenant_cpu.sh warns)
  elif ((first)); then settle "$part" 0; else settle "$part" "$SETTLE"; fi
  first=0
  start=$SECONDS
  PART=$part
  run_part "$part"
  PART=""
  SUMMARY+=("$part: $((SECONDS - start)) s (after $SETTLED s waiting for the load to settle)")
done

# The pages, as they will be read, carry none of this machine's paths or name.
mapfile -t written < <(printf '%s\n' "${WRITTEN[@]}" | sort -u)
pages=()
for page in "${written[@]}"; do
  [[ $page = *.md ]] && pages+=("$DOCS/$page")
done
((${#pages[@]} > 0)) || exit 0
bench_scrub "${pages[@]}"
pattern="(/work|/tmp|/root|/home|/dev/shm)/|$ROOT|$BUILD"
[[ ${HOME:-/} = / ]] || pattern+="|$HOME/"
if grep -nE "$pattern" "${pages[@]}" >"$RUNS/leaks" ||
  grep -nw -- "$(hostname)" "${pages[@]}" >>"$RUNS/leaks"; then
  cat "$RUNS/leaks" >&2
  SUMMARY+=("path check: FAILED, the lines above name the measuring machine")
  die "the pages name the measuring machine (above); fix the part that wrote them"
fi
SUMMARY+=("path check: no machine paths or host name in ${pages[*]#"$DOCS"/}")
SUMMARY+=("rewritten in ${DOCS#"$ROOT"/}: ${written[*]}")
SUMMARY+=("total: $((SECONDS - total_start)) s")
