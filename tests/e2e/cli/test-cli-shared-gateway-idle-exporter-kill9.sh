#!/usr/bin/env bash
# kill -9 of an idle volume's exporter (rbdgw-fuse, its connection already
# closed as idle) on a shared gateway that serves another volume too: the
# gateway keeps the image locked while the volume is mapped; `unmap
# --force` lets the lock go before it returns (`rbd rm` right after
# succeeds) and the other volume still works.
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
head -c 1M /dev/urandom >"$TEST_TMP/bdata"
cp "$TEST_TMP/bdata" "$TEST_TMP/mb/f"
sync -f "$TEST_TMP/mb/f"
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "connections still open 10 s after the volumes went idle"
fuse=$(cat "$RUN_ROOT/rbd.$a/fuse.pid" 2>/dev/null) || true
[ -n "$fuse" ] || { ls "$RUN_ROOT/rbd.$a" >&2; fail "no exporter pid for a"; }
kill -9 "$fuse"
sleep 3
[ -n "$(rbd_cli lock ls "rbd/$a")" ] || fail "the image lost its lock when its idle exporter died (still mapped)"
pass "exporter of the idle volume killed -9: its image stays locked"
cli unmap --force "rbd.$a" >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "unmap --force failed"; }
rbd -c "$CEPH_CONF" rm --no-progress "rbd/$a" 2>"$TEST_TMP/rm.err" ||
  { cat "$TEST_TMP/rm.err" >&2; fail "rbd rm right after unmap --force failed"; }
pass "unmap --force let the lock go; rbd rm right after it succeeded"
cmp -s "$TEST_TMP/bdata" <(dd if="$TEST_TMP/mb/f" bs=1M iflag=direct status=none) || fail "volume b reads back wrong"
cli unmap "rbd.$b" 2>/dev/null || fail "unmap of b failed"
assert_clean
pass "the other volume read back and unmapped"
