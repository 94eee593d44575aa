#!/usr/bin/env bash
# A gateway that shuts down cleanly (SIGTERM) while requests are in flight
# answers them with NBD_ESHUTDOWN ("the server is shutting down": nbdkit
# does so for a request it will not finish, its delay filter for every
# request it holds): rbdgw-fuse retries them on a new connection once a
# gateway serves the socket again, like the requests of a gateway that
# died; no reader or writer sees an error and the data is what was written.
# A real error answer (nbdkit's error filter, EIO) is not retried: it
# reaches the caller at once, and the exporter makes no reconnect for it.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-error-filter.so

img="$TEST_TMP/img"
truncate -s 64M "$img"
head -c $((8 * MiB)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$img" bs=1M conv=notrunc status=none
head -c $((8 * 64 * 1024)) /dev/urandom >"$TEST_TMP/new"

# 1. SIGTERM of the gateway with 8 reads and 8 writes held in its delay filter.
start_nbdkit sock gw --filter=delay file "$img" rdelay=3 wdelay=3
start_exporter "$sock" --reconnect-timeout 60
for i in $(seq 0 7); do
  ( rc=0; dd if="$disk" of="$TEST_TMP/r$i" bs=64K count=1 skip=$i iflag=direct status=none 2>"$TEST_TMP/r$i.err" || rc=$?
    echo $rc >"$TEST_TMP/r$i.rc" ) &
  cleanup_fn "kill $! 2>/dev/null"
  ( rc=0; dd if="$TEST_TMP/new" of="$disk" bs=64K count=1 skip=$i seek=$((64 + i)) oflag=direct \
      conv=notrunc status=none 2>"$TEST_TMP/w$i.err" || rc=$?
    echo $rc >"$TEST_TMP/w$i.rc" ) &
  cleanup_fn "kill $! 2>/dev/null"
done
sleep 1
kill -TERM "$gw"
for ((i = 0; i < 100; i++)); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
kill -0 "$gw" 2>/dev/null && fail "nbdkit did not exit on SIGTERM"
rm -f "$sock"  # nbdkit leaves its socket behind
nbdkit -U "$sock" -P "$TEST_TMP/gw2.pid" file "$img"
cleanup_fn "kill \$(cat '$TEST_TMP/gw2.pid')"
for i in $(seq 0 7); do
  for ((j = 0; j < 300; j++)); do [ -e "$TEST_TMP/r$i.rc" ] && [ -e "$TEST_TMP/w$i.rc" ] && break; sleep 0.1; done
  [ -e "$TEST_TMP/r$i.rc" ] && [ -e "$TEST_TMP/w$i.rc" ] || fail "request $i still blocked 30 s after the new gateway started"
done
for i in $(seq 0 7); do
  [ "$(cat "$TEST_TMP/r$i.rc")" = 0 ] || fail "read $i failed across the gateway's clean shutdown: $(cat "$TEST_TMP/r$i.err")"
  [ "$(cat "$TEST_TMP/w$i.rc")" = 0 ] || fail "write $i failed across the gateway's clean shutdown: $(cat "$TEST_TMP/w$i.err")"
  cmp -s "$TEST_TMP/r$i" <(dd if="$TEST_TMP/data" bs=64K count=1 skip=$i status=none) || fail "read $i returned other data"
done
dd if="$img" bs=64K skip=64 count=8 status=none | cmp - "$TEST_TMP/new" || fail "the image does not hold the 8 writes"
grep -q "reconnect" "$exporter_log" || fail "no reconnect logged: $(cat "$exporter_log")"
pass "8 reads and 8 writes in flight across a SIGTERM of the gateway and a new one: all succeeded, data intact"
fusermount3 -u "$disk"
for ((i = 0; i < 50; i++)); do running "$exporter" || break; sleep 0.1; done

# 2. The server answers EIO: the caller gets EIO at once, nothing is retried.
start_nbdkit sock gw --filter=error file "$img" error=EIO error-rate=1 error-file="$TEST_TMP/fail-now"
start_exporter "$sock" --reconnect-timeout 60
dd if="$disk" of=/dev/null bs=64K count=1 iflag=direct status=none || fail "read before the errors failed"
touch "$TEST_TMP/fail-now"
t0=$(now)
dd if="$disk" of=/dev/null bs=64K count=1 iflag=direct status=none 2>"$TEST_TMP/eio-r.err" && fail "a read answered with EIO succeeded"
dd if="$TEST_TMP/new" of="$disk" bs=64K count=1 oflag=direct conv=notrunc status=none 2>"$TEST_TMP/eio-w.err" &&
  fail "a write answered with EIO succeeded"
t=$(elapsed "$t0")
grep -q "Input/output error" "$TEST_TMP/eio-r.err" || fail "read: not EIO: $(cat "$TEST_TMP/eio-r.err")"
grep -q "Input/output error" "$TEST_TMP/eio-w.err" || fail "write: not EIO: $(cat "$TEST_TMP/eio-w.err")"
[ "$t" -lt 5000 ] || fail "the EIO answers took $(secs "$t") s to reach the caller (retried?)"
grep -q "reconnect" "$exporter_log" && fail "the exporter reconnected on an error answer: $(cat "$exporter_log")"
rm -f "$TEST_TMP/fail-now"
dd if="$disk" of=/dev/null bs=64K count=1 iflag=direct status=none || fail "read after the errors stopped failed"
pass "EIO answers reached the caller in $(secs "$t") s, no reconnect; the next read succeeded"
