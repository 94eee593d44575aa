#!/usr/bin/env bash
# After one request gave up on a dead gateway (--reconnect-timeout), later
# requests do not each wait the timeout out again: each fails with EIO after
# one connect attempt, so a filesystem's writeback of many requests ends in
# seconds, not one timeout per request. Once the gateway is back, requests
# succeed again (and wait for a reconnect again).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"

timeout_s=3
start_nbdkit sock gw memory 64M
start_exporter "$sock" --reconnect-timeout "$timeout_s"
attach_loop
head -c $((1 * MiB)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$loop" bs=1M oflag=direct conv=fsync status=none
kill -9 "$gw"

# write_fails SEEK: a 64 KiB O_DIRECT write at SEEK * 64 KiB fails with EIO;
# prints how long it took (ms).
write_fails() {
  local t0
  t0=$(now)
  if dd if="$TEST_TMP/data" of="$loop" bs=64K count=1 seek="$1" oflag=direct conv=fsync status=none 2>"$TEST_TMP/err"; then
    fail "a write on the dead gateway succeeded"
  fi
  grep -q "Input/output error" "$TEST_TMP/err" || fail "not EIO: $(cat "$TEST_TMP/err")"
  elapsed "$t0"
}

t=$(write_fails 3)
[ "$t" -ge $((timeout_s * 1000)) ] || fail "the first write failed after $(secs "$t") s, before the reconnect timeout of $timeout_s s"
[ "$t" -lt $(((timeout_s + 5) * 1000)) ] || fail "the first write took $(secs "$t") s to fail (timeout $timeout_s s)"
grep -q "giving up after $timeout_s s" "$exporter_log" || fail "no give-up logged: $(cat "$exporter_log")"
t0=$(now)
for i in 4 5 6 7 8; do
  ti=$(write_fails $i)
  [ "$ti" -lt 1000 ] || fail "write $i after the give-up took $(secs "$ti") s to fail (expected one quick connect attempt)"
done
if dd if="$loop" of=/dev/null bs=64K count=1 iflag=direct status=none 2>/dev/null; then fail "a read on the dead gateway succeeded"; fi
t=$(elapsed "$t0")
[ "$t" -lt 3000 ] || fail "five writes and a read after the give-up took $(secs "$t") s"
[ "$(grep -c "giving up" "$exporter_log")" = 1 ] || fail "give-up logged more than once: $(cat "$exporter_log")"
pass "first request failed after the ${timeout_s} s timeout, the next six with EIO in $(secs "$t") s together"

# The gateway back on the same socket: requests succeed again.
rm -f "$sock"
nbdkit -U "$sock" -P "$TEST_TMP/gw2.pid" memory 64M
cleanup_fn "kill \$(cat '$TEST_TMP/gw2.pid')"
for ((i = 0; i < 50; i++)); do [ -S "$sock" ] && [ -s "$TEST_TMP/gw2.pid" ] && break; sleep 0.1; done
dd if="$TEST_TMP/data" of="$loop" bs=1M oflag=direct conv=fsync status=none || fail "write after the gateway came back failed"
dd if="$loop" bs=1M count=1 iflag=direct status=none | cmp - "$TEST_TMP/data" || fail "read back after the gateway came back differs"
grep -q "succeed again" "$exporter_log" || fail "the recovery is not logged: $(cat "$exporter_log")"
# And a new outage waits for a reconnect again (the give-up was forgotten).
kill -9 "$(cat "$TEST_TMP/gw2.pid")"
( sleep 1; rm -f "$sock"; nbdkit -U "$sock" -P "$TEST_TMP/gw3.pid" memory 64M ) &
restarter=$!
cleanup_fn "kill \$(cat '$TEST_TMP/gw3.pid')"
dd if="$TEST_TMP/data" of="$loop" bs=64K count=1 oflag=direct conv=fsync status=none ||
  fail "a write during a short outage after the recovery failed instead of waiting for the reconnect"
wait "$restarter"
assert_torn_down
pass "requests succeed again once the gateway is back, and wait for a reconnect again; torn down"
