#!/usr/bin/env bash
# Boots a Linux guest under QEMU with a vhost-user-fs device on SOCK, mounts
# TAG at /mnt (or, with --nfs, an NFS export with the guest kernel's own NFS
# client), runs a workload script there, and exits with its status.
# See README.md in this directory.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: run-guest.sh --socket SOCK --tag TAG [options]
       run-guest.sh --nfs SERVER:/PATH [--nfs-opts OPTS] [options]
  --socket SOCK      vhost-user socket of the file system daemon (must exist or appear)
  --tag TAG          virtio-fs tag (the daemon's; at most 36 bytes)
  --net              give the guest a NIC on QEMU's user network (virtio-net):
                     it is 10.0.2.15, the host's 127.0.0.1 is 10.0.2.2 from it
  --nfs SRV:/PATH    mount this NFS export at /mnt with the guest kernel's NFS
                     client instead of a virtio-fs tag (implies --net; no
                     --socket/--tag); e.g. 10.0.2.2:/srv/export
  --nfs-opts OPTS    the kernel's NFS mount options (nfs(5)), default
                     vers=3,proto=tcp,mountproto=tcp,nolock,port=2049;
                     e.g. vers=4.0,proto=tcp,port=2049 (addr= is added)
  --workload FILE    shell script run in the guest (busybox sh, cwd /mnt);
                     without it the guest mounts, unmounts and powers off
  --mem SIZE         guest memory, shared memfd (default 512M)
  --smp N            guest CPUs (default 1)
  --queues N         num-request-queues of vhost-user-fs-pci (default: QEMU's, 1)
  --queue-size Q     queue-size of vhost-user-fs-pci (default: QEMU's, 128)
  --packed           packed virtqueues (packed=on on vhost-user-fs-pci)
  --kvm              -accel kvm (default: TCG with -cpu max; see NOTES.md)
  --timeout S        kill QEMU after S seconds, exit 124 (default 300)
  --reboot           run the workload, reboot the guest (same QEMU, same device
                     connection), run it again; DPFS_BOOT=1/2 in the guest
  --fio | --no-fio   put fio into the guest (default: if the workload mentions fio)
  --bin PATH         put the host binary PATH into the guest as /usr/local/bin/<name>,
                     with the shared libraries ldd lists (repeatable; cached by hash)
  --append ARGS      extra kernel command line
  --plugin SPEC      load a TCG plugin: QEMU's -plugin SPEC (PATH.so[,ARG=VALUE]...;
                     e.g. insn-count/, the guest instruction counter), TCG only
  --log FILE         keep the whole console log in FILE
  --quiet            do not stream the console; print it only on failure
  --socket-wait S    wait up to S seconds for SOCK to appear (default 10)
exit status: the workload's (with --reboot: the first nonzero of both boots);
  121 QEMU reported a vhost-user backend failure (daemon died or refused), 122 guest could not unmount /mnt, 123 guest could not load modules or mount,
  124 timeout, 125 guest ended without reporting, 126 QEMU or harness failure,
  2 usage.
EOF
}

die() { echo "run-guest: $*" >&2; exit 126; }
note() { echo "run-guest: $*" >&2; }
usage_err() { echo "run-guest: $*" >&2; usage >&2; exit 2; }

here=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
sock= tag= workload= mem=512M smp=1 queues= qsize= packed=0 kvm=0 timeout=300 reboot=0
fio=auto append= plugin= keep_log= quiet=0 sock_wait=10 net=0 nfs=
nfs_opts=vers=3,proto=tcp,mountproto=tcp,nolock,port=2049
bins=()
while (($#)); do
  case $1 in
    --socket) sock=${2:?}; shift 2 ;;
    --tag) tag=${2:?}; shift 2 ;;
    --net) net=1; shift ;;
    --nfs) nfs=${2:?}; net=1; shift 2 ;;
    --nfs-opts) nfs_opts=${2:?}; shift 2 ;;
    --workload) workload=${2:?}; shift 2 ;;
    --mem) mem=${2:?}; shift 2 ;;
    --smp) smp=${2:?}; shift 2 ;;
    --queues) queues=${2:?}; shift 2 ;;
    --queue-size) qsize=${2:?}; shift 2 ;;
    --packed) packed=1; shift ;;
    --kvm) kvm=1; shift ;;
    --timeout) timeout=${2:?}; shift 2 ;;
    --reboot) reboot=1; shift ;;
    --fio) fio=1; shift ;;
    --no-fio) fio=0; shift ;;
    --bin) bins+=("${2:?}"); shift 2 ;;
    --append) append=${2:?}; shift 2 ;;
    --plugin) plugin=${2:?}; shift 2 ;;
    --log) keep_log=${2:?}; shift 2 ;;
    --quiet) quiet=1; shift ;;
    --socket-wait) sock_wait=${2:?}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage_err "unknown argument: $1" ;;
  esac
