#!/usr/bin/env bash
# rbdgw map --attach=userspace with a mount: write files, unmap, map again,
# the files are intact; list/status report it; nothing is left behind.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

new_image img 256M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"

out=$(cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace)
[ "$out" = "$mnt" ] || fail "map printed '$out', expected $mnt"
findmnt -n -o FSTYPE "$mnt" | grep -qx ext4 || fail "no ext4 mounted at $mnt"
dev=$(findmnt -n -o SOURCE "$mnt")
case "$dev" in /dev/loop*) ;; *) fail "mounted from $dev, not a loop device" ;; esac

cli list --json >"$TEST_TMP/list.json"
jq -e --arg i "rbd/$img" '.[] | select(.image == $i) | .healthy and .mode == "userspace"' \
  "$TEST_TMP/list.json" >/dev/null || fail "list --json does not show a healthy userspace volume"
cli status "rbd/$img" >/dev/null || fail "status of a healthy volume is not 0"
[ "$(stat -c %a "$RUN_ROOT/rbd.$img")" = 700 ] || fail "run dir is not 0700"
[ "$(stat -c %a "$RUN_ROOT/rbd.$img/stash.json")" = 600 ] || fail "stash is not 0600"

mkdir "$mnt/dir"
head -c 5M /dev/urandom >"$mnt/dir/a"
echo "hello rbdgw" >"$mnt/b"
sums=$(cd "$mnt" && md5sum dir/a b)

# Mapping it again is idempotent: same mount, nothing new.
[ "$(cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace)" = "$mnt" ] ||
  fail "second map did not print the mount point"
[ "$(grep -c " $mnt " /proc/self/mountinfo)" = 1 ] || fail "second map mounted again"

cli unmap "$mnt"
assert_clean
pass "mapped, wrote, unmapped"

cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
[ "$(cd "$mnt" && md5sum dir/a b)" = "$sums" ] || fail "files changed across unmap/map"
cli unmap "rbd/$img"
assert_clean

# Raw block: the device is printed, and it holds the filesystem.
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
[ -b "$dev" ] || fail "map without --mount printed '$dev', not a block device"
fsck.ext4 -fn "$dev" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "fsck not clean"; }
cli unmap "$dev"
assert_clean
pass "files intact after a second map; fsck clean; nothing left behind"
