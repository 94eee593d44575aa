#!/usr/bin/env bash
# An idle volume on a shared gateway costs the gateway no threads: its
# exporter closes its idle connection (rbdgw-fuse --idle-disconnect;
# RBDGW_IDLE_DISCONNECT=2 here, 10 s as shipped) and the gateway lets that
# connection's nbdkit threads go. The gateway keeps the image open with its
# exclusive lock held while the volume is mapped, so nobody else can take
# it meanwhile; the next read or write connects again, unnoticed (nothing
# logged), and reads what was written before. After unmap the lock is
# gone. (Encrypted volumes: test-cli-shared-gateway-idle-encrypted-volume.)
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which jq sha256sum ss
export RBDGW_IDLE_DISCONNECT=2

new_image a 64M
mkdir -p "$TEST_TMP/ma"
cli map "rbd/$a" --conf "$CEPH_CONF" --shared-gateway --mount "$TEST_TMP/ma" >/dev/null 2>"$TEST_TMP/err" ||
  { cat "$TEST_TMP/err" >&2; fail "map of a failed"; }
gw=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway process"
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
fuse_log=$RUN_ROOT/rbd.$a/fuse.log
conns() { connections_on "$sock"; }
threads() { ls "/proc/$gw/task" | wc -l; }

head -c 4M /dev/urandom >"$TEST_TMP/ma/f"
sync -f "$TEST_TMP/ma/f"
(cd "$TEST_TMP/ma" && sha256sum f) >"$TEST_TMP/sum"
dd if="$TEST_TMP/ma/f" bs=1M iflag=direct status=none of=/dev/null  # busy once more
# The reads updated f's atime (relatime): commit that now, or ext4's
# journal writes it up to 5 s later and the exporter connects again.
sync -f "$TEST_TMP/ma/f"
# One connection, or up to 32 / the gateway's workers per connection
# while the writeback kept more than one connection's workers busy.
depth=$(tr '\0' '\n' <"/proc/$gw/cmdline" | grep -A1 -x -- --threads | tail -1)
max=$(((32 + depth - 1) / depth))
n=$(conns)
[ "$n" -ge 1 ] && [ "$n" -le "$max" ] || fail "$n connection(s) on the gateway right after I/O, expected 1 to $max"
busy=$(threads)
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "the exporter kept its connection 10 s after the volume went idle"
for _ in $(seq 50); do [ "$(threads)" -lt "$busy" ] && break; sleep 0.1; done
idle=$(threads)
[ "$idle" -lt "$busy" ] || fail "the gateway kept $idle threads with no connection ($busy with $n)"
pass "idle volume: no connection, gateway threads $busy -> $idle"

sleep 1
[ -n "$(rbd_cli lock ls "rbd/$a")" ] || fail "the idle volume's image is not locked any more"
owner=$(rbd_cli lock ls "rbd/$a" --format json | jq -r '.[0].address // empty')
[ -n "$owner" ] || fail "no lock owner address"
pass "the gateway still holds the idle volume's exclusive lock ($owner)"

(cd "$TEST_TMP/ma" && sha256sum --quiet -c "$TEST_TMP/sum") || fail "data differs after the idle close"
dd if="$TEST_TMP/ma/f" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1 >"$TEST_TMP/direct"
[ "$(cat "$TEST_TMP/direct")" = "$(cut -d' ' -f1 "$TEST_TMP/sum")" ] || fail "an O_DIRECT read after the idle close differs"
dd if=/dev/urandom of="$TEST_TMP/ma/g" bs=1M count=2 conv=fsync status=none || fail "a write after the idle close failed"
if grep -E "lost|reconnect|giving up" "$fuse_log"; then fail "the exporter logged a lost connection or a reconnect"; fi
pass "read back (O_DIRECT) and written again after the idle close, nothing logged"

[ "$(rbd_cli lock ls "rbd/$a" --format json | jq -r '.[0].address // empty')" = "$owner" ] ||
  fail "the lock changed hands across the reconnect"
cli unmap "rbd.$a" 2>/dev/null || fail "unmap failed"
for _ in $(seq 50); do [ -z "$(rbd_cli lock ls "rbd/$a")" ] && break; sleep 0.1; done
[ -z "$(rbd_cli lock ls "rbd/$a")" ] || fail "the image is still locked 5 s after unmap"
assert_clean
pass "unmapped: lock let go, nothing left behind"
