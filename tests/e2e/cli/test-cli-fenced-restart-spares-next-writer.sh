#!/usr/bin/env bash
# A fenced node must never write over the next writer, even after its fenced
# gateway died. Node A maps and has unflushed data in its page cache; its
# gateway is fenced (rbd lock rm blocklists it, as ControllerUnpublish does);
# node B maps, writes and syncs acknowledged data, unmaps (the lock is free);
# A's fenced gateway dies (kill -9: OOM, crash, operator); A's unmap restarts
# a gateway "to flush" -- a new client, not blocklisted, which takes the free
# lock and writes A's stale cache over B's data. Found by review: B's
# acknowledged files were gone from the image (fsck clean, A's view only).
# Now A's restart is refused (ESTALE) naming B, and only a forced unmap,
# which discards A's stale writes, tears A's volume down.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which jq debugfs
RUN_B="$TEST_TMP/runB"
cliB() { "$RBDGW_CLI" --run-root "$RUN_B" "$@"; }
new_image img 128M
vol="rbd.$img"
mntA="$TEST_TMP/mntA" mntB="$TEST_TMP/mntB"
mkdir -p "$mntA" "$mntB"
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace --node node-a >/dev/null
echo base >"$mntA/base"
sync -f "$mntA"
gwA=$(jq -r .gateway.pid "$RUN_ROOT/$vol/stash.json")
head -c 8M /dev/urandom >"$mntA/dirtyA"   # not synced: in A's page cache
read -r _ cookie_n locker < <(rbd_cli lock ls "rbd/$img" | awk '/auto/{print "x", $3, $1}')
rbd_cli lock rm "rbd/$img" "auto $cookie_n" "$locker"   # the fence (blocklists A's gateway)
cliB map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntB" --attach userspace --node node-b >/dev/null
echo "acked on B" >"$mntB/fromB"
sync -f "$mntB"
cliB unmap "$vol"
kill -9 "$gwA"
if cli unmap "$vol" 2>"$TEST_TMP/unmapA.err"; then
  fail "A's unmap succeeded after a restart of its fenced gateway"
fi
grep -q "node-b" "$TEST_TMP/unmapA.err" && grep -q "stale" "$TEST_TMP/unmapA.err" ||
  fail "A's refused unmap does not say that B held the volume since: $(cat "$TEST_TMP/unmapA.err")"
pass "A's unmap refuses to restart its fenced gateway: $(grep -o 'lost the exclusive lock.*' "$TEST_TMP/unmapA.err" | cut -c1-160)"
if cli reattach >"$TEST_TMP/reattach.out" 2>&1; then
  fail "reattach restarted A's fenced gateway: $(cat "$TEST_TMP/reattach.out")"
fi
cli unmap --force "$vol" >/dev/null 2>&1 || fail "A's forced unmap failed"
rbd_cli export "rbd/$img" "$TEST_TMP/img" --no-progress
debugfs -R "cat /fromB" "$TEST_TMP/img" 2>/dev/null | grep -q "acked on B" ||
  fail "B's acknowledged data is gone: the fenced node's restarted gateway wrote its stale cache over it ($(debugfs -R 'ls /' "$TEST_TMP/img" 2>/dev/null | tr -s ' \n' ' '))"
pass "the fenced node's restart did not write over B's data"
assert_clean
