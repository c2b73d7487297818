#!/usr/bin/env bash
# Guest benchmark: dpfs against QEMU's virtiofsd, both serving a QEMU guest
# over vhost-user-fs, in one run.
#
# For each daemon it boots one guest (tests/guest/run-guest.sh; TCG) that runs
# tests/guest/workloads/fio-bench.sh: 4k random reads/writes at iodepth 1 and
# 32, 1 MiB sequential reads/writes at iodepth 8 (libaio, direct=1, on a file
# written first), and fio's filecreate/filestat/filedelete over small files.
# The guest prints "JOB-BEGIN name" / "JOB-END name" around every fio run;
# this script follows the console log and, when a marker appears, reads the
# daemon's CPU time: the sum of /proc/PID/task/*/schedstat (ns; all threads)
# and, as a cross-check, utime+stime of /proc/PID/stat (10 ms ticks; includes
# threads that exited). CPU per I/O = the daemon's CPU in the window / the
# I/Os fio completed. Results go to docs/GUEST_BENCHMARKS.md.
#
#   dpfs       build/dpfs serve --backend memfs --vhost-user SOCK --tag bench
#   virtiofsd  /usr/lib/qemu/virtiofsd --socket-path=SOCK -o source=DIR
#              -o cache=none, DIR on a fresh tmpfs (both serve from RAM)
#
# Under TCG the guest is the bottleneck (NOTES.md): IOPS and latencies
# mostly measure the emulated guest; the daemon's CPU per I/O is the number
# that compares the daemons.
#
# Needs root, qemu-system-x86, qemu-system-common (virtiofsd),
# linux-image-amd64, busybox-static, cpio, fio, python3.
#
# Environment:
#   RUNTIME=8        seconds per time-based fio job
#   SIZE=64m         data file for the 4k and 1 MiB jobs
#   NFILES=3000      files for the metadata jobs
#   JOBS=all         or a comma list of job names (see the workload)
#   TARGETS="dpfs virtiofsd dpfs-t0"  (dpfs-t0: dpfs with --entry-timeout 0
#                    --attr-timeout 0, the guest caching as little as under
#                    virtiofsd's cache=none; dpfs-pt: dpfs's passthrough
#                    backend over a fresh tmpfs, as virtiofsd serves)
#   SHARE=tmpfs      what virtiofsd and dpfs-pt serve: a fresh tmpfs, or
#                    "disk": a fresh directory on /tmp's file system
#   GUEST_MEM=512M   guest memory
#   DPFS_ARGS=       extra arguments for dpfs serve (e.g. --threads 1, --poll)
#   BUILD=build      dpfs build directory (built, Release, unless SKIP_BUILD=1)
#   OUT=docs/GUEST_BENCHMARKS.md  (rewritten whole: the hand-written reading
#                    at its end belongs to the committed run)
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
RUNTIME=${RUNTIME:-8}
SIZE=${SIZE:-64m}
NFILES=${NFILES:-3000}
JOBS=${JOBS:-all}
TARGETS=${TARGETS:-dpfs virtiofsd dpfs-t0}
GUEST_MEM=${GUEST_MEM:-512M}
DPFS_ARGS=${DPFS_ARGS:-}
OUT=$(bench_abs "${OUT:-docs/GUEST_BENCHMARKS.md}")
DPFS=$BUILD/dpfs
VIRTIOFSD=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
WORKLOAD=$ROOT/tests/guest/workloads/fio-bench.sh
RUN_GUEST=$ROOT/tests/guest/run-guest.sh
TAG=bench

WORK=$(mktemp -d /tmp/dpfs-guest-bench.XXXXXX)
DAEMON_PID=""
TMPFS=""

stop_daemon() {
  bench_stop_pid "$DAEMON_PID"
  DAEMON_PID=""
}

