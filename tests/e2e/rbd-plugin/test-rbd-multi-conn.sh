#!/usr/bin/env bash
# Several connections write at once: multi-conn is advertised and each
# connection's writes, made concurrently, land (a flush on one connection
# covers the others' writes, as all share one image handle).
source "$(dirname "$0")/common.sh"

new_image img 32M --object-size 1M
serve sk np "rbd/$img"
uri=$(nbd_uri "$sk")
nbdinfo "$uri" | grep -q "can_multi_conn: true" || fail "multi-conn not advertised"

head -c $((32 * MiB)) /dev/urandom >"$TEST_TMP/in"
nbdsh -c "
import threading
MiB = 1 << 20
data = open('$TEST_TMP/in', 'rb').read()
conns = []
for _ in range(4):
    c = nbd.NBD()
    c.connect_uri('$uri')
    conns.append(c)
def writer(k, c):
    # Connection k writes every 4th 256 KiB chunk, 8 requests in flight.
    for off in range(k * 256 * 1024, 32 * MiB, 4 * 256 * 1024):
        while c.aio_in_flight() >= 8:
            c.poll(-1)
        c.aio_pwrite(data[off:off + 256 * 1024], off)
    while c.aio_in_flight() > 0:
        c.poll(-1)
ts = [threading.Thread(target=writer, args=(k, c)) for k, c in enumerate(conns)]
for t in ts: t.start()
for t in ts: t.join()
conns[2].flush()    # one flush for everybody
for k, c in enumerate(conns):
    off = k * 7 * MiB + 12345
    assert c.pread(MiB, off) == data[off:off + MiB], k
    c.shutdown()
"
export_image "$img" "$TEST_TMP/out"
cmp "$TEST_TMP/in" "$TEST_TMP/out" || fail "concurrent writes of 4 connections not all in rbd export"
pass "4 connections writing concurrently: rbd export identical"
