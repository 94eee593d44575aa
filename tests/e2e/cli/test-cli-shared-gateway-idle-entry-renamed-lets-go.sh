#!/usr/bin/env bash
# The shared gateway keeps an idle volume's image open only while its
# registry entry names that image: an entry rewritten (atomically) to name
# another image makes the gateway close the old one, its lock let go, with
# no connection and no request; the next connection serves the image the
# entry names now.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss jq
export RBDGW_IDLE_DISCONNECT=1

new_image a 64M
new_image b 64M
new_image c 32M
for v in a b; do
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --shared-gateway >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v failed"; }
done
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
exports=$(echo "$RUN_ROOT"/@shared-*/exports)
conns() { connections_on "$sock"; }
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "connections still open 10 s after the volumes went idle"
[ -n "$(rbd_cli lock ls "rbd/$a")" ] || fail "the idle volume's image is not locked"
[ -e "$exports/.open.rbd.$a" ] || { ls -a "$exports" >&2; fail "no .open marker for the idle volume"; }
cp "$exports/rbd.$a" "$TEST_TMP/entry"
sed "s|rbd/$a|rbd/$c|" "$TEST_TMP/entry" >"$exports/.x.tmp" && mv "$exports/.x.tmp" "$exports/rbd.$a"
for _ in $(seq 100); do [ -z "$(rbd_cli lock ls "rbd/$a")" ] && break; sleep 0.1; done
[ -z "$(rbd_cli lock ls "rbd/$a")" ] || fail "the gateway still holds the lock of an image no entry names, 10 s on"
for _ in $(seq 50); do [ ! -e "$exports/.open.rbd.$a" ] && break; sleep 0.1; done
[ ! -e "$exports/.open.rbd.$a" ] || fail "the .open marker stayed after the image was closed"
[ -n "$(rbd_cli lock ls "rbd/$b")" ] || fail "the other volume's image lost its lock"
pass "entry renamed while idle: old image closed, lock let go, marker gone; the other volume untouched"
cp "$TEST_TMP/entry" "$exports/.x.tmp" && mv "$exports/.x.tmp" "$exports/rbd.$a"
for v in a b; do cli unmap "rbd.${!v}" 2>/dev/null || fail "unmap of $v failed"; done
assert_clean