cleanup() {
  local rc=$?
  stop_daemon
  [[ -n $TMPFS ]] && umount -l "$TMPFS" 2>/dev/null || true
  if ((rc != 0)); then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_need_root "virtiofsd, tmpfs"
bench_need qemu-system-x86_64=qemu-system-x86 cpio=cpio fio=fio python3=python3 \
  "$VIRTIOFSD=qemu-system-common"

if [[ " $TARGETS " = *" dpfs "* ]]; then
  if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    log "building dpfs (Release) in $BUILD"
    if [[ ! -f $BUILD/CMakeCache.txt ]]; then
      cmake -S "$ROOT" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null || die "cmake configure"
    fi
    grep -q '^CMAKE_BUILD_TYPE:STRING=Release$' "$BUILD/CMakeCache.txt" ||
      die "$BUILD is not a Release build"
    cmake --build "$BUILD" -j"$(nproc)" --target dpfs >/dev/null || die "cmake build"
  fi
  [[ -x $DPFS ]] || die "$DPFS not found"
fi

# The pid that does the serving: virtiofsd (sandbox=namespace) forks into a
# new pid namespace and the parent only waits; follow first children down.
serving_pid() {
  local p=$1 c
  for _ in 1 2 3; do
    c=$(cat /proc/"$p"/task/"$p"/children 2>/dev/null | awk '{print $1}')
    [[ -n $c ]] || break
    p=$c
  done
  echo "$p"
}

# "SCHED_NS TICKS TIDS" of a pid: schedstat run time summed over its threads,
# utime+stime from /proc/PID/stat, the sorted thread ids joined with commas.
cpu_sample() {
  local pid=$1 ns=0 t tids=""
  for t in /proc/"$pid"/task/*; do
    [[ -r $t/schedstat ]] || continue
    read -r r _ <"$t/schedstat" || continue
    ns=$((ns + r))
    tids+="${t##*/},"
  done
  local ticks
  ticks=$(awk '{ print $14 + $15 }' /proc/"$pid"/stat 2>/dev/null || echo 0)
  echo "$ns $ticks ${tids%,}"
}

# Follows a console log (appearing under $1) until pid $2 exits; on each
# JOB-BEGIN / JOB-END line appends "EVENT name wall_ns sched_ns ticks tids".
follow_markers() {
  local dir=$1 rg=$2 pid=$3 out=$4 f=""
  for _ in $(seq 600); do
    f=$(ls "$dir"/dpfs-guest.*/console.log 2>/dev/null | head -n1 || true)
    [[ -n $f ]] && break
    kill -0 "$rg" 2>/dev/null || return 0
    sleep 0.1
  done
  [[ -n $f ]] || return 0
  tail -n +1 -F --pid="$rg" "$f" 2>/dev/null | while IFS= read -r line; do
    line=${line//$'\r'/}
    case $line in
      JOB-BEGIN\ * | JOB-END\ *)
        set -- $line
        # virtiofsd forks its serving child only once QEMU has connected
        echo "$1 $2 $(date +%s%N) $(cpu_sample "$(serving_pid "$pid")") $(serving_pid "$pid") $(cut -d' ' -f1 /proc/loadavg)" >>"$out"
        ;;
    esac
  done
}

HZ=$(getconf CLK_TCK)
LOADS=()
RESULTS=$WORK/results
mkdir -p "$RESULTS"

# The directory virtiofsd and dpfs-pt serve, $TMPFS/src: a fresh tmpfs, or
# with SHARE=disk a fresh directory on the disk file system of /tmp (its
# page cache warm once the data file is written).
make_share() {
  TMPFS=$WORK/tmpfs
  mkdir -p "$TMPFS"
  if [[ ${SHARE:-tmpfs} = tmpfs ]]; then
    mount -t tmpfs -o size=2g tmpfs "$TMPFS" || die "mounting a tmpfs"
  fi
  mkdir -p "$TMPFS/src"
}

