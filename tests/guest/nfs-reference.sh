#!/usr/bin/env bash
# The integration suites through the Linux kernel's own NFS client, held
# against the same suites through dpfs's NFS backend, against one ganesha.
#
# Per NFS version: a guest (run-guest.sh, Debian's 6.1 kernel) mounts the
# export with its kernel's NFS client and runs the suites there
# (workloads/gtest.sh: build/dpfs_integration_tests with DPFS_TEST_ON_DIR);
# then `dpfs serve --vhost-user --backend nfs://127.0.0.1/EXPORT?version=N`
# serves another directory of the same export and a guest runs the same
# suites on its virtio-fs mount. Prints, per version, the tests that pass on
# one and fail on the other, with the failure text. Exits 0 when both runs
# completed (whatever they found), 1 when a run could not (no summary from
# gtest, a guest or dpfs that failed), 2 on bad usage.
#
# Runs itself in a private network namespace (netns.sh): ganesha on
# 127.0.0.1:2049, rpcbind and QEMU's user network collide with nobody.
# Needs root, qemu, nfs-ganesha(-vfs), rpcbind, libnfs-utils, gcc, and a build
# (dpfs, dpfs_integration_tests). See tests/guest/README.md and docs/nfs.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: nfs-reference.sh [options]
  --build DIR        the build with dpfs and dpfs_integration_tests (default: build)
  --versions "3 4"   NFS versions to compare (default "3 4"; 4 means the kernel's vers=4.0)
  --filter F         gtest filter run in the guests (default: the POSIX suites,
                     PosixTest.*:IoTest.*:ReaddirTest.*:LockTest.*)
  --out DIR          keep the guests' consoles, the ganesha and dpfs logs and
                     the results here (default: a temp dir, removed)
  --timeout S        per guest (default 1200)
  --mem SIZE         guest memory (default 1G)
EOF
}

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
repo=$(cd "$here/../.." && pwd)
build=$repo/build versions="3 4" out= timeout=1200 mem=1G
filter='PosixTest.*:IoTest.*:ReaddirTest.*:LockTest.*'
args=("$@")
while (($#)); do
  case $1 in
    --build) build=$(readlink -f "${2:?}"); shift 2 ;;
    --versions) versions=${2:?}; shift 2 ;;
    --filter) filter=${2:?}; shift 2 ;;
    --out) out=${2:?}; shift 2 ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "nfs-reference: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
for v in $versions; do
  [[ $v == 3 || $v == 4 ]] || { echo "nfs-reference: --versions: 3 and/or 4, not $v" >&2; exit 2; }
done
[[ $filter =~ ^[^[:space:]]+$ ]] || { echo "nfs-reference: --filter without spaces (it goes on the kernel command line)" >&2; exit 2; }

if [[ ${DPFS_NFS_REFERENCE_NETNS:-} != 1 ]]; then
  export DPFS_NFS_REFERENCE_NETNS=1
  exec "$here/netns.sh" "$(readlink -f "${BASH_SOURCE[0]}")" ${args[@]+"${args[@]}"}
fi

die() { echo "nfs-reference: $*" >&2; exit 1; }
note() { echo "nfs-reference: $*" >&2; }
dpfs=$build/dpfs
tests=$build/dpfs_integration_tests
for f in "$dpfs" "$tests"; do
  [[ -x $f ]] || die "no $f: build first (bash scripts/build.sh), or pass --build DIR"
done
for tool in ganesha.nfsd nfs-ls; do
  command -v "$tool" >/dev/null || die "no $tool: apt-get install nfs-ganesha nfs-ganesha-vfs libnfs-utils"
done

work=$(mktemp -d /tmp/dpfs-nfs-reference.XXXXXX)
chmod 755 "$work"
if [[ -n $out ]]; then
  mkdir -p "$out"
  out=$(readlink -f "$out")
else
  out=$work/out
  mkdir -p "$out"
