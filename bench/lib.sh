# shellcheck shell=bash
# Sourced by the benchmark scripts: what each of them needs before it
# measures, written once.
#
#   ROOT          the checkout (this file's parent's parent)
#   BUILD         the dpfs build directory; relative to ROOT unless absolute
#                 (default build)
#   log, die      one line on stderr, prefixed with the script's name
#   bench_abs P   P, relative paths taken from ROOT
#   bench_need_root WHY
#   bench_need TOOL=PACKAGE...       fails naming the apt packages to install
#   bench_build TARGET...            a Release build of the targets in BUILD,
#                                    unless SKIP_BUILD=1 (then they must exist:
#                                    BUILD/TARGET, or BUILD/TARGET.so for a module)
#   bench_require_idle [WHAT]        refuses when the 1-minute load is at or
#                                    over MAX_LOAD (0.5), unless FORCE=1
#   bench_wait_quiet                 waits up to QUIET_WAIT s for a quiet second
#   bench_stop_pid PID [GRACE]       SIGTERM, SIGKILL after GRACE s (5), reaped
#   is_mounted DIR
#   bench_scrub FILE...              this machine's paths out of FILEs
#
# The sourcing script sets `set -euo pipefail` itself; BENCH_NAME (default:
# the script's file name) prefixes its log lines.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_NAME=${BENCH_NAME:-$(basename "${BASH_SOURCE[1]:-bench}" .sh)}
BUILD=${BUILD:-$ROOT/build}
[[ $BUILD = /* ]] || BUILD=$ROOT/$BUILD
MAX_LOAD=${MAX_LOAD:-0.5}

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

bench_abs() {
  if [[ $1 = /* ]]; then echo "$1"; else echo "$ROOT/$1"; fi
}

bench_need_root() {
  [[ $(id -u) = 0 ]] || die "needs root ($1)"
}

# bench_need TOOL=PACKAGE...: TOOL is a command on PATH or an absolute path.
# All the missing ones are named at once, with one apt-get line for them.
bench_need() {
  local pair tool missing=() packages=()
  for pair; do
    tool=${pair%%=*}
    if [[ $tool = /* ]]; then
      [[ -x $tool ]] && continue
    else
      command -v "$tool" >/dev/null && continue
    fi
    missing+=("$tool")
    packages+=("${pair#*=}")
  done
  ((${#missing[@]} == 0)) && return 0
  die "${missing[*]} not found: apt-get install -y $(printf '%s\n' "${packages[@]}" | sort -u | xargs)"
}

bench_build() {
  local target
  if [[ ${SKIP_BUILD:-0} = 1 ]]; then
    for target; do
      [[ -x $BUILD/$target || -f $BUILD/$target.so ]] ||
        die "$BUILD/$target not found (SKIP_BUILD=1 uses an existing build)"
    done
    return 0
  fi
  log "building $* (Release) in $BUILD"
  cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release >/dev/null || die "cmake configure"
  cmake --build "$BUILD" -j"$(nproc)" --target "$@" >/dev/null || die "cmake build"
}

bench_load() { cut -d' ' -f1 /proc/loadavg; }

bench_is_idle() {
  awk -v l="$(bench_load)" -v m="$MAX_LOAD" 'BEGIN { exit !(l < m) }'
}

# Numbers taken while something else runs are noise: the 1-minute load must
# be under MAX_LOAD. FORCE=1 measures anyway (the reports that know it say
# "provisional").
bench_require_idle() {
  local what=${1:-$BENCH_NAME}
  bench_is_idle && return 0
  if [[ ${FORCE:-0} = 1 ]]; then
    log "$what: load average $(bench_load) >= MAX_LOAD=$MAX_LOAD; measuring anyway (FORCE=1)"
    return 0
  fi
  die "$what: load average $(bench_load) >= MAX_LOAD=$MAX_LOAD: the machine is not idle and the" \
    "numbers would be noise. Stop what runs (see top), wait until uptime's first figure is" \
    "under $MAX_LOAD, and run again; or FORCE=1 to measure anyway, as a provisional run."
}

# CPU time spent by everything on the machine (user, nice, system, irq,
# softirq of all CPUs), in ticks.
bench_busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

# Waits (up to QUIET_WAIT s, default 30) until the machine spends under a
# quarter of a CPU in one second: other work running during a job skews it.
bench_wait_quiet() {
  local waited=0 b1 b2 hz
  ((${QUIET_WAIT:-30} > 0)) || return 0
  hz=$(getconf CLK_TCK)
  while ((waited < ${QUIET_WAIT:-30})); do
    b1=$(bench_busy_ticks)
    sleep 1
    b2=$(bench_busy_ticks)
    (((b2 - b1) * 4 < hz)) && return 0
    waited=$((waited + 1))
  done
  log "the machine is still busy after ${QUIET_WAIT:-30} s; measuring anyway"
}

bench_stop_pid() {
  local pid=$1 grace=${2:-5}
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq $((grace * 10))); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "process $pid ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

is_mounted() { awk -v m="$1" '$5 == m { found = 1 } END { exit !found }' /proc/self/mountinfo; }

# bench_scrub FILE...: rewrites each FILE without the measuring machine's
# paths and name: a run's scratch directories (/tmp/NAME..., /dev/shm/NAME...,
# $TMPDIR/NAME...) become $WORK, the build directory `build`, the checkout
# relative paths, $HOME `~`, the host name HOST (as a whole word).
bench_scrub() {
  BUILD=$BUILD ROOT=$ROOT HOST_NAME=$(hostname) python3 - "$@" <<'EOF'
import os, re, sys
tmp = sorted({"/tmp", "/dev/shm", os.environ.get("TMPDIR", "/tmp").rstrip("/") or "/tmp"},
             key=len, reverse=True)
rules = [(re.compile("(?:%s)/[^\\s/`'\")|,;:]+" % "|".join(map(re.escape, tmp))), "$WORK")]
# A path ends where a path's name cannot go on: /work/build is not /work/build2.
end = r"(?![\w-]|\.\w)"
for path, name, tail in ((os.environ["BUILD"], "build", end), (os.environ["ROOT"] + "/", "", ""),
                         (os.environ["ROOT"], ".", end), (os.environ.get("HOME", "/"), "~", end)):
    if path not in ("/", "", "."):
        rules.append((re.compile(re.escape(path) + tail), name))
host = os.environ["HOST_NAME"]
if host:
    rules.append((re.compile(r"(?<![\w.-])%s(?![\w-])" % re.escape(host)), "HOST"))
for f in sys.argv[1:]:
    text = open(f, errors="replace").read()
    new = text
    for pattern, name in rules:
        new = pattern.sub(lambda m: name, new)
    if new != text:
        open(f, "w").write(new)
EOF
}
