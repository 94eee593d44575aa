#!/usr/bin/env bash
# rbdgw rotate-key is crash-safe: killed with -9 after each of its steps
# (RBDGW_TEST_PAUSE_AT=<step> stops it there), the volume opens with the KMS
# its metadata names and the data is intact; the old secret opens it until
# the old keyslot is destroyed, the new one from when its keyslot is added
# (cryptsetup on a copy of the header and rbdgw dek unwrap agree); running
# rotate-key again finishes the rotation (one keyslot, the new secret only),
# and with the KMS IDs swapped rolls a stopped one back.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which cryptsetup

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
keyslots() { cryptsetup luksDump "$TEST_TMP/hdr" | grep -cE '^  [0-9]+: luks2'; }
# unwrap KMS FILE: the passphrase KMS gives now; false if it gives none.
unwrap() {
  rm -f "$2"
  cli dek unwrap "rbd/$img" "${C[@]}" --kms-id "$1" --output "$2" 2>/dev/null
}
check_data() {
  cli map "rbd/$img" "${C[@]}" --kms-id "$1" --mount "$mnt" --attach userspace >/dev/null
  [ "$(cat "$mnt/f")" = "data before rotation" ] || fail "data lost (opened with KMS $1)"
  cli unmap "$mnt"
  assert_clean
}
# stop_at STEP FROM TO: runs rotate-key until it stops after STEP, kills it -9.
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

for step in recorded added stored removed; do
  unwrap A "$TEST_TMP/pA" || fail "A does not give the passphrase before the rotation"
  stop_at $step A B
  [ -n "$(meta rbdgw.io/keyRotation)" ] || fail "$step: no rotation record after the kill"
  case $step in
    recorded | added) want=A ;;
    *) want=B ;;
  esac
  [ "$(meta rbdgw.csi/encryptionKMSID)" = $want ] ||
    fail "$step: metadata names KMS '$(meta rbdgw.csi/encryptionKMSID)', expected $want"
  header_copy
  # What each secret opens after a kill at this step.
  a_opens=no b_opens=no
  unwrap A "$TEST_TMP/gotA" && opens "$TEST_TMP/gotA" && a_opens=yes
  unwrap B "$TEST_TMP/gotB" && opens "$TEST_TMP/gotB" && b_opens=yes
  case $step in
    recorded) [ $a_opens/$b_opens = yes/no ] ;;
    added | stored) [ $a_opens/$b_opens = yes/yes ] ;;
    removed) [ $a_opens/$b_opens = no/yes ] ;;
  esac || fail "$step: old secret opens: $a_opens, new: $b_opens"
  if [ $a_opens = yes ]; then
    cmp -s "$TEST_TMP/gotA" "$TEST_TMP/pA" || fail "$step: A gives another passphrase than before"
  fi
  # The KMS the metadata names opens the volume (the map takes over the
  # dead rotate-key's lock).
  check_data $want
  # Run again: finished.
  cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B 2>"$TEST_TMP/rerun.err" ||
    { cat "$TEST_TMP/rerun.err" >&2; fail "$step: the re-run failed"; }
  grep -q "finished the key rotation" "$TEST_TMP/rerun.err" ||
    fail "$step: the re-run did not resume: $(cat "$TEST_TMP/rerun.err")"
  [ -z "$(meta rbdgw.io/keyRotation)" ] || fail "$step: rotation record left after the re-run"
  [ "$(meta rbdgw.csi/encryptionKMSID)" = B ] || fail "$step: metadata does not name B after the re-run"
  header_copy
  unwrap B "$TEST_TMP/pB" && opens "$TEST_TMP/pB" || fail "$step: B does not open after the re-run"
  opens "$TEST_TMP/pA" && fail "$step: A's passphrase still opens after the re-run"
  [ "$(keyslots)" = 1 ] || fail "$step: $(keyslots) keyslots after the re-run, expected 1"
  check_data B
  pass "killed after step $step: opens with KMS $want; a re-run finishes"
  cli rotate-key "rbd/$img" "${C[@]}" --kms-id B --new-kms-id A 2>/dev/null
done

# Roll back a stopped rotation: the KMS IDs swapped.
unwrap A "$TEST_TMP/pA" || fail "A does not give the passphrase"
stop_at stored A B
cli rotate-key "rbd/$img" "${C[@]}" --kms-id B --new-kms-id A 2>"$TEST_TMP/rb.err" ||
  { cat "$TEST_TMP/rb.err" >&2; fail "roll-back failed"; }
grep -q "rolled back" "$TEST_TMP/rb.err" || fail "no roll-back: $(cat "$TEST_TMP/rb.err")"
[ -z "$(meta rbdgw.io/keyRotation)" ] || fail "rotation record left after the roll-back"
[ "$(meta rbdgw.csi/encryptionKMSID)" = A ] || fail "metadata does not name A after the roll-back"
header_copy
unwrap A "$TEST_TMP/gotA" || fail "A gives no passphrase after the roll-back"
cmp -s "$TEST_TMP/gotA" "$TEST_TMP/pA" || fail "A's passphrase changed by the roll-back"
opens "$TEST_TMP/pA" || fail "A's passphrase does not open after the roll-back"
[ "$(keyslots)" = 1 ] || fail "$(keyslots) keyslots after the roll-back, expected 1"
unwrap B "$TEST_TMP/gotB" && fail "B still gives a passphrase after the roll-back"
check_data A
pass "a rotation stopped after step stored rolls back with the KMS IDs swapped"

# Another rotation while one is stopped is refused, naming it.
stop_at added A B
expect_status 4 cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id A
grep -q "from KMS 'A' to 'B'" "$TEST_TMP/err" || fail "message: $(cat "$TEST_TMP/err")"
cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B 2>/dev/null
check_data B
pass "a second rotation is refused while one is stopped"
