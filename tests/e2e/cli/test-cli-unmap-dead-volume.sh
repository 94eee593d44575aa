#!/usr/bin/env bash
# A volume whose gateway died and cannot be restarted can be unmapped:
# `rbdgw unmap` first tries to restart the gateway, and when that fails it
# refuses at once (nothing torn down, the message names the cause and
# --force); `rbdgw unmap --force` then tears everything down within a bound
# although the filesystem holds unflushed writes (outstanding I/O failed
# with EIO, lazy unmount, loop device detached, exporter stopped), saying
# that those writes are lost. Before, unmap sat in umount for minutes.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

new_image img 256M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
vol="rbd.$img"
stash="$RUN_ROOT/$vol/stash.json"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
head -c 4M /dev/urandom >"$mnt/flushed"
sync -f "$mnt"
# Unflushed writes in the page cache when the gateway dies.
head -c 24M /dev/urandom >"$mnt/unflushed"

kill -9 "$(jq -r .gateway.pid "$stash")"
# The gateway cannot come back: its image is gone (renamed away).
rbd_cli rename "rbd/$img" "rbd/$img-away"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$img-away'"

start=$SECONDS
expect_status 1 timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" unmap "$vol"
grep -q "gateway is dead" "$TEST_TMP/err" || fail "unmap does not name the dead gateway: $(cat "$TEST_TMP/err")"
grep -q -- "--force" "$TEST_TMP/err" || fail "unmap does not point at --force: $(cat "$TEST_TMP/err")"
grep -q "lost" "$TEST_TMP/err" || fail "unmap does not say what --force loses: $(cat "$TEST_TMP/err")"
(( SECONDS - start < 60 )) || fail "the refused unmap took $((SECONDS - start)) s"
findmnt -n "$mnt" >/dev/null || fail "the refused unmap unmounted $mnt"
[ -e "$stash" ] || fail "the refused unmap removed the stash"
pass "unmap of a dead, unrestartable volume refused in $((SECONDS - start)) s, nothing torn down"

start=$SECONDS
expect_status 0 timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" unmap --force "$vol"
grep -q "by force" "$TEST_TMP/err" || fail "forced unmap does not say it forced: $(cat "$TEST_TMP/err")"
grep -q "lost" "$TEST_TMP/err" || fail "forced unmap does not say what was lost: $(cat "$TEST_TMP/err")"
(( SECONDS - start < 60 )) || fail "the forced unmap took $((SECONDS - start)) s"
assert_clean
pass "unmap --force tore the dead volume down in $((SECONDS - start)) s, nothing left behind"

# What was flushed before the gateway died is intact.
rbd_cli rename "rbd/$img-away" "rbd/$img"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
[ "$(stat -c %s "$mnt/flushed")" = $((4 << 20)) ] || fail "the flushed file is not intact"
cli unmap "$mnt"
assert_clean
pass "flushed data intact after the forced unmap"

# The FUSE exporter (not the gateway) died: the same, and its dead FUSE
# mount (ENOTCONN) is found and removed.
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
echo hello >"$mnt/hello"
sync -f "$mnt"
kill -9 "$(jq -r .fuse.pid "$stash")"
expect_status 1 timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" unmap "$vol"
grep -q "FUSE exporter died" "$TEST_TMP/err" || fail "unmap does not name the dead exporter: $(cat "$TEST_TMP/err")"
[ -e "$stash" ] || fail "the refused unmap removed the stash"
expect_status 0 timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" unmap --force "$vol"
assert_clean
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/hello")" = hello ] || fail "flushed file lost after the forced unmap of a dead exporter"
cli unmap "$mnt"
assert_clean
pass "a dead FUSE exporter: unmap refused, --force tears it down, the volume maps again with its data"
