#!/usr/bin/env bash
# The fencing rule per volume on a shared gateway. Node A maps X, Y and Z
# through one shared gateway. X is fenced (rbd lock rm: blocklists the
# gateway's RADOS client, which is every volume's on that gateway) and node
# B maps X, writes, syncs and unmaps. A's shared gateway dies (kill -9).
# `rbdgw reattach` restarts it once; Y and Z recover (new client, their
# locks taken over, I/O works, data intact), while X is refused (ESTALE,
# naming B) and never registered again, so A's stale view of X never
# reaches the image: B's data is intact after A's forced unmap of X.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which jq debugfs
RUN_B="$TEST_TMP/runB"
cliB() { "$RBDGW_CLI" --run-root "$RUN_B" "$@"; }
new_image x 64M
new_image y 64M
new_image z 64M
mkdir -p "$TEST_TMP/mx" "$TEST_TMP/my" "$TEST_TMP/mz" "$TEST_TMP/mb"
for v in x y z; do
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --mount "$TEST_TMP/m$v" --shared-gateway --node node-a >/dev/null 2>&1 ||
    fail "map of $v failed"
  echo "base of $v" >"$TEST_TMP/m$v/base"
  sync -f "$TEST_TMP/m$v"
done
# X's stale view can only go by force (its I/O would wait out the reconnect).
cleanup_fn "cli unmap --force rbd.$x"
gw=$(jq -r .gateway.pid "$RUN_ROOT/rbd.$x/stash.json")
[ "$(jq -r .gateway.pid "$RUN_ROOT/rbd.$z/stash.json")" = "$gw" ] || fail "x and z are not on one shared gateway"

read -r _ cookie_n locker < <(rbd_cli lock ls "rbd/$x" | awk '/auto/{print "x", $3, $1}')
rbd_cli lock rm "rbd/$x" "auto $cookie_n" "$locker"   # the fence of X
cliB map "rbd/$x" --conf "$CEPH_CONF" --mount "$TEST_TMP/mb" --attach userspace --node node-b >/dev/null 2>&1 ||
  fail "B's map of the fenced volume failed"
echo "acked on B" >"$TEST_TMP/mb/fromB"
sync -f "$TEST_TMP/mb"
cliB unmap "rbd.$x" 2>/dev/null
kill -9 "$gw"
sleep 1

rc=0
cli reattach >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
[ "$rc" != 0 ] || fail "reattach succeeded for every volume, the fenced one included"
grep -q "reattach rbd.$x: .*stale.*node-b\|reattach rbd.$x: .*node-b.*stale" "$TEST_TMP/err" ||
  { cat "$TEST_TMP/err" >&2; fail "X's refusal does not say that node-b held it since"; }
[ "$(grep -c "starting the shared gateway" "$TEST_TMP/err")" = 1 ] || { cat "$TEST_TMP/err" >&2; fail "the shared gateway was not started exactly once"; }
grep -q "^rbd.$y	ok$" "$TEST_TMP/out" && grep -q "^rbd.$z	ok$" "$TEST_TMP/out" ||
  { cat "$TEST_TMP/out" "$TEST_TMP/err" >&2; fail "Y and Z did not recover"; }
ls "$RUN_ROOT"/@shared-*/exports/ | grep -qx "rbd.$x" && fail "the fenced volume X is registered again"
[ "$(cli status "rbd.$x" --json | jq -r .gateway_alive)" = false ] || fail "status says X's gateway is up"
pass "reattach: X refused ($(grep -o 'lost the exclusive lock[^:]*' "$TEST_TMP/err" | head -1)), Y and Z recovered"

for v in y z; do
  grep -q "base of $v" "$TEST_TMP/m$v/base" || fail "$v: data lost"
  dd if=/dev/urandom of="$TEST_TMP/m$v/after" bs=1M count=2 conv=fsync status=none || fail "$v: write after reattach failed"
  [ "$(cli status "rbd.${!v}" --json | jq -r .healthy)" = true ] || fail "$v is not healthy"
done
pass "Y and Z read and write after the restart"

cli unmap --force "rbd.$x" >/dev/null 2>&1 || fail "forced unmap of X failed"
cli unmap "rbd.$y" 2>/dev/null && cli unmap "rbd.$z" 2>/dev/null || fail "unmap of Y or Z failed"
rbd_cli export "rbd/$x" "$TEST_TMP/img" --no-progress
debugfs -R "cat /fromB" "$TEST_TMP/img" 2>/dev/null | grep -q "acked on B" ||
  fail "B's acknowledged data on X is gone: A's stale view reached the image"
pass "B's data on X intact: A never served X again"
assert_clean
