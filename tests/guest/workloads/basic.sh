#!/bin/sh
# Guest workload (busybox sh): file and directory operations on the virtio-fs
# mount with checksummed data, errno checks, concurrent writers.
#
# Leaves $DPFS_MNT/dpfs-basic/ behind with MANIFEST.md5 (md5sum -c format,
# paths relative to that directory) so that the host can check what the
# guest wrote. With run-guest.sh --reboot, boot 2 first verifies boot 1's
# files against that manifest (did they survive the reboot?), then runs again.
#
# Knobs (environment): BASIC_WRITERS (4), BASIC_FILES_PER_WRITER (16),
# BASIC_DIR_ENTRIES (300).
set -u
M=${DPFS_MNT:-/mnt}
D=$M/dpfs-basic
T=/tmp/basic
WRITERS=${BASIC_WRITERS:-4}
PER_WRITER=${BASIC_FILES_PER_WRITER:-16}
ENTRIES=${BASIC_DIR_ENTRIES:-300}
checks=0
fails=0
start=$(cut -d' ' -f1 /proc/uptime)

pass() { checks=$((checks + 1)); }
fail() { checks=$((checks + 1)); fails=$((fails + 1)); echo "FAIL: $*"; }
# check DESC CMD...: CMD must succeed
check() { d=$1; shift; if "$@"; then pass; else fail "$d"; fi; }
# expect_err DESC ERRTEXT CMD...: CMD must fail and say ERRTEXT (strerror of
# the expected errno, as busybox prints it)
expect_err() {
  d=$1; e=$2; shift 2
  if out=$("$@" 2>&1); then
    fail "$d: succeeded, expected '$e'"
  else
    case $out in
      *"$e"*) pass ;;
      *) fail "$d: expected '$e', got: $out" ;;
    esac
  fi
}
# eq DESC GOT WANT
eq() { if [ "$2" = "$3" ]; then pass; else fail "$1: got '$2', want '$3'"; fi; }
md5() { md5sum "$1" | cut -d' ' -f1; }
last=$(cut -d' ' -f1 /proc/uptime)
section() {  # section NAME: prints the time the previous section took
  now=$(cut -d' ' -f1 /proc/uptime)
  echo "basic: $(awk -v a="$last" -v b="$now" 'BEGIN{printf "%5.1fs", b-a}') to here; $checks checks, $fails failed; next: $1"
  last=$now
}
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

echo "basic: mount $M, boot ${DPFS_BOOT:-1}"

# ---- boot 2 of a --reboot run: boot 1's data must still be there -------------
if [ "${DPFS_BOOT:-1}" = 2 ]; then
  if [ -f "$D/MANIFEST.md5" ]; then
    n=$(wc -l <"$D/MANIFEST.md5")
    if (cd "$D" && md5sum -c -s MANIFEST.md5); then
      pass; echo "basic: boot 1's $n files intact after reboot"
    else
      fail "boot 1's files changed across the reboot"
      (cd "$D" && md5sum -c MANIFEST.md5 2>&1 | grep -v ': OK$' | head -n 20)
    fi
  else
    fail "boot 1's manifest is missing after reboot"
  fi
fi

# ---- fresh directory ----------------------------------------------------------
section "directories and errnos"
rm -rf "$D" "$T"
check "rm -rf old $D" test ! -e "$D"
mkdir -p "$T"
check "mkdir $D" mkdir "$D"
expect_err "mkdir existing dir" "File exists" mkdir "$D"
check "mkdir -p nested" mkdir -p "$D/tree/a/b/c/d"
check "nested is a dir" test -d "$D/tree/a/b/c/d"
check "stat dir" stat "$D/tree/a/b" >/dev/null
expect_err "rmdir non-empty" "Directory not empty" rmdir "$D/tree/a"
expect_err "cat missing file" "No such file or directory" cat "$D/nope"
expect_err "rm missing file" "No such file or directory" rm "$D/nope"
expect_err "stat missing file" "No such file or directory" stat "$D/nope"
expect_err "mkdir under missing parent" "No such file or directory" mkdir "$D/nope/x"
: >"$D/plain"
expect_err "mkdir under a file" "Not a directory" mkdir "$D/plain/x"
expect_err "rmdir a file" "Not a directory" rmdir "$D/plain"
expect_err "ln over existing" "File exists" ln "$D/plain" "$D/plain"
expect_err "open dir for writing" "Is a directory" sh -c "echo x >'$D/tree'"
check "rmdir empty" rmdir "$D/tree/a/b/c/d"
check "rmdir gone" test ! -e "$D/tree/a/b/c/d"
rm -f "$D/plain"

