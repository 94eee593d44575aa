#!/usr/bin/env bash
# SIGUSR2 tells rbdgw-fuse that the gateway is gone for good: a write on
# the loop device that waits for a reconnect after a kill -9 of the gateway
# (--reconnect-timeout 300) fails with EIO within seconds, so does a request
# blocked on a gateway that hangs without dying (nbdkit pause filter), so
# does every later request, at once; it is logged once; then the loop
# device detaches, `fusermount3 -u` unmounts and the exporter exits.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"

# bg_dd NAME DD-ARGS...: dd in the background; its status lands in
# $TEST_TMP/NAME.rc, its stderr in $TEST_TMP/NAME.err.
bg_dd() {
  local name=$1
  shift
  ( rc=0; dd "$@" status=none 2>"$TEST_TMP/$name.err" || rc=$?; echo "$rc" >"$TEST_TMP/$name.rc" ) &
  cleanup_fn "kill $!"
}
# wait_eio NAME SECONDS: the background dd NAME ends within SECONDS, with
# an I/O error; prints how long it took after the call (seconds).
wait_eio() {
  local name=$1 t0 i
  t0=$(now)
  for ((i = 0; i < $2 * 10; i++)); do [ -e "$TEST_TMP/$name.rc" ] && break; sleep 0.1; done
  [ -e "$TEST_TMP/$name.rc" ] || fail "$name: still blocked $2 s after SIGUSR2"
  [ "$(cat "$TEST_TMP/$name.rc")" != 0 ] || fail "$name: succeeded after SIGUSR2"
  grep -q "Input/output error" "$TEST_TMP/$name.err" || fail "$name: not EIO: $(cat "$TEST_TMP/$name.err")"
  secs "$(elapsed "$t0")"
}
# still_blocked NAME: the background dd NAME has not ended.
still_blocked() {
  [ -e "$TEST_TMP/$1.rc" ] && fail "$1 ended (status $(cat "$TEST_TMP/$1.rc"): $(cat "$TEST_TMP/$1.err")) instead of waiting for the gateway"
  return 0
}

# 1. The gateway killed: the write waits to reconnect until SIGUSR2.
start_nbdkit sock gw memory 64M
start_exporter "$sock" --reconnect-timeout 300
attach_loop
head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$loop" bs=1M oflag=direct conv=fsync status=none
dd if="$loop" bs=1M count=4 iflag=direct status=none | cmp - "$TEST_TMP/data" || fail "data read back differs"
kill -9 "$gw"
bg_dd w1 if="$TEST_TMP/data" of="$loop" bs=64K count=1 seek=7 oflag=direct conv=fsync
bg_dd r1 if="$loop" of=/dev/null bs=64K count=1 skip=3 iflag=direct
sleep 3
still_blocked w1
still_blocked r1
grep -q "reconnecting" "$exporter_log" || fail "the exporter log shows no reconnect attempt: $(cat "$exporter_log")"
kill -USR2 "$exporter"
t=$(wait_eio w1 5)
t2=$(wait_eio r1 5)
running "$exporter" || fail "rbdgw-fuse died on SIGUSR2 (it must stay to serve the unmount): $(tail -n 3 "$exporter_log")"
pass "kill -9 of the gateway: the pending write and read failed with EIO ${t} s / ${t2} s after SIGUSR2"
t0=$(now)
if dd if="$TEST_TMP/data" of="$loop" bs=64K count=1 oflag=direct conv=fsync status=none 2>"$TEST_TMP/later.err"; then
  fail "a write after SIGUSR2 succeeded"
