#!/usr/bin/env bash
# exclusive=true durable-writes=true (as rbdgw's attach paths start it):
# writers stream 4 KiB writes on three connections while `rbd lock rm`
# breaks the gateway's lock (and blocklists it). Every write the gateway
# acknowledged is on the image, and every write issued after `rbd lock rm`
# returned fails; the lock is confirmed with the cluster only every 0.5 s,
# and this holds because a completed write is on the OSDs, which refuse a
# blocklisted client. (With librbd's default writearound cache a write
# completes before the OSD has it: acknowledged writes are lost at a break
# then, 1 to 21 per break here, whether or not the lock is asked per write.)
source "$(dirname "$0")/common.sh"

new_image img 256M
serve sk np "rbd/$img" exclusive=true node=node-a durable-writes=true
uri=$(nbd_uri "$sk")

nbdsh -u "$uri" -c "
import json, struct, subprocess, threading, time
N = 3
hs = [h] + [nbd.NBD() for _ in range(N - 1)]
for x in hs[1:]:
    x.connect_uri('$uri')
h.pwrite(b'p' * 4096, 0); h.flush()   # the lock is confirmed
blocks = 256 * 1024 // 4 - 1
log = []           # (block, issued, acknowledged, completed)
lock = threading.Lock()
stop = threading.Event()
broken = [None]
def pat(b):
    return struct.pack('<Q', b) * 512
def writer(k):
    b = 1 + k
    while not stop.is_set() and b <= blocks:
        t = time.monotonic()
        try:
            hs[k].pwrite(pat(b), b * 4096)
            ok = True
        except nbd.Error:
            ok = False
        with lock:
            log.append((b, t, ok, time.monotonic()))
        b += N
        time.sleep(0.002)  # paced: the image has room for a few seconds of writes
ts = [threading.Thread(target=writer, args=(k,)) for k in range(N)]
for t in ts: t.start()
time.sleep(1)
locks = json.loads(subprocess.check_output(
    ['rbd', '-c', '$CEPH_CONF', 'lock', 'ls', '--format', 'json', 'rbd/$img']))
assert len(locks) == 1, locks
subprocess.check_call(['rbd', '-c', '$CEPH_CONF', 'lock', 'rm', 'rbd/$img',
                       locks[0]['id'], locks[0]['locker']])
broken[0] = time.monotonic()
time.sleep(2)
stop.set()
for t in ts: t.join()
before = [b for b, t, ok, d in log if t < broken[0]]
after = [(b, ok) for b, t, ok, d in log if t >= broken[0]]
acked_after = [b for b, ok in after if ok]
print('writes issued before the break returned:', len(before),
      'after:', len(after), 'acknowledged after:', len(acked_after))
open('$TEST_TMP/acked', 'w').write(' '.join(str(b) for b, t, ok, d in log if ok))
open('$TEST_TMP/done_after', 'w').write(' '.join(str(b) for b, t, ok, d in log if ok and d >= broken[0]))
open('$TEST_TMP/acked_after', 'w').write(' '.join(str(b) for b in acked_after))
assert len(after) > 0, 'no write was issued after the break'
" >"$TEST_TMP/out" 2>&1 || fail "the writers failed: $(cat "$TEST_TMP/out")"
cat "$TEST_TMP/out"

export_image "$img" "$TEST_TMP/img"
missing=$(/usr/bin/python3 -c "
import struct
img = open('$TEST_TMP/img', 'rb').read()
acked = [int(b) for b in open('$TEST_TMP/acked').read().split()]
late = set(int(b) for b in open('$TEST_TMP/done_after').read().split())
miss = [b for b in acked if img[b * 4096:(b + 1) * 4096] != struct.pack('<Q', b) * 512]
print(len(miss), len(late), len([b for b in miss if b in late]))
")
acked_after=$(wc -w <"$TEST_TMP/acked_after")
[ "$acked_after" -eq 0 ] ||
  fail "$acked_after writes issued after rbd lock rm returned were acknowledged"
[ "${missing%% *}" -eq 0 ] || fail "acknowledged writes not on the image (all, acknowledged after the break, both): $missing"
pass "every acknowledged write is on the image, every write issued after rbd lock rm failed"
