#!/usr/bin/env bash
# A zeroed range reads back as zeros on a raw-block `rbdgw map` (userspace
# path), plain and encrypted (luks2 filter): `fallocate -p` (what ext4's
# zeroout and the loop driver's write-zeroes-with-unmap become: a hole
# punch on the FUSE file), `fallocate -z`, `blkdiscard -z` and plain
# `blkdiscard`, on ranges that are not aligned to RBD objects (4 MiB) nor
# to the LUKS2 sector (4096), including ones that straddle an object
# boundary. Every byte around each range is unchanged (the whole device is
# compared with a local copy after each operation, and after an unmap and a
# new map, i.e. as RADOS holds it). On the encrypted volume a discard is not
# passed down as a trim (the userspace gateway runs the filter without
# allow-discards): the ciphertext under the range is still there.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which fallocate blkdiscard

MiB=$((1 << 20))
span=$((24 * MiB))  # the part of the device the test writes and checks
printf 'zeroed-range-%s' "$RANDOM$RANDOM" >"$TEST_TMP/pass"  # no newline: the same bytes on every reading
chmod 600 "$TEST_TMP/pass"
errors=0
bad() { echo "$TEST_NAME: FAIL: $*" >&2; errors=$((errors + 1)); }

# device_matches DEV WHAT: the first $span bytes of DEV (read with O_DIRECT,
# past any page cache) equal $TEST_TMP/expect; on a mismatch, names the
# first differing byte and takes the device's bytes as the new expectation,
# so that each later operation is judged on its own.
device_matches() {
  dd if="$1" bs=1M count=$((span / MiB)) iflag=direct status=none >"$TEST_TMP/got"
  local diff
  if diff=$(cmp "$TEST_TMP/expect" "$TEST_TMP/got" 2>&1); then return 0; fi
  bad "$2: the device differs from the expected bytes: ${diff##* differ: } (md5 expected $(md5sum <"$TEST_TMP/expect" | cut -c1-12), got $(md5sum <"$TEST_TMP/got" | cut -c1-12))"
  cp "$TEST_TMP/got" "$TEST_TMP/expect"
  return 1
}

# expect_zeroed OFF LEN: the same range, zeroed in the local copy.
expect_zeroed() {
  dd if=/dev/zero of="$TEST_TMP/expect" bs=512 seek=$(($1 / 512)) count=$(($2 / 512)) conv=notrunc status=none
}

# zero_op DEV WHAT OFF LEN CMD...: runs CMD (with -o OFF -l LEN DEV
# appended) and checks that the range reads zeros and nothing else changed.
zero_op() {
  local dev=$1 what=$2 off=$3 len=$4
  shift 4
  local label="$what: $* -o $off -l $len"
  if ! "$@" -o "$off" -l "$len" "$dev" 2>"$TEST_TMP/op.err"; then
    bad "$label failed: $(cat "$TEST_TMP/op.err")"
    return 0
  fi
  expect_zeroed "$off" "$len"
  device_matches "$dev" "$label" || return 0
  pass "$label: the range reads zeros, the bytes around it are unchanged"
}

# refused_op DEV WHAT OFF LEN CMD...: CMD is refused (no discard on the
# device) and the device's bytes are unchanged.
refused_op() {
  local dev=$1 what=$2 off=$3 len=$4
  shift 4
  local label="$what: $* -o $off -l $len"
  if "$@" -o "$off" -l "$len" "$dev" 2>"$TEST_TMP/op.err"; then
    bad "$label succeeded on a device without discards"
    return 0
  fi
  grep -q "not supported\|unsupported" "$TEST_TMP/op.err" || bad "$label: unexpected error: $(cat "$TEST_TMP/op.err")"
  device_matches "$dev" "$label" || return 0
  pass "$label: refused (no discards), the bytes are unchanged"
}

