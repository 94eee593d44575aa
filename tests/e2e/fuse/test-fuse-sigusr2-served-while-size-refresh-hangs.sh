#!/usr/bin/env bash
# SIGUSR2 ("the gateway is gone for good", a forced unmap) is served even
# while a size refresh (SIGUSR1) hangs in its connect: the gateway is hung
# (SIGSTOP: its socket accepts into the backlog, no NBD handshake ever
# comes), a write waits on it, a resize sends SIGUSR1, then SIGUSR2 must
# still fail the write with EIO within seconds and the mount come down.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"

start_nbdkit sock gw memory 64M
cleanup_fn "kill -CONT $gw 2>/dev/null"
start_exporter "$sock" --reconnect-timeout 300 --size-file "$TEST_TMP/size"
attach_loop
head -c $((1 * MiB)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$loop" bs=64K oflag=direct status=none || fail "write before the hang failed"
kill -STOP "$gw"
( rc=0; dd if="$TEST_TMP/data" of="$loop" bs=64K count=1 seek=3 oflag=direct conv=fsync status=none 2>"$TEST_TMP/w.err" || rc=$?
  echo $rc >"$TEST_TMP/w.rc" ) &
cleanup_fn "kill $! 2>/dev/null"
sleep 1
[ -e "$TEST_TMP/w.rc" ] && fail "the write ended on a hung gateway: $(cat "$TEST_TMP/w.err")"
kill -USR1 "$exporter"  # its connect lands in the hung gateway's backlog
sleep 1
kill -USR2 "$exporter"
t0=$(now)
for ((i = 0; i < 50; i++)); do [ -e "$TEST_TMP/w.rc" ] && break; sleep 0.1; done
[ -e "$TEST_TMP/w.rc" ] || fail "the write still blocked 5 s after SIGUSR2 (SIGUSR2 not served behind the hung size refresh)"
[ "$(cat "$TEST_TMP/w.rc")" != 0 ] || fail "the write succeeded after SIGUSR2"
grep -q "Input/output error" "$TEST_TMP/w.err" || fail "not EIO: $(cat "$TEST_TMP/w.err")"
grep -q "gone for good" "$exporter_log" || fail "SIGUSR2 not logged: $(cat "$exporter_log")"
t=$(secs "$(elapsed "$t0")")
losetup -d "$loop" || fail "losetup -d $loop failed"
fusermount3 -u "$disk" || fail "fusermount3 -u $disk failed"
pass "with a size refresh hung in its connect, SIGUSR2 failed the pending write with EIO in $t s; torn down"
