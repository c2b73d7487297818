#!/usr/bin/env bash
# Builds (once, cached) the guest initramfs used by run-guest.sh.
#
#   build-initramfs.sh            prints the cache directory on stdout
#
# The cache directory holds:
#   vmlinuz      the guest kernel (symlink to /boot/vmlinuz-<ver>)
#   vmlinux      the same, decompressed, if it has a PVH entry (boots faster)
#   kernel       symlink to what QEMU should boot: vmlinux, else vmlinuz
#   base.cpio    busybox + modules + /init           (newc, uncompressed)
#   fio.cpio     fio and its shared libraries        (only if fio is installed)
#   nfs.cpio     the guest's NIC and the kernel's NFS client: their modules
#                (order in /etc/dpfs-nfs-modules) and /bin/mount-nfs
#                (mount-nfs.c, static; only if gcc can build it)
#   modules.txt  the insmod order baked into /init
#
# Cache key: kernel version + hashes of this script (which contains /init),
# of mount-nfs.c and of the busybox and fio binaries. Location:
# $DPFS_GUEST_CACHE, else <repo>/build/guest. Kernel: $DPFS_GUEST_KERNEL (a
# /boot/vmlinuz-* path), else the newest /boot/vmlinuz-*.
#
# Archives are left uncompressed on purpose: under TCG the guest decompresses
# slowly, while QEMU loads an uncompressed archive at host speed.
set -euo pipefail

die() { echo "build-initramfs: $*" >&2; exit 1; }
log() { echo "build-initramfs: $*" >&2; }

self=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$self")
repo=$(cd "$here/../.." && pwd)

# The modules /init loads, in this order (NOTES.md); dependencies found with
# modinfo are inserted before the module that needs them.
wanted_modules=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci fuse virtiofs)
# For run-guest.sh --net/--nfs (nfs.cpio): a virtio NIC and the kernel's NFS
# client, v3 and v4 (sunrpc, lockd, grace, nfs_acl, fscache, ... come from
# modinfo). Loaded after the base modules.
wanted_nfs_modules=(virtio_net nfsv3 nfsv4)

# ---- inputs ---------------------------------------------------------------
kernel=${DPFS_GUEST_KERNEL:-}
if [[ -z $kernel ]]; then
  kernel=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1 || true)
fi
[[ -n $kernel && -r $kernel ]] || die "no guest kernel: apt-get install linux-image-amd64"
kver=${kernel##*/vmlinuz-}
moddir=/lib/modules/$kver
[[ -d $moddir ]] || die "no modules for $kver in $moddir: apt-get install linux-image-amd64"
command -v modinfo >/dev/null || die "no modinfo: apt-get install kmod"
command -v cpio >/dev/null || die "no cpio: apt-get install cpio"
busybox=${DPFS_GUEST_BUSYBOX:-/bin/busybox}
[[ -x $busybox ]] || die "no busybox at $busybox: apt-get install busybox-static"
if ldd "$busybox" >/dev/null 2>&1; then
  die "$busybox is dynamically linked: apt-get install busybox-static"
fi
fio=$(command -v fio || true)

hash_of() { sha256sum "$1" | cut -c1-12; }
key="$kver-$(hash_of "$self")-$(hash_of "$here/mount-nfs.c")-$(hash_of "$busybox")-$( [[ -n $fio ]] && hash_of "$fio" || echo nofio)"
cache_root=${DPFS_GUEST_CACHE:-$repo/build/guest}
out=$cache_root/$key

if [[ -f $out/.complete ]]; then
  echo "$out"
  exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
flock 9
if [[ -f $out/.complete ]]; then  # built by someone else while we waited
  echo "$out"
  exit 0
fi

log "building $out (kernel $kver)"
tmp=$(mktemp -d "$cache_root/.tmp.XXXXXX")
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,mnt,etc,lib/modules,root,run}

# ---- busybox ----------------------------------------------------------------
cp "$busybox" "$root/bin/busybox"
while read -r applet; do
  [[ -n $applet && $applet != bin/busybox ]] || continue
  [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)
[[ -e $root/bin/sh ]] || ln -s busybox "$root/bin/sh"

# ---- modules ---------------------------------------------------------------
order=()
declare -A seen=()
add_module() {  # add_module NAME: dependencies first, each once
  local m=$1 deps d
  [[ -n ${seen[$m]:-} ]] && return 0
  seen[$m]=1
  deps=$(modinfo -k "$kver" -F depends "$m" 2>/dev/null) \
    || { modinfo -k "$kver" -F filename "$m" >/dev/null 2>&1 \
         || die "module $m not found for $kver"; deps=; }
  for d in ${deps//,/ }; do add_module "$d"; done
  order+=("$m")
}
for m in "${wanted_modules[@]}"; do add_module "$m"; done

copy_modules() {  # copy_modules ROOT LIST: the modules in order[] into ROOT, names into LIST
  local m f dst
  : >"$2"
  mkdir -p "$1/lib/modules"
  for m in "${order[@]}"; do
    f=$(modinfo -k "$kver" -F filename "$m" | head -n1)
    case $f in
      "(builtin)"|"") log "$m is built in"; continue ;;
    esac
    dst=$1/lib/modules/$m.ko
    case $f in
      *.ko)     cp "$f" "$dst" ;;
      *.ko.xz)  xz -dc "$f" >"$dst" ;;
      *.ko.zst) zstd -qdc "$f" >"$dst" ;;
      *.ko.gz)  gzip -dc "$f" >"$dst" ;;
      *) die "unknown module format: $f" ;;
    esac
    echo "$m" >>"$2"
  done
}
copy_modules "$root" "$tmp/modules.txt"
cp "$tmp/modules.txt" "$root/etc/dpfs-modules"

