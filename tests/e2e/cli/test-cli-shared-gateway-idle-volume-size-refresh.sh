#!/usr/bin/env bash
# A size refresh (SIGUSR1 to the exporter, as the CSI node's expand sends)
# of an idle volume on a shared gateway, its connection closed and its
# image kept open by the gateway since before the resize: the exporter
# reports the image's new size and its FUSE file takes it; the data
# written before reads back.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss jq
export RBDGW_IDLE_DISCONNECT=1

new_image a 64M
new_image b 64M
for v in a b; do
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --shared-gateway >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v failed"; }
done
dir=$RUN_ROOT/rbd.$a
file=$(jq -r .fuse_file "$dir/stash.json")
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
conns() { connections_on "$sock"; }
head -c 1M /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$file" bs=1M oflag=direct conv=notrunc,fsync status=none || fail "write failed"
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "connections still open 10 s after the volumes went idle"
rbd_cli resize --no-progress --size 128M "rbd/$a"
rm -f "$dir/size"
kill -USR1 "$(cat "$dir/fuse.pid")"
for _ in $(seq 100); do [ -s "$dir/size" ] && break; sleep 0.1; done
[ "$(cat "$dir/size" 2>/dev/null)" = $((128 << 20)) ] || { cat "$dir/fuse.log" >&2; fail "size refresh reported '$(cat "$dir/size" 2>/dev/null)', expected $((128 << 20))"; }
for _ in $(seq 50); do [ "$(stat -c %s "$file")" = $((128 << 20)) ] && break; sleep 0.1; done
[ "$(stat -c %s "$file")" = $((128 << 20)) ] || fail "the FUSE file has $(stat -c %s "$file") bytes after the refresh"
cmp -s "$TEST_TMP/data" <(dd if="$file" bs=1M count=1 iflag=direct status=none) || fail "data differs after the refresh"
dd if="$TEST_TMP/data" of="$file" bs=1M seek=100 oflag=direct conv=notrunc,fsync status=none || fail "write past the old end failed"
pass "idle volume resized: refresh saw 128 MiB, the file took it, old data reads back, the new end writable"
for v in a b; do cli unmap "rbd.${!v}" 2>/dev/null || fail "unmap of $v failed"; done
assert_clean
