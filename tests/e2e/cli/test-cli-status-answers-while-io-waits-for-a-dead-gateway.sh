#!/usr/bin/env bash
# The gateway of a userspace volume dies with more writes in flight
# than the FUSE exporter has threads: every exporter thread then waits in
# its reconnect for a gateway that is gone. `rbdgw status` must still answer
# at once (it reported nothing for 300 s: it stat'ed the FUSE file, which
# waits for a free exporter thread), and `rbdgw reattach` must repair the
# volume so that every write in flight completes and the data is intact.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

new_image img 256M
stash="$RUN_ROOT/rbd.$img/stash.json"
dev=$(cli map "rbd/$img" --conf "$CEPH_CONF" --attach userspace)
head -c 1M /dev/urandom >"$TEST_TMP/chunk"

kill -9 "$(jq -r .gateway.pid "$stash")"
# 48 direct writers (the exporter has 16 threads), each to its own MiB of
# the device: each blocks in the FUSE file until a gateway answers again.
writers=()
for i in $(seq 1 48); do
  dd if="$TEST_TMP/chunk" of="$dev" bs=1M seek="$i" count=1 oflag=direct status=none &
  writers+=($!)
done
cleanup_fn "kill ${writers[*]} 2>/dev/null"
# Until every exporter thread waits in a reconnect (wchan other than
# fuse_dev_do_read: the threads reading requests from /dev/fuse are idle).
fuse_pid=$(jq -r .fuse.pid "$stash")
for _ in $(seq 1 100); do
  idle=$(for t in /proc/"$fuse_pid"/task/*; do cat "$t/wchan" 2>/dev/null; echo; done |
    grep -c '^fuse_dev_do_read$' || true)
  [ "$idle" = 0 ] && break
  sleep 0.2
done
[ "$idle" = 0 ] || fail "the exporter still has $idle idle threads with 48 writes in flight"

# Bounded only to turn a hang into a failure; it answers in well under a second.
rc=0
timeout 60 "$RBDGW_CLI" --run-root "$RUN_ROOT" status "rbd/$img" >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
[ "$rc" != 124 ] || fail "rbdgw status hung with the exporter's threads waiting for the dead gateway"
[ "$rc" = 1 ] || fail "rbdgw status exited $rc, expected 1: $(cat "$TEST_TMP/out" "$TEST_TMP/err")"
grep -q gateway-dead "$TEST_TMP/out" || fail "status does not report the dead gateway: $(cat "$TEST_TMP/out")"
pass "status answers while every exporter thread waits for the dead gateway"

rc=0
timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" reattach >"$TEST_TMP/reattach" 2>&1 || rc=$?
[ "$rc" = 0 ] || fail "reattach exited $rc: $(cat "$TEST_TMP/reattach")"
for p in "${writers[@]}"; do wait "$p" || fail "a write in flight across the kill failed"; done
for i in $(seq 1 48); do
  cmp -s "$TEST_TMP/chunk" <(dd if="$dev" bs=1M skip="$i" count=1 iflag=direct status=none) ||
    fail "MiB $i of $dev differs"
done
cli unmap "$dev"
assert_clean
pass "reattach completed all 48 writes in flight, data intact, nothing left behind"
