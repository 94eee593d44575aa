#!/usr/bin/env bash
# --conn-depth (a shared gateway's volume): when the exporter's first
# connection is full and a further one cannot be made (the server refuses
# it: here nbdkit's limit filter allows one connection; on a node, a
# gateway out of file descriptors or threads), the requests stay on the
# connection there is: none fails, none waits out the reconnect timeout,
# one line says so. Before, every request sent to the spare slot retried
# its connect until the timeout and then failed with EIO (review helper-40:
# 24 of 32 readers failed).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which fio
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-limit-filter.so
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so

# 8 workers per connection, reads held 20 ms: 32 readers fill one
# connection and spill over.
start_nbdkit sock gw --threads 8 --filter=limit --filter=delay memory 64M limit=1 rdelay=20ms
start_exporter "$sock" --connections 4 --conn-depth 8 --threads 32 --idle-threads 2 --reconnect-timeout 30
head -c $((8 * MiB)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$disk" bs=1M oflag=direct conv=notrunc status=none || fail "writing the data failed"
start=$(date +%s)
fio --name=spill --filename="$disk" --rw=randread --bs=4k --direct=1 --ioengine=psync --numjobs=32 \
  --size=8M --number_ios=40 --group_reporting --output="$TEST_TMP/fio.txt" ||
  { cat "$TEST_TMP/fio.txt" "$exporter_log" >&2; fail "reads failed while a further connection was refused"; }
took=$(($(date +%s) - start))
grep -q "err= 0" "$TEST_TMP/fio.txt" || { cat "$TEST_TMP/fio.txt" >&2; fail "fio reported errors"; }
# Not a timing assertion of speed: 30 s is the reconnect timeout a request
# sent to the refused slot used to wait out before failing.
[ "$took" -lt 30 ] || fail "the reads took $took s: they waited for the refused connection"
grep -q "a further connection to .* failed" "$exporter_log" || { cat "$exporter_log" >&2; fail "the refused connection was not logged"; }
[ "$(grep -c "further connection" "$exporter_log")" = 1 ] || fail "the refused connection was logged more than once"
if grep -q "giving up" "$exporter_log"; then cat "$exporter_log" >&2; fail "the exporter gave up"; fi
pass "32 parallel readers served on the one connection allowed ($took s), the refused spare logged once"
cmp -s <(dd if="$disk" bs=1M count=8 iflag=direct status=none) "$TEST_TMP/data" || fail "the data read back differs"
pass "data intact"
attach_loop
assert_torn_down