for target in $TARGETS; do
  sock=$WORK/$target.sock
  dlog=$RESULTS/$target.daemon.log
  case $target in
    dpfs | dpfs-t0)
      read -ra args <<<"$DPFS_ARGS"
      # dpfs-t0: no name/attribute caching in the guest, as virtiofsd's
      # cache=none (it replies with zero entry and attribute timeouts)
      [[ $target = dpfs-t0 ]] && args+=(--entry-timeout 0 --attr-timeout 0)
      "$DPFS" serve --backend memfs --vhost-user "$sock" --tag "$TAG" "${args[@]}" >"$dlog" 2>&1 &
      DAEMON_PID=$!
      echo "$DPFS serve --backend memfs --vhost-user SOCK --tag $TAG ${args[*]}" >"$RESULTS/$target.cmd"
      ;;
    dpfs-pt)
      # passthrough over the same kind of directory virtiofsd serves
      make_share
      read -ra args <<<"$DPFS_ARGS"
      "$DPFS" serve --backend "passthrough:$TMPFS/src" --vhost-user "$sock" --tag "$TAG" \
        "${args[@]}" >"$dlog" 2>&1 &
      DAEMON_PID=$!
      echo "$DPFS serve --backend passthrough:DIR --vhost-user SOCK --tag $TAG ${args[*]}  (DIR: ${SHARE:-tmpfs})" >"$RESULTS/$target.cmd"
      ;;
    virtiofsd)
      make_share
      "$VIRTIOFSD" --socket-path="$sock" -o source="$TMPFS/src" -o cache=none >"$dlog" 2>&1 &
      DAEMON_PID=$!
      echo "$VIRTIOFSD --socket-path=SOCK -o source=DIR -o cache=none  (DIR: ${SHARE:-tmpfs})" >"$RESULTS/$target.cmd"
      ;;
    *) die "unknown target $target" ;;
  esac
  for _ in $(seq 100); do
    [[ -S $sock ]] && break
    kill -0 "$DAEMON_PID" 2>/dev/null || break
    sleep 0.1
  done
  [[ -S $sock ]] || { cat "$dlog" >&2; die "$target did not create $sock"; }
  spid=$DAEMON_PID
  log "$target: pid $DAEMON_PID; load average $(cut -d' ' -f1-3 /proc/loadavg)"
  LOADS+=("$target before: $(cut -d' ' -f1-3 /proc/loadavg)")
  : >"$RESULTS/$target.markers"
  rgtmp=$WORK/rg-$target
  mkdir -p "$rgtmp"
  t0=$(date +%s)
  set +e
  TMPDIR=$rgtmp "$RUN_GUEST" --socket "$sock" --tag "$TAG" --workload "$WORKLOAD" --fio \
    --mem "$GUEST_MEM" --timeout 900 --quiet --log "$RESULTS/$target.console" \
    --append "bench.runtime=$RUNTIME bench.size=$SIZE bench.nfiles=$NFILES bench.jobs=$JOBS" \
    >"$RESULTS/$target.run-guest.out" 2>&1 &
  rg=$!
  follow_markers "$rgtmp" "$rg" "$spid" "$RESULTS/$target.markers" &
  fm=$!
  wait "$rg"
  grc=$?
  wait "$fm"
  set -e
  echo "$grc $(($(date +%s) - t0))" >"$RESULTS/$target.status"
  LOADS+=("$target after: $(cut -d' ' -f1-3 /proc/loadavg)")
  log "$target: guest exit $grc after $(($(date +%s) - t0)) s; $(grep -c JOB-END "$RESULTS/$target.markers" || true) jobs"
  ((grc == 0)) || { tail -n 30 "$RESULTS/$target.run-guest.out" >&2; log "$target: guest failed ($grc); see above"; }
  stop_daemon
  if [[ -n $TMPFS ]]; then
    if [[ ${SHARE:-tmpfs} = tmpfs ]]; then
      umount "$TMPFS" 2>/dev/null || umount -l "$TMPFS" || true
    else
      rm -rf "$TMPFS/src"
    fi
    TMPFS=""
  fi
done
printf '%s\n' "${LOADS[@]}" >"$RESULTS/loads"

CPU_MODEL=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
cat >"$RESULTS/machine" <<EOF
CPU: $CPU_MODEL, $(nproc) CPUs (shared with other users of the machine)
Host kernel: $(uname -r); QEMU: $(qemu-system-x86_64 --version | head -1); fio (guest): $(fio --version)
Guest: TCG (-accel tcg -cpu max), 1 vCPU, $GUEST_MEM; Debian kernel $(ls /boot/vmlinuz-* | sed 's|.*/vmlinuz-||' | sort -V | tail -1)
dpfs: $(git -C "$ROOT" rev-parse --short HEAD) ($(grep '^CMAKE_BUILD_TYPE:' "$BUILD/CMakeCache.txt" | cut -d= -f2) build); clock ticks $HZ/s
Date: $(date -u '+%Y-%m-%d %H:%M UTC')
EOF