# ---- data: odd sizes, several block sizes, verified after dropping caches -----
section "data"
mkdir -p "$D/data"
for size in 0 1 511 4095 4096 4097 65535 131072 131079 1048576 1049613 4194311; do
  head -c "$size" /dev/urandom >"$T/s$size"
  # bs=4096 (many small writes) for half, one big write for the rest
  case $size in
    *1|*3|*5|*7|*9) dd if="$T/s$size" of="$D/data/s$size" bs=4096 2>/dev/null ;;
    *) cp "$T/s$size" "$D/data/s$size" ;;
  esac
  check "write s$size" test -f "$D/data/s$size"
  eq "size s$size" "$(stat -c %s "$D/data/s$size")" "$size"
done
drop_caches
for size in 0 1 511 4095 4096 4097 65535 131072 131079 1048576 1049613 4194311; do
  eq "md5 s$size" "$(md5 "$D/data/s$size")" "$(md5 "$T/s$size")"
  # read back with small and odd block sizes too
  eq "md5 s$size bs=1000" "$(dd if="$D/data/s$size" bs=1000 2>/dev/null | md5sum | cut -d' ' -f1)" "$(md5 "$T/s$size")"
done

# synchronous writes
dd if=/dev/urandom of="$T/sync" bs=16384 count=8 2>/dev/null
check "dd conv=fsync" dd if="$T/sync" of="$D/data/sync" bs=16384 conv=fsync 2>/dev/null
eq "md5 sync" "$(md5 "$D/data/sync")" "$(md5 "$T/sync")"

# ---- overwrite in place, append, truncate ---------------------------------------
section "overwrite, append, truncate"
cp "$T/s1048576" "$T/ow"; cp "$T/s1048576" "$D/data/ow"
head -c 10000 /dev/urandom >"$T/patch"
for f in "$T/ow" "$D/data/ow"; do
  dd if="$T/patch" of="$f" bs=1 seek=300001 conv=notrunc 2>/dev/null
  dd if="$T/patch" of="$f" bs=4096 seek=200 conv=notrunc 2>/dev/null  # at 800 KiB
done
eq "size after overwrite" "$(stat -c %s "$D/data/ow")" 1048576
drop_caches
eq "md5 after overwrite" "$(md5 "$D/data/ow")" "$(md5 "$T/ow")"

for i in 1 2 3 4 5; do echo "line $i" >>"$T/app"; echo "line $i" >>"$D/data/app"; done
eq "md5 after append" "$(md5 "$D/data/app")" "$(md5 "$T/app")"

cp "$T/s131072" "$D/data/tr"; cp "$T/s131072" "$T/tr"
check "truncate shrink" truncate -s 5000 "$D/data/tr"
truncate -s 5000 "$T/tr"
eq "size after shrink" "$(stat -c %s "$D/data/tr")" 5000
check "truncate grow" truncate -s 200000 "$D/data/tr"
truncate -s 200000 "$T/tr"
eq "size after grow" "$(stat -c %s "$D/data/tr")" 200000
drop_caches
eq "md5 after truncates (hole reads as zeros)" "$(md5 "$D/data/tr")" "$(md5 "$T/tr")"
# writing past the end leaves a hole
dd if="$T/s4096" of="$D/data/sparse" bs=4096 seek=100 2>/dev/null
dd if="$T/s4096" of="$T/sparse" bs=4096 seek=100 2>/dev/null
eq "size sparse" "$(stat -c %s "$D/data/sparse")" $((101 * 4096))
eq "md5 sparse" "$(md5 "$D/data/sparse")" "$(md5 "$T/sparse")"

# ---- names: rename, links, symlinks, modes -----------------------------------------
section "rename, links, modes"
mkdir -p "$D/names/x" "$D/names/y"
cp "$T/s4097" "$D/names/x/f"
check "rename in dir" mv "$D/names/x/f" "$D/names/x/g"
check "old name gone" test ! -e "$D/names/x/f"
check "rename across dirs" mv "$D/names/x/g" "$D/names/y/g"
eq "md5 after renames" "$(md5 "$D/names/y/g")" "$(md5 "$T/s4097")"
echo old >"$D/names/y/victim"
check "rename over existing" mv -f "$D/names/y/g" "$D/names/y/victim"
eq "rename replaced target" "$(md5 "$D/names/y/victim")" "$(md5 "$T/s4097")"
check "rename dir" mv "$D/names/x" "$D/names/z"
check "renamed dir there" test -d "$D/names/z"
expect_err "rename missing" "No such file or directory" mv "$D/names/nope" "$D/names/nope2"

