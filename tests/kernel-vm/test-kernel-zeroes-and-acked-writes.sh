#!/usr/bin/env bash
# Two data-safety promises on the kernel attach path (`rbdgw map
# --attach=kernel`: gateway -> kernel NBD over netlink -> dm-crypt for an
# encrypted volume), in a real kernel, one VM boot with its own cluster:
#
# 1. A zeroed range reads back as zeros. On a raw-block map (no --mount) of
#    (a) an unencrypted volume (/dev/nbdN) and (b) an encrypted one
#    (/dev/mapper/luks-ID), filled with random data: `fallocate -p`,
#    `fallocate -z` and `blkdiscard -z` of ranges not aligned to the RBD
#    object size (4 MiB), inside an object, straddling a boundary and
#    covering a whole object, each followed by an O_DIRECT read of the
#    device from 1 MiB before to 1 MiB after the range (of all 40 MiB after
#    the last one): the range is zeros and every other byte is unchanged.
#    `fallocate -p` may instead be refused with EOPNOTSUPP (the kernel then
#    leaves the bytes as they were, and ext4 falls back to writing zeros);
#    it must never succeed and leave the old bytes. Plain `blkdiscard`
#    promises no content, but must change nothing around the range; on
#    dm-crypt it reaches RADOS only because the mapping has allow_discards,
#    so the table must have it and the discarded whole object must be gone
#    from the image (rbd diff), on both volumes. After the unmap, the plain
#    image's `rbd export` and the encrypted volume mapped again hold the
#    expected bytes.
# 2. A write the gateway acknowledged is in RADOS: the guest's OSD is
#    stopped (SIGSTOP), a writer issues O_DIRECT writes on /dev/nbdN, the
#    gateway is killed (-9), the OSD resumed, and RADOS is read with librbd
#    (python3-rbd, no gateway): every acknowledged write is there. Then
#    `rbdgw reattach` (nbd_reconnect): the writes the kernel held during
#    its dead-connection timeout complete, and all of them are in RADOS.
#
# The userspace half of both is tests/e2e/cli/test-cli-zeroed-range-reads-zeros.sh
# and test-cli-acked-write-survives-gateway-kill.sh. If NBDKIT is set on the
# host (the gateway binary rbdgw starts), the guest uses it too.
source "${RBDGW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/tests/lib/functions.sh"

for f in "$RBDGW_PLUGIN" "$RBDGW_BUILD_DIR/csi-shim/cli/rbdgw" "$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse"; do
  [ -e "$f" ] || fail "$f not built (build nbdkit-rbd-plugin, rbdgw-cli and rbdgw-fuse)"
done

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  rc=0
  "$RBDGW_SOURCE_DIR/tests/kernel-vm/run-in-vm.sh" --mem 2048 --timeout 900 \
    ${NBDKIT:+--env "NBDKIT=$NBDKIT"} "$0" || rc=$?
  exit "$rc"
fi

# --- in the guest ----------------------------------------------------------------
requires which fallocate blkdiscard blockdev dmsetup jq /usr/bin/python3
/usr/bin/python3 -c 'import rados, rbd' 2>/dev/null || { echo "python3-rbd missing" >&2; exit 77; }
modprobe nbd
modprobe dm-crypt
modprobe fuse  # /dev/fuse, which cli-functions.sh requires (unused on the kernel path)
cluster=$TEST_TMP/cluster
start=$(date +%s)
eval "$(CEPH_CLUSTER_TIMEOUT=600 CEPH_CLUSTER_CLI_TIMEOUT=300 "$RBDGW_SOURCE_DIR/tests/cluster/ceph-cluster.sh" start "$cluster")"
cleanup_fn "'$RBDGW_SOURCE_DIR/tests/cluster/ceph-cluster.sh' stop '$cluster'"
echo "cluster up in the guest in $(( $(date +%s) - start )) s"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

MiB=$((1 << 20))
obj=$((4 * MiB))     # RBD object size (rbd create's default)
span=$((40 * MiB))   # the part of each device the test writes and checks (36-40 MiB untouched)
printf 'kernel-zeroes-%s' "$RANDOM$RANDOM" >"$TEST_TMP/pass"  # no newline: the same bytes on every reading
chmod 600 "$TEST_TMP/pass"
errors=0
bad() { echo "$TEST_NAME: FAIL: $*" >&2; errors=$((errors + 1)); }

