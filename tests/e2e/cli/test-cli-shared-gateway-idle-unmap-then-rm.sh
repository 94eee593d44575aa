#!/usr/bin/env bash
# Unmap of an idle volume on a shared gateway that stays up (another volume
# still mapped) returns only once the gateway let the image go: `rbd rm`
# right after the unmap succeeds (no "image has watchers", no lock left).
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss
export RBDGW_IDLE_DISCONNECT=1

new_image a 64M
new_image b 64M
for v in a b; do
  mkdir -p "$TEST_TMP/m$v"
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --shared-gateway --mount "$TEST_TMP/m$v" >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v failed"; }
done
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
conns() { connections_on "$sock"; }
head -c 1M /dev/urandom >"$TEST_TMP/ma/f"
sync -f "$TEST_TMP/ma/f"
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "connections still open 10 s after the volumes went idle"
[ -n "$(rbd_cli lock ls "rbd/$a")" ] || fail "the idle volume's image is not locked"
cli unmap "rbd.$a" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "unmap of a failed"; }
rbd -c "$CEPH_CONF" rm --no-progress "rbd/$a" 2>"$TEST_TMP/rm.err" ||
  { cat "$TEST_TMP/rm.err" >&2; fail "rbd rm right after the unmap of the idle volume failed"; }
pass "idle volume unmapped, its image removed at once"
[ -n "$(rbd_cli lock ls "rbd/$b")" ] || fail "the other idle volume's image is not locked any more"
cli unmap "rbd.$b" 2>/dev/null || fail "unmap of b failed"
rbd -c "$CEPH_CONF" rm --no-progress "rbd/$b" 2>"$TEST_TMP/rm.err" ||
  { cat "$TEST_TMP/rm.err" >&2; fail "rbd rm right after the last unmap failed"; }
assert_clean
pass "the last volume too"
