#!/usr/bin/env bash
# With exclusive=true and durable-writes=true (as rbdgw starts every
# gateway) the gateway confirms its lock with the cluster at most
# every 0.5 s, not around every request: librbd's lock-owner query is a
# synchronous OSD round trip (an assert on the image's header object), and
# asking it before and after each write cost two extra OSD ops per write
# (4K random writes at about half of direct librbd's speed, issue 12).
# Counted at the OSD (its perf counter of client ops): 400 4 KiB writes on
# one connection cost about 400 ops, not 1200. A lost lock is still seen at
# once: test-rbd-exclusive-lock-lost.
source "$(dirname "$0")/common.sh"
requires which jq

new_image img 16M
serve sk np "rbd/$img" exclusive=true node=node-a durable-writes=true
osd_ops() { ceph -c "$CEPH_CONF" tell osd.0 perf dump 2>/dev/null | jq '.osd.op'; }
nbdsh -u "$(nbd_uri "$sk")" -c 'h.pwrite(b"w" * 4096, 0); h.flush()'  # the lock and object map settle
before=$(osd_ops)
[ -n "$before" ] && [ "$before" != null ] || fail "cannot read the OSD's op counter"
nbdsh -u "$(nbd_uri "$sk")" -c '
import os
for i in range(400):
    h.pwrite(os.urandom(4096), (i * 37 % 4000) * 4096)
' || fail "the 400 writes failed"
after=$(osd_ops)
ops=$((after - before))
echo "OSD ops for 400 writes: $ops"
[ "$ops" -ge 400 ] || fail "only $ops OSD ops for 400 writes: the counter does not count them"
[ "$ops" -le 600 ] || fail "$ops OSD ops for 400 writes: the gateway asks the cluster about its lock per write"
pass "400 writes on an exclusive export cost $ops OSD ops (no lock round trip per write)"