fi
pids=()
cleanup() {
  for p in ${pids[@]+"${pids[@]}"}; do kill "$p" 2>/dev/null || true; done
  for p in ${pids[@]+"${pids[@]}"}; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# ---- ganesha: the configuration of tests/integration/nfs_server.h ----------------
export_dir=$work/export
mkdir -m 755 "$export_dir"
cat >"$work/ganesha.conf" <<EOF
NFS_CORE_PARAM { Bind_addr = 127.0.0.1; Protocols = 3, 4; Enable_NLM = false; Enable_RQUOTA = false; }
NFSV4 { Graceless = true; Allow_Numeric_Owners = true; Only_Numeric_Owners = true; }
EXPORT { Export_Id = 1; Path = $export_dir; Pseudo = $export_dir; Access_Type = RW;
  Squash = No_Root_Squash; SecType = sys; Protocols = 3, 4; Transports = TCP; FSAL { Name = VFS; } }
EOF
ganesha.nfsd -F -f "$work/ganesha.conf" -L "$out/ganesha.log" -p "$work/ganesha.pid" &
pids+=($!)
for ((i = 0; ; i++)); do
  nfs-ls "nfs://127.0.0.1$export_dir?version=3" >/dev/null 2>&1 && break
  kill -0 "${pids[0]}" 2>/dev/null || die "ganesha exited at start-up; its log: $out/ganesha.log"
  ((i < 150)) || die "ganesha did not answer within 30 s; its log: $out/ganesha.log"
  sleep 0.2
done

guest() {  # guest NAME RUN-GUEST-ARGS...: runs the suites; 0 if gtest finished
  local name=$1 rc=0
  shift
  note "$name: guest started $(date +%T)"
  local t0=$SECONDS
  "$here/run-guest.sh" "$@" --bin "$tests" --workload "$here/workloads/gtest.sh" \
    --append "gtest.filter=$filter" --mem "$mem" --timeout "$timeout" --quiet \
    --log "$out/$name.console" >"$out/$name.run-guest" 2>&1 || rc=$?
  note "$name: run-guest.sh exit $rc after $((SECONDS - t0)) s"
  # 0: every test passed; 1: gtest ran and some failed. Anything else
  # (no summary line) means the run itself broke.
  if ! grep -aq '^\[==========\] .* ran\.' "$out/$name.console"; then
    tail -n 30 "$out/$name.run-guest" >&2
    return 1
  fi
}

# results CONSOLE: "TEST<TAB>OK|FAILED|SKIPPED<TAB>failure text (lines joined by \x1f)"
results() {
  tr -d '\r' <"$1" | awk '
    $1 == "[" && $2 == "RUN" && $3 == "]" { cur = $4; text = ""; next }
    $1 == "[" && ($2 == "OK" || $2 == "FAILED" || $2 == "SKIPPED") && $3 == "]" &&
      ($4 == cur || $4 == cur ",") {  # "NAME, where GetParam() = ..." for parameterized tests
      gsub(/\t/, " ", text)
      print cur "\t" $2 "\t" text
      cur = ""; next
    }
    cur != "" { text = text (text == "" ? "" : "\x1f") $0 }'
}

# compare KERNEL-RESULTS DPFS-RESULTS VERSION: prints the differences, tests
# in the order of the kernel client's run.
compare() {
  awk -F'\t' -v v="$3" '
    FNR == NR { order[++n] = $1; kres[$1] = $2; ktext[$1] = $3; next }
    { dres[$1] = $2; dtext[$1] = $3; if (!($1 in kres)) only = only " " $1 }
    function show(text,   n, i, lines) {
      n = split(text, lines, "\x1f")
      for (i = 1; i <= n && i <= 25; i++) print "      " lines[i]
      if (n > 25) print "      ... (" n - 25 " more lines)"
    }
    function list(kwant, dwant, title, verbose,   i, t, c, names) {
      c = 0; names = ""
      for (i = 1; i <= n; i++) {
        t = order[i]
        if (kres[t] == kwant && dres[t] == dwant) { c++; names = names " " t }
      }
      printf "  %s: %d%s\n", title, c, verbose ? "" : names
      if (!verbose) return
      for (i = 1; i <= n; i++) {
        t = order[i]
        if (kres[t] != kwant || dres[t] != dwant) continue
        print "    " t
        show(kwant == "OK" ? dtext[t] : ktext[t])
      }
    }
    END {
      for (t in kres) nk[kres[t]]++
      for (t in dres) nd[dres[t]]++
      printf "NFSv%s: kernel client: %d passed, %d failed; dpfs: %d passed, %d failed\n",
        v, nk["OK"], nk["FAILED"], nd["OK"], nd["FAILED"]
      list("OK", "FAILED", "pass on the kernel client, fail on dpfs", 1)
      list("FAILED", "OK", "fail on the kernel client, pass on dpfs", 1)
      list("FAILED", "FAILED", "fail on both", 0)
      for (i = 1; i <= n; i++) if (!(order[i] in dres)) only = only " " order[i]
      if (only != "") print "  ran on one only:" only
    }' "$1" "$2"
}

status=0
for v in $versions; do
  if [[ $v == 3 ]]; then
    opts=vers=3,proto=tcp,mountproto=tcp,nolock,port=2049
  else
    opts=vers=4.0,proto=tcp,port=2049
  fi
  mkdir -m 755 "$export_dir/kernel-v$v" "$export_dir/dpfs-v$v"

  guest "kernel-v$v" --nfs "10.0.2.2:$export_dir/kernel-v$v" --nfs-opts "$opts" || status=1

  sock=$work/dpfs-v$v.sock
  "$dpfs" serve --backend "nfs://127.0.0.1$export_dir/dpfs-v$v?version=$v" \
    --vhost-user "$sock" --tag "dpfs-nfs-v$v" >"$out/dpfs-v$v.log" 2>&1 &
  dpid=$!
  pids+=("$dpid")
  guest "dpfs-v$v" --socket "$sock" --tag "dpfs-nfs-v$v" || status=1
  kill "$dpid" 2>/dev/null || true
  wait "$dpid" || note "dpfs (v$v) exited with status $? on SIGTERM; its log: $out/dpfs-v$v.log"

  results "$out/kernel-v$v.console" >"$out/kernel-v$v.results"
  results "$out/dpfs-v$v.console" >"$out/dpfs-v$v.results"
  compare "$out/kernel-v$v.results" "$out/dpfs-v$v.results" "$v" | tee "$out/v$v.diff"
done
((status == 0)) || note "a run did not complete: see $out"
exit "$status"
