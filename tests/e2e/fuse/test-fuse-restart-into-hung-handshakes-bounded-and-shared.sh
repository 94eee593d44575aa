#!/usr/bin/env bash
# The gateway restarts into handshakes that hang (it accepts and never
# answers: its image open stuck in a Ceph outage, say) and no connection
# works: the requests waiting to reconnect share one connect attempt per
# slot instead of each making its own after the one before (review
# helper-41: each waiter behind the slot's lock tried again, 5 s more per
# place in the queue, one hung connection per request); they fail with EIO
# at the reconnect timeout; after that give-up a request makes one quick
# attempt (5 s), not another full wait; and SIGUSR2 ends a request waiting
# in a hung handshake at once. Before stop 24 such a handshake hung
# forever.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which timeout

start_nbdkit sock gw --threads 8 memory 64M
start_proxy proxy "$sock" until-flag
start_exporter "$proxy" --connections 2 --conn-depth 8 --threads 16 --reconnect-timeout 20
write_data 4
: >"$TEST_TMP/silent"
proxy_hang "$proxy"  # the relayed connections are cut, every new one is silent

# 8 readers at once (both slots): all fail with EIO at the timeout.
start=$(now)
pids=()
for i in 0 1 2 3 4 5 6 7; do
  timeout -s KILL 120 dd if="$disk" bs=4k count=1 skip=$i iflag=direct status=none of=/dev/null \
    2>"$TEST_TMP/dd$i.err" &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then fail "read $i succeeded with no server answering"; fi
  grep -q "Input/output error" "$TEST_TMP/dd$i.err" || { cat "$TEST_TMP/dd$i.err" >&2; fail "read $i did not fail with EIO"; }
done
took=$(elapsed "$start")
tries=$(wc -l <"$TEST_TMP/silent")
# 2 slots: one shared attempt each (a few more if a request retried after
# its backoff within the timeout); 8 or more is one per request.
[ "$tries" -ge 1 ] && [ "$tries" -le 5 ] ||
  { cat "$exporter_log" >&2; fail "$tries silent connections for 8 requests on 2 slots (each request tried on its own?)"; }
grep -q "giving up after 20 s" "$exporter_log" || { cat "$exporter_log" >&2; fail "no give-up logged"; }
pass "8 waiting reads failed with EIO after $(secs "$took") s, sharing $tries connect attempts"

# After the give-up: one quick attempt (5 s), not the 20 s timeout again.
start=$(now)
if timeout -s KILL 120 dd if="$disk" bs=4k count=1 iflag=direct status=none of=/dev/null 2>/dev/null; then
  fail "a read after the give-up succeeded with no server answering"
fi
took=$(elapsed "$start")
[ "$took" -lt 15000 ] || fail "the read after the give-up took $(secs "$took") s: it waited out the timeout again"
pass "a read after the give-up failed after $(secs "$took") s (one 5 s attempt)"

# SIGUSR2 during a hung handshake: a second exporter with a 300 s timeout.
fusermount3 -u "$disk" || fail "unmounting the first exporter failed"
wait "$exporter" || true
start_proxy proxy2 "$sock" until-flag
start_exporter "$proxy2" --connections 2 --conn-depth 8 --threads 16 --reconnect-timeout 300
proxy_hang "$proxy2"
timeout -s KILL 120 dd if="$disk" bs=4k count=1 iflag=direct status=none of=/dev/null 2>"$TEST_TMP/dd.err" &
reader=$!
for _ in $(seq 100); do [ "$(wc -l <"$TEST_TMP/silent")" -gt "$tries" ] && break; sleep 0.1; done
sleep 1
start=$(now)
kill -USR2 "$exporter"
if wait "$reader"; then fail "the read succeeded after SIGUSR2"; fi
took=$(elapsed "$start")
[ "$took" -lt 10000 ] || fail "the read in a hung handshake ended $(secs "$took") s after SIGUSR2 (timeout 300 s)"
grep -q "Input/output error" "$TEST_TMP/dd.err" || { cat "$TEST_TMP/dd.err" >&2; fail "the read did not fail with EIO"; }
pass "SIGUSR2 ended a read waiting in a hung handshake after $(secs "$took") s"
loop=$(losetup --find --show --direct-io=off "$disk")
cleanup_fn "losetup -d $loop"
assert_torn_down