python3 - "$RESULTS" "$OUT" "$RUNTIME" "$SIZE" "$NFILES" "$TARGETS" <<'EOF'
import json, os, re, sys
res, out, runtime, size, nfiles, targets = sys.argv[1:7]
targets = targets.split()
HZ = os.sysconf("SC_CLK_TCK")

def parse_console(path):
    jobs, errors, cur, buf = {}, [], None, []
    if not os.path.exists(path):
        return jobs, ["no console log"]
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        m = re.match(r"FIO-JSON-BEGIN (\S+)", line)
        if m:
            cur, buf = m.group(1), []
            continue
        m = re.match(r"FIO-JSON-END (\S+)", line)
        if m and cur:
            text = "\n".join(buf)
            i = text.find("{")
            try:
                jobs[cur] = json.loads(text[i:]) if i >= 0 else None
            except Exception as e:
                errors.append(f"{cur}: fio JSON unreadable ({e})")
            cur = None
            continue
        if cur is not None:
            buf.append(line)
        elif "BENCH-ERROR" in line or "DPFS-GUEST-ERROR" in line:
            errors.append(line.strip())
    return jobs, errors

def parse_markers(path):
    ev = {}
    for line in open(path):
        p = line.split()
        if len(p) < 5:
            continue
        kind, name, wall, ns, ticks = p[0], p[1], int(p[2]), int(p[3]), int(float(p[4]))
        tids = p[5] + "@" + p[6] if len(p) > 6 else ""
        load = float(p[7]) if len(p) > 7 else None
        ev.setdefault(name, {})["begin" if kind == "JOB-BEGIN" else "end"] = (wall, ns, ticks, tids, load)
    return ev

rows = {}   # (target, job) -> dict
order = []
notes = []
for t in targets:
    jobs, errors = parse_console(f"{res}/{t}.console")
    for e in errors:
        notes.append(f"{t}: {e}")
    ev = parse_markers(f"{res}/{t}.markers")
    for name, j in jobs.items():
        if name not in order:
            order.append(name)
        if not j:
            continue
        job = j["jobs"][0]
        ios = iops = 0
        lat_mean = p99 = None
        for d in ("read", "write"):
            dd = job[d]
            if dd["total_ios"] == 0:
                continue
            ios += dd["total_ios"]
            iops += dd["iops"]
            # libaio jobs: total latency (lat_percentiles=1 puts the
            # percentiles under lat_ns); the file engines report clat only.
            src = dd["lat_ns"] if dd["lat_ns"].get("mean", 0) > 0 else dd["clat_ns"]
            lat_mean = src["mean"] / 1000.0
            pc = src.get("percentile") or dd["clat_ns"].get("percentile") or {}
            p99 = pc.get("99.000000", 0) / 1000.0
        r = {"ios": ios, "iops": iops, "mean": lat_mean, "p99": p99,
             "runtime_s": job["read"]["runtime"] / 1000.0 if job["read"]["total_ios"] else job["write"]["runtime"] / 1000.0}
        e = ev.get(name, {})
        if "begin" in e and "end" in e:
            b, en = e["begin"], e["end"]
            r["window_s"] = (en[0] - b[0]) / 1e9
            r["cpu_ticks_us"] = (en[2] - b[2]) * 1e6 / HZ
            if b[3] == en[3]:
                r["cpu_us"] = (en[1] - b[1]) / 1000.0
            else:
                # a thread came or went: schedstat misses the dead ones
                r["cpu_us"] = r["cpu_ticks_us"]
                notes.append(f"{t} {name}: the daemon's threads changed during the job; CPU from /proc/PID/stat ticks")
            r["cpu_per_io"] = r["cpu_us"] / ios if ios else None
            r["cpu_util"] = r["cpu_us"] / 1e6 / r["window_s"] * 100 if r["window_s"] > 0 else None
            r["load"] = en[4]
        else:
            notes.append(f"{t} {name}: no JOB-BEGIN/JOB-END samples; no CPU figure")
        rows[(t, name)] = r

