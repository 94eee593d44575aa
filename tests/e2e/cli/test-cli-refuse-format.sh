#!/usr/bin/env bash
# A volume that holds data is never formatted: data at offset 0, data past
# the first MiB only, and a filesystem of another type are each refused
# with exit status 5 and a clear message; the image is unchanged and
# nothing is left behind.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which mkfs.xfs

mnt="$TEST_TMP/mnt"
mkdir "$mnt"

# import_image VAR FILE: a new image holding FILE.
import_image() {
  local __var=$1 name
  name=$(unique "cli")
  rbd_cli import --no-progress "$2" "rbd/$name"
  cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
  printf -v "$__var" '%s' "$name"
}

# check_refused IMAGE WHAT: map --mount is refused, naming WHAT, and the
# image's content is unchanged.
check_refused() {
  local img=$1 what=$2 before after
  before=$(rbd_cli export --no-progress "rbd/$img" - | md5sum)
  expect_status 5 cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace
  grep -q "refusing to" "$TEST_TMP/err" || fail "$img: message does not say it refuses: $(cat "$TEST_TMP/err")"
  grep -q "$what" "$TEST_TMP/err" || fail "$img: message does not name '$what': $(cat "$TEST_TMP/err")"
  after=$(rbd_cli export --no-progress "rbd/$img" - | md5sum)
  [ "$before" = "$after" ] || fail "$img: content changed by a refused map"
  assert_clean
}

# Random data at the start.
truncate -s 64M "$TEST_TMP/start"
head -c 1M /dev/urandom | dd of="$TEST_TMP/start" conv=notrunc status=none
import_image img1 "$TEST_TMP/start"
check_refused "$img1" "unknown data"
pass "data at offset 0 refused"

# The first MiB is zero; data lies further in.
truncate -s 64M "$TEST_TMP/later"
head -c 64K /dev/urandom | dd of="$TEST_TMP/later" bs=1M seek=40 conv=notrunc status=none
import_image img2 "$TEST_TMP/later"
check_refused "$img2" "holds data at offset 41943040"
pass "data past the first MiB refused"

# An xfs filesystem, asked for as ext4.
new_image img3 320M
dev=$(cli map "rbd/$img3" --conf "$CEPH_CONF" --attach userspace)
mkfs.xfs -q "$dev"
cli unmap "rbd/$img3"
check_refused "$img3" "xfs filesystem, not ext4"
# ... and mounted as what it is.
cli map "rbd/$img3" --conf "$CEPH_CONF" --mount "$mnt" --fstype xfs --attach userspace >/dev/null
findmnt -n -o FSTYPE "$mnt" | grep -qx xfs || fail "xfs volume not mounted as xfs"
cli unmap "$mnt"
assert_clean
pass "xfs volume refused as ext4, mounted as xfs"
