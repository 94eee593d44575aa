#!/usr/bin/env bash
# A write answered on one connection, then an idle close, then an fsync
# (on the exporter's next connection): once the fsync returned, the data is
# in RADOS, as a read-only librbd reader of the image (python rbd) sees it,
# while the volume is still mapped.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss jq
requires /usr/bin/python3 -c "import rados, rbd"
export RBDGW_IDLE_DISCONNECT=1

new_image a 64M
cli map "rbd/$a" --conf "$CEPH_CONF" --shared-gateway >/dev/null 2>"$TEST_TMP/err" ||
  { cat "$TEST_TMP/err" >&2; fail "map failed"; }
file=$(jq -r .fuse_file "$RUN_ROOT/rbd.$a/stash.json")
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
conns() { connections_on "$sock"; }
head -c 4M /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$file" bs=1M seek=8 oflag=direct conv=notrunc status=none || fail "write failed"
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "the connection is still open 10 s after the volume went idle"
/usr/bin/python3 -c "import os, sys; fd = os.open(sys.argv[1], os.O_RDWR); os.fsync(fd)" "$file" || fail "fsync failed"
/usr/bin/python3 - "$CEPH_CONF" "$a" "$TEST_TMP/data" <<'PY' || fail "the fsynced data is not in RADOS"
import rados, rbd, sys
conf, name, want = sys.argv[1:]
c = rados.Rados(conffile=conf); c.connect()
try:
    io = c.open_ioctx("rbd")
    with rbd.Image(io, name, read_only=True) as img:
        got = img.read(8 << 20, 4 << 20)
    if got != open(want, "rb").read():
        sys.exit("image content differs from what was written and fsynced")
finally:
    c.shutdown()
PY
pass "written, idle-closed, fsynced on a new connection: the data is in RADOS"
cli unmap "rbd.$a" 2>/dev/null || fail "unmap failed"
assert_clean