def f(v, fmt="{:.0f}"):
    return "–" if v is None else fmt.format(v)

status = {}
for t in targets:
    try:
        status[t] = open(f"{res}/{t}.status").read().split()
    except OSError:
        status[t] = ["?", "?"]

L = []
L.append("# Guest benchmark: dpfs against QEMU's virtiofsd (virtio-fs, TCG guest)")
L.append("")
L.append("Made by `bench/guest_bench.sh` (guest workload "
         "`tests/guest/workloads/fio-bench.sh`). Each daemon serves one QEMU guest "
         "over vhost-user-fs from RAM; the guest runs fio on the virtio-fs mount.")
L.append("")
L.append("**Read this first.** The guest runs under TCG (no KVM on these machines, "
         "no usable `/dev/kvm`): every guest instruction is emulated, so the "
         "guest is the bottleneck. IOPS and latencies below mostly measure the "
         "emulated guest kernel and fio, not the daemons, and compare the daemons "
         "poorly. The meaningful number is the daemon's **CPU time per I/O** "
         "(the daemon's own CPU in the job's window / the I/Os fio completed), which "
         "does not depend on how fast the guest submits. Even that is measured at the "
         "low request rates a TCG guest produces: per-request costs that amortise at "
         "high rates (wake-ups, batching) are counted in full.")
L.append("")
L.append("## Machine")
L.append("")
for line in open(f"{res}/machine"):
    L.append("- " + line.strip())
L.append("- Load average (1, 5, 15 min) around each guest: " +
         "; ".join(l.strip() for l in open(f"{res}/loads")) +
         ". The machine's 2 CPUs are shared with other engineers' work, and the "
         "TCG guest itself keeps one CPU busy; numbers are noisy.")
L.append("")
L.append("## Commands")
L.append("")
L.append("```sh")
L.append(f"RUNTIME={runtime} SIZE={size} NFILES={nfiles} bench/guest_bench.sh")
L.append("```")
L.append("")
L.append("Daemons:")
L.append("")
for t in targets:
    try:
        cmd = open(f"{res}/{t}.cmd").read().strip().replace(os.path.dirname(os.path.dirname(res)) + "/", "")
    except OSError:
        cmd = "?"
    cmd = re.sub(r"^\S*/build/dpfs", "build/dpfs", cmd)
    L.append(f"- {t}: `{cmd}` — guest exit status {status[t][0]}, {status[t][1]} s for the whole guest")
L.append("")
L.append("Each guest: `tests/guest/run-guest.sh --socket SOCK --tag bench --workload "
         "tests/guest/workloads/fio-bench.sh --fio --quiet` (1 vCPU, TCG, one request queue). "
         f"fio jobs (all `--ioengine=libaio --direct=1 --time_based --runtime={runtime}` on a "
         f"{size} file written beforehand with 1 MiB writes):")
L.append("")
L.append("- `randread-4k-qd1`, `randread-4k-qd32`: `--rw=randread --bs=4k --iodepth=1|32`")
L.append("- `randwrite-4k-qd1`, `randwrite-4k-qd32`: `--rw=randwrite --bs=4k --iodepth=1|32`")
L.append("- `read-1m-qd8`, `write-1m-qd8`: `--rw=read|write --bs=1M --iodepth=8` (one I/O = 1 MiB)")
L.append(f"- `meta-create`, `meta-stat`, `meta-delete`: fio's `filecreate`, `filestat`, "
         f"`filedelete` engines over {nfiles} files (`--nrfiles={nfiles} --filesize=4k "
         "--openfiles=1`); one I/O = one file created (open O_CREAT + close), stat'ed "
         "(open/stat/close) or unlinked. Latency is fio's completion latency of that operation. "
         "filestat's layout pass (it writes 4k into each file) runs outside the measured window.")
