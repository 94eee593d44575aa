#!/usr/bin/env bash
# After a burst of large parallel requests the exporter gives the memory
# they used back: its RSS returns to near what it was before the burst
# once it has been idle a moment (1 s), instead of keeping its busiest
# moment's buffers (1 MiB per FUSE thread and per read reply) in its
# threads' malloc arenas for as long as it runs (issue 13: the cost of a
# mapped volume after I/O). And the next burst is served as well.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so

# Reads held 0.1 s each, so that 16 parallel readers need 16 FUSE threads
# (and 16 read buffers) at once; FUSE threads beyond 2 exit when idle.
start_nbdkit sock gw --filter=delay memory 64M delay-read=100ms
start_exporter "$sock" --threads 16 --idle-threads 2 --connections 1
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$exporter/status"; }
write_data 16
burst() { parallel_reads 16; }
# One 1 MiB read first: glibc's first freed 1 MiB block raises its mmap
# threshold (after it, such blocks come from the arenas), and the
# exporter's own start-up memory is counted in the rest figure.
dd if="$disk" bs=1M count=1 iflag=direct status=none of=/dev/null || fail "the first read failed"
sleep 2
rest=$(rss_kib)
burst &
b=$!
peak=$rest
while kill -0 $b 2>/dev/null; do r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r; sleep 0.02; done
wait $b || fail "the burst failed"
[ "$peak" -ge $((rest + 8 * 1024)) ] ||
  fail "the burst grew the exporter by only $(((peak - rest) / 1024)) MiB ($rest -> $peak KiB): not 16 buffers at once"
# Given back: within 5 s, at most 3 MiB above the rest figure (the 2 idle
# threads kept may each hold a buffer).
for _ in $(seq 50); do [ "$(rss_kib)" -le $((rest + 3 * 1024)) ] && break; sleep 0.1; done
after=$(rss_kib)
[ "$after" -le $((rest + 3 * 1024)) ] ||
  fail "the exporter kept $(((after - rest) / 1024)) MiB of the burst 5 s after it (RSS $rest -> peak $peak -> $after KiB)"
pass "exporter RSS $((rest / 1024)) MiB -> $((peak / 1024)) MiB during 16 parallel 1 MiB reads -> $((after / 1024)) MiB after"
burst
pass "a second burst served and read back"
attach_loop
assert_torn_down