# Kernel-path leftovers (assert_clean covers mounts, processes, the run root).
assert_kernel_clean() {
  assert_clean
  if ls /dev/mapper/luks-* >/dev/null 2>&1; then fail "dm-crypt mapping left behind: $(ls /dev/mapper/luks-*)"; fi
  if ls /sys/block/nbd*/pid >/dev/null 2>&1; then fail "nbd device left connected: $(ls /sys/block/nbd*/pid)"; fi
}

# device_matches DEV WHAT [OFF LEN]: DEV (read with O_DIRECT, past any page
# cache) equals $TEST_TMP/expect, in the first $span bytes, or with OFF/LEN
# in the whole MiBs from 1 MiB before OFF to 1 MiB after OFF+LEN (reads are
# slow under TCG: the whole span is read after the fill and at the end). On
# a mismatch, names the first differing byte and takes the device's bytes
# as the new expectation, so that each later operation is judged on its own.
device_matches() {
  local dev=$1 what=$2 from=0 to=$span diff
  if [ $# -ge 4 ]; then
    from=$(( $3 > MiB ? ($3 - MiB) / MiB * MiB : 0 ))
    to=$(( ($3 + $4 + 2 * MiB - 1) / MiB * MiB ))
    [ "$to" -le "$span" ] || to=$span
  fi
  dd if="$dev" bs=1M skip=$((from / MiB)) count=$(((to - from) / MiB)) iflag=direct status=none >"$TEST_TMP/got"
  if diff=$(cmp -n $((to - from)) -i "$from:0" "$TEST_TMP/expect" "$TEST_TMP/got" 2>&1); then return 0; fi
  bad "$what: the device differs from the expected bytes in [$from, $to): ${diff##* differ: } of the range (md5 expected $(dd if="$TEST_TMP/expect" bs=1M skip=$((from / MiB)) count=$(((to - from) / MiB)) status=none | md5sum | cut -c1-12), got $(md5sum <"$TEST_TMP/got" | cut -c1-12))"
  dd if="$TEST_TMP/got" of="$TEST_TMP/expect" bs=1M seek=$((from / MiB)) conv=notrunc status=none
  return 1
}

# expect_from SRC SRC_OFF OFF LEN: the range OFF/LEN of the local copy set
# to SRC's bytes at SRC_OFF.
expect_from() {
  dd if="$1" of="$TEST_TMP/expect" bs=512 skip=$(($2 / 512)) seek=$(($3 / 512)) count=$(($4 / 512)) \
    conv=notrunc status=none
}

# zero_op DEV WHAT OFF LEN CMD...: runs CMD (with -o OFF -l LEN DEV
# appended); the range must read zeros and nothing around it may change.
# Only `fallocate -p` may be refused (EOPNOTSUPP), and then nothing may change.
zero_op() {
  local dev=$1 what=$2 off=$3 len=$4
  shift 4
  local label="$what: $* -o $off -l $len"
  if ! "$@" -o "$off" -l "$len" "$dev" 2>"$TEST_TMP/op.err"; then
    # util-linux says "keep size mode is unsupported" for EOPNOTSUPP with -p.
    if [ "$*" = "fallocate -p" ] && grep -qE "unsupported|Operation not supported" "$TEST_TMP/op.err"; then
      device_matches "$dev" "$label (refused)" "$off" "$len" || return 0
      pass "$label: refused (EOPNOTSUPP), nothing changed"
      return 0
    fi
    bad "$label failed: $(cat "$TEST_TMP/op.err")"
    return 0
  fi
  expect_from /dev/zero 0 "$off" "$len"
  device_matches "$dev" "$label" "$off" "$len" || return 0
  pass "$label: the range reads zeros, the bytes around it are unchanged"
}

# discard_op DEV WHAT OFF LEN: plain blkdiscard; the range may read anything,
# every byte around it must be unchanged.
discard_op() {
  local dev=$1 what=$2 off=$3 len=$4 L
  local label="$what: blkdiscard -o $off -l $len"
  L=$(blockdev --getss "$dev")
  if ! blkdiscard -o "$off" -l "$len" "$dev" 2>"$TEST_TMP/op.err"; then
    bad "$label failed: $(cat "$TEST_TMP/op.err")"
    return 0
  fi
  dd if="$dev" bs="$L" skip=$((off / L)) count=$((len / L)) iflag=direct status=none >"$TEST_TMP/range"
  expect_from "$TEST_TMP/range" 0 "$off" "$len"
  device_matches "$dev" "$label" "$off" "$len" || return 0
  pass "$label: the bytes around the range are unchanged"
}

# run_ops DEV WHAT: the operations, on a device filled with random data.
# Offsets are multiples of the device's logical block size L (512 on nbd,
# the LUKS2 sector, 4096, on dm-crypt: the kernel refuses anything finer).
run_ops() {
  local dev=$1 what=$2 L q t0=$SECONDS
  L=$(blockdev --getss "$dev")
  q=/sys/dev/block/$((0x$(stat -L -c %t "$dev"))):$((0x$(stat -L -c %T "$dev")))/queue
  echo "$what: $dev, logical block size $L, write_zeroes_max_bytes $(cat "$q/write_zeroes_max_bytes"), discard_max_bytes $(cat "$q/discard_max_bytes")"
  head -c "$span" /dev/urandom >"$TEST_TMP/expect"
  dd if="$TEST_TMP/expect" of="$dev" bs=1M oflag=direct conv=fsync status=none
  # Inside the first object (the issue's reproducer: 8 KiB at 1 MiB + 4 KiB).
  zero_op "$dev" "$what" $((MiB + 4096)) 8192 fallocate -p
  zero_op "$dev" "$what" $((2 * MiB + L)) $((3 * L)) fallocate -z
  zero_op "$dev" "$what" $((3 * MiB + L)) $((2 * L)) blkdiscard -z
  # Straddling an object boundary.
  zero_op "$dev" "$what" $((obj - 3 * L)) $((5 * L)) fallocate -p
  zero_op "$dev" "$what" $((2 * obj - 3 * L)) $((5 * L)) fallocate -z
  zero_op "$dev" "$what" $((3 * obj - 3 * L)) $((5 * L)) blkdiscard -z
  # A whole object (16, 24, 32 MiB) and a block of each neighbour.
  zero_op "$dev" "$what" $((4 * obj - L)) $((obj + 2 * L)) fallocate -p
  zero_op "$dev" "$what" $((6 * obj - L)) $((obj + 2 * L)) fallocate -z
  zero_op "$dev" "$what" $((8 * obj - L)) $((obj + 2 * L)) blkdiscard -z
  # Plain discard of a whole object (20-24 MiB) and of a partial range.
  discard_op "$dev" "$what" $((5 * obj)) "$obj"
  discard_op "$dev" "$what" $((5 * MiB + 3 * L)) $((5 * L))
  device_matches "$dev" "$what: after all operations" && pass "$what: the whole span holds the expected bytes"
  echo "$what: fill and operations took $((SECONDS - t0)) s"
}

# object_gone IMAGE OFF WHAT: rbd diff lists no extent of IMAGE at raw
# offset OFF (the discarded object was removed on the OSDs).
object_gone() {
  local extents
  extents=$(rbd_cli diff --format json "rbd/$1" |
    jq -c --argjson o "$2" '[.[] | select(.offset < $o + 4194304 and .offset + .length > $o)]')
  [ "$extents" = "[]" ] || { bad "$3: the discarded object at $2 is still in the image: $extents"; return 0; }
  pass "$3: the discarded object at raw offset $2 is gone from the image"
}

map_raw() { cli map "rbd/$1" --conf "$CEPH_CONF" --attach kernel "${@:2}"; }

# --- 1a. unencrypted: /dev/nbdN -----------------------------------------------------
new_image plain 64M
dev=$(map_raw "$plain")
[[ $dev == /dev/nbd[0-9]* ]] && [ -b "$dev" ] || fail "map --attach=kernel printed '$dev', not /dev/nbdN"
[ "$(cat "/sys/block/${dev#/dev/}/queue/discard_max_bytes")" -gt 0 ] || bad "$dev does not accept discards"
run_ops "$dev" plain
cli unmap "$dev"
assert_kernel_clean
object_gone "$plain" $((5 * obj)) plain
rbd_cli export --no-progress "rbd/$plain" "$TEST_TMP/raw"
if diff=$(cmp -n "$span" "$TEST_TMP/raw" "$TEST_TMP/expect" 2>&1); then
  pass "plain: after the unmap, rbd export holds the expected bytes"
else
  bad "plain: rbd export differs from the expected bytes: $diff"
fi
rm -f "$TEST_TMP/raw"

# --- 1b. encrypted: dm-crypt on /dev/nbdN (LUKS2-formatted on this first map) -------
new_image enc 64M
dev=$(map_raw "$enc" --encrypted --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000)
[ "$dev" = "/dev/mapper/luks-rbd.$enc" ] && [ -b "$dev" ] || fail "encrypted map printed '$dev'"
table=$(dmsetup table "luks-rbd.$enc")
echo "dm table (key left out): $(awk '{ $5 = "<key>"; print }' <<<"$table")"
[[ $table == *allow_discards* ]] || bad "encrypted: the dm-crypt table has no allow_discards, so a discard does not pass down"
run_ops "$dev" encrypted
cli unmap "$dev"
assert_kernel_clean
rbd_cli export --no-progress "rbd/$enc" "$TEST_TMP/raw"
data_off=$(/usr/bin/python3 -c 'import sys, json; h = open(sys.argv[1], "rb").read(16384); print(json.loads(h[4096:].split(b"\0")[0])["segments"]["0"]["offset"])' "$TEST_TMP/raw")
rm -f "$TEST_TMP/raw"
object_gone "$enc" $((data_off + 5 * obj)) encrypted
dev=$(map_raw "$enc" --encrypted --passphrase-file "$TEST_TMP/pass")
device_matches "$dev" "encrypted, mapped again" && pass "encrypted: after unmap and map the device holds the same bytes"
cli unmap "$dev"
assert_kernel_clean

# --- 2. acknowledged writes survive a kill -9 of the gateway ------------------------
osd=$(cat "$(dirname "$CEPH_CONF")/run/osd.0.pid") || fail "no OSD pid file"
cleanup_fn "kill -CONT $osd"
new_image acked 64M
stash="$RUN_ROOT/rbd.$acked/stash.json"
dev=$(map_raw "$acked")
[[ $dev == /dev/nbd[0-9]* ]] || fail "map printed '$dev'"
# A first write and flush: librbd's cache (if any) leaves its
# writethrough-until-flush mode.
head -c 1M /dev/urandom | dd of="$dev" oflag=direct conv=fsync bs=1M status=none

acked_writes="$RBDGW_SOURCE_DIR/tests/lib/acked_writes.py"

kill -STOP "$osd"
/usr/bin/python3 "$acked_writes" write "$dev" $((4 << 20)) 32 "$TEST_TMP/acked" &
writer=$!
cleanup_fn "kill -9 $writer"
sleep 3
gw=$(jq -r .gateway.pid "$stash")
kill -9 "$gw"
for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
kill -0 "$gw" 2>/dev/null && fail "gateway $gw did not die"
kill -CONT "$osd"
echo "gateway killed after $(wc -l <"$TEST_TMP/acked") acknowledged writes"
/usr/bin/python3 "$acked_writes" check "$CEPH_CONF" "$acked" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "acknowledged writes lost with the gateway: $(cat "$TEST_TMP/check")"
pass "acknowledged writes are in RADOS after a kill -9 of the gateway: $(cat "$TEST_TMP/check")"

kill -0 "$writer" 2>/dev/null || { wait "$writer"; fail "the writer ended while the gateway was dead (rc $?)"; }
t0=$(date +%s)
cli reattach >/dev/null || fail "reattach failed"
wait "$writer" || fail "the writer failed after the reattach"
echo "writer done $(( $(date +%s) - t0 )) s after the reattach started"
[ "$(wc -l <"$TEST_TMP/acked")" = 32 ] || fail "not every write completed after the reattach"
/usr/bin/python3 "$acked_writes" check "$CEPH_CONF" "$acked" $((4 << 20)) "$TEST_TMP/acked" \
  >"$TEST_TMP/check" 2>&1 || fail "writes lost across the reattach: $(cat "$TEST_TMP/check")"
pass "writes in flight complete after the reattach: $(cat "$TEST_TMP/check")"
if dmesg | grep -E "I/O error|blk_update_request" | grep -q nbd; then
  dmesg | grep nbd >&2
  bad "the kernel logged an I/O error on an nbd device"
fi
cli unmap "$dev"
assert_kernel_clean

[ "$errors" = 0 ] || fail "$errors check(s) failed"
pass "kernel path: zeroed ranges read back zeros; acknowledged writes survive a gateway kill"
