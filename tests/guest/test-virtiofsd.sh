#!/usr/bin/env bash
# Proves the guest harness against QEMU's reference virtiofsd: serves a temp
# directory with virtiofsd, boots a guest that runs workloads/basic.sh on it,
# then checks from the host that the guest's files are there with the right
# checksums.
#
#   test-virtiofsd.sh [--reboot] [--keep] [run-guest.sh options...]
#
#   --reboot   also run the guest-reboot variant (a second virtiofsd, the
#              workload on both boots of one QEMU)
#   --keep     keep the temp directory (share, logs)
# Other options (--kvm, --mem, --timeout, --smp ...) go to run-guest.sh.
set -euo pipefail

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
virtiofsd=${VIRTIOFSD:-/usr/lib/qemu/virtiofsd}
do_reboot=0 keep=0 extra=()
while (($#)); do
  case $1 in
    --reboot) do_reboot=1; shift ;;
    --keep) keep=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) extra+=("$1"); shift ;;
  esac
done
[[ -x $virtiofsd ]] || { echo "test-virtiofsd: no $virtiofsd: apt-get install qemu-system-common" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/dpfs-vfsd.XXXXXX")
vpid=
cleanup() {
  local rc=$?
  if [[ -n $vpid ]] && kill -0 "$vpid" 2>/dev/null; then
    kill "$vpid" 2>/dev/null || true
    sleep 0.3
    kill -9 "$vpid" 2>/dev/null || true
  fi
  if ((keep)); then echo "test-virtiofsd: kept $tmp" >&2; else rm -rf "$tmp"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

failures=0
ok() { echo "test-virtiofsd: ok: $*"; }
bad() { echo "test-virtiofsd: FAIL: $*" >&2; failures=$((failures + 1)); }

start_virtiofsd() {  # start_virtiofsd NAME: serves $tmp/NAME on $tmp/NAME.sock
  local share=$tmp/$1 sock=$tmp/$1.sock
  mkdir -p "$share"
  "$virtiofsd" --socket-path="$sock" -o source="$share" -o cache=none \
    >"$tmp/$1.virtiofsd.log" 2>&1 &
  vpid=$!
  for _ in $(seq 100); do
    [[ -S $sock ]] && return 0
    kill -0 "$vpid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$tmp/$1.virtiofsd.log" >&2
  echo "test-virtiofsd: virtiofsd did not create $sock" >&2
  exit 1
}

stop_virtiofsd() {  # it exits by itself once QEMU is gone
  for _ in $(seq 50); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$vpid" 2>/dev/null; then
    echo "test-virtiofsd: note: virtiofsd still running after QEMU exited; killing it" >&2
    kill "$vpid" 2>/dev/null || true
  fi
  wait "$vpid" 2>/dev/null || true
  vpid=
}

check_host_side() {  # check_host_side NAME: the guest's files, seen from the host
  local d=$tmp/$1/dpfs-basic
  if [[ ! -f $d/MANIFEST.md5 ]]; then bad "$1: no $d/MANIFEST.md5 on the host"; return; fi
  local n
  n=$(wc -l <"$d/MANIFEST.md5")
  if ((n < 50)); then bad "$1: manifest has only $n entries"; fi
  if (cd "$d" && md5sum -c --quiet --strict MANIFEST.md5); then
    ok "$1: $n files written by the guest match their checksums on the host"
  else
    bad "$1: checksum mismatch on the host"
  fi
  # A few things the workload leaves behind, checked with the host's tools.
  [[ $(readlink "$d/names/y/soft") == victim ]] && ok "$1: symlink" || bad "$1: symlink target"
  [[ $(stat -c %a "$d/names/mode") == 4755 ]] && ok "$1: mode 4755" || bad "$1: mode of names/mode"
  [[ $(stat -c %s "$d/data/sparse") == $((101 * 4096)) ]] && ok "$1: sparse size" || bad "$1: sparse size"
  [[ ! -e $d/big ]] && ok "$1: removed dir is gone" || bad "$1: big/ still there"
  [[ ! -e $tmp/$1/.dpfs-guest-reboot ]] || bad "$1: reboot marker left behind"
}

run() {  # run NAME [run-guest options]: one guest run against a fresh virtiofsd
  local name=$1; shift
  start_virtiofsd "$name"
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  "$here/run-guest.sh" --socket "$tmp/$name.sock" --tag "dpfs-$name" \
    --workload "$here/workloads/basic.sh" --log "$tmp/$name.console.log" \
    "${extra[@]}" "$@" || rc=$?
  t1=$(date +%s.%N)
  stop_virtiofsd
  echo "test-virtiofsd: $name: run-guest.sh exit $rc in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s"
  if ((rc != 0)); then
    bad "$name: guest run failed (exit $rc)"
    echo "----- virtiofsd log (tail) -----" >&2
    tail -n 20 "$tmp/$name.virtiofsd.log" >&2
    return
  fi
  ok "$name: guest workload passed"
  check_host_side "$name"
}

run plain
if ((do_reboot)); then
  run reboot --reboot
  c=$(grep -c 'boot 1.s .* files intact after reboot' "$tmp/reboot.console.log" || true)
  ((c == 1)) && ok "reboot: boot 2 found boot 1's files intact" || bad "reboot: boot 2 did not verify boot 1's files"
fi

if ((failures)); then
  echo "test-virtiofsd: $failures failure(s)"
  exit 1
fi
echo "test-virtiofsd: all passed"
