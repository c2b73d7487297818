#!/usr/bin/env bash
# The main job: install, build, and serve an in-memory file system on every
# transport dpfs has: a FUSE mount at /tmp/dpfs and a virtio-fs device on the
# vhost-user socket /tmp/dpfs.sock (tag dpfs) for QEMU guests. Ctrl-C
# unmounts, closes the socket and exits. Boot a guest against it from
# another shell: scripts/guest.sh (a shell in the guest) or
# scripts/guest.sh tests/guest/workloads/basic.sh (a workload).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
bash scripts/build.sh build
mount=${DPFS_MOUNT:-/tmp/dpfs}
sock=${DPFS_SOCKET:-/tmp/dpfs.sock}
tag=${DPFS_TAG:-dpfs}
mkdir -p "$mount"  # a fresh machine has no mount point yet
cat >&2 <<MSG
dpfs: FUSE at $mount; virtio-fs on $sock, tag $tag. From another shell:
  scripts/guest.sh                                   # a throwaway guest, shell at /mnt
  scripts/guest.sh tests/guest/workloads/basic.sh    # or a workload in it
or any QEMU guest with:
  -object memory-backend-memfd,id=mem,size=1G,share=on -numa node,memdev=mem \\
  -chardev socket,id=vfs,path=$sock -device vhost-user-fs-pci,chardev=vfs,tag=$tag
and in the guest: mount -t virtiofs $tag /mnt
MSG
exec build/dpfs serve --backend memfs --fuse-mount "$mount" --vhost-user "$sock" --tag "$tag" "$@"
