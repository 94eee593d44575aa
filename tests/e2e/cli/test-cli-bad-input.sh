#!/usr/bin/env bash
# Bad input to the rbdgw CLI: the documented exit status, a message naming
# the object and the cause, and nothing changed or left behind.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

new_image img 128M
mnt="$TEST_TMP/mnt"
mnt2="$TEST_TMP/mnt2"
mkdir "$mnt" "$mnt2"

# check STATUS PATTERN CMD...: exit status and message.
check() {
  local want=$1 pattern=$2
  shift 2
  expect_status "$want" "$@"
  grep -q -- "$pattern" "$TEST_TMP/err" || fail "'$*': message '$(cat "$TEST_TMP/err")' lacks '$pattern'"
  assert_clean
}

check 2 "unknown command 'frobnicate'" cli frobnicate
check 2 "unknown option '--bogus'" cli map "rbd/$img" --bogus
check 2 "image spec 'rbd'" cli map rbd --conf "$CEPH_CONF"
check 3 "image 'rbd/no-such-$img' does not exist" cli map "rbd/no-such-$img" --conf "$CEPH_CONF"
check 3 "$TEST_TMP/nonexistent is not a directory" cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$TEST_TMP/nonexistent"
check 2 "fstype 'btrfs'" cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --fstype btrfs
check 2 "attach mode 'sideways'" cli map "rbd/$img" --conf "$CEPH_CONF" --attach sideways
check 2 "volume id '../x'" cli map "rbd/$img" --conf "$CEPH_CONF" --volume-id ../x
check 2 "needs --passphrase-file or --kms-id" cli map "rbd/$img" --conf "$CEPH_CONF" --encrypted
check 3 "$TEST_TMP/no-pass" cli map "rbd/$img" --conf "$CEPH_CONF" --passphrase-file "$TEST_TMP/no-pass"
check 3 "not mapped" cli unmap "rbd/$img"
check 3 "not mapped" cli status "rbd/$img"
if [ ! -e /dev/nbd0 ] || [ ! -e /dev/mapper/control ]; then
  check 6 "kernel attach" cli map "rbd/$img" --conf "$CEPH_CONF" --attach kernel
fi
# Nothing was made on the image by the refused calls.
[ -z "$(rbd_cli diff "rbd/$img")" ] || fail "a refused map wrote to the image"
pass "usage errors, missing objects"

# Mapped at one mount point: another is refused, and the first is untouched.
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
expect_status 4 cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt2" --attach userspace
grep -q "already attached at $mnt" "$TEST_TMP/err" || fail "message: $(cat "$TEST_TMP/err")"
findmnt -n "$mnt2" >/dev/null && fail "$mnt2 was mounted"
cli status "rbd/$img" >/dev/null || fail "the mapped volume was disturbed"
# A target that is already a mount point is refused for another volume.
new_image img2 128M
expect_status 4 cli map "rbd/$img2" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace
grep -q "already a mount point" "$TEST_TMP/err" || fail "message: $(cat "$TEST_TMP/err")"
cli unmap "rbd/$img"
assert_clean
pass "a second mount point and a busy target refused"
