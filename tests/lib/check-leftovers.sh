#!/usr/bin/env bash
# Runs after the last test that uses the test cluster: finds what tests of
# THIS build left behind (gateways and FUSE exporters started from this build
# tree, their loop devices and mounts), removes it, and fails if there was
# anything, so that a leak is a red test and never a silent one. Scoped to
# this build directory so that other builds on the machine are left alone.
set -uo pipefail
build=${RBDGW_BUILD_DIR:?}
found=0

pids_of() { pgrep -f -- "$1" 2>/dev/null | while read -r p; do
  grep -qa -- "$build/" "/proc/$p/cmdline" 2>/dev/null && echo "$p"; done; }

for p in $(pids_of rbdgw-fuse); do
  found=1
  disk=$(tr '\0' '\n' <"/proc/$p/cmdline" | tail -n 1)
  echo "leftover FUSE exporter $p serving $disk" >&2
  for loop in $(losetup -j "$disk" -O NAME -n 2>/dev/null); do
    for m in $(findmnt -n -o TARGET -S "$loop" 2>/dev/null); do
      echo "  unmounting $m" >&2; umount -l "$m"
    done
    echo "  detaching $loop" >&2; losetup -d "$loop"
  done
  fusermount3 -u -z "$disk" 2>/dev/null
  kill -9 "$p" 2>/dev/null
done
for p in $(pids_of nbdkit) $(pids_of rbdgw-csi); do
  found=1
  echo "leftover process $p: $(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-200)" >&2
  kill -9 "$p" 2>/dev/null
done
if [ "$found" = 1 ]; then
  echo "check-leftovers: FAIL: tests left processes, mounts or loop devices behind (removed now)" >&2
  exit 1
fi
echo "check-leftovers: nothing left behind by the tests of $build"
