#!/usr/bin/env bash
# --idle-disconnect SECONDS: a connection with no request in flight for that
# long is closed, so the server lets its per-connection threads go (nbdkit
# runs -t workers per connection), and the next request connects again at
# once, with nothing logged. A request that takes longer than the idle time
# (a 3 s write through nbdkit's delay filter, idle time 1 s) is never cut:
# it completes on its connection, no reconnect, and reads back.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so
requires which ss

start_nbdkit sock gw -t 4 --filter=delay memory 32M delay-write=3
# conns: the connections the server has accepted and not closed.
conns() { connections_on "$sock"; }
threads() { ls "/proc/$gw/task" | wc -l; }
[ "$(conns)" = 0 ] || fail "a connection before the exporter started: $(conns)"
idle_threads=$(threads)

start_exporter "$sock" --idle-disconnect 1 --connections 1
[ "$(conns)" = 1 ] || fail "the exporter holds $(conns) connection(s), expected 1"
busy_threads=$(threads)
[ "$busy_threads" -gt "$idle_threads" ] || fail "nbdkit has no more threads with a connection ($busy_threads)"
start=$(now)
for _ in $(seq 50); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "the idle connection is still open $(secs "$(elapsed "$start")") s after it went idle"
for _ in $(seq 50); do [ "$(threads)" -le "$idle_threads" ] && break; sleep 0.1; done
[ "$(threads)" -le "$idle_threads" ] || fail "nbdkit kept $(threads) threads (idle: $idle_threads) after the connection closed"
pass "the idle connection was closed; nbdkit back from $busy_threads to $(threads) threads"

# A 4 KiB write that the server holds for 3 s, three times the idle time.
head -c 4096 /dev/urandom >"$TEST_TMP/block"
start=$(now)
dd if="$TEST_TMP/block" of="$disk" bs=4096 seek=5 oflag=direct conv=notrunc status=none 2>"$TEST_TMP/w.err" &
writer=$!
sleep 2
[ "$(conns)" = 1 ] || fail "$(conns) connection(s) while a write is in flight, expected 1"
wait $writer || fail "the slow write failed: $(cat "$TEST_TMP/w.err")"
took=$(elapsed "$start")
[ "$took" -ge 2900 ] || fail "the write took $took ms: the delay filter did not hold it"
dd if="$disk" bs=4096 skip=5 count=1 iflag=direct status=none | cmp - "$TEST_TMP/block" ||
  fail "the slow write does not read back"
pass "a write held $(secs "$took") s by the server (idle time 1 s) completed on its connection and reads back"

if grep -E "lost|reconnect|giving up" "$exporter_log"; then
  fail "rbdgw-fuse logged a lost connection or a reconnect"
fi
for _ in $(seq 50); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "the connection did not close again once idle"
dd if="$disk" bs=4096 skip=5 count=1 iflag=direct status=none | cmp - "$TEST_TMP/block" ||
  fail "a read on a new connection after the idle close does not return the block"
pass "nothing logged; closed again once idle, and a read after it reconnected"

attach_loop
assert_torn_down
pass "torn down cleanly"
