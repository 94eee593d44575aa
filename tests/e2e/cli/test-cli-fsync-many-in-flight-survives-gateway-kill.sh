#!/usr/bin/env bash
# What a returned fsync in the mounted filesystem promises, on the path as
# shipped for issue 12 (loop device --direct-io=on, rbdgw-fuse with 16
# connections): 16 writers, each writing and fsyncing its own files in the
# mounted ext4 at once (many requests in flight on many NBD connections),
# and the gateway killed -9 the moment the last fsync returns, before any
# further flush. RADOS is then read directly (librbd, no gateway): the
# filesystem in it is consistent (fsck) and every fsynced file holds its
# bytes (debugfs on the image's copy, no mount, no gateway).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which debugfs

new_image img 256M
stash="$RUN_ROOT/rbd.$img/stash.json"
mnt=$TEST_TMP/mnt
mkdir -p "$mnt"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
gw=$(jq -r .gateway.pid "$stash")
[ -n "$gw" ] && kill -0 "$gw" || fail "no gateway pid in $stash"
/usr/bin/python3 - "$mnt" "$TEST_TMP/want" "$gw" <<'PY' || fail "the writers failed"
import os, signal, sys, threading
mnt, want, gw = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(want)
def writer(t):
    for j in range(6):
        name = 'f%02d-%d' % (t, j)
        data = os.urandom(256 << 10)
        fd = os.open(os.path.join(mnt, name), os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        with open(os.path.join(want, name), 'wb') as f:
            f.write(data)
threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
for t in threads: t.start()
for t in threads: t.join()
os.kill(gw, signal.SIGKILL)
PY
# The image as RADOS holds it, copied through librbd.
/usr/bin/python3 - "$CEPH_CONF" "$img" "$TEST_TMP/copy" <<'PY'
import rados, rbd, sys
with rados.Rados(conffile=sys.argv[1]) as c, c.open_ioctx('rbd') as io, \
        rbd.Image(io, sys.argv[2], read_only=True) as img, open(sys.argv[3], 'wb') as out:
    size, off = img.size(), 0
    while off < size:
        n = min(4 << 20, size - off)
        out.write(img.read(off, n))
        off += n
PY
# The journal holds the fsynced metadata: replay it on the copy, then check.
rc=0
e2fsck -fy "$TEST_TMP/copy" >"$TEST_TMP/fsck1" 2>&1 || rc=$?
# 0 or 1 (journal replayed); anything else is a damaged filesystem.
[ "$rc" -le 1 ] || { cat "$TEST_TMP/fsck1" >&2; fail "e2fsck of the image in RADOS after the kill: exit $rc"; }
cat "$TEST_TMP/fsck1"
e2fsck -fn "$TEST_TMP/copy" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "the filesystem in RADOS after the kill is not clean"; }
lost=0
for f in "$TEST_TMP/want"/*; do
  n=$(basename "$f")
  debugfs -R "dump /$n $TEST_TMP/got" "$TEST_TMP/copy" >/dev/null 2>&1
  cmp -s "$f" "$TEST_TMP/got" || { echo "fsynced file $n differs in RADOS" >&2; lost=$((lost + 1)); }
  rm -f "$TEST_TMP/got"
done
total=$(ls "$TEST_TMP/want" | wc -l)
[ "$lost" = 0 ] || fail "$lost of $total fsynced file(s) not in RADOS after kill -9 of the gateway"
pass "all $total files fsynced by 16 writers at once are in RADOS after kill -9 of the gateway right after the last fsync"
cli unmap "$mnt" >/dev/null || fail "unmap after the kill failed"
assert_clean