check "hard link" ln "$D/names/y/victim" "$D/names/y/hard"
eq "link count 2" "$(stat -c %h "$D/names/y/victim")" 2
eq "same inode" "$(stat -c %i "$D/names/y/hard")" "$(stat -c %i "$D/names/y/victim")"
check "symlink" ln -s victim "$D/names/y/soft"
eq "readlink" "$(readlink "$D/names/y/soft")" victim
eq "read through symlink" "$(md5 "$D/names/y/soft")" "$(md5 "$T/s4097")"
check "dangling symlink" ln -s nowhere "$D/names/y/dangling"
expect_err "read dangling symlink" "No such file or directory" cat "$D/names/y/dangling"
check "unlink one link" rm "$D/names/y/hard"
eq "link count 1" "$(stat -c %h "$D/names/y/victim")" 1

echo mode >"$D/names/mode"
check "chmod 640" chmod 640 "$D/names/mode"
eq "mode 640" "$(stat -c %a "$D/names/mode")" 640
check "chmod 4755" chmod 4755 "$D/names/mode"
eq "mode 4755" "$(stat -c %a "$D/names/mode")" 4755
check "chmod dir 700" chmod 700 "$D/names/z"
eq "dir mode 700" "$(stat -c %a "$D/names/z")" 700
check "touch -d" touch -d "2001-02-03 04:05:06" "$D/names/mode"
eq "mtime set" "$(stat -c %Y "$D/names/mode")" "$(date -d "2001-02-03 04:05:06" +%s)"
check "statfs" stat -f "$M" >/dev/null

# ---- a large directory -----------------------------------------------------------
section "large directory"
mkdir "$D/big"
i=0
while [ $i -lt "$ENTRIES" ]; do : >"$D/big/entry-$i"; i=$((i + 1)); done
eq "readdir count" "$(ls "$D/big" | wc -l)" "$ENTRIES"
eq "readdir -a count" "$(ls -a "$D/big" | wc -l)" $((ENTRIES + 2))
eq "find count" "$(find "$D/big" -type f | wc -l)" "$ENTRIES"
i=0
evens=
while [ $i -lt "$ENTRIES" ]; do evens="$evens $D/big/entry-$i"; i=$((i + 2)); done
check "unlink half" rm $evens
eq "readdir after unlinking half" "$(ls "$D/big" | wc -l)" $((ENTRIES / 2))
check "rm -rf big" rm -rf "$D/big"
check "big gone" test ! -e "$D/big"

# ---- concurrent writers ------------------------------------------------------------
section "concurrent writers and readers"
mkdir -p "$D/conc"
: >"$D/conc/shared.log"
w=0
while [ $w -lt "$WRITERS" ]; do
  (
    mkdir -p "$D/conc/w$w" "$T/w$w"
    j=0
    while [ $j -lt "$PER_WRITER" ]; do
      # sizes vary per file: 1..~200 KiB
      n=$(( (w * 7919 + j * 104729) % 200000 + 1 ))
      head -c $n /dev/urandom >"$T/w$w/f$j"
      cp "$T/w$w/f$j" "$D/conc/w$w/f$j"
      echo "w$w f$j $n" >>"$D/conc/shared.log"
      j=$((j + 1))
    done
  ) &
  w=$((w + 1))
done
wait
drop_caches
w=0
while [ $w -lt "$WRITERS" ]; do
  j=0
  while [ $j -lt "$PER_WRITER" ]; do
    eq "md5 conc w$w/f$j" "$(md5 "$D/conc/w$w/f$j")" "$(md5 "$T/w$w/f$j")"
    j=$((j + 1))
  done
  w=$((w + 1))
done
eq "appended lines from all writers" "$(wc -l <"$D/conc/shared.log")" $((WRITERS * PER_WRITER))
eq "no torn appends" "$(grep -c '^w[0-9]* f[0-9]* [0-9]*$' "$D/conc/shared.log")" $((WRITERS * PER_WRITER))

# concurrent readers of one file
r=0
while [ $r -lt "$WRITERS" ]; do
  (md5 "$D/data/s4194311" >"$T/r$r") &
  r=$((r + 1))
done
wait
r=0
while [ $r -lt "$WRITERS" ]; do
  eq "concurrent reader $r" "$(cat "$T/r$r")" "$(md5 "$T/s4194311")"
  r=$((r + 1))
done

# ---- manifest for the host and for boot 2 --------------------------------------------
section "manifest"
(cd "$D" && find data names conc -type f | sort | xargs md5sum >MANIFEST.md5)
check "manifest verifies" sh -c "cd '$D' && md5sum -c -s MANIFEST.md5"
sync

end=$(cut -d' ' -f1 /proc/uptime)
files=$(wc -l <"$D/MANIFEST.md5")
bytes=$(cd "$D" && find data names conc -type f | xargs cat | wc -c)
secs=$(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}')
echo "basic: $checks checks, $fails failed; $files files, $bytes bytes in the manifest; ${secs}s"
rm -rf "$T"
[ $fails = 0 ]
