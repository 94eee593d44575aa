#!/usr/bin/env bash
# A gateway of a replaced node plugin pod (same node, same boot, another pid
# namespace we cannot see into) that was killed keeps the image's exclusive
# lock: the next gateway of this node takes it over once the dead client's
# watch is gone, never before (its process might be alive), and a gateway
# of another node never does.
# (Before: refused forever, "in another pid namespace": the volume needed an
# operator's rbd lock rm after every pod replacement.)
source "$(dirname "$0")/common.sh"

new_image img 16M

# The "old pod": the gateway in a pid namespace of its own, its own session.
sock="$TEST_TMP/old.sock"
setsid unshare --pid --fork --kill-child \
  nbdkit -f -U "$sock" "$RBDGW_PLUGIN" "rbd/$img" exclusive=true node=node-a \
  >"$TEST_TMP/old.log" 2>&1 &
old=$!
cleanup_fn "kill -9 -- -$old 2>/dev/null || true"
for _ in $(seq 300); do [ -S "$sock" ] && rbd_cli image-meta get "rbd/$img" rbdgw.io/holder >/dev/null 2>&1 && break; sleep 0.1; done
holder=$(rbd_cli image-meta get "rbd/$img" rbdgw.io/holder) || fail "the old pod's gateway wrote no holder record: $(cat "$TEST_TMP/old.log")"
client=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["client"])' "$holder")
[ "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["pid_ns"])' "$holder")" != "pid:[$(stat -L -c %i /proc/self/ns/pid)]" ] ||
  fail "the old gateway is in our pid namespace: the test does not test anything"
pass "the old pod's gateway holds the lock from another pid namespace ($client)"

# The pod is replaced: everything in it is killed, the lock stays.
kill -9 -- -"$old"
wait "$old" 2>/dev/null || true
rbd_cli lock ls --format json "rbd/$img" | grep -q "$client" || fail "the dead gateway's lock is gone already"

# Right away its watch is still there: refused, naming it and saying why.
expect_refusal "held by $client on node node-a" "rbd/$img" exclusive=true node=node-a

# Once the OSD dropped the dead client's watch (osd_client_watch_timeout).
for i in $(seq 90); do
  rbd_cli status --format json "rbd/$img" | grep -q "${client%%/*}/${client##*/}" || break
  sleep 1
done
rbd_cli status --format json "rbd/$img" | grep -q "${client##*/}" && fail "the dead client's watch did not lapse in 90 s"
pass "the dead client's watch lapsed after about $i s"

# Another node still never fences it.
expect_refusal "held by $client on node node-a" "rbd/$img" exclusive=true node=node-b

# This node's next gateway takes it over.
serve s2 p2 "rbd/$img" exclusive=true node=node-a
nbdsh -u "$(nbd_uri "$s2")" -c "h.pwrite(b'x' * 4096, 0); h.flush()" || fail "the new gateway did not take a write"
rbd_cli image-meta get "rbd/$img" rbdgw.io/holder | grep -q "\"pid\":$p2" || fail "the holder record does not name the new gateway"
rbd_cli lock ls --format json "rbd/$img" | grep -q "$client" && fail "the old client still holds the lock"
pass "this node's next gateway took the lock over from the replaced pod's dead gateway"
