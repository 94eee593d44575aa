#!/usr/bin/env bash
# Writes that a client flushed (or wrote with FUA) survive a `kill -9` of
# nbdkit: rbd export afterwards shows them. Runs with librbd's default cache
# (writes may complete before they reach the OSDs, so FUA is emulated with a
# flush) and with the cache off (FUA native).
source "$(dirname "$0")/common.sh"

for mode in default nocache; do
  args=()
  [ "$mode" = nocache ] && args=(ceph.rbd_cache=false)
  new_image img 16M
  serve sk np "rbd/$img" "${args[@]}"
  head -c $((8 * MiB)) /dev/urandom >"$TEST_TMP/in"
  nbdsh -u "$(nbd_uri "$sk")" -c "
with open('$TEST_TMP/in', 'rb') as f:
    data = f.read()
# Many small writes in flight, then one flush.
for off in range(0, 4 << 20, 64 << 10):
    h.aio_pwrite(data[off:off + (64 << 10)], off)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
# The second half with FUA on every write, no flush.
for off in range(4 << 20, 8 << 20, 64 << 10):
    h.pwrite(data[off:off + (64 << 10)], off, nbd.CMD_FLAG_FUA)
"
  kill -9 "$np"
  for _ in $(seq 50); do kill -0 "$np" 2>/dev/null || break; sleep 0.1; done
  export_image "$img" "$TEST_TMP/out"
  cmp -n $((8 * MiB)) "$TEST_TMP/in" "$TEST_TMP/out" || fail "$mode: data lost after kill -9"
  pass "$mode cache: flushed and FUA writes survive kill -9"
done
