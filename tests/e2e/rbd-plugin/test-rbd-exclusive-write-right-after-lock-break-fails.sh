#!/usr/bin/env bash
# exclusive=true, librbd's default cache (writearound: librbd completes a
# write before the OSD has it): a quiet gateway's lock is broken (and its
# client blocklisted) by another client, and the next write comes at once.
# That write must fail: the OSD refuses the blocklisted client, so an
# acknowledged write would never be on the image. (An "ours" answer the
# gateway had from the cluster a moment before the break let it through:
# librbd acknowledged it, nothing asked the cluster, and only the next flush
# failed.) The break is done in this process (librbd's Python binding,
# already connected) so that the write follows it closely.
source "$(dirname "$0")/common.sh"

new_image img 16M
serve sk np "rbd/$img" exclusive=true node=node-a

nbdsh -u "$(nbd_uri "$sk")" -c "
import rados, rbd
c = rados.Rados(conffile='$CEPH_CONF'); c.connect()
io = c.open_ioctx('rbd')
other = rbd.Image(io, '$img')
h.pwrite(b'a' * 4096, 0)
h.flush()
owners = list(other.lock_get_owners())
h.pwrite(b'b' * 4096, 4096)             # the lock is confirmed now
other.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, owners[0]['owner'])
try:
    h.pwrite(b'c' * 4096, 8192)
except nbd.Error as e:
    print('the write after the break refused:', e.string)
else:
    raise AssertionError('a write after the lock break was acknowledged')
try:
    h.flush()
except nbd.Error as e:
    print('the flush after the break refused:', e.string)
else:
    raise AssertionError('a flush after the lock break succeeded')
other.close(); io.close(); c.shutdown()
" >"$TEST_TMP/out" 2>&1 || fail "$(cat "$TEST_TMP/out")"
cat "$TEST_TMP/out"

export_image "$img" "$TEST_TMP/img"
[ -z "$(cmp -n 4096 -i 8192:0 "$TEST_TMP/img" /dev/zero 2>&1)" ] || fail "the refused write reached the image"
pass "a write right after the lock break is refused, and is not on the image"