fi
grep -q "Input/output error" "$TEST_TMP/later.err" || fail "later write: not EIO: $(cat "$TEST_TMP/later.err")"
t=$(elapsed "$t0")
[ "$t" -lt 1000 ] || fail "a write after SIGUSR2 took $(secs "$t") s to fail (expected at once)"
t=$(secs "$t")
[ "$(grep -c "gone for good" "$exporter_log")" = 1 ] || fail "SIGUSR2 not logged exactly once: $(cat "$exporter_log")"
kill -USR2 "$exporter"  # a second one changes nothing
sleep 0.3
[ "$(grep -c "gone for good" "$exporter_log")" = 1 ] || fail "a second SIGUSR2 logged again"
# No reconnect either when a gateway serves the socket again.
rm -f "$sock"
nbdkit -U "$sock" -P "$TEST_TMP/gw2.pid" --filter=log memory 64M logfile="$TEST_TMP/gw2.log"
cleanup_fn "kill \$(cat '$TEST_TMP/gw2.pid')"
for ((i = 0; i < 50; i++)); do [ -S "$sock" ] && [ -s "$TEST_TMP/gw2.pid" ] && break; sleep 0.1; done
if dd if="$loop" of=/dev/null bs=64K count=1 iflag=direct status=none 2>/dev/null; then
  fail "a read after SIGUSR2 succeeded on a new gateway"
fi
grep -q "connection=" "$TEST_TMP/gw2.log" 2>/dev/null && fail "the exporter connected to a new gateway after SIGUSR2"
assert_torn_down
pass "a later write failed with EIO in $t s; no reconnect to a new gateway; logged once; loop detached, FUSE unmounted, exporter exited"

# 2. The gateway hangs (paused, its socket open): the request blocked on
# the connection fails too.
rm -f "$TEST_TMP/w1.rc" "$TEST_TMP/w1.err"
ctl="$TEST_TMP/pause.ctl"
start_nbdkit sock gw --filter=pause memory 64M pause-control="$ctl"
start_exporter "$sock" --reconnect-timeout 300
attach_loop
dd if="$TEST_TMP/data" of="$loop" bs=1M oflag=direct conv=fsync status=none
python3 - "$ctl" <<'PY' || fail "could not pause the gateway"
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"p")
assert s.recv(1) == b"P"
PY
bg_dd w1 if="$TEST_TMP/data" of="$loop" bs=64K count=1 seek=9 oflag=direct conv=fsync
sleep 2
still_blocked w1
kill -USR2 "$exporter"
t=$(wait_eio w1 5)
assert_torn_down
pass "a request blocked on a hung gateway failed with EIO $t s after SIGUSR2; torn down"

# 3. What a forced unmap meets: ext4 mounted on the loop device with
# unflushed writes, the gateway killed. umount waits for the writeback
# (which waits for a reconnect) until SIGUSR2, then completes.
requires which mkfs.ext4
rm -f "$TEST_TMP/umount.rc"
start_nbdkit sock gw memory 64M
start_exporter "$sock" --reconnect-timeout 300
attach_loop
mkfs.ext4 -q "$loop"
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
mount "$loop" "$mnt"
cleanup_fn "umount -l '$mnt'"
head -c $((8 * MiB)) /dev/urandom >"$mnt/unflushed"
kill -9 "$gw"
( rc=0; umount "$mnt" 2>"$TEST_TMP/umount.err" || rc=$?; echo "$rc" >"$TEST_TMP/umount.rc" ) &
cleanup_fn "kill $!"
sleep 3
[ -e "$TEST_TMP/umount.rc" ] && fail "umount ended before SIGUSR2 (status $(cat "$TEST_TMP/umount.rc")): the writeback did not wait for the gateway"
kill -USR2 "$exporter"
t0=$(now)
for ((i = 0; i < 100; i++)); do [ -e "$TEST_TMP/umount.rc" ] && break; sleep 0.1; done
[ -e "$TEST_TMP/umount.rc" ] || fail "umount still blocked 10 s after SIGUSR2"
t=$(secs "$(elapsed "$t0")")
findmnt -n "$mnt" >/dev/null && fail "$mnt still mounted after umount returned $(cat "$TEST_TMP/umount.rc"): $(cat "$TEST_TMP/umount.err")"
assert_torn_down
pass "umount of ext4 with unflushed data on a dead gateway completed $t s after SIGUSR2 (status $(cat "$TEST_TMP/umount.rc")); torn down"