L.append("")
L.append("CPU: the guest prints `JOB-BEGIN name` (then sleeps 1 s) and `JOB-END name`; the "
         "host follows the console log and at each marker sums `/proc/PID/task/*/schedstat` "
         "(ns) over the daemon's threads (for virtiofsd, its forked child that serves). "
         "Both daemons' thread sets stayed fixed unless a note below says otherwise. "
         "The window includes fio's start-up and the 1 s pause (an idle daemon uses ~0 CPU: "
         "neither daemon polls here).")
L.append("")
L.append("## Results")
L.append("")
hdr = "| job | daemon | IOPS | mean lat µs | p99 lat µs | I/Os | daemon CPU % | load | **CPU µs / I/O** |"
L.append("`daemon CPU %`: the daemon's CPU time over the job's window (100 = one CPU). "
         "`load`: the host's 1-minute load average at the job's end.")
L.append("")
L.append(hdr)
L.append("|---|---|--:|--:|--:|--:|--:|--:|--:|")
for name in order:
    for t in targets:
        r = rows.get((t, name))
        if not r:
            L.append(f"| {name} | {t} | failed | | | | | | |")
            continue
        L.append(f"| {name} | {t} | {f(r['iops'])} | {f(r['mean'], '{:.1f}')} | {f(r['p99'], '{:.1f}')} | "
                 f"{r['ios']} | {f(r.get('cpu_util'), '{:.1f}')} | {f(r.get('load'), '{:.1f}')} | **{f(r.get('cpu_per_io'), '{:.2f}')}** |")
L.append("")
base = "virtiofsd"
def ratio(x, y):
    return "–" if x is None or y in (None, 0) else f"{x / y:.2f}"
for a in [t for t in targets if t != base and base in targets]:
    L.append(f"## Ratios {a} / {base}")
    L.append("")
    L.append(f"Below 1 for CPU per I/O and latency means {a} is cheaper/faster; above 1 for IOPS "
             f"means {a} is faster.")
    L.append("")
    L.append("| job | IOPS | mean lat | p99 lat | **CPU / I/O** |")
    L.append("|---|--:|--:|--:|--:|")
    for name in order:
        ra, rb = rows.get((a, name)), rows.get((base, name))
        if not ra or not rb:
            L.append(f"| {name} | – | – | – | – |")
            continue
        L.append(f"| {name} | {ratio(ra['iops'], rb['iops'])} | {ratio(ra['mean'], rb['mean'])} | "
                 f"{ratio(ra['p99'], rb['p99'])} | **{ratio(ra.get('cpu_per_io'), rb.get('cpu_per_io'))}** |")
    L.append("")
L.append("## Notes from the run")
L.append("")
for t in targets:
    try:
        lines = [l.rstrip() for l in open(f"{res}/{t}.daemon.log", errors="replace")]
    except OSError:
        lines = []
    # dpfs: "DATE TIME LEVEL message"; its per-opcode totals count errno
    # replies (ENOENT lookups, ENODATA getxattrs), which are not failures.
    odd = [l for l in lines if re.search(r"(?i)\b(warn(ing)?|error|err|critical|fail(ed)?|panic|abort)\b", l)
           and not re.search(r"totals:", l)]
    L.append(f"- {t}'s log: {len(lines)} lines" + (f", {len(odd)} of them warnings/errors:" if odd else ", no warnings or errors"))
    for l in odd[:8]:
        L.append(f"  - `{l[:240]}`")
    tot = [l for l in lines if "totals:" in l]
    if tot:
        L.append(f"  - its request totals at exit:")
        L.append("")
        L.append("    ```")
        for l in tot:
            L.append("    " + re.sub(r"^.*totals: ", "", l))
        L.append("    ```")
        L.append("")
for n in notes:
    L.append(f"- {n}")
if not notes:
    L.append("- Every job of every guest ran and was sampled.")
L.append("")
open(out, "w").write("\n".join(L))
print("\n".join(L))
EOF
bench_scrub "$OUT"
log "wrote $OUT"
FAILED_GUESTS=$(awk '$1 != 0 { n++ } END { print n + 0 }' "$RESULTS"/*.status)
((FAILED_GUESTS == 0)) || die "$FAILED_GUESTS guest(s) failed; logs in $RESULTS"