# run_ops DEV WHAT: the operations, on a device filled with random data. On
# an encrypted volume the loop device takes no discards (each would write
# encrypted zeros: lib/attach/step_userspace.cpp), so a hole punch and a
# plain discard are refused there and the kernel's zeroout writes zeros.
run_ops() {
  local dev=$1 what=$2 punch=zero_op
  [ "$what" = encrypted ] && punch=refused_op
  head -c "$span" /dev/urandom >"$TEST_TMP/expect"
  dd if="$TEST_TMP/expect" of="$dev" bs=1M oflag=direct conv=fsync status=none
  device_matches "$dev" "$what: after the fill" || return 0
  # The reproducer of the issue: 8 KiB inside the first object.
  $punch "$dev" "$what" $((MiB + 4096)) 8192 fallocate -p
  # Straddling the object boundary at 4 MiB, not 4096-aligned.
  $punch "$dev" "$what" $((4 * MiB - 3 * 512)) $((5 * 512)) fallocate -p
  # A whole object and parts of its neighbours.
  $punch "$dev" "$what" $((7 * MiB + 512)) $((6 * MiB)) fallocate -p
  zero_op "$dev" "$what" $((14 * MiB + 1024)) $((3 * 512)) fallocate -z
  zero_op "$dev" "$what" $((16 * MiB - 4096)) $((8192 + 512)) blkdiscard -z
  # Plain discard: the loop driver hands it to the file as the same hole
  # punch as write-zeroes-with-unmap, so the exporter must zero it too.
  $punch "$dev" "$what" $((18 * MiB + 2048)) $((65536)) blkdiscard
}

map_raw() { cli map "rbd/$1" --conf "$CEPH_CONF" --attach userspace "${@:2}"; }

# Plain volume.
new_image plain 64M
dev=$(map_raw "$plain")
[ -b "$dev" ] || fail "map printed '$dev', not a block device"
run_ops "$dev" plain
cli unmap "$dev"
assert_clean
dev=$(map_raw "$plain")
device_matches "$dev" "plain, mapped again" && pass "plain: after unmap and map (from RADOS) the device holds the same bytes"
cli unmap "$dev"
rbd_cli export --no-progress "rbd/$plain" "$TEST_TMP/raw"
head -c "$span" "$TEST_TMP/raw" | cmp - "$TEST_TMP/expect" >/dev/null ||
  bad "plain: rbd export differs from the expected bytes"
rm -f "$TEST_TMP/raw"
assert_clean

# Encrypted volume (LUKS2-formatted on this first map; data segment at 16 MiB).
new_image enc 64M
dev=$(map_raw "$enc" --encrypted --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000)
[ -b "$dev" ] || fail "encrypted map printed '$dev', not a block device"
run_ops "$dev" encrypted
cli unmap "$dev"
assert_clean
dev=$(map_raw "$enc" --encrypted --passphrase-file "$TEST_TMP/pass")
device_matches "$dev" "encrypted, mapped again" && pass "encrypted: after unmap and map the device holds the same bytes"
cli unmap "$dev"
assert_clean
# The plaintext range of the plain discard, in the raw image: ciphertext
# (encrypted zeros), not a trimmed (all-zero) range.
rbd_cli export --no-progress "rbd/$enc" "$TEST_TMP/raw"
data_off=$(python3 -c 'import sys, json; h = open(sys.argv[1], "rb").read(16384); print(json.loads(h[4096:].split(b"\0")[0])["segments"]["0"]["offset"])' "$TEST_TMP/raw")
if dd if="$TEST_TMP/raw" bs=512 skip=$(((data_off + 18 * MiB + 2048) / 512)) count=128 status=none |
  cmp -s - <(head -c 65536 /dev/zero); then
  bad "encrypted: the refused discard's range is all zeros in the raw image (a trim went down)"
fi
rm -f "$TEST_TMP/raw"

[ "$errors" = 0 ] || fail "$errors check(s) failed"
pass "zeroed ranges read back as zeros on plain and encrypted raw maps"
