#!/usr/bin/env bash
# A gateway that loses its exclusive lock during its life (an operator ran
# `rbd lock rm`, which breaks the lock and blocklists the gateway's client)
# fails every later write, zero, trim and flush: it never reports success for
# data that is not on the image. (issue 10 item 1)
source "$(dirname "$0")/common.sh"

new_image img 16M
serve sk np "rbd/$img" exclusive=true node=node-a
head -c $((1 * MiB)) /dev/urandom >"$TEST_TMP/in"

# One connection open across the break, and a new one after it.
nbdsh -u "$(nbd_uri "$sk")" -c "
import json, subprocess
data = open('$TEST_TMP/in', 'rb').read()
h.pwrite(data, 0)
h.flush()
locks = json.loads(subprocess.check_output(
    ['rbd', '-c', '$CEPH_CONF', 'lock', 'ls', '--format', 'json', 'rbd/$img']))
assert len(locks) == 1, locks
subprocess.check_call(['rbd', '-c', '$CEPH_CONF', 'lock', 'rm', 'rbd/$img',
                       locks[0]['id'], locks[0]['locker']])
def fails(what, f):
    try:
        f()
    except nbd.Error as e:
        print('refused after the lock was lost:', what, '-', e.string)
        return
    raise AssertionError(what + ' succeeded after the lock was lost')
fails('write', lambda: h.pwrite(b'x' * 4096, 8 << 20))
fails('flush', lambda: h.flush())
fails('zero', lambda: h.zero(4096, 0))
fails('trim', lambda: h.trim(4096, 0))
" >"$TEST_TMP/out1" 2>&1 || fail "a lost lock did not fail the I/O: $(cat "$TEST_TMP/out1")"
cat "$TEST_TMP/out1"

nbdsh -u "$(nbd_uri "$sk")" -c "
try:
    h.pwrite(b'y' * 4096, 0)
    h.flush()
except nbd.Error as e:
    print('new connection refused too:', e.string)
else:
    raise AssertionError('a new connection wrote after the lock was lost')
" >"$TEST_TMP/out2" 2>&1 || fail "a new connection wrote after the lock was lost: $(cat "$TEST_TMP/out2")"
cat "$TEST_TMP/out2"

export_image "$img" "$TEST_TMP/img"
cmp -n $((1 * MiB)) "$TEST_TMP/in" "$TEST_TMP/img" || fail "the data flushed before the break changed"
[ -z "$(cmp -n 4096 -i $((8 << 20)):0 "$TEST_TMP/img" /dev/zero 2>&1)" ] || fail "a refused write reached the image"
pass "after rbd lock rm the gateway fails writes, flushes, zeroes and trims; the image holds what was acknowledged before"