# ---- /init -------------------------------------------------------------------
cat >"$root/init" <<'INIT'
#!/bin/sh
# dpfs guest init: load virtio-fs, mount the tag, run /workload.sh, report,
# power off (or reboot once, with dpfs.reboot=1). With dpfs.net=1 (from
# nfs.cpio) the guest has a NIC on QEMU's user network (10.0.2.15, the host
# is 10.0.2.2); with dpfs.nfs=SERVER:/PATH /mnt is that NFS export, mounted
# by the kernel's NFS client with dpfs.nfs_opts=, instead of the tag.
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm

tag=; run=none; reboot=0; mopts=; net=0; nfs=; nfs_opts=
for arg in $(cat /proc/cmdline); do
  case $arg in
    dpfs.tag=*)    tag=${arg#dpfs.tag=} ;;
    dpfs.run=*)    run=${arg#dpfs.run=} ;;
    dpfs.reboot=*) reboot=${arg#dpfs.reboot=} ;;
    dpfs.mount_opts=*) mopts=${arg#dpfs.mount_opts=} ;;
    dpfs.net=*)    net=${arg#dpfs.net=} ;;
    dpfs.nfs=*)    nfs=${arg#dpfs.nfs=}; net=1 ;;
    dpfs.nfs_opts=*) nfs_opts=${arg#dpfs.nfs_opts=} ;;
  esac
done

echo "DPFS-GUEST-BOOT run=$run uptime=$(cut -d' ' -f1 /proc/uptime)"

finish() {  # finish STATUS: report, sync, power off or reboot
  echo "DPFS-GUEST-EXIT $1"
  sync
  if [ "$reboot" = 1 ] && [ "${boot:-1}" = 1 ]; then
    reboot -f
  fi
  poweroff -f
  sleep 5; echo o >/proc/sysrq-trigger  # last resort
}

load_modules() {  # load_modules LIST: insmod each module named in LIST
  for m in $(cat "$1"); do
    if ! insmod /lib/modules/$m.ko 2>/tmp/insmod.err; then
      [ -d /sys/module/$m ] || { echo "DPFS-GUEST-ERROR insmod $m: $(cat /tmp/insmod.err)"; finish 123; }
    fi
  done
}
load_modules /etc/dpfs-modules

if [ "$net" = 1 ]; then
  [ -f /etc/dpfs-nfs-modules ] || { echo "DPFS-GUEST-ERROR dpfs.net=1 but no nfs.cpio in the initramfs"; finish 123; }
  load_modules /etc/dpfs-nfs-modules
  # QEMU's user network: the guest is 10.0.2.15, the host's loopback 10.0.2.2.
  ip link set lo up
  if ! { ip addr add 10.0.2.15/24 dev eth0 && ip link set eth0 up &&
         ip route add default via 10.0.2.2; } 2>/tmp/net.err; then
    echo "DPFS-GUEST-ERROR network setup: $(cat /tmp/net.err)"; finish 123
  fi
fi

retry_mount() {  # retry_mount WHAT COMMAND...: the device probes at insmod; retry briefly anyway
  what=$1; shift
  i=0
  while [ $i -lt 20 ]; do
    "$@" 2>/tmp/mount.err && return 0
    i=$((i + 1)); usleep 100000
  done
  echo "DPFS-GUEST-ERROR $what: $(cat /tmp/mount.err)"
  finish 123
}
if [ -n "$nfs" ]; then
  retry_mount "mount-nfs $nfs /mnt $nfs_opts" mount-nfs "$nfs" /mnt "$nfs_opts"
else
  [ -n "$tag" ] || { echo "DPFS-GUEST-ERROR no dpfs.tag= on the kernel command line"; finish 123; }
  retry_mount "mount -t virtiofs $tag /mnt" mount -t virtiofs ${mopts:+-o "$mopts"} "$tag" /mnt
fi

# Which boot is this? Boot 1 of a --reboot run leaves a marker with the run id
# on the share; boot 2 finds it and removes it.
boot=1
marker=/mnt/.dpfs-guest-reboot
if [ "$reboot" = 1 ] && [ -f $marker ] && [ "$(cat $marker)" = "$run" ]; then
  boot=2
  rm -f $marker || echo "DPFS-GUEST-WARN could not remove $marker"
fi
export DPFS_MNT=/mnt DPFS_BOOT=$boot DPFS_TAG=$tag DPFS_RUN=$run

status=0
if [ -f /workload.sh ]; then
  echo "DPFS-GUEST-WORKLOAD-BEGIN boot=$boot uptime=$(cut -d' ' -f1 /proc/uptime)"
  (cd /mnt && exec sh /workload.sh)
  status=$?
  echo "DPFS-GUEST-WORKLOAD-END status=$status uptime=$(cut -d' ' -f1 /proc/uptime)"
else
  echo "DPFS-GUEST-INFO no /workload.sh; mounted $tag and nothing else"
fi

if [ "$reboot" = 1 ] && [ $boot = 1 ]; then
  echo "$run" >$marker || { echo "DPFS-GUEST-ERROR cannot write $marker"; [ $status = 0 ] && status=122; }
fi
sync
cd /
if ! umount /mnt 2>/tmp/umount.err; then
  echo "DPFS-GUEST-ERROR umount /mnt: $(cat /tmp/umount.err)"
  [ $status = 0 ] && status=122
fi
finish $status
INIT
chmod 755 "$root/init"

(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$tmp/base.cpio"

# ---- nfs ---------------------------------------------------------------------
# The NIC and NFS client modules not in base.cpio, in dependency order, and
# the mount helper (busybox's mount cannot mount NFS).
order=()
for m in "${wanted_nfs_modules[@]}"; do add_module "$m"; done
nroot=$tmp/nfs-root
mkdir -p "$nroot/etc" "$nroot/bin"
if ! command -v gcc >/dev/null; then
  log "no gcc: no nfs.cpio, run-guest.sh --net/--nfs will not work (apt-get install gcc libc6-dev)"
elif ! gcc -static -O2 -Wall -Wextra -Werror -o "$nroot/bin/mount-nfs" "$here/mount-nfs.c" 2>"$tmp/gcc.err"; then
  log "cannot build mount-nfs (no nfs.cpio): $(head -n 3 "$tmp/gcc.err")"
else
  copy_modules "$nroot" "$nroot/etc/dpfs-nfs-modules"
  (cd "$nroot" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$tmp/nfs.cpio"
fi

# ---- fio -------------------------------------------------------------------
if [[ -n $fio ]]; then
  froot=$tmp/fio-root
  mkdir -p "$froot/usr/bin"
  cp "$(readlink -f "$fio")" "$froot/usr/bin/fio"
  # Every path ldd names (libraries and the loader), at the path it names,
  # with the content of what it resolves to.
  ldd "$fio" | grep -o '/[^ ]*' | sort -u | while read -r lib; do
    mkdir -p "$froot$(dirname "$lib")"
    cp "$(readlink -f "$lib")" "$froot$lib"
  done
  (cd "$froot" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet -R 0:0) >"$tmp/fio.cpio"
else
  log "fio not installed: no fio in the guest (apt-get install fio)"
fi

# ---- kernel ------------------------------------------------------------------
# QEMU boots an uncompressed vmlinux through its PVH entry point: that skips
# the firmware's bzImage loader and the kernel's own decompression, which under
# TCG take about 4 s of a 7 s boot. Fall back to the bzImage if anything is off.
ln -s "$kernel" "$tmp/vmlinuz"
extract_vmlinux() {  # extract_vmlinux BZIMAGE OUT: 0 if OUT is a PVH-bootable ELF
  local magic tool off
  for pair in $'\xfd7zXZ:xz -dc --single-stream' $'\x28\xb5\x2f\xfd:zstd -qdc' $'\x1f\x8b\x08:gzip -dc'; do
    magic=${pair%%:*} tool=${pair#*:}
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -abo "$magic" "$1" 2>/dev/null | head -n 5 | cut -d: -f1); do
      tail -c +$((off + 1)) "$1" | $tool >"$2" 2>/dev/null || true
      # The ELF must carry XEN_ELFNOTE_PHYS32_ENTRY (18), QEMU's PVH entry.
      if [[ $(head -c 4 "$2" 2>/dev/null) == $'\x7fELF' &&
            $(readelf -n "$2" 2>/dev/null || true) == *"note type: (0x00000012)"* ]]; then
        return 0
      fi
    done
  done
  rm -f "$2"
  return 1
}
if [[ ${DPFS_GUEST_PVH:-1} == 1 ]] && command -v readelf >/dev/null &&
   extract_vmlinux "$kernel" "$tmp/vmlinux"; then
  ln -s vmlinux "$tmp/kernel"
else
  log "booting the bzImage (no PVH vmlinux could be extracted): slower under TCG"
  ln -s vmlinuz "$tmp/kernel"
fi
echo "$kver" >"$tmp/kernel-version"
touch "$tmp/.complete"
rm -rf "$tmp/root" "$tmp/fio-root" "$tmp/nfs-root" "$tmp/gcc.err"
trap - EXIT
mv "$tmp" "$out"
# Older builds for this kernel (other script versions) are dead weight.
for d in "$cache_root/$kver"-*; do
  [[ $d != "$out" && -f $d/.complete ]] && rm -rf "$d"
done
log "built $(du -sh "$out" | cut -f1) in $out"
echo "$out"
