#!/usr/bin/env bash
# A roll-back of a stopped rotation (rotate-key with the KMS IDs swapped)
# killed -9 in its middle, after it gave the old KMS its DEK back but before
# it destroyed the new keyslot, and then the original rotation run again:
# whatever each run does, the KMS the image metadata names always gives a
# passphrase that opens the LUKS2 header (cryptsetup on a copy of it) and
# the data; and the volume can still be brought to one consistent end.
# (The kill lands on a gdb breakpoint at luks::Header::destroy_keyslot: a
# real SIGKILL at that point, which the RBDGW_TEST_PAUSE_AT steps miss.)
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which cryptsetup gdb

new_image img 64M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
vol="vol-$img"
printf 'kms secret A\n' >"$TEST_TMP/sA"
printf 'kms secret B\n' >"$TEST_TMP/sB"
chmod 600 "$TEST_TMP/sA" "$TEST_TMP/sB"
cat >"$TEST_TMP/kms.json" <<JSON
{ "A": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sA" },
  "B": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sB" } }
JSON
C=(--conf "$CEPH_CONF" --kms-config "$TEST_TMP/kms.json" --volume-id "$vol")
meta() { rbd_cli image-meta get "rbd/$img" "$1" 2>/dev/null || true; }
header_copy() {
  rm -f "$TEST_TMP/hdr"
  rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/hdr" >/dev/null
  truncate -s 16M "$TEST_TMP/hdr"
}
opens() { cryptsetup open --test-passphrase --key-file "$1" "$TEST_TMP/hdr" >/dev/null 2>&1; }
unwrap() {
  rm -f "$2"
  cli dek unwrap "rbd/$img" "${C[@]}" --kms-id "$1" --output "$2" 2>/dev/null
}
# The KMS the metadata names opens the header and the data.
named_kms_opens() {
  local k
  k=$(meta rbdgw.csi/encryptionKMSID)
  header_copy
  unwrap "$k" "$TEST_TMP/got" && opens "$TEST_TMP/got" ||
    fail "$1: the metadata names KMS '$k', whose passphrase opens no keyslot (record: '$(meta rbdgw.io/keyRotation)')"
  cli map "rbd/$img" "${C[@]}" --kms-id "$k" --mount "$mnt" --attach userspace >/dev/null ||
    fail "$1: map with KMS '$k' failed"
  [ "$(cat "$mnt/f")" = "data before rotation" ] || fail "$1: data lost (KMS $k)"
  cli unmap "$mnt"
  assert_clean
}
stop_at() {
  local pid i
  RBDGW_TEST_PAUSE_AT=$1 "$RBDGW_CLI" --run-root "$RUN_ROOT" rotate-key "rbd/$img" "${C[@]}" \
    --kms-id "$2" --new-kms-id "$3" 2>"$TEST_TMP/rot.err" &
  pid=$!
  for ((i = 0; i < 600; i++)); do
    grep -q "stopped after step $1" "$TEST_TMP/rot.err" && [[ "$(ps -o stat= -p $pid | tr -d " ")" == T* ]] && break
    kill -0 $pid 2>/dev/null || { cat "$TEST_TMP/rot.err" >&2; fail "rotate-key exited before step $1"; }
    sleep 0.1
  done
  ((i < 600)) || fail "rotate-key did not stop after step $1"
  kill -9 $pid
  wait $pid || true
}

cli format "rbd/$img" --conf "$CEPH_CONF" --kms-id A --kms-config "$TEST_TMP/kms.json" \
  --volume-id "$vol" --pbkdf pbkdf2:1000
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null
echo "data before rotation" >"$mnt/f"
cli unmap "$mnt"
rbd_cli image-meta set "rbd/$img" rbdgw.csi/encryptionKMSID A

stop_at stored A B
named_kms_opens "killed after step stored"

# The roll-back, killed -9 where it is about to destroy a keyslot.
gdb -q -batch -ex 'set breakpoint pending on' -ex 'break rbdgw::luks::Header::destroy_keyslot' \
  -ex run -ex 'info frame' -ex kill --args \
  "$RBDGW_CLI" --run-root "$RUN_ROOT" rotate-key "rbd/$img" "${C[@]}" --kms-id B --new-kms-id A \
  >"$TEST_TMP/gdb.out" 2>&1 || true
grep -q "Breakpoint 1, rbdgw::luks::Header::destroy_keyslot" "$TEST_TMP/gdb.out" ||
  { cat "$TEST_TMP/gdb.out" >&2; fail "the roll-back did not reach destroy_keyslot under gdb"; }
[ -n "$(meta rbdgw.io/keyRotation)" ] || fail "no rotation record after the killed roll-back"
named_kms_opens "roll-back killed before destroying a keyslot"
pass "a roll-back killed before it destroys the new keyslot: the named KMS opens"

# The original rotation run again (as its first error message said to):
# it finishes or refuses; either way the named KMS still opens.
rc=0
cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B 2>"$TEST_TMP/again.err" || rc=$?
echo "  rotate-key A -> B after the killed roll-back: exit $rc: $(tail -1 "$TEST_TMP/again.err")"
named_kms_opens "rotate-key A -> B after the killed roll-back (exit $rc)"
# And one of the two directions brings it to an end.
if [ -n "$(meta rbdgw.io/keyRotation)" ]; then
  cli rotate-key "rbd/$img" "${C[@]}" --kms-id B --new-kms-id A 2>/dev/null ||
    cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B 2>/dev/null ||
    fail "neither direction ends the rotation: record '$(meta rbdgw.io/keyRotation)'"
fi
[ -z "$(meta rbdgw.io/keyRotation)" ] || fail "rotation record left"
named_kms_opens "after the end"
pass "after a killed roll-back, running the rotation again never leaves the named KMS unable to open"
