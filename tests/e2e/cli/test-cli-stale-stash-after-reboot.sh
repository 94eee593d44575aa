#!/usr/bin/env bash
# After a reboot, a mapped volume's stash is stale, not stuck (issue 10 item
# 2). A run root on persistent disk keeps the stash across a reboot while the
# processes, mounts, loop devices and the secret store (tmpfs) are gone; the
# old code found a "complete" stash, tried to re-adopt it and failed on every
# retry (ENOKEY: no passphrase in the new boot's secret store). Simulated:
# map an encrypted volume with a filesystem, write data, then kill -9 the
# gateway and the exporter, lazy-unmount, detach the loop device, remove the
# secret store, keep the run dir's files (on disk they survive) and give the
# machine a new boot id ($RBDGW_BOOT_ID_FILE, inherited by every process).
# Then:
#   - `rbdgw status` and `rbdgw reattach` say "stale: from an earlier boot";
#   - `rbdgw map` of the volume logs that the stash is stale, maps it afresh,
#     and the data is there;
#   - the pids and the loop device the stale stash names, which after a real
#     reboot may belong to someone else (here: decoy processes and a decoy
#     loop device of this test), are left alone;
#   - unmap leaves nothing behind.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which jq fusermount3
requires test "$(stat -f -c %T /dev/shm)" = tmpfs

export RBDGW_BOOT_ID_FILE="$TEST_TMP/boot_id"
cat /proc/sys/kernel/random/boot_id >"$RBDGW_BOOT_ID_FILE"
RBDGW_SECRET_DIR=$(mktemp -d /dev/shm/rbdgw-reboot-secrets.XXXXXX)
export RBDGW_SECRET_DIR
cleanup_fn "rm -rf '$RBDGW_SECRET_DIR'"
printf '%s' "reboot test passphrase $RANDOM$RANDOM" >"$TEST_TMP/pass"
chmod 600 "$TEST_TMP/pass"
enc=(--encrypted --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000)

new_image img 128M
vol="rbd.$img"
stash="$RUN_ROOT/$vol/stash.json"
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
cli map "rbd/$img" --conf "$CEPH_CONF" "${enc[@]}" --mount "$mnt" --attach userspace >/dev/null 2>"$TEST_TMP/map1.err" ||
  { cat "$TEST_TMP/map1.err" >&2; fail "first map failed"; }
head -c 4M /dev/urandom >"$TEST_TMP/data"
cp "$TEST_TMP/data" "$mnt/data"
sync -f "$mnt/data"

# --- the reboot ---------------------------------------------------------------
gw=$(jq -r .gateway.pid "$stash")
fuse=$(jq -r .fuse.pid "$stash")
fuse_file=$(jq -r .fuse_file "$stash")
loop=$(jq -r .loop_device "$stash")
kill -9 "$gw" "$fuse"
for p in "$gw" "$fuse"; do
  for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
done
umount -l "$mnt"
fusermount3 -u -z "$fuse_file" 2>/dev/null || umount -l "$fuse_file"
losetup -d "$loop" 2>/dev/null || true
for ((i = 0; i < 100; i++)); do losetup -a | grep -q "$RUN_ROOT" || break; sleep 0.1; done
rm -rf "$RBDGW_SECRET_DIR"
cat /proc/sys/kernel/random/uuid >"$RBDGW_BOOT_ID_FILE"

# What the stale stash names now belongs to someone else: two decoy
# processes and a decoy loop device.
sleep 600 &
decoy_gw=$!
sleep 600 &
decoy_fuse=$!
cleanup_fn "kill $decoy_gw $decoy_fuse 2>/dev/null"
start_time() { awk '{print $22}' "/proc/$1/stat"; }
truncate -s 8M "$TEST_TMP/decoy.img"
decoy_loop=$(losetup --find --show "$TEST_TMP/decoy.img")
cleanup_fn "losetup -d '$decoy_loop' 2>/dev/null"
jq --argjson gp "$decoy_gw" --argjson gs "$(start_time "$decoy_gw")" \
  --argjson fp "$decoy_fuse" --argjson fs "$(start_time "$decoy_fuse")" --arg loop "$decoy_loop" \
  '.gateway = {pid: $gp, start_time: $gs} | .fuse = {pid: $fp, start_time: $fs} |
   .loop_device = $loop | .device = $loop' "$stash" >"$TEST_TMP/stash.json"
cat "$TEST_TMP/stash.json" >"$stash"

# --- after it -----------------------------------------------------------------
expect_status 1 cli status "$vol"
grep -q "stale: from an earlier boot" "$TEST_TMP/out" ||
  { cat "$TEST_TMP/out" >&2; fail "status does not say the stash is stale"; }
expect_status 1 cli reattach "$vol"
grep -q "stale: from an earlier boot" "$TEST_TMP/err" || fail "reattach does not say the stash is stale"
pass "status and reattach say: stale, from an earlier boot"

cli map "rbd/$img" --conf "$CEPH_CONF" "${enc[@]}" --mount "$mnt" --attach userspace >/dev/null 2>"$TEST_TMP/map2.err" ||
  { cat "$TEST_TMP/map2.err" >&2; fail "map after the reboot failed"; }
grep -q "earlier boot" "$TEST_TMP/map2.err" ||
  { cat "$TEST_TMP/map2.err" >&2; fail "map did not log that it found a stale stash"; }
cmp "$TEST_TMP/data" "$mnt/data" || fail "the data written before the reboot differs"
kill -0 "$decoy_gw" && kill -0 "$decoy_fuse" || fail "a process named by the stale stash was killed"
losetup "$decoy_loop" | grep -q "$TEST_TMP/decoy.img" || fail "the loop device named by the stale stash was detached"
[ "$(jq -r .boot_id "$stash")" = "$(cat "$RBDGW_BOOT_ID_FILE")" ] || fail "the new stash does not record this boot's id"
cli status "$vol" >/dev/null || fail "volume not healthy after the map"
pass "mapped afresh after the reboot; data intact; the stale stash's pids and loop device untouched"

echo after >"$mnt/after"
sync -f "$mnt"
cli unmap "$mnt"
kill -0 "$decoy_gw" && kill -0 "$decoy_fuse" || fail "unmap killed a process the stale stash named"
losetup -d "$decoy_loop"
kill "$decoy_gw" "$decoy_fuse"
assert_clean
pass "unmap leaves nothing behind"
