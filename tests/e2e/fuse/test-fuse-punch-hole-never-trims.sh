#!/usr/bin/env bash
# A hole punch on the exporter's file (what the loop driver makes of a
# discard and of a write-zeroes-with-unmap) is sent as NBD WRITE_ZEROES
# with trim allowed, never as NBD TRIM (after which the NBD spec, and
# librbd for partial objects, leave the old data); FALLOC_FL_ZERO_RANGE
# as WRITE_ZEROES with NO_HOLE. Seen on the wire (nbdkit log filter) and
# in the data. On an export that cannot zero, both are refused with
# EOPNOTSUPP and nothing is sent: `fallocate -p` on the device then fails
# and leaves the bytes as they were, `fallocate -z` and `blkdiscard -z`
# still read back zeros (the kernel writes them itself).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which fallocate blkdiscard

span=$((4 * MiB))
# check WHAT: the loop device's first $span bytes equal $TEST_TMP/expect.
check() {
  dd if="$loop" bs=1M count=$((span / MiB)) iflag=direct status=none | cmp - "$TEST_TMP/expect" ||
    fail "$1: the device differs from the expected bytes"
}
zeroed() { dd if=/dev/zero of="$TEST_TMP/expect" bs=512 seek=$(($1 / 512)) count=$(($2 / 512)) conv=notrunc status=none; }
fill() {
  head -c "$span" /dev/urandom >"$TEST_TMP/expect"
  dd if="$TEST_TMP/expect" of="$loop" bs=1M oflag=direct conv=fsync status=none
}
# sent KIND: the NBD requests of KIND (Trim, Zero, Write) in the log since
# the last mark.
mark() { log_from=$(($(wc -l <"$log") + 1)); }
sent() { tail -n +"$log_from" "$log" | grep " $1 id=" || true; }

# 1. An export that can zero.
log="$TEST_TMP/nbd1.log"
start_nbdkit sock gw --filter=log memory 64M logfile="$log"
start_exporter "$sock"
attach_loop
fill
mark
fallocate -p -o $((MiB + 4096)) -l 8192 "$loop"
zeroed $((MiB + 4096)) 8192
blkdiscard -o $((2 * MiB + 512)) -l 65536 "$loop"
zeroed $((2 * MiB + 512)) 65536
check "after fallocate -p and blkdiscard"
[ -z "$(sent Trim)" ] || fail "a hole punch went out as NBD TRIM: $(sent Trim)"
sent Zero | grep -q "trim=1" || fail "the hole punch was not an NBD WRITE_ZEROES with trim allowed: $(sent Zero)"
mark
fallocate -z -o $((3 * MiB + 1024)) -l 4096 "$loop"
zeroed $((3 * MiB + 1024)) 4096
check "after fallocate -z"
sent Zero | grep -q "trim=0" || fail "zero range was not an NBD WRITE_ZEROES with NO_HOLE: $(sent Zero)"
[ -z "$(sent Trim)" ] || fail "zero range sent NBD TRIM"
assert_torn_down
pass "hole punch and discard went out as WRITE_ZEROES (trim allowed), zero range with NO_HOLE, no TRIM; zeros read back"

# 2. An export that cannot zero (nozero filter: no WRITE_ZEROES offered,
# TRIM still is).
log="$TEST_TMP/nbd2.log"
start_nbdkit sock gw --filter=log --filter=nozero memory 64M logfile="$log"
start_exporter "$sock"
attach_loop
fill
mark
if fallocate -p -o $((MiB + 4096)) -l 8192 "$loop" 2>"$TEST_TMP/err"; then
  fail "fallocate -p succeeded on an export that cannot zero"
fi
grep -q "unsupported\|not supported" "$TEST_TMP/err" || fail "fallocate -p: not EOPNOTSUPP: $(cat "$TEST_TMP/err")"
check "after the refused fallocate -p"
[ -z "$(sent Trim)" ] || fail "a hole punch went out as NBD TRIM: $(sent Trim)"
fallocate -z -o $((2 * MiB + 1024)) -l 4096 "$loop" || fail "fallocate -z failed (no fallback to writing zeros)"
zeroed $((2 * MiB + 1024)) 4096
blkdiscard -z -o $((3 * MiB)) -l 65536 "$loop" || fail "blkdiscard -z failed (no fallback to writing zeros)"
zeroed $((3 * MiB)) 65536
check "after fallocate -z and blkdiscard -z"
[ -z "$(sent Trim)$(sent Zero)" ] || fail "TRIM or WRITE_ZEROES sent to an export that cannot zero"
sent Write | grep -q . || fail "the zeros were not written"
assert_torn_down
pass "cannot zero: fallocate -p refused (EOPNOTSUPP, bytes unchanged), fallocate -z / blkdiscard -z fell back to written zeros"
