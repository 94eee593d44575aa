#!/usr/bin/env bash
# Issue 13's aim, "at most 8 threads per additional volume", for volumes
# in use, not only idle ones: with N volumes on the shared gateway, each
# written and read a moment ago (its connection still open, as on a node
# where volumes see I/O every few seconds), the gateway's threads beyond
# its idle count plus every volume's exporter threads come to at most 8
# per volume. nbdkit starts its --threads workers on every connection, so
# this is what one open connection costs the gateway; the exporter's
# FUSE threads beyond --idle-threads end 1 s after the I/O, so the count
# is taken 3 s after it (the connections close after
# RBDGW_IDLE_DISCONNECT, 10 s as shipped). Thread counts only; no timing
# is asserted.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss
n=4
limit=8

devs=()
for i in $(seq "$n"); do
  new_image "img$i" 32M
  name=img$i
  dev=$(cli map "rbd/${!name}" --conf "$CEPH_CONF" --shared-gateway --attach userspace 2>"$TEST_TMP/err") ||
    { cat "$TEST_TMP/err" >&2; fail "map of rbd/${!name} on the shared gateway failed"; }
  devs+=("$dev")
done
gw=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway"
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
[ -S "$sock" ] || fail "no shared gateway socket under $RUN_ROOT"
threads() { ls "/proc/$1/task" | wc -l; }
exporters() {
  local s t=0 p
  for s in "$RUN_ROOT"/*/stash.json; do
    p=$(jq -r .fuse.pid "$s")
    t=$((t + $(threads "$p")))
  done
  echo "$t"
}

# Every volume in use: a write and a read, one request at a time (what a
# filesystem's journal commit or a small application does).
for dev in "${devs[@]}"; do
  dd if=/dev/urandom of="$dev" bs=64k count=16 oflag=direct status=none || fail "write to $dev failed"
  dd if="$dev" of=/dev/null bs=64k count=16 iflag=direct status=none || fail "read of $dev failed"
done
sleep 3
open=$(connections_on "$sock")
[ "$open" -ge "$n" ] || fail "$open connection(s) open to the shared gateway 3 s after I/O on $n volumes (the test needs them open: is RBDGW_IDLE_DISCONNECT below 3 s?)"
busy_gw=$(threads "$gw") busy_fu=$(exporters)

# The gateway's own threads, with every volume still mapped but idle (no
# connection open).
for _ in $(seq 300); do [ "$(connections_on "$sock")" = 0 ] && break; sleep 0.1; done
[ "$(connections_on "$sock")" = 0 ] || fail "$(connections_on "$sock") connection(s) still open 30 s after the I/O"
base=$(threads "$gw")
for _ in $(seq 30); do sleep 0.2; t=$(threads "$gw"); [ "$t" = "$base" ] && break; base=$t; done

per=$(( (busy_gw - base + busy_fu + n - 1) / n ))
echo "gateway $busy_gw threads with $open connection(s) open, $base with none; exporters $busy_fu threads for $n volumes: $per per volume in use"
[ "$per" -le "$limit" ] ||
  fail "a volume in use costs $per threads (gateway $busy_gw - $base idle, exporters $busy_fu, $n volumes), more than $limit"
pass "a volume in use costs $per threads (gateway $((busy_gw - base)) over its idle $base, exporters $busy_fu for $n volumes)"
for i in $(seq "$n"); do name=img$i; cli unmap "rbd/${!name}" >/dev/null || fail "unmap of rbd/${!name} failed"; done
assert_clean
