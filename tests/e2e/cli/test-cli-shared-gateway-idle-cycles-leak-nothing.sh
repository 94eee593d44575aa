#!/usr/bin/env bash
# Many idle close/reconnect cycles of two volumes on one shared gateway
# (RBDGW_IDLE_DISCONNECT=1): after each, the gateway (nbdkit with the rbd
# plugin, images kept open) is back to the same threads and fds as after
# the first, and every file fsynced reads back after unmap.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss debugfs e2fsck
export RBDGW_IDLE_DISCONNECT=1

new_image a 64M
new_image b 64M
for v in a b; do
  mkdir -p "$TEST_TMP/m$v" "$TEST_TMP/want$v"
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --shared-gateway --mount "$TEST_TMP/m$v" >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v failed"; }
done
gw=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway"
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
conns() { connections_on "$sock"; }
threads() { ls "/proc/$gw/task" | wc -l; }
fds() { ls "/proc/$gw/fd" | wc -l; }
idle_wait() {
  local _
  for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
  [ "$(conns)" = 0 ] || fail "cycle $1: connections still open 10 s after the volumes went idle"
  # nbdkit's connection threads end shortly after the close: wait until
  # the count holds still for 1 s (at most 10 s)
  local n=$(threads) same=0
  for _ in $(seq 100); do
    sleep 0.1
    if [ "$(threads)" = "$n" ]; then same=$((same + 1)); else n=$(threads) same=0; fi
    [ "$same" -ge 10 ] && break
  done
}
for k in $(seq 1 12); do
  for v in a b; do
    head -c 131072 /dev/urandom >"$TEST_TMP/want$v/f$k"
    dd if="$TEST_TMP/want$v/f$k" of="$TEST_TMP/m$v/f$k" bs=128K conv=fsync status=none || fail "cycle $k: write to $v failed"
  done
  idle_wait "$k"
  if [ "$k" = 2 ]; then t0=$(threads) f0=$(fds); fi
done
for _ in $(seq 50); do [ "$(threads)" -le "$t0" ] && [ "$(fds)" -le "$f0" ] && break; sleep 0.1; done
[ "$(threads)" -le "$t0" ] && [ "$(fds)" -le "$f0" ] ||
  fail "the idle gateway had $t0 threads, $f0 fds after 2 cycles, $(threads) and $(fds) after 12"
pass "12 idle close/reconnect cycles on 2 volumes: the idle gateway stays at $t0 threads, $f0 fds"
for v in a b; do cli unmap "rbd.${!v}" 2>/dev/null || fail "unmap of $v failed"; done
for v in a b; do
  rbd_cli export --no-progress "rbd/${!v}" "$TEST_TMP/copy" >/dev/null
  e2fsck -fn "$TEST_TMP/copy" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "$v: fsck -fn not clean"; }
  for f in "$TEST_TMP/want$v"/*; do
    debugfs -R "dump /$(basename "$f") $TEST_TMP/got" "$TEST_TMP/copy" >/dev/null 2>&1
    cmp -s "$f" "$TEST_TMP/got" || fail "$v: fsynced file $(basename "$f") differs in the image"
    rm -f "$TEST_TMP/got"
  done
  rm -f "$TEST_TMP/copy"
done
assert_clean
pass "every fsynced file intact in both images"
