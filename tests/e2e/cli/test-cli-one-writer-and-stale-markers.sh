#!/usr/bin/env bash
# Formatting and mapping never trust what another attach left behind:
# - a mkfs marker (rbdgw.io/mkfs-started) that no interrupted attach of this
#   volume owns (left on the image, copied into a clone) does not let mkfs
#   run over data;
# - an image another client has open read-write is not mapped a second time
#   under another volume id (two ext4 mounts of one image corrupt it);
# - two maps of the same volume at once: one wins, the other is refused,
#   nothing is left half-made or orphaned.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which mkfs.xfs

mntA="$TEST_TMP/mntA"
mntB="$TEST_TMP/mntB"
mkdir "$mntA" "$mntB"

# 1. A stale marker with the user's xfs filesystem on the volume.
new_image img 320M
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
mkfs.xfs -q "$dev"
mount "$dev" "$mntA"; echo "precious" >"$mntA/file"; umount "$mntA"
cli unmap "rbd/$img"
rbd_cli image-meta set "rbd/$img" rbdgw.io/mkfs-started "ext4 00000000-0000-0000-0000-000000000000"
expect_status 5 cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace
grep -q "holds xfs filesystem, not ext4" "$TEST_TMP/err" || fail "stale marker: $(cat "$TEST_TMP/err")"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --fstype xfs --attach userspace >/dev/null
[ "$(cat "$mntA/file")" = precious ] || fail "the user's file is gone"
cli unmap "$mntA"
if rbd_cli image-meta get "rbd/$img" rbdgw.io/mkfs-started >/dev/null 2>&1; then
  fail "the stale marker was not dropped once the volume showed its filesystem"
fi
assert_clean
pass "a stale mkfs marker does not let mkfs run over an xfs filesystem"

# 2. A clone whose parent holds data, with the marker copied from the parent.
new_image par 64M
/usr/bin/python3 - "$CEPH_CONF" "$par" <<'PY'
import sys, rados, rbd
with rados.Rados(conffile=sys.argv[1]) as c, c.open_ioctx('rbd') as io, rbd.Image(io, sys.argv[2]) as img:
    img.write(b'\x77' * (1 << 20), 20 << 20)
PY
rbd_cli image-meta set "rbd/$par" rbdgw.io/mkfs-started "ext4 00000000-0000-0000-0000-000000000001"
rbd_cli snap create "rbd/$par@s"
rbd_cli snap protect "rbd/$par@s"
child=$(unique cli)
rbd_cli clone "rbd/$par@s" "rbd/$child"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$child'; rbd -c '$CEPH_CONF' snap unprotect 'rbd/$par@s'; rbd -c '$CEPH_CONF' snap rm --no-progress 'rbd/$par@s'"
expect_status 5 cli map "rbd/$child" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace
grep -q "holds data at offset 20971520" "$TEST_TMP/err" || fail "clone with a copied marker: $(cat "$TEST_TMP/err")"
assert_clean
pass "a clone with its parent's data and a copied marker is refused"

# 3. One writer: the same image under a second volume id is refused.
new_image one 128M
cli map "rbd/$one" --conf "$CEPH_CONF" --volume-id va --mount "$mntA" --attach userspace >/dev/null
expect_status 4 cli map "rbd/$one" --conf "$CEPH_CONF" --volume-id vb --mount "$mntB" --attach userspace
grep -Eq "in use by another client|is in use: its exclusive lock is held by" "$TEST_TMP/err" ||
  fail "second writer: $(cat "$TEST_TMP/err")"
findmnt -n "$mntB" >/dev/null && fail "the second map mounted $mntB"
[ -e "$RUN_ROOT/vb" ] && fail "the refused map left its run dir"
cli unmap va
assert_clean
pass "a second read-write map of a mapped image is refused (exit 4)"

# 4. Two maps of one volume at the same moment.
new_image two 128M
for i in 1 2 3; do
  for w in a b; do
    [ $w = a ] && m=$mntA || m=$mntB
    ( rc=0; cli map "rbd/$two" --conf "$CEPH_CONF" --mount "$m" --attach userspace \
        >"$TEST_TMP/$w.out" 2>"$TEST_TMP/$w.err" || rc=$?; echo $rc >"$TEST_TMP/$w.rc" ) &
  done
  wait
  ra=$(cat "$TEST_TMP/a.rc") rb=$(cat "$TEST_TMP/b.rc")
  mounted=0
  findmnt -n "$mntA" >/dev/null && mounted=$((mounted + 1))
  findmnt -n "$mntB" >/dev/null && mounted=$((mounted + 1))
  [ "$mounted" -le 1 ] || fail "round $i: both maps mounted the volume"
  { [ "$ra" = 0 ] && [ "$rb" != 0 ]; } || { [ "$rb" = 0 ] && [ "$ra" != 0 ]; } ||
    fail "round $i: exit statuses $ra and $rb (a: $(cat "$TEST_TMP/a.err"); b: $(cat "$TEST_TMP/b.err"))"
  [ "$mounted" = 1 ] || fail "round $i: the winning map mounted nothing"
  [ "$(cli list | wc -l)" = 1 ] || fail "round $i: list shows $(cli list)"
  cli unmap "rbd.$two"
  assert_clean
done
pass "two maps of one volume at once: one wins, the other is refused, nothing orphaned (3 rounds)"
