#!/usr/bin/env bash
# One bad volume does not disturb the others on a shared gateway: while a
# writer runs on a mapped volume of the plain shared gateway and another on
# one of the decrypting shared gateway, mapping a missing image and mapping
# an encrypted volume with a wrong passphrase each fail with an error naming
# the volume and the cause, and leave nothing of theirs behind (run dir,
# registry entry, exporter); the writers never see an error and the
# gateways keep serving. Unmapping everything leaves nothing.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires test -f "$RBDGW_FILTER"

new_image good 64M
new_image enc 64M
new_image enc2 64M
mkdir -p "$TEST_TMP/m1" "$TEST_TMP/m2" "$TEST_TMP/m3" "$TEST_TMP/m4"
printf 'right one\n' >"$TEST_TMP/pass"
printf 'other one\n' >"$TEST_TMP/pass2"
printf 'wrong one\n' >"$TEST_TMP/wrong"
chmod 600 "$TEST_TMP/pass" "$TEST_TMP/pass2" "$TEST_TMP/wrong"
map() { cli map "$@" --conf "$CEPH_CONF" --shared-gateway; }
# On failure, what is needed to tell why (run before the unmaps of the
# cleanup, which remove the shared dirs and their logs): the gateways and
# exporters, the run root, each shared gateway's log, the last expected
# failure's stderr and the writers' errors.
exec 9>&2
_diag() {
  [ "${rc:-0}" != 0 ] || return 0
  {
    echo "--- diagnostics of the failure (exit $rc)"
    ps -eo pid,ppid,stat,etimes,wchan:24,args | grep "$RUN_ROOT" | grep -v grep
    ls -laR "$RUN_ROOT"
    for l in "$RUN_ROOT"/@shared-*/gateway.log "$RUN_ROOT"/*/fuse.log; do
      [ -e "$l" ] && { echo "--- $l"; tail -40 "$l"; }
    done
    for f in err werr; do [ -s "$TEST_TMP/$f" ] && { echo "--- $f"; cat "$TEST_TMP/$f"; }; done
  } >&9 2>&1
}
cleanup_fn _diag

map "rbd/$good" --mount "$TEST_TMP/m1" >/dev/null
map "rbd/$enc" --mount "$TEST_TMP/m2" --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000 >/dev/null
# enc2: LUKS2 with another passphrase, mapped once and unmapped
map "rbd/$enc2" --mount "$TEST_TMP/m3" --passphrase-file "$TEST_TMP/pass2" --pbkdf pbkdf2:1000 >/dev/null
cli unmap "rbd.$enc2" 2>/dev/null

writer() {  # writes and fsyncs until told to stop; any error is recorded
  local m=$1 k=0
  while [ ! -e "$TEST_TMP/stop" ]; do
    dd if=/dev/urandom of="$m/f$((k % 8))" bs=64K count=1 conv=fsync status=none 2>>"$TEST_TMP/werr" ||
      echo "write $k on $m failed" >>"$TEST_TMP/werr"
    k=$((k + 1))
    # Renamed into place: a reader never sees it truncated and empty.
    echo $k >"$m.count.tmp" && mv -f "$m.count.tmp" "$m.count"
  done
}
: >"$TEST_TMP/werr"
writer "$TEST_TMP/m1" & w1=$!
writer "$TEST_TMP/m2" & w2=$!
cleanup_fn "touch '$TEST_TMP/stop'; kill $w1 $w2"  # on a failure
for ((i = 0; i < 600; i++)); do  # each writer's first write done
  [ -s "$TEST_TMP/m1.count" ] && [ -s "$TEST_TMP/m2.count" ] && break
  sleep 0.1
done
[ -s "$TEST_TMP/m1.count" ] && [ -s "$TEST_TMP/m2.count" ] || fail "a writer did not write once in 60 s"
entries() { ls "$RUN_ROOT"/@shared-*/exports/ 2>/dev/null | sort; }
before=$(entries)

# A missing image.
expect_status 3 map "rbd/no-such-image-$$" --mount "$TEST_TMP/m4"
grep -q "rbd.no-such-image-$$\|rbd/no-such-image-$$" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "the error does not name the volume"; }
grep -qi "no such\|not found\|does not exist" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "the error does not say the image is missing"; }
[ ! -e "$RUN_ROOT/rbd.no-such-image-$$" ] || fail "the missing image's run dir was left behind"
pass "a missing image is refused, naming it: $(tail -1 "$TEST_TMP/err")"

# A wrong passphrase.
expect_status 7 map "rbd/$enc2" --mount "$TEST_TMP/m4" --passphrase-file "$TEST_TMP/wrong"
grep -q "$enc2" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "the error does not name the volume"; }
grep -qi "passphrase" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "the error does not say the passphrase is wrong"; }
[ ! -e "$RUN_ROOT/rbd.$enc2" ] || fail "the refused volume's run dir was left behind"
mountpoint -q "$TEST_TMP/m4" && fail "the refused volume was mounted"
pass "a wrong passphrase is refused, naming the volume: $(tail -1 "$TEST_TMP/err")"

[ "$(entries)" = "$before" ] || { entries >&2; fail "the registry changed: a refused volume left an entry"; }
c1=$(cat "$TEST_TMP/m1.count") c2=$(cat "$TEST_TMP/m2.count")
sleep 2
touch "$TEST_TMP/stop"
wait $w1 $w2
[ ! -s "$TEST_TMP/werr" ] || { cat "$TEST_TMP/werr" >&2; fail "a writer on the shared gateways saw an error"; }
[ "$(cat "$TEST_TMP/m1.count")" -gt "$c1" ] && [ "$(cat "$TEST_TMP/m2.count")" -gt "$c2" ] ||
  fail "a writer stopped making progress after the refused maps"
for v in "rbd.$good" "rbd.$enc"; do
  [ "$(cli status "$v" --json | jq -r .healthy)" = true ] || fail "$v is not healthy after the refused maps"
done
pass "the writers on both shared gateways went on without an error"

cli unmap "rbd.$good" 2>/dev/null
cli unmap "rbd.$enc" 2>/dev/null
assert_clean
pass "nothing left behind"
