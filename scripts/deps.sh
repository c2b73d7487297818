#!/usr/bin/env bash
# Installs what dpfs needs to build, test and benchmark on Debian 12.
# Why each package is there: see README.md, "Dependencies".
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config git python3
  libfmt-dev libspdlog-dev libcli11-dev libtomlplusplus-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  fuse3 libfuse3-dev
  clang libclang-rt-14-dev clang-format clang-tidy
  fio attr gnuplot-nox
  liburing-dev libnfs-dev libssl-dev openssl libseccomp-dev libcap-ng-dev
  libhiredis-dev redis-server
  nfs-ganesha nfs-ganesha-vfs rpcbind libnfs-utils nfs-common iproute2
  qemu-system-x86 qemu-system-common linux-image-amd64 busybox-static cpio kmod xz-utils zstd
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
