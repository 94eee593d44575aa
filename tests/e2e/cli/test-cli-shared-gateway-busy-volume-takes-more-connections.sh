#!/usr/bin/env bash
# A volume on the shared gateway keeps as many requests in flight as on
# its own gateway when it is busy, and costs one connection when it is not
# (issue 13: "the I/O figures of the speed issue unchanged for one
# volume"). The shared gateway runs few nbdkit workers per connection
# (--threads, 2 as shipped), so a volume with one connection had at most
# that many requests in flight there, whatever its queue depth; its
# exporter takes up to 32 / that many connections, a new one only while
# those it has are full, and closes them again once idle.
#
# The shared gateway is started through a wrapper that puts nbdkit's log
# filter (every request's start and end, in order) and its delay filter
# (20 ms per read, so that requests issued together do overlap) in front of
# the rbd plugin; the overlap and the connections are read from the log and
# from ss (no timing is asserted).
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which fio ss nbdkit
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-log-filter.so
export RBDGW_IDLE_DISCONNECT=2

nbdlog=$TEST_TMP/nbd.log
cat >"$TEST_TMP/nbdkit" <<SH
#!/bin/sh
exec nbdkit --filter=log --filter=delay "\$@" logfile=$nbdlog rdelay=20ms
SH
chmod +x "$TEST_TMP/nbdkit"
export NBDKIT=$TEST_TMP/nbdkit

# reads LOG FROM: of the log's lines after the first FROM, the most Reads
# between their start and end lines at any point, and on how many
# connections the Reads came.
reads() {
  /usr/bin/python3 - "$1" "$2" <<'PY'
import re, sys
lines = open(sys.argv[1]).read().splitlines()[int(sys.argv[2]):]
cur = best = 0
conns = set()
for line in lines:
    if m := re.search(r"connection=(\d+) Read id=", line):
        conns.add(m[1])
        cur += 1
        best = max(best, cur)
    elif re.search(r"connection=\d+ \.\.\.Read id=", line):
        cur -= 1
print(best, len(conns))
PY
}
log_lines() { wc -l <"$nbdlog"; }

new_image img 64M
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --shared-gateway --attach userspace 2>"$TEST_TMP/err") ||
  { cat "$TEST_TMP/err" >&2; fail "map of rbd/$img on the shared gateway failed"; }
gw=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway"
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
[ -S "$sock" ] || fail "no shared gateway socket under $RUN_ROOT"
[ -f "$nbdlog" ] || fail "the shared gateway was not started through \$NBDKIT (no $nbdlog)"
# The gateway's workers per connection, from its command line.
depth=$(tr '\0' '\n' <"/proc/$gw/cmdline" | grep -A1 -x -- --threads | tail -1)
[ "$depth" -ge 1 ] 2>/dev/null || fail "no --threads N on the shared gateway's command line"
max_conns=$(((32 + depth - 1) / depth))
if [ "$max_conns" -lt 2 ]; then
  echo "SKIP: the shared gateway runs $depth workers per connection (RBDGW_SHARED_GATEWAY_THREADS): one connection takes 32, nothing to spread"
  exit 77
fi

# Queue depth 1: one connection carries it.
from=$(log_lines)
fio --name=qd1 --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k \
  --iodepth=1 --number_ios=64 --size=32M --output=/dev/null || fail "fio at depth 1 on $dev failed"
read -r n c <<<"$(reads "$nbdlog" "$from")"
[ "$c" = 1 ] || fail "64 reads one after another on $dev came on $c connections, not 1"
[ "$(connections_on "$sock")" -le 1 ] || fail "$(connections_on "$sock") connections open after I/O at depth 1"
pass "queue depth 1: one connection to the shared gateway"
threads() { ls "/proc/$gw/task" | wc -l; }
# idle_wait WHAT: every connection closed (RBDGW_IDLE_DISCONNECT=2) and
# the gateway's thread count steady for 1 s (its connection threads end
# shortly after the close).
idle_wait() {
  local _ n same=0
  for _ in $(seq 100); do [ "$(connections_on "$sock")" = 0 ] && break; sleep 0.1; done
  [ "$(connections_on "$sock")" = 0 ] || fail "$(connections_on "$sock") connection(s) still open 10 s after $1"
  n=$(threads)
  for _ in $(seq 100); do
    sleep 0.1
    if [ "$(threads)" = "$n" ]; then same=$((same + 1)); else n=$(threads) same=0; fi
    [ "$same" -ge 10 ] && break
  done
}
idle_wait "the reads at depth 1"
t0=$(threads)

# Queue depth 32: more than one connection's workers serve it at once.
from=$(log_lines)
fio --name=qd32 --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k \
  --iodepth=32 --number_ios=1024 --size=32M --output=/dev/null || fail "fio at depth 32 on $dev failed"
read -r n c <<<"$(reads "$nbdlog" "$from")"
[ "$n" -gt "$depth" ] || fail "at most $n read(s) in flight at the shared gateway for 32 in flight on $dev (one connection's $depth workers)"
[ "$c" -ge 2 ] && [ "$c" -le "$max_conns" ] || fail "32 reads in flight came on $c connections, expected 2 to $max_conns"
pass "queue depth 32: $n reads in flight at the shared gateway on $c connections"

# Idle: every connection closes again, and the gateway lets their worker
# threads go.
idle_wait "the reads at depth 32"
t=$(threads)
[ "$t" -le "$t0" ] || fail "the idle shared gateway runs $t threads after the reads at depth 32, $t0 after those at depth 1"
pass "idle again: no connection open, the shared gateway at $t threads ($t0 before)"

# And the data path is whole: what 32 parallel writers put there (over
# several connections) and flushed reads back from the image itself.
head -c 8M /dev/urandom >"$TEST_TMP/data"
# 32 threads, each O_DIRECT-writing its 256 KiB at offset 8 MiB + i x 256 KiB
# at once, then one fsync of the device.
/usr/bin/python3 - "$dev" "$TEST_TMP/data" <<'PY' || fail "32 parallel writes to $dev failed"
import mmap, os, sys, threading
dev, data = sys.argv[1], open(sys.argv[2], "rb").read()
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
def put(i):
    buf = mmap.mmap(-1, 256 << 10)
    buf.write(data[i << 18:(i + 1) << 18])
    assert os.pwritev(fd, [buf], (8 << 20) + (i << 18)) == 256 << 10
ts = [threading.Thread(target=put, args=(i,)) for i in range(32)]
for t in ts: t.start()
for t in ts: t.join()
os.fsync(fd)
os.close(fd)
PY
cli unmap "rbd/$img" >/dev/null || fail "unmap of rbd/$img failed"
rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/copy" >/dev/null
dd if="$TEST_TMP/copy" bs=1M skip=8 count=8 status=none | cmp -s - "$TEST_TMP/data" ||
  fail "the 8 MiB written by 32 parallel writers differ in the image"
assert_clean
pass "8 MiB written by 32 parallel writers are in the image after unmap"
