#!/bin/sh
# The integration suites (build/dpfs_integration_tests, put into the guest
# with `run-guest.sh --bin`) on /mnt, a file system the test binary did not
# mount (DPFS_TEST_ON_DIR: each suite in a fresh directory of it). Which
# tests: `gtest.filter=FILTER` on the kernel command line (run-guest.sh
# --append), else the POSIX suites. `gtest.backend=NAME` there says that
# /mnt is a dpfs serving the backend of row NAME of
# tests/integration/backends.h: a test that needs what that backend lacks
# skips (DPFS_TEST_DIR_BACKEND); without it every test holds /mnt to all it
# checks. gtest's own output goes to the console
# (tests/guest/nfs-reference.sh compares two runs' results); the status is
# gtest's (1: some test failed; 2: no such row), 127 if the binary is missing.
set -f  # the filter's '*' must reach gtest as it is
bin=/usr/local/bin/dpfs_integration_tests
filter='PosixTest.*:IoTest.*:ReaddirTest.*:LockTest.*'
backend=
for arg in $(cat /proc/cmdline); do
  case $arg in
    gtest.filter=*) filter=${arg#gtest.filter=} ;;
    gtest.backend=*) backend=${arg#gtest.backend=} ;;
  esac
done
if [ ! -x $bin ]; then
  echo "gtest: no $bin (run-guest.sh --bin build/dpfs_integration_tests)"
  exit 127
fi
# The guest's clock starts from the RTC's whole seconds and drifts under
# TCG: it can be a second or more behind the server's, which stamps the files
# (the suites compare file times with the clock). Set it from the time of a
# file just made on the mount: wait for the server's next second, set that.
sync_clock() {
  f=$DPFS_MNT/.gtest-clock.$$
  : >"$f" || return 1
  stamp=$(stat -c '%Y %y' "$f")  # "SEC YYYY-MM-DD hh:mm:ss.NNNNNNNNN +0000"
  rm -f "$f"
  sec=${stamp%% *}
  ns=$(echo "$stamp" | sed -n 's/^[0-9]* .*:[0-9][0-9]\.\([0-9]\{9\}\) .*/\1/p')
  [ -n "$ns" ] || return 1
  was=$(date +%s)
  usleep $(((2000000000 - 1$ns) / 1000))  # 1$ns: no octal for leading zeros
  date -u -s "@$((sec + 1))" >/dev/null || return 1
  echo "gtest: clock set from a file's time on the mount (it said $was, the file $sec.$ns)"
}
sync_clock || echo "gtest: could not set the clock from the mount; file times may look off"

echo "gtest: $bin --gtest_filter=$filter on $DPFS_MNT${backend:+ (served by $backend)}"
start=$(cut -d' ' -f1 /proc/uptime)
DPFS_TEST_ON_DIR=$DPFS_MNT DPFS_TEST_DIR_BACKEND=$backend \
  $bin --gtest_filter="$filter" --gtest_color=no </dev/null 2>&1
status=$?
echo "gtest: status $status after $(awk -v a="$start" '{printf "%.0f", $1 - a}' /proc/uptime) s"
exit $status
