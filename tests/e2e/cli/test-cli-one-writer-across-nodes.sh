#!/usr/bin/env bash
# One writer per volume across nodes (issue 10 item 1). Two "nodes" on this
# machine: separate run roots (stashes, run dirs) and node names.
# - A read-write map on B while A has the volume read-write is refused
#   (exit 4) naming node A, and leaves nothing on B; A keeps writing.
# - A read-only map on B while A writes is refused too (it would read a
#   filesystem changing under it); read-only maps on both work while no
#   writer has it, and a writer is refused while they read.
# - Two read-write maps at the same moment on A and B: exactly one wins, the
#   other is refused naming the winner's node and leaves nothing behind.
# - kill -9 of A's gateway, then a map on B: still refused (A may be alive
#   but cut off), with a message saying how to take it over; on A, a restart
#   of its own dead gateway takes the lock at once (no wait for its watch).
# (Before: B's refusal named no node, and the gateways held no lock: the
# reproducer in the issue had two gateways both writing.)
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

RUN_A="$TEST_TMP/runA" RUN_B="$TEST_TMP/runB"
cliA() { RBDGW_NODE_NAME=node-a "$RBDGW_CLI" --run-root "$RUN_A" "$@"; }
cliB() { RBDGW_NODE_NAME=node-b "$RBDGW_CLI" --run-root "$RUN_B" "$@"; }
_unmap_root() {
  local s
  for s in "$1"/*/stash.json; do
    [ -e "$s" ] || continue
    "$RBDGW_CLI" --run-root "$1" unmap --force "$(basename "$(dirname "$s")")" || true
  done
}
# assert_clean_on ROOT: nothing of that node's maps is left (as assert_clean,
# but only for what lives under ROOT and that node's mount point).
assert_clean_on() {
  local root=$1 mnt
  case $root in "$RUN_A") mnt=$mntA ;; "$RUN_B") mnt=$mntB ;; *) mnt=$mntC ;; esac
  if grep -Eq " ($root/| $mnt )" /proc/self/mountinfo || findmnt -n "$mnt" >/dev/null; then
    grep -E "$root/|$mnt" /proc/self/mountinfo >&2
    fail "mounts left behind under $root or on $mnt"
  fi
  losetup -a | grep -q "$root/" && fail "loop devices left behind: $(losetup -a | grep "$root/")"
  if ps -eo stat=,args= | awk '$1 !~ /^Z/' | grep -v grep | grep -q "$root/"; then
    ps -eo pid,stat,args | grep "$root/" | grep -v grep >&2
    fail "processes left behind under $root"
  fi
  [ -z "$(ls -A "$root" 2>/dev/null)" ] || fail "run root $root not empty: $(ls -lR "$root")"
}

mntA="$TEST_TMP/mntA" mntB="$TEST_TMP/mntB" mntC="$TEST_TMP/mntC"
mkdir -p "$mntA" "$mntB" "$mntC"
new_image img 128M
cleanup_fn "_unmap_root '$RUN_A'; _unmap_root '$RUN_B'; _unmap_root '$TEST_TMP/runC'"  # before the image's removal
vol="rbd.$img"
holder() { rbd_cli image-meta get "rbd/$img" rbdgw.io/holder; }

# 1. A writes; B's read-write map is refused, naming A.
cliA map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace >/dev/null
echo one >"$mntA/f"
sync -f "$mntA"
holder | grep -q '"node":"node-a"' || fail "no holder record naming node-a: $(holder)"
expect_status 4 "$RBDGW_CLI" --run-root "$RUN_B" map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntB" \
  --attach userspace --node node-b
grep -q "is in use: its exclusive lock is held by .* on node node-a since" "$TEST_TMP/err" ||
  fail "B's refusal does not name node-a: $(cat "$TEST_TMP/err")"
assert_clean_on "$RUN_B"
echo two >>"$mntA/f"
sync -f "$mntA"
cliA status "$vol" >/dev/null || fail "A is not healthy after B's refusal"
pass "read-write on B refused naming node-a ($(grep -o 'held by [^;]*' "$TEST_TMP/err" | head -1)); nothing left on B; A writes on"

# 2. A read-only map on B while A writes: refused, naming A.
expect_status 4 cliB map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntB" --attach userspace --read-only
grep -q "on node node-a" "$TEST_TMP/err" || fail "B's read-only refusal does not name node-a: $(cat "$TEST_TMP/err")"
assert_clean_on "$RUN_B"
pass "read-only on B while A writes: refused naming node-a"

# 3. Readers on both nodes while nobody writes; a writer is refused meanwhile.
cliA unmap "$vol"
cliA map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace --read-only >/dev/null
cliB map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntB" --attach userspace --read-only >/dev/null
[ "$(cat "$mntA/f")" = "one
two" ] || fail "reader A sees: $(cat "$mntA/f")"
[ "$(cat "$mntB/f")" = "$(cat "$mntA/f")" ] || fail "reader B sees: $(cat "$mntB/f")"
expect_status 4 "$RBDGW_CLI" --run-root "$TEST_TMP/runC" map "rbd/$img" --conf "$CEPH_CONF" \
  --mount "$mntC" --attach userspace --volume-id vc --node node-c
grep -q "in use by another client" "$TEST_TMP/err" || fail "writer during reads: $(cat "$TEST_TMP/err")"
assert_clean_on "$TEST_TMP/runC"
cliA unmap "$vol"
cliB unmap "$vol"
assert_clean_on "$RUN_A"
assert_clean_on "$RUN_B"
pass "read-only maps on node-a and node-b at once; a writer meanwhile is refused"

# 4. Read-write maps on A and B at the same moment: exactly one wins.
for round in 1 2 3; do
  ( rc=0; cliA map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace \
      >"$TEST_TMP/a.out" 2>"$TEST_TMP/a.err" || rc=$?; echo $rc >"$TEST_TMP/a.rc" ) &
  ( rc=0; cliB map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntB" --attach userspace \
      >"$TEST_TMP/b.out" 2>"$TEST_TMP/b.err" || rc=$?; echo $rc >"$TEST_TMP/b.rc" ) &
  wait
  ra=$(cat "$TEST_TMP/a.rc") rb=$(cat "$TEST_TMP/b.rc")
  if [ "$ra" = 0 ] && [ "$rb" = 4 ]; then win=a lose=b
  elif [ "$rb" = 0 ] && [ "$ra" = 4 ]; then win=b lose=a
  else fail "round $round: exit statuses $ra and $rb (a: $(cat "$TEST_TMP/a.err"); b: $(cat "$TEST_TMP/b.err"))"
  fi
  grep -q "on node node-$win" "$TEST_TMP/$lose.err" ||
    fail "round $round: the loser ($lose) does not name node-$win: $(cat "$TEST_TMP/$lose.err")"
  if [ $lose = a ]; then assert_clean_on "$RUN_A"; else assert_clean_on "$RUN_B"; fi
  holder | grep -q "\"node\":\"node-$win\"" || fail "round $round: holder record: $(holder)"
  if [ $win = a ]; then cliA unmap "$vol"; else cliB unmap "$vol"; fi
  assert_clean_on "$RUN_A"
  assert_clean_on "$RUN_B"
  pass "round $round: two read-write maps at once: node-$win won, node-$lose refused naming it, nothing left"
done

# 5. A's gateway killed: B is still refused (A may only be cut off) and told
#    how to take over; A's own restart takes the lock at once.
cliA map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntA" --attach userspace >/dev/null
old=$(jq -r .gateway.pid "$RUN_A/$vol/stash.json")
kill -9 "$old"
for _ in $(seq 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
expect_status 4 cliB map "rbd/$img" --conf "$CEPH_CONF" --mount "$mntB" --attach userspace
grep -q "on node node-a" "$TEST_TMP/err" || fail "B after A's kill: $(cat "$TEST_TMP/err")"
grep -q "take the lock over by fencing it: rbd lock rm rbd/$img 'auto [0-9]*' client\.[0-9]*" "$TEST_TMP/err" ||
  fail "B's refusal does not say how to take over: $(cat "$TEST_TMP/err")"
assert_clean_on "$RUN_B"
pass "A's gateway dead: B refused, told how to fence it"
t0=$(date +%s)
cliA reattach "$vol" >"$TEST_TMP/reattach" 2>"$TEST_TMP/reattach.err" ||
  fail "reattach on A failed: $(cat "$TEST_TMP/reattach.err")"
t1=$(date +%s)
[ $((t1 - t0)) -lt 20 ] || fail "A's restart took $((t1 - t0)) s (waited for the dead watch?)"
new=$(jq -r .gateway.pid "$RUN_A/$vol/stash.json")
[ "$new" != "$old" ] || fail "gateway pid unchanged"
grep -q "taking over the exclusive lock of .*: its process $old on this node is gone" "$RUN_A/$vol/gateway.log" ||
  fail "the new gateway did not take over the dead one's lock: $(cat "$RUN_A/$vol/gateway.log")"
holder | grep -q "\"pid\":$new" || fail "holder record not the new gateway's: $(holder)"
echo three >>"$mntA/f"
sync -f "$mntA"
cliA status "$vol" >/dev/null || fail "A not healthy after the restart"
pass "A's own dead gateway restarted in $((t1 - t0)) s, taking its lock over"
cliA unmap "$vol"
assert_clean
