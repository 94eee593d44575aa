#!/usr/bin/env bash
# A Ceph stall longer than every 30 s timeout around (the OSD stopped for
# 45 s: longer than the OSD's watch timeout and the old kernel-path I/O
# timeout) delays I/O on a mapped userspace volume and fails none of it:
# the writes issued during the stall complete once the OSD is back, they are
# in RADOS, the gateway still holds the volume's exclusive lock (its watch
# may have been re-established meanwhile: that must not count as a lost
# lock), and the volume takes writes afterwards.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

osd_pidfile="$(dirname "$CEPH_CONF")/run/osd.0.pid"
requires test -s "$osd_pidfile"
osd=$(cat "$osd_pidfile")
cleanup_fn "kill -CONT $osd"

new_image img 64M
stash="$RUN_ROOT/rbd.$img/stash.json"
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
head -c 1M /dev/urandom | dd of="$dev" oflag=direct conv=fsync bs=1M status=none
client=$(rbd_cli image-meta get "rbd/$img" rbdgw.io/holder | jq -r .client)
[ -n "$client" ] || fail "no holder record"

acked_writes="$RBDGW_SOURCE_DIR/tests/lib/acked_writes.py"
kill -STOP "$osd"
/usr/bin/python3 "$acked_writes" write "$dev" $((4 << 20)) 16 "$TEST_TMP/acked" 2>"$TEST_TMP/writer.err" &
writer=$!
cleanup_fn "kill -9 $writer 2>/dev/null"
sleep 45
kill -0 "$writer" 2>/dev/null || fail "the writer ended during the stall: $(cat "$TEST_TMP/writer.err")"
[ "$(wc -l <"$TEST_TMP/acked")" -le 1 ] || fail "writes were acknowledged while the OSD was stopped"
resume_osd "$osd" 0
logs() { echo "gateway.log:"; tail -8 "$(jq -r .gateway_log "$stash")"; echo "fuse.log:"; tail -8 "$(dirname "$(jq -r .gateway_log "$stash")")/fuse.log"; }
wait "$writer" || fail "a write failed after a 45 s Ceph stall: $(tail -1 "$TEST_TMP/writer.err"); $(logs)"
/usr/bin/python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.fsync(fd)' "$dev" ||
  fail "fsync failed after the stall"
/usr/bin/python3 "$acked_writes" check "$CEPH_CONF" "$img" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "writes lost across the stall: $(cat "$TEST_TMP/check")"
pass "every write issued during a 45 s OSD stall completed once it was back: $(cat "$TEST_TMP/check")"

# Still the one writer, and still writing.
head -c 1M /dev/urandom >"$TEST_TMP/after"
dd if="$TEST_TMP/after" of="$dev" oflag=direct conv=fsync bs=1M seek=20 status=none ||
  fail "the volume no longer takes writes after the stall: $(tail -5 "$(jq -r .gateway_log "$stash")")"
rbd_cli lock ls --format json "rbd/$img" | grep -q "$client" ||
  fail "the gateway no longer holds the exclusive lock: $(rbd_cli lock ls "rbd/$img")"
grep -q "lost" "$(jq -r .gateway_log "$stash")" && fail "the gateway logged a lost lock: $(grep lost "$(jq -r .gateway_log "$stash")")"
cli status "rbd/$img" >"$TEST_TMP/status" || fail "the volume is not healthy after the stall: $(cat "$TEST_TMP/status")"
pass "after the stall the gateway still holds the lock and the volume takes writes"

cli unmap "rbd/$img"
assert_clean
