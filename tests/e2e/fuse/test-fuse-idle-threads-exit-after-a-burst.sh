#!/usr/bin/env bash
# --idle-threads N: a burst of parallel requests makes FUSE threads (up to
# --threads), and once it is over all but N of the idle ones exit, so an
# idle exporter does not keep what its busiest moment made; the next burst
# is served as well (new threads on demand) and reads back its data.
# Without it (the default), every thread made stays.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so

# Reads held 0.2 s each, so that 16 parallel readers need 16 FUSE threads.
start_nbdkit sock gw --filter=delay memory 64M delay-read=200ms
start_exporter "$sock" --threads 16 --idle-threads 2 --connections 1
threads() { ls "/proc/$exporter/task" | wc -l; }
rest=$(threads)
write_data 16
burst() { parallel_reads 16; }
burst &
b=$!
peak=$rest
while kill -0 $b 2>/dev/null; do t=$(threads); [ "$t" -gt "$peak" ] && peak=$t; sleep 0.05; done
wait $b || fail "the first burst failed"
[ "$peak" -ge $((rest + 8)) ] || fail "the burst made only $((peak - rest)) more threads ($rest -> $peak): not parallel"
for _ in $(seq 50); do [ "$(threads)" -le $((rest + 2)) ] && break; sleep 0.1; done
[ "$(threads)" -le $((rest + 2)) ] || fail "$(threads) threads 5 s after the burst (at rest $rest, peak $peak, --idle-threads 2)"
pass "threads $rest -> $peak during 16 parallel reads -> $(threads) after"
burst
pass "a second burst served and read back"
attach_loop
assert_torn_down
