#!/usr/bin/env bash
# The device of a userspace `rbdgw map` hands concurrent I/O to the gateway
# concurrently: 32 O_DIRECT reads in flight on the loop device are many NBD
# requests in flight at the gateway, not one after another (a loop device
# with --direct-io=off serves its queue one request at a time, which capped
# the mounted path at its queue-depth-1 speed, issue 12). And what that
# must not cost: an fsync of a file in the mounted filesystem still reaches
# the gateway as an NBD flush, after the file's writes.
#
# The gateway is started through a wrapper that puts nbdkit's log filter
# (every request's start and end, in order) and its delay filter (20 ms per
# read, so that requests issued together do overlap) in front of the rbd
# plugin; the overlap is counted from the log (no timing is asserted).
#
# The exporter runs with ONE NBD connection (--connections 1): many
# requests in flight must share it (libnbd's aio API), not one request per
# connection (issue 12/13: few connections, few gateway threads).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which fio nbdkit
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-log-filter.so

nbdlog=$TEST_TMP/nbd.log
cat >"$TEST_TMP/nbdkit" <<SH
#!/bin/sh
exec nbdkit --filter=log --filter=delay "\$@" logfile=$nbdlog rdelay=20ms
SH
chmod +x "$TEST_TMP/nbdkit"
cat >"$TEST_TMP/fuse" <<SH
#!/bin/sh
exec "$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse" --connections 1 "\$@"
SH
chmod +x "$TEST_TMP/fuse"
export RBDGW_FUSE_EXPORTER=$TEST_TMP/fuse

# max_in_flight LOG: the most requests of one kind (Read) between their
# start and end lines at any point of the log.
max_in_flight() {
  /usr/bin/python3 - "$1" <<'PY'
import re, sys
cur = best = 0
for line in open(sys.argv[1]):
    if re.search(r"connection=\d+ Read id=", line):
        cur += 1
        best = max(best, cur)
    elif re.search(r"connection=\d+ \.\.\.Read id=", line):
        cur -= 1
print(best)
PY
}

new_image img 64M
dev=$(NBDKIT=$TEST_TMP/nbdkit cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
fio --name=inflight --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k \
  --iodepth=32 --number_ios=256 --size=32M --output=/dev/null || fail "fio on $dev failed"
n=$(max_in_flight "$nbdlog")
[ "$n" -ge 16 ] || fail "at most $n read(s) in flight at the gateway for 32 in flight on $dev"
conns=$(grep -o 'connection=[0-9]* Read id=' "$nbdlog" | sort -u | wc -l)
[ "$conns" = 1 ] || fail "the reads came on $conns connections, not the one asked for"
pass "$n reads in flight at the gateway on one NBD connection for 32 in flight on the loop device $dev"
cli unmap "rbd/$img" >/dev/null

new_image img2 64M
mnt=$TEST_TMP/mnt
mkdir -p "$mnt"
NBDKIT=$TEST_TMP/nbdkit cli map "rbd/$img2" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
before=$(grep -c 'connection=[0-9]* Flush id=' "$nbdlog" || true)
head -c 4M /dev/urandom >"$TEST_TMP/data"
# Write and fsync one file (buffered: the filesystem's own writeback and
# journal commit, then the flush it sends to the loop device).
/usr/bin/python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)
os.write(fd, open(sys.argv[2], "rb").read())
os.fsync(fd)
os.close(fd)' "$mnt/file" "$TEST_TMP/data"
after=$(grep -c 'connection=[0-9]* Flush id=' "$nbdlog" || true)
[ "$after" -gt "$before" ] || fail "fsync of $mnt/file sent no NBD flush to the gateway ($before before, $after after)"
# The last flush the gateway had seen when fsync returned came after the
# file's writes (4 MiB or more) had completed at the gateway. (Not the
# first after the write began: ext4's journal may commit, with a flush,
# while the file is being written; seen once, 321 KiB before it.)
/usr/bin/python3 - "$nbdlog" "$after" <<'PY' || fail "the NBD flush did not follow the file's completed writes"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
flushes = [i for i, l in enumerate(lines) if re.search(r"connection=\d+ Flush id=", l)]
first = flushes[int(sys.argv[2]) - 1]  # the last flush seen when fsync returned
started, done = {}, set()
for l in lines[:first]:
    if m := re.search(r"connection=(\d+) Write id=(\d+) offset=0x[0-9a-f]+ count=0x([0-9a-f]+)", l):
        started[(m[1], m[2])] = int(m[3], 16)
    elif m := re.search(r"connection=(\d+) \.\.\.Write id=(\d+) return=0", l):
        done.add((m[1], m[2]))
written = sum(n for k, n in started.items() if k in done)
print(f"{written} bytes written and completed before the flush, {len(started) - len(done & started.keys())} write(s) still open")
sys.exit(0 if written >= 4 << 20 else 1)
PY
pass "fsync of a file in the mounted filesystem reached the gateway as an NBD flush ($((after - before)) flush(es))"
cli unmap "$mnt"
assert_clean

# As shipped (the exporter rbdgw runs, its own connections and threads):
# more than 16 of the loop device's 32 reads in flight reach the gateway
# (its 2 connections x nbdkit's 16 workers take 32; rbdgw-fuse's 16 FUSE
# threads capped them at 16 before rbdgw gave it --threads 32).
nbdlog3=$TEST_TMP/nbd3.log
cat >"$TEST_TMP/nbdkit3" <<SH
#!/bin/sh
exec nbdkit --filter=log --filter=delay "\$@" logfile=$nbdlog3 rdelay=20ms
SH
chmod +x "$TEST_TMP/nbdkit3"
new_image img3 64M
dev=$(RBDGW_FUSE_EXPORTER="$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse" NBDKIT=$TEST_TMP/nbdkit3 \
  cli map "rbd/$img3" --conf "$CEPH_CONF" --attach userspace)
fio --name=inflight3 --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k \
  --iodepth=32 --number_ios=512 --size=32M --output=/dev/null || fail "fio on $dev failed"
n=$(max_in_flight "$nbdlog3")
[ "$n" -gt 16 ] || fail "as shipped, at most $n read(s) in flight at the gateway for 32 in flight on $dev"
pass "as shipped: $n reads in flight at the gateway for 32 in flight on the loop device"
cli unmap "rbd/$img3" >/dev/null
assert_clean
