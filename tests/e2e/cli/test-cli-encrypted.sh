#!/usr/bin/env bash
# An encrypted volume through the userspace path (luks2 filter): LUKS2-
# formatted on first map and marked encrypted, the raw image holds a LUKS2
# header and no plaintext, the passphrase is in no argv or environment,
# a wrong passphrase is refused (status 7), a killed gateway is restarted
# with the passphrase from the secret store, and unmap forgets it.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"

new_image img 128M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
printf 'correct horse battery staple\n' >"$TEST_TMP/pass"
printf 'wrong\n' >"$TEST_TMP/wrong"
chmod 600 "$TEST_TMP/pass" "$TEST_TMP/wrong"
vol="rbd.$img"
map() { cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace "$@"; }

map --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000 >/dev/null
[ "$(rbd_cli image-meta get "rbd/$img" rbd.csi.ceph.com/encrypted)" = encrypted ] ||
  fail "volume not marked encrypted after its first map"
marker="plaintext-marker-$RANDOM$RANDOM"
for i in $(seq 200); do echo "$marker"; done >"$mnt/file"
sync -f "$mnt"
pid=$(jq -r .gateway.pid "$RUN_ROOT/$vol/stash.json")
grep -q "passphrase=-4" "/proc/$pid/cmdline" || fail "gateway does not read the passphrase from fd 4"
if tr '\0' '\n' <"/proc/$pid/cmdline" | grep -q "battery"; then fail "passphrase in the gateway's argv"; fi
if tr '\0' '\n' <"/proc/$pid/environ" | grep -q "battery"; then fail "passphrase in the gateway's environment"; fi
if grep -rq "battery" "$RUN_ROOT"; then fail "passphrase in a file of the run dir"; fi
store="${RBDGW_SECRET_DIR:-/run/rbdgw/@secrets}"
[ -f "$store/$vol.passphrase" ] || fail "passphrase not kept in the secret store $store"

# Gateway killed: restarted with the passphrase from the secret store.
kill -9 "$pid"
cli reattach "$vol" >/dev/null || fail "reattach of the encrypted volume failed"
grep -q "$marker" "$mnt/file" || fail "file unreadable after the restart"
echo more >"$mnt/file2"
sync -f "$mnt"
cli unmap "$mnt"
assert_clean
if [ -e "$store/$vol.passphrase" ]; then fail "unmap left the passphrase in the secret store"; fi

rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/raw"
[ "$(head -c 6 "$TEST_TMP/raw" | od -An -tx1 | tr -d ' ')" = 4c554b53babe ] || fail "raw image does not start with a LUKS header"
[ "$(od -An -j6 -N2 -tx1 "$TEST_TMP/raw" | tr -d ' ')" = 0002 ] || fail "not LUKS version 2"
if grep -q "$marker" "$TEST_TMP/raw"; then fail "plaintext found in the raw image"; fi
rm "$TEST_TMP/raw"
pass "formatted, written, gateway restarted, raw image holds LUKS2 and no plaintext"

expect_status 7 map --passphrase-file "$TEST_TMP/wrong"
grep -q "wrong passphrase" "$TEST_TMP/err" || fail "message: $(cat "$TEST_TMP/err")"
assert_clean
expect_status 2 map
grep -q "tagged 'encrypted'" "$TEST_TMP/err" || fail "message: $(cat "$TEST_TMP/err")"
assert_clean

map --passphrase-file "$TEST_TMP/pass" >/dev/null
grep -q "$marker" "$mnt/file" && [ "$(cat "$mnt/file2")" = more ] || fail "files changed across unmap/map"
cli unmap "$mnt"
assert_clean
pass "wrong or missing passphrase refused; files intact on a second map"