done
if [[ -n $nfs ]]; then
  [[ -z $sock && -z $tag ]] || usage_err "--nfs mounts an NFS export instead of a virtio-fs tag: no --socket/--tag"
  # Both go on the kernel command line: no spaces.
  [[ $nfs =~ ^[0-9.]+:/[^[:space:]]*$ ]] || usage_err "--nfs wants IPv4-ADDRESS:/PATH without spaces: $nfs"
  [[ $nfs_opts =~ ^[^[:space:]]+$ ]] || usage_err "--nfs-opts wants OPTION,OPTION,... without spaces"
else
  [[ -n $sock ]] || usage_err "--socket is required"
  [[ -n $tag ]] || usage_err "--tag is required"
  ((${#tag} <= 36)) || usage_err "tag longer than 36 bytes: $tag"
  [[ $tag =~ ^[A-Za-z0-9._:-]+$ ]] || usage_err "tag must be [A-Za-z0-9._:-]+ (it goes on the kernel command line): $tag"
fi
[[ $timeout =~ ^[0-9]+$ ]] || usage_err "--timeout wants seconds"
[[ -z $plugin || $kvm == 0 ]] || usage_err "--plugin needs TCG: TCG plugins see no code KVM runs"
[[ -z $queues || $queues =~ ^[1-9][0-9]*$ ]] || usage_err "--queues wants a positive number"
[[ -z $qsize || $qsize =~ ^[1-9][0-9]*$ ]] || usage_err "--queue-size wants a positive number"
[[ $smp =~ ^[1-9][0-9]*$ ]] || usage_err "--smp wants a positive number"
if [[ -n $workload ]]; then
  [[ -r $workload ]] || usage_err "cannot read workload $workload"
fi
for b in ${bins[@]+"${bins[@]}"}; do
  [[ -f $b && -x $b ]] || usage_err "--bin: not an executable file: $b"
done

qemu=${DPFS_GUEST_QEMU:-qemu-system-x86_64}
command -v "$qemu" >/dev/null || die "no $qemu: apt-get install qemu-system-x86"
command -v cpio >/dev/null || die "no cpio: apt-get install cpio"

cache=$("$here/build-initramfs.sh") || die "building the initramfs failed"
kernel=$(readlink -f "$cache/kernel")
[[ -r $kernel ]] || die "no guest kernel: apt-get install linux-image-amd64"

if [[ $fio == auto ]]; then
  fio=0
  [[ -n $workload ]] && grep -qw fio "$workload" && fio=1
fi
if [[ $fio == 1 && ! -f $cache/fio.cpio ]]; then
  die "fio wanted in the guest but not installed on the host: apt-get install fio"
fi
if ((net)) && [[ ! -f $cache/nfs.cpio ]]; then
  die "--net/--nfs need $cache/nfs.cpio, which build-initramfs.sh makes only with gcc and a static libc: apt-get install gcc libc6-dev"
fi

# ---- --bin: one cached cpio per binary ----------------------------------------
# $cache/bin/<sha256>-<name>.cpio holds the binary at /usr/local/bin/<name> and
# every path ldd names (libraries, the loader) at that path with the content it
# resolves to, as fio.cpio does: the loader finds them where it did on the host
# (system directories, or the build tree through the binary's RUNPATH).
bin_cpio() {  # bin_cpio PATH: prints the cpio's path
  local b=$1 name sum out tmp lib libs
  name=$(basename "$b")
  sum=$(sha256sum "$b" | cut -c1-16)
  out=$cache/bin/$sum-$name.cpio
  if [[ ! -f $out ]]; then
    mkdir -p "$cache/bin"
    tmp=$(mktemp -d "$cache/bin/.tmp.XXXXXX")
    mkdir -p "$tmp/root/usr/local/bin"
    cp "$(readlink -f "$b")" "$tmp/root/usr/local/bin/$name"
    chmod 755 "$tmp/root/usr/local/bin/$name"
    # Debug info is of no use in the guest and fills its memory (the
    # integration tests: 38 MB, 3 MB without).
    if command -v strip >/dev/null; then strip --strip-debug "$tmp/root/usr/local/bin/$name"; fi
    if libs=$(ldd "$b" 2>&1); then
      if grep -q 'not found' <<<"$libs"; then
        rm -rf "$tmp"; die "--bin $b: ldd cannot resolve: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ')"
      fi
      while read -r lib; do
        mkdir -p "$tmp/root$(dirname "$lib")"
        cp "$(readlink -f "$lib")" "$tmp/root$lib"
      done < <(grep -o '/[^ ]*' <<<"$libs" | sort -u)
    fi  # else statically linked: nothing more
    (cd "$tmp/root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$tmp/out.cpio" \
      || { rm -rf "$tmp"; die "--bin $b: cpio failed"; }
    mv "$tmp/out.cpio" "$out"
    rm -rf "$tmp"
  fi
  echo "$out"
}
bin_parts=()
for b in ${bins[@]+"${bins[@]}"}; do
  part=$(bin_cpio "$b") || exit 126
  bin_parts+=("$part")
done

# ---- state and cleanup -------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/dpfs-guest.XXXXXX")
qpid= tailpid=
cleanup() {
  local rc=$?
  if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then
    kill "$qpid" 2>/dev/null || true
    for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
    kill -9 "$qpid" 2>/dev/null || true
  fi
  if [[ -n $tailpid ]]; then kill "$tailpid" 2>/dev/null || true; fi
  if [[ -n $keep_log && -f $work/console.log ]]; then
    tr -d '\r' <"$work/console.log" >"$keep_log" || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- initramfs: base [+ fio] + the workload ------------------------------------
mkdir -p "$work/extra"
if [[ -n $workload ]]; then
  cp "$workload" "$work/extra/workload.sh"
  chmod 755 "$work/extra/workload.sh"
fi
(cd "$work/extra" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0) >"$work/extra.cpio"
parts=("$cache/base.cpio")
((fio)) && parts+=("$cache/fio.cpio")
((net)) && parts+=("$cache/nfs.cpio")
parts+=(${bin_parts[@]+"${bin_parts[@]}"})
parts+=("$work/extra.cpio")
cat "${parts[@]}" >"$work/initrd"

# ---- the socket ------------------------------------------------------------------
if [[ -z $nfs ]]; then
  for ((i = 0; i < sock_wait * 10; i++)); do
    [[ -S $sock ]] && break
    sleep 0.1
  done
  [[ -S $sock ]] || die "no vhost-user socket at $sock (is the daemon running?)"
fi

# ---- QEMU --------------------------------------------------------------------------
run_id=$(printf '%08x%04x' "$(date +%s)" "$$")
cmdline="console=ttyS0 quiet loglevel=4 panic=-1 edd=off dpfs.run=$run_id"
if [[ -n $nfs ]]; then
  cmdline+=" dpfs.nfs=$nfs dpfs.nfs_opts=$nfs_opts"
else
  cmdline+=" dpfs.tag=$tag"
fi
((net)) && cmdline+=" dpfs.net=1"
((reboot)) && cmdline+=" dpfs.reboot=1"
[[ -n $append ]] && cmdline+=" $append"

dev="vhost-user-fs-pci,chardev=vfs,tag=$tag"
[[ -n $queues ]] && dev+=",num-request-queues=$queues"
[[ -n $qsize ]] && dev+=",queue-size=$qsize"
((packed)) && dev+=",packed=on"

if ((kvm)); then
  [[ -w /dev/kvm ]] || die "--kvm: /dev/kvm not usable"
  accel=(-accel kvm -cpu host,arch-capabilities=off)
else
  accel=(-accel tcg -cpu max)
fi

qargs=(
  -nodefaults -no-user-config -display none -monitor none
  -serial "file:$work/console.log"
  "${accel[@]}" -smp "$smp" -m "$mem"
  -object "memory-backend-memfd,id=mem,size=$mem,share=on" -numa node,memdev=mem
  -kernel "$kernel" -initrd "$work/initrd" -append "$cmdline"
)
[[ -z $nfs ]] && qargs+=(-chardev "socket,id=vfs,path=$sock" -device "$dev")
((net)) && qargs+=(-nic user,model=virtio-net-pci)
[[ -n $plugin ]] && qargs+=(-plugin "$plugin")
((reboot)) || qargs+=(-no-reboot)

: >"$work/console.log"
t0=$(date +%s.%N)
"$qemu" "${qargs[@]}" </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
if ((!quiet)); then
  tail -n +1 -F --pid="$qpid" "$work/console.log" 2>/dev/null | tr -d '\r' &
  tailpid=$!
fi

expected=$((reboot ? 2 : 1))
markers() { tr -d '\r' <"$work/console.log" | grep -ao "$1" || true; }
# QEMU's complaints about the vhost-user backend (it closed the socket, it
# refused a message): the guest would hang on its requests, so fail fast.
backend_errors() { grep -aE 'vhost|end-of-file|Failed to (set|read) msg|Failed to (read|write)' "$work/qemu.out" || true; }
timed_out=0 backend_failed=0
while :; do
  exits=$(markers 'DPFS-GUEST-EXIT [0-9]*' | wc -l)
  boots=$(markers 'DPFS-GUEST-BOOT ' | wc -l)
  ((exits >= expected)) && break
  ((boots > expected)) && break  # rebooted more often than asked (panic?)
  kill -0 "$qpid" 2>/dev/null || break
  if [[ -n $(backend_errors) ]]; then
    backend_failed=1
    sleep 2  # let the guest console show what it saw
    break
  fi
  if (($(date +%s) - ${t0%.*} >= timeout)); then timed_out=1; break; fi
  sleep 0.2
done
t_report=$(date +%s.%N)

# Let the guest power off by itself; then make sure QEMU is gone.
if ((!timed_out && !backend_failed)); then
  for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.2; done
fi
if kill -0 "$qpid" 2>/dev/null; then
  ((timed_out || backend_failed)) || ((exits < expected)) || note "guest reported but did not power off; killing QEMU"
  kill "$qpid" 2>/dev/null || true
  sleep 0.5
  kill -9 "$qpid" 2>/dev/null || true
fi
qrc=0
wait "$qpid" 2>/dev/null || qrc=$?
qpid=
if [[ -n $tailpid ]]; then
  # tail notices QEMU's exit within a second; give it that to flush.
  for _ in $(seq 20); do kill -0 "$tailpid" 2>/dev/null || break; sleep 0.1; done
  kill "$tailpid" 2>/dev/null || true
  wait "$tailpid" 2>/dev/null || true
  tailpid=
fi

mapfile -t statuses < <(markers 'DPFS-GUEST-EXIT [0-9]*' | awk '{print $2}')
first_boot=$(tr -d '\r' <"$work/console.log" | grep -ao 'DPFS-GUEST-BOOT run=[^ ]* uptime=[0-9.]*' | head -n1 | sed 's/.*uptime=//' || true)
elapsed=$(awk -v a="$t0" -v b="$t_report" 'BEGIN{printf "%.1f", b-a}')

show_console() {
  echo "----- guest console -----" >&2
  tr -d '\r' <"$work/console.log" | tail -n 60 >&2
  echo "----- QEMU output -----" >&2
  tail -n 20 "$work/qemu.out" >&2
  echo "-------------------------" >&2
}

if ((backend_failed)) || [[ -n $(backend_errors) ]]; then
  ((quiet)) && show_console
  note "the vhost-user backend failed (QEMU: $(backend_errors | head -n1)); ${#statuses[@]} of $expected boots reported"
  exit 121
fi

if ((${#statuses[@]} < expected)); then
  ((quiet)) && show_console
  if ((timed_out)); then
    note "timeout after ${timeout}s (${#statuses[@]} of $expected boots reported); QEMU killed"
    exit 124
  fi
  if ((boots == 0)); then
    [[ -s $work/qemu.out ]] && { echo "----- QEMU output -----" >&2; cat "$work/qemu.out" >&2; }
    note "QEMU exited ($qrc) before the guest booted"
    exit 126
  fi
  note "guest ended without reporting (${#statuses[@]} of $expected boots reported, QEMU exit $qrc)"
  exit 125
fi

rc=0
for s in "${statuses[@]:0:expected}"; do
  if ((s != 0)); then rc=$s; break; fi
done
((rc != 0 && quiet)) && show_console
note "statuses: ${statuses[*]:0:expected}; guest kernel reached /init at ${first_boot:-?}s guest uptime; ${elapsed}s from QEMU start to the last report"
exit "$rc"
