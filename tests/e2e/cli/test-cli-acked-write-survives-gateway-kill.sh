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

# blocks BASE COUNT: COUNT 64 KiB blocks of a pattern that names each block.
cat >"$TEST_TMP/writer.py" <<'EOF'
import mmap, os, sys
dev, base, count, log = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 65536)
with open(log, 'w', buffering=1) as acked:
    for i in range(count):
        buf.seek(0)
        buf.write((b'block-%06d-' % i) * (65536 // 13) + b'\0' * (65536 % 13))
        os.pwrite(fd, buf, base + i * 65536)
        print(i, file=acked)
os.close(fd)
EOF
cat >"$TEST_TMP/check.py" <<'EOF'
import sys, rados, rbd
conf, name, base, acked = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
blocks = [int(l) for l in open(acked) if l.strip()]
with rados.Rados(conffile=conf) as c, c.open_ioctx('rbd') as io, \
        rbd.Image(io, name, read_only=True) as img:
    lost = [i for i in blocks
            if img.read(base + i * 65536, 64) != ((b'block-%06d-' % i) * 5)[:64]]
print('%d acknowledged, %d not in RADOS%s' % (len(blocks), len(lost),
      (': blocks ' + ' '.join(map(str, lost[:10]))) if lost else ''))
sys.exit(1 if lost else 0)
EOF

kill -STOP "$osd"
/usr/bin/python3 "$TEST_TMP/writer.py" "$dev" $((4 << 20)) 32 "$TEST_TMP/acked" &
writer=$!
cleanup_fn "kill -9 $writer"
sleep 3
kill -9 "$(jq -r .gateway.pid "$stash")"
sleep 0.5
kill -CONT "$osd"
/usr/bin/python3 "$TEST_TMP/check.py" "$CEPH_CONF" "$img" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "acknowledged writes lost with the gateway: $(cat "$TEST_TMP/check")"
pass "acknowledged writes are in RADOS after a kill -9 of the gateway: $(cat "$TEST_TMP/check")"

cli reattach >/dev/null || fail "reattach failed"
wait "$writer" || fail "the writer failed after the reattach"
# fsync of this device only (a plain `sync` would wait on every filesystem
# of the machine, including ones other tests leave stuck).
/usr/bin/python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.fsync(fd)' "$dev"
[ "$(wc -l <"$TEST_TMP/acked")" = 32 ] || fail "not every write completed after the reattach"
/usr/bin/python3 "$TEST_TMP/check.py" "$CEPH_CONF" "$img" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "writes lost across the reattach: $(cat "$TEST_TMP/check")"
pass "writes in flight complete after the reattach: $(cat "$TEST_TMP/check")"

cli unmap "rbd/$img"
assert_clean
