#!/usr/bin/env bash
# kill -9 of the gateway while many requests are in flight on ONE NBD
# connection of the exporter (rbdgw-fuse --connections 1, libnbd aio): the
# connection breaks under all of them at once; every one is retried on the
# new connection once `rbdgw reattach` has restarted the gateway, every
# writer's writes complete without error and the image holds exactly what
# was written (read back through librbd, no gateway).
#
# nbdkit's log filter shows how many writes were open on the connection
# when the gateway died (its delay filter holds each write 20 ms, so the
# writers' requests overlap); no timing is asserted.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-log-filter.so

nbdlog=$TEST_TMP/nbd.log
cat >"$TEST_TMP/nbdkit" <<SH
#!/bin/sh
exec nbdkit --filter=log --filter=delay "\$@" logfile=$nbdlog wdelay=20ms
SH
cat >"$TEST_TMP/fuse" <<SH
#!/bin/sh
exec "$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse" --connections 1 "\$@"
SH
chmod +x "$TEST_TMP/nbdkit" "$TEST_TMP/fuse"
export NBDKIT=$TEST_TMP/nbdkit RBDGW_FUSE_EXPORTER=$TEST_TMP/fuse

new_image img 96M
stash="$RUN_ROOT/rbd.$img/stash.json"
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
gw=$(jq -r .gateway.pid "$stash")
[ -n "$gw" ] && kill -0 "$gw" || fail "no gateway pid in $stash"

# 24 writers, O_DIRECT on the loop device, each 48 writes of 64 KiB into
# its own 3 MiB; the gateway is killed once 12 writes are open at once at
# the gateway (by its log, 3 samples in a row).
/usr/bin/python3 - "$dev" "$TEST_TMP/want" "$nbdlog" >"$TEST_TMP/writers.out" 2>&1 <<'PY' &
import mmap, os, sys, threading
dev, want, log = sys.argv[1:]
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
image = bytearray(24 * (3 << 20))
errors = []
def writer(t):
    buf = mmap.mmap(-1, 64 << 10)
    for j in range(48):
        off = t * (3 << 20) + j * (64 << 10)
        data = os.urandom(64 << 10)
        buf[:] = data
        try:
            if os.pwrite(fd, buf, off) != len(data):
                raise OSError("short write")
        except OSError as e:
            errors.append(f"writer {t} at {off}: {e}")
            return
        image[off:off + len(data)] = data
threads = [threading.Thread(target=writer, args=(t,)) for t in range(24)]
for t in threads: t.start()
for t in threads: t.join()
os.close(fd)
open(want, "wb").write(image)
print("\n".join(errors) if errors else "all writes ok")
sys.exit(1 if errors else 0)
PY
writers=$!
cleanup_fn "kill $writers 2>/dev/null"
# open_writes LOG: the writes started and not finished in LOG, and the
# number of connections that carried writes.
open_writes() {
  /usr/bin/python3 - "$1" <<'PY'
import re, sys
started, done, conns = set(), set(), set()
for l in open(sys.argv[1]):
    if m := re.search(r"connection=(\d+) Write id=(\d+)", l):
        started.add((m[1], m[2])); conns.add(m[1])
    elif m := re.search(r"connection=(\d+) \.\.\.Write id=(\d+)", l):
        done.add((m[1], m[2]))
print(len(started - done), len(conns))
PY
}
# Killed once 3 samples in a row saw 12 or more: one sample could catch
# the ramp-up (FUSE threads made as the writers start) at its top, and by
# the kill a moment later fewer were open (seen once: 9).
open="0 0" high=0
for _ in $(seq 600); do
  open=$(open_writes "$nbdlog" 2>/dev/null) || open="0 0"
  if [ "${open% *}" -ge 12 ]; then high=$((high + 1)); else high=0; fi
  [ "$high" -ge 3 ] && break
  kill -0 "$writers" 2>/dev/null || break
  sleep 0.05
done
kill -9 "$gw"
sleep 0.3
# The log as the dead gateway left it (the new one appends to it).
open=$(open_writes "$nbdlog")
read -r n_open n_conns <<<"$open"
echo "writes open at the gateway when it was killed: $n_open, on $n_conns connection(s)"
[ "$n_conns" = 1 ] || fail "the writes came on $n_conns connections, not the one asked for"
[ "$n_open" -ge 12 ] || fail "only $n_open write(s) in flight on the connection when the gateway died"

cli reattach >"$TEST_TMP/reattach" 2>"$TEST_TMP/reattach.err" ||
  fail "reattach failed: $(cat "$TEST_TMP/reattach" "$TEST_TMP/reattach.err")"
wait "$writers" || fail "writes across the kill failed: $(cat "$TEST_TMP/writers.out"; cat "$RUN_ROOT/rbd.$img/fuse.log"; grep -v "Write\|Flush\|Read" "$nbdlog" | tail; grep -ci "error\|EIO" "$nbdlog"; grep -i "return=-1\|error=" "$nbdlog" | head -3; tail -20 "$RUN_ROOT/rbd.$img/gateway.log")"
grep -q "reconnected" "$RUN_ROOT/rbd.$img/fuse.log" || fail "exporter log shows no reconnect"
cli unmap "$dev" >/dev/null || fail "unmap failed"

/usr/bin/python3 - "$CEPH_CONF" "$img" "$TEST_TMP/want" <<'PY' || fail "the image in RADOS differs from what was written"
import rados, rbd, sys
want = open(sys.argv[3], "rb").read()
with rados.Rados(conffile=sys.argv[1]) as c, c.open_ioctx('rbd') as io, \
        rbd.Image(io, sys.argv[2], read_only=True) as img:
    got = img.read(0, len(want))
bad = [i for i in range(0, len(want), 64 << 10) if got[i:i + (64 << 10)] != want[i:i + (64 << 10)]]
print(f"{len(bad)} of {len(want) >> 16} blocks differ")
sys.exit(1 if bad else 0)
PY
pass "$n_open writes in flight on one connection at kill -9 of the gateway all completed after reattach, data intact"
assert_clean
