#!/usr/bin/env bash
# `rbd lock rm` of one volume on a shared gateway (an admin's or a
# controller's fence) blocklists the gateway's one RADOS client, so the
# other volumes on it fail their I/O too (docs/attach-paths.md: fencing is
# per RADOS client). They must be recoverable: `rbdgw reattach` restarts the
# blocklisted gateway for the volumes whose lock it still holds (nobody else
# can have written them), and their writes go on with their data intact;
# the fenced volume itself is refused (ESTALE naming it) and never served
# again from here: its lock is not taken back by this node. (ext4 on b and
# c may have gone read-only on the I/O errors of the fence, its own
# errors=remount-ro: the test writes through the devices, then unmaps and
# maps them again.) Unmapping everything (the fenced one with --force)
# leaves nothing. Failed before: reattach said "ok" for all three and left
# the blocklisted gateway in place (every write on b and c kept failing).
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which jq sha256sum e2fsck

new_image a 64M
new_image b 64M
new_image c 64M
for v in a b c; do mkdir -p "$TEST_TMP/m$v"; done
# a's stale view can only go by force.
cleanup_fn "cli unmap --force rbd.$a"
for v in a b c; do
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --mount "$TEST_TMP/m$v" --shared-gateway >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v failed"; }
done
gateway_pids() { ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' | grep -v grep | grep "exports-dir=$RUN_ROOT/" | awk '{print $1}' || true; }
[ "$(gateway_pids | wc -l)" = 1 ] || fail "expected one shared gateway for 3 volumes"
old_gw=$(gateway_pids)
for v in b c; do
  head -c 1M /dev/urandom >"$TEST_TMP/want-$v-1"
  cp "$TEST_TMP/want-$v-1" "$TEST_TMP/m$v/f1" && sync -f "$TEST_TMP/m$v/f1" || fail "write on $v failed"
done

# Fence volume a: break its lock (librbd blocklists the lock's client).
lock=$(rbd_cli lock ls "rbd/$a" --format json)
[ "$(jq length <<<"$lock")" = 1 ] || fail "expected one lock on a: $lock"
rbd_cli lock rm "rbd/$a" "$(jq -r '.[0].id' <<<"$lock")" "$(jq -r '.[0].locker' <<<"$lock")"
sleep 1
# The collateral damage the docs name: b's I/O fails as well now.
if timeout 30 dd if=/dev/urandom of="$TEST_TMP/mb/probe" bs=64K count=1 oflag=direct conv=fsync status=none 2>/dev/null; then
  fail "a write on b went through a blocklisted gateway (the fence did not take?)"
fi
pass "rbd lock rm of a blocklisted the shared gateway: b's write failed"

rc=0
timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" reattach >"$TEST_TMP/re.out" 2>"$TEST_TMP/re.err" || rc=$?
[ "$rc" != 124 ] || fail "reattach hung"
grep -q "rbd.$a" "$TEST_TMP/re.err" && grep -qi "fenced\|stale\|lost" "$TEST_TMP/re.err" ||
  { cat "$TEST_TMP/re.out" "$TEST_TMP/re.err" >&2; fail "reattach did not refuse the fenced volume a, naming it"; }
for v in b c; do
  grep -q "^rbd.${!v}	ok$" "$TEST_TMP/re.out" ||
    { cat "$TEST_TMP/re.out" "$TEST_TMP/re.err" >&2; fail "reattach did not bring $v back"; }
done
new_gw=$(gateway_pids)
[ "$(wc -w <<<"$new_gw")" = 1 ] && [ "$new_gw" != "$old_gw" ] ||
  fail "expected the blocklisted gateway $old_gw replaced by one new gateway, got '$new_gw'"
[ ! -e "$RUN_ROOT"/@shared-*/exports/"rbd.$a" ] || fail "the fenced volume a is registered again"
for v in b c; do
  [ "$(cli status "rbd.${!v}" --json | jq -r .healthy)" = true ] || fail "$v not healthy after reattach"
  dev=$(cli status "rbd.${!v}" --json | jq -r .device)
  # The exporter reconnects on its own schedule (reattach does not wait
  # for it): the device reads again within 30 s.
  ok=
  for _ in $(seq 30); do
    timeout 60 dd if="$dev" of=/dev/null bs=1M count=4 iflag=direct status=none 2>/dev/null && { ok=1; break; }
    sleep 1
  done
  [ -n "$ok" ] || fail "$v: $dev still fails its reads 30 s after reattach"
done
# Through the filesystem: b and c unmapped and mapped again (ext4 may be
# read-only since the fence's errors), their files intact and writable.
for v in b c; do
  timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" unmap "rbd.${!v}" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "unmap of $v after reattach failed"; }
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --mount "$TEST_TMP/m$v" --shared-gateway >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v again failed"; }
  cmp -s "$TEST_TMP/want-$v-1" "$TEST_TMP/m$v/f1" || fail "$v: f1 differs after the fence and reattach"
  head -c 1M /dev/urandom >"$TEST_TMP/want-$v-2"
  timeout 60 cp "$TEST_TMP/want-$v-2" "$TEST_TMP/m$v/f2" && timeout 60 sync -f "$TEST_TMP/m$v/f2" ||
    fail "write on $v failed after reattach"
done
# a's lock is not taken back by this node (nobody else wants it here).
sleep 2
lock=$(rbd_cli lock ls "rbd/$a" --format json)
[ "$(jq length <<<"$lock")" = 0 ] || fail "the fenced volume a's lock was taken again: $lock"
pass "reattach replaced the blocklisted gateway for b and c (I/O works, their files intact) and refused the fenced a"

expect_status 0 cli unmap --force "rbd.$a"
for v in b c; do
  cli unmap "rbd.${!v}" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "unmap of $v failed"; }
  rbd_cli export --no-progress "rbd/${!v}" "$TEST_TMP/copy" >/dev/null
  e2fsck -fn "$TEST_TMP/copy" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "$v: fsck not clean"; }
  for k in 1 2; do
    debugfs -R "dump /f$k $TEST_TMP/got" "$TEST_TMP/copy" >/dev/null 2>&1
    cmp -s "$TEST_TMP/want-$v-$k" "$TEST_TMP/got" || fail "$v: file f$k differs in the image"
    rm -f "$TEST_TMP/got"
  done
  rm -f "$TEST_TMP/copy"
done
assert_clean
pass "b and c fsck-clean with their files; nothing left"
