#!/usr/bin/env bash
# exclusive=true: three connections keep rewriting the first 4 MiB of the
# image while another client breaks the gateway's lock (which blocklists
# it), takes the lock itself and writes its own data there. Whatever the
# old gateway still has in flight, or issues after, must never reach the
# image over the new owner's data; and every write the old gateway issues
# after the new owner wrote fails.
source "$(dirname "$0")/common.sh"

new_image img 16M
serve sk np "rbd/$img" exclusive=true node=node-a
uri=$(nbd_uri "$sk")

nbdsh -u "$uri" -c "
import rados, rbd, threading, time
N = 3
hs = [h] + [nbd.NBD() for _ in range(N - 1)]
for x in hs[1:]:
    x.connect_uri('$uri')
stop = threading.Event()
new_written = threading.Event()
late_acks = [0]
def writer(k):
    i = 0
    while not stop.is_set():
        b = (i * N + k) % 1024
        after = new_written.is_set()
        try:
            hs[k].pwrite(b'o' * 4096, b * 4096)
            if after:
                late_acks[0] += 1
        except nbd.Error:
            pass
        i += 1
ts = [threading.Thread(target=writer, args=(k,)) for k in range(N)]
for t in ts: t.start()
time.sleep(1)
c = rados.Rados(conffile='$CEPH_CONF'); c.connect()
io = c.open_ioctx('rbd')
other = rbd.Image(io, '$img')
owner = list(other.lock_get_owners())[0]['owner']
other.lock_break(rbd.RBD_LOCK_MODE_EXCLUSIVE, owner)
other.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
other.write(b'n' * (4 << 20), 0)
other.flush()
new_written.set()
time.sleep(1)
stop.set()
for t in ts: t.join()
other.close(); io.close(); c.shutdown()
print('old gateway writes acknowledged after the new owner wrote:', late_acks[0])
assert late_acks[0] == 0, 'the old gateway acknowledged writes after the new owner wrote'
" >"$TEST_TMP/out" 2>&1 || fail "$(cat "$TEST_TMP/out")"
cat "$TEST_TMP/out"

export_image "$img" "$TEST_TMP/img"
head -c $((4 * MiB)) /dev/zero | tr '\0' n >"$TEST_TMP/want"
cmp -n $((4 * MiB)) "$TEST_TMP/want" "$TEST_TMP/img" || fail "the old gateway's writes reached the image over the new owner's data"
pass "after the lock was broken and taken, the old gateway never wrote over the new owner's data"
