#!/usr/bin/env bash
# Boots a throwaway QEMU guest against a running dpfs (scripts/run.sh) that
# mounts its virtio-fs device at /mnt.
#
#   scripts/guest.sh                 interactive: a shell in the guest, cwd /mnt
#                                    (exit, or Ctrl-A X, powers it off)
#   scripts/guest.sh WORKLOAD        runs a workload script in the guest, e.g.
#                                    tests/guest/workloads/basic.sh; exits with
#                                    its status (tests/guest/run-guest.sh)
#
# Env: DPFS_SOCKET (default /tmp/dpfs.sock), DPFS_TAG (default dpfs),
# DPFS_GUEST_MEM (default 512M). Needs qemu-system-x86, linux-image-amd64,
# busybox-static, cpio (scripts/deps.sh installs them). The guest runs under
# TCG (NOTES.md: KVM guests hang on these machines); it boots in a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
sock=${DPFS_SOCKET:-/tmp/dpfs.sock}
tag=${DPFS_TAG:-dpfs}
mem=${DPFS_GUEST_MEM:-512M}

[[ -S $sock ]] || { echo "guest: no vhost-user socket at $sock: start dpfs first (scripts/run.sh)" >&2; exit 1; }

if (($#)); then
  exec tests/guest/run-guest.sh --socket "$sock" --tag "$tag" --mem "$mem" --workload "$1" "${@:2}"
fi

cache=$(tests/guest/build-initramfs.sh)
work=$(mktemp -d "${TMPDIR:-/tmp}/dpfs-guest-shell.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/extra"
cat >"$work/extra/workload.sh" <<'EOF'
#!/bin/sh
echo
echo "dpfs guest: virtio-fs tag $DPFS_TAG is mounted at /mnt (this is the cwd). 'exit' powers off."
setsid cttyhack sh -l
EOF
chmod 755 "$work/extra/workload.sh"
(cd "$work/extra" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0) >"$work/extra.cpio"
cat "$cache/base.cpio" "$work/extra.cpio" >"$work/initrd"

echo "guest: booting against $sock (tag $tag); the shell appears in a few seconds" >&2
qemu-system-x86_64 \
  -nodefaults -no-user-config -display none -no-reboot \
  -serial mon:stdio -accel tcg -cpu max -smp 1 -m "$mem" \
  -object "memory-backend-memfd,id=mem,size=$mem,share=on" -numa node,memdev=mem \
  -kernel "$(readlink -f "$cache/kernel")" -initrd "$work/initrd" \
  -append "console=ttyS0 quiet loglevel=4 panic=-1 edd=off dpfs.tag=$tag dpfs.run=shell" \
  -chardev "socket,id=vfs,path=$sock" -device "vhost-user-fs-pci,chardev=vfs,tag=$tag"
