#!/usr/bin/env bash
# kill -9 of a volume's gateway under a mounted filesystem, with a write in
# flight: `rbdgw reattach` (and `rbdgw map` of the mapped volume) restart it
# on the same socket without unmounting; the FUSE exporter reconnects, the
# write completes, fsck is clean after unmap and the data is intact.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

new_image img 256M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
stash="$RUN_ROOT/rbd.$img/stash.json"
gateway_pid() { jq -r .gateway.pid "$stash"; }

cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
head -c 8M /dev/urandom >"$TEST_TMP/a"
head -c 40M /dev/urandom >"$TEST_TMP/b"
cp "$TEST_TMP/a" "$mnt/a"
sync -f "$mnt"

# A write in flight while the gateway dies.
( cp "$TEST_TMP/b" "$mnt/b" && sync -f "$mnt/b" && touch "$TEST_TMP/writer-ok" ) &
writer=$!
cleanup_fn "kill $writer"
old=$(gateway_pid)
kill -9 "$old"
expect_status 1 cli status "rbd/$img"
grep -q "gateway-dead" "$TEST_TMP/out" || fail "status does not report the dead gateway"

# A read that surely reaches the exporter while no gateway runs (the
# writer's requests may all have been answered before the kill, or come
# after the reattach): it waits, and the exporter reconnects it.
dev=$(findmnt -n -o SOURCE "$mnt")
dd if="$dev" of=/dev/null bs=4k count=1 skip=100 iflag=direct status=none &
reader=$!
cleanup_fn "kill $reader"
for _ in $(seq 100); do grep -q "lost" "$RUN_ROOT/rbd.$img/fuse.log" && break; sleep 0.1; done
grep -q "lost" "$RUN_ROOT/rbd.$img/fuse.log" || fail "the exporter did not see its gateway go"
cli reattach >"$TEST_TMP/reattach" 2>"$TEST_TMP/reattach.err"
grep -q "ok" "$TEST_TMP/reattach" || fail "reattach did not report ok: $(cat "$TEST_TMP/reattach")"
# The new gateway takes the dead one's exclusive lock over at once (same
# node, same boot, its pid gone; no wait for its watch to time out).
grep -q "taking over the exclusive lock of .*: its process $old on this node is gone" \
  "$RUN_ROOT/rbd.$img/gateway.log" ||
  fail "the new gateway did not take over the dead one's lock: $(cat "$RUN_ROOT/rbd.$img/gateway.log")"
[ "$(gateway_pid)" != "$old" ] || fail "gateway pid unchanged after reattach"
wait "$writer" || fail "the write in flight failed"
wait "$reader" || fail "the read made while the gateway was dead failed"
[ -e "$TEST_TMP/writer-ok" ] || fail "the write in flight did not finish"
findmnt -n "$mnt" >/dev/null || fail "$mnt was unmounted"
grep -q "reconnected" "$RUN_ROOT/rbd.$img/fuse.log" || fail "exporter log shows no reconnect"
pass "gateway killed under a write, re-attached, write completed"

# Once more, repaired by `rbdgw map` of the mapped volume.
kill -9 "$(gateway_pid)"
[ "$(cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace)" = "$mnt" ] ||
  fail "map of a mapped volume did not print its mount point"
cli status "rbd/$img" >/dev/null || fail "volume not healthy after map re-adopted it"
echo after >"$mnt/c"
sync -f "$mnt"

cli unmap "rbd/$img"
assert_clean
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
fsck.ext4 -fn "$dev" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "fsck not clean"; }
cli unmap "$dev"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
cmp "$TEST_TMP/a" "$mnt/a" || fail "file a differs"
cmp "$TEST_TMP/b" "$mnt/b" || fail "file b (written across the kill) differs"
[ "$(cat "$mnt/c")" = after ] || fail "file c differs"
cli unmap "$mnt"
assert_clean
pass "fsck clean, data intact, nothing left behind"
