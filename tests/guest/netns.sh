#!/usr/bin/env bash
# netns.sh COMMAND [ARGS...]: runs COMMAND in a private network, mount and
# PID namespace with its own loopback (up), its own /run and its own rpcbind,
# so that the NFS servers (ganesha on 127.0.0.1:2049) and QEMU user networks
# it starts collide with nobody else's on this machine. Everything started in
# it (rpcbind, ganesha, QEMU, dpfs) ends when COMMAND does: the namespace's
# first process exits and the kernel kills the rest. Exits with COMMAND's
# status. Needs root, unshare (util-linux), ip (iproute2), rpcbind.
set -euo pipefail
(($#)) || { echo "usage: netns.sh COMMAND [ARGS...]" >&2; exit 2; }
for tool in unshare ip rpcbind; do
  command -v "$tool" >/dev/null || { echo "netns.sh: no $tool (apt-get install util-linux iproute2 rpcbind)" >&2; exit 126; }
done
# shellcheck disable=SC2016  # expanded by the inner shell
exec unshare --net --mount --pid --fork --mount-proc bash -c '
  set -e
  mount -t tmpfs tmpfs /run
  ip link set lo up
  # A non-loopback address: getaddrinfo(AI_ADDRCONFIG) finds no IPv4 without
  # one, and ganesha then cannot resolve Bind_addr = 127.0.0.1.
  ip addr add 10.213.0.1/32 dev lo
  rpcbind -w
  set +e
  "$@"
' netns.sh "$@"
