#!/usr/bin/env bash
# A write the gateway acknowledged is in RADOS, even when the gateway is
# killed before any flush: otherwise the exporter would reconnect to the
# restarted gateway and the next fsync would succeed over lost writes.
#
# The OSD is stopped (SIGSTOP) while a writer issues O_DIRECT writes on the
# volume's device, so that nothing can reach RADOS; every write acknowledged
# in that time was only cached. Then the gateway is killed, the OSD resumed,
# and RADOS is read directly (librbd, no gateway): each acknowledged write
# must be there. After `rbdgw reattach` the writes in flight complete and
# all of them are in RADOS.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

osd_pidfile="$(dirname "$CEPH_CONF")/run/osd.0.pid"
requires test -s "$osd_pidfile"
osd=$(cat "$osd_pidfile")
cleanup_fn "kill -CONT $osd"

new_image img 64M
stash="$RUN_ROOT/rbd.$img/stash.json"
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
# A first write and flush: librbd's cache (if any) leaves its
# writethrough-until-flush mode.
head -c 1M /dev/urandom | dd of="$dev" oflag=direct conv=fsync bs=1M status=none

acked_writes="$RBDGW_SOURCE_DIR/tests/lib/acked_writes.py"

kill -STOP "$osd"
/usr/bin/python3 "$acked_writes" write "$dev" $((4 << 20)) 32 "$TEST_TMP/acked" &
writer=$!
cleanup_fn "kill -9 $writer"
sleep 3
kill -9 "$(jq -r .gateway.pid "$stash")"
sleep 0.5
kill -CONT "$osd"
/usr/bin/python3 "$acked_writes" check "$CEPH_CONF" "$img" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "acknowledged writes lost with the gateway: $(cat "$TEST_TMP/check")"
pass "acknowledged writes are in RADOS after a kill -9 of the gateway: $(cat "$TEST_TMP/check")"

cli reattach >/dev/null || fail "reattach failed"
wait "$writer" || fail "the writer failed after the reattach"
# fsync of this device only (a plain `sync` would wait on every filesystem
# of the machine, including ones other tests leave stuck).
/usr/bin/python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.fsync(fd)' "$dev"
[ "$(wc -l <"$TEST_TMP/acked")" = 32 ] || fail "not every write completed after the reattach"
/usr/bin/python3 "$acked_writes" check "$CEPH_CONF" "$img" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "writes lost across the reattach: $(cat "$TEST_TMP/check")"
pass "writes in flight complete after the reattach: $(cat "$TEST_TMP/check")"

cli unmap "rbd/$img"
assert_clean
