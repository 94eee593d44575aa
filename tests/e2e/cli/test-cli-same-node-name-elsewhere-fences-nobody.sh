#!/usr/bin/env bash
# Two machines that carry the same node name (the CLI's default is the host
# name; cloned VMs often share one) must not fence each other's live writer
# (issue 10 item 1: "a live gateway on another node can never be fenced").
# The take-over rule counted a holder record with this node's name and
# another boot id as "this node rebooted since": provably dead. But another
# machine under the same name has another boot id too, and its gateway is
# alive and watching the image. Found by review: the second machine's map
# broke the first one's lock at once (librbd blocklisted it, its writes
# failed with EIO). Simulated: machine 2 is a second run root with another
# boot id ($RBDGW_BOOT_ID_FILE) and the same --node.
#   - machine 2's read-write map is refused (exit 4) naming the holder;
#   - machine 1's gateway keeps the lock and writes on;
#   - nothing is left of machine 2's attempt.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which jq

RUN_2="$TEST_TMP/run2"
cat /proc/sys/kernel/random/uuid >"$TEST_TMP/boot2"
cli2() { RBDGW_BOOT_ID_FILE="$TEST_TMP/boot2" "$RBDGW_CLI" --run-root "$RUN_2" "$@"; }
_unmap_2() {
  local s
  for s in "$RUN_2"/*/stash.json; do
    [ -e "$s" ] || continue
    cli2 unmap --force "$(basename "$(dirname "$s")")" || true
  done
}
cleanup_fn _unmap_2

new_image img 128M
vol="rbd.$img"
mnt1="$TEST_TMP/mnt1" mnt2="$TEST_TMP/mnt2"
mkdir -p "$mnt1" "$mnt2"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt1" --attach userspace --node samehost >/dev/null
echo one >"$mnt1/f"
sync -f "$mnt1"
client1=$(jq -r .gateway_client "$RUN_ROOT/$vol/stash.json")
[ -n "$client1" ] && [ "$client1" != null ] || fail "no gateway client in the stash"

expect_status 4 cli2 map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt2" --attach userspace --node samehost
grep -q "on node samehost" "$TEST_TMP/err" || fail "machine 2's refusal does not name the holder: $(cat "$TEST_TMP/err")"
if findmnt -n "$mnt2" >/dev/null; then fail "machine 2 mounted the volume"; fi
[ -z "$(ls -A "$RUN_2" 2>/dev/null)" ] || fail "machine 2's run root not empty: $(ls -lR "$RUN_2")"
pass "machine 2 (same node name, other boot id) refused: $(grep -o 'held by [^;]*' "$TEST_TMP/err" | head -1)"

rbd_cli lock ls "rbd/$img" | grep -qF "$client1" || fail "machine 1's gateway lost its lock: $(rbd_cli lock ls "rbd/$img")"
echo two >>"$mnt1/f"
sync -f "$mnt1" || fail "machine 1 can no longer write (fenced): $(tail -3 "$RUN_ROOT/$vol/gateway.log")"
[ "$(cat "$mnt1/f")" = "one
two" ] || fail "machine 1 reads: $(cat "$mnt1/f")"
cli status "$vol" >/dev/null || fail "machine 1 not healthy"
pass "machine 1 keeps its lock and writes on"
cli unmap "$vol"
assert_clean
