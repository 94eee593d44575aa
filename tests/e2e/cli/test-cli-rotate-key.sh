#!/usr/bin/env bash
# rbdgw rotate-key: a volume's LUKS2 passphrase (its DEK) is replaced with a
# new random one kept by another KMS ID, between two metadata KMSes (two
# passphrases) and metadata <-> default. After each rotation the new KMS
# opens the volume with its data intact, the old passphrase no longer opens
# its LUKS2 header (checked with cryptsetup itself on a copy of the header),
# one keyslot is left and the image metadata names the new KMS. A wrong or
# unknown new KMS, a missing new secret or a wrong old secret fail with a
# clear error and change nothing (header bytes and metadata compared);
# a mapped volume is refused naming its gateway.
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
printf 'the default passphrase' >"$TEST_TMP/sD"
printf 'not the secret\n' >"$TEST_TMP/wrong"
chmod 600 "$TEST_TMP"/s? "$TEST_TMP/wrong"
cat >"$TEST_TMP/kms.json" <<JSON
{ "A": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sA" },
  "B": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sB" },
  "D": { "encryptionKMSType": "default", "passphraseFile": "$TEST_TMP/sD" },
  "nosecret": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/missing" },
  "fromrequest": { "encryptionKMSType": "metadata" } }
JSON
C=(--conf "$CEPH_CONF" --kms-config "$TEST_TMP/kms.json" --volume-id "$vol")
meta() { rbd_cli image-meta get "rbd/$img" "$1" 2>/dev/null || true; }

# The LUKS2 header area of the image, as a file cryptsetup reads.
header_copy() {
  rm -f "$TEST_TMP/hdr"
  rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/hdr" >/dev/null
  truncate -s 16M "$TEST_TMP/hdr"
}
opens() { cryptsetup open --test-passphrase --key-file "$1" "$TEST_TMP/hdr" >/dev/null 2>&1; }
keyslots() { cryptsetup luksDump "$TEST_TMP/hdr" | grep -cE '^  [0-9]+: luks2'; }
# The volume's passphrase as KMS $1 gives it.
unwrap() {
  rm -f "$2"
  cli dek unwrap "rbd/$img" "${C[@]}" --kms-id "$1" --output "$2"
}
check_data() {  # KMS-ID
  cli map "rbd/$img" "${C[@]}" --kms-id "$1" --mount "$mnt" --attach userspace >/dev/null
  [ "$(cat "$mnt/f")" = "data before rotation" ] || fail "data lost after rotation to $1"
  cli unmap "$mnt"
  assert_clean
}
snapshot_state() {  # the header bytes and all metadata
  header_copy
  { sha256sum <"$TEST_TMP/hdr"; rbd_cli image-meta list "rbd/$img" --format json; } >"$TEST_TMP/$1"
}

cli format "rbd/$img" --conf "$CEPH_CONF" --kms-id A --kms-config "$TEST_TMP/kms.json" \
  --volume-id "$vol" --pbkdf pbkdf2:1000
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null
echo "data before rotation" >"$mnt/f"
cli unmap "$mnt"
unwrap A "$TEST_TMP/pA"
header_copy
opens "$TEST_TMP/pA" || fail "A's passphrase does not open the new volume"

# Mapped: refused, naming the gateway's lock.
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null
snapshot_state before
expect_status 4 cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B
grep -q "exclusive lock is held" "$TEST_TMP/err" || fail "mapped volume: message: $(cat "$TEST_TMP/err")"
cli unmap "$mnt"
assert_clean
pass "a mapped volume is refused"

# Nothing changes for a bad new KMS or a wrong old secret.
snapshot_state before
expect_status 3 cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id nosuch
grep -q "nosuch" "$TEST_TMP/err" || fail "unknown KMS ID not named: $(cat "$TEST_TMP/err")"
expect_status 3 cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id nosecret
grep -q "missing" "$TEST_TMP/err" || fail "missing secret file not named: $(cat "$TEST_TMP/err")"
# (a KMS without passphraseFile takes the secret given; A's DEK, another secret)
expect_status 7 cli rotate-key "rbd/$img" "${C[@]}" --kms-id fromrequest \
  --kms-secret-file "$TEST_TMP/wrong" --new-kms-id B
expect_status 2 cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id fromrequest
expect_status 2 cli rotate-key "rbd/$img" "${C[@]}" --kms-id A
snapshot_state after
cmp -s "$TEST_TMP/before" "$TEST_TMP/after" || fail "a refused rotation changed the volume"
pass "unknown KMS, missing secret, wrong old secret: clear errors, nothing changed"

# metadata A -> metadata B: a new passphrase.
cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B
[ "$(meta rbdgw.csi/encryptionKMSID)" = B ] || fail "metadata does not name KMS B"
[ -z "$(meta rbdgw.io/keyRotation)" ] || fail "rotation record left behind"
unwrap B "$TEST_TMP/pB"
cmp -s "$TEST_TMP/pA" "$TEST_TMP/pB" && fail "the LUKS passphrase did not change"
header_copy
opens "$TEST_TMP/pB" || fail "B's passphrase does not open the header"
opens "$TEST_TMP/pA" && fail "A's old passphrase still opens the header"
[ "$(keyslots)" = 1 ] || fail "expected 1 keyslot after rotation, got $(keyslots)"
expect_status 7 cli dek unwrap "rbd/$img" "${C[@]}" --kms-id A --output "$TEST_TMP/x"
expect_status 7 cli map "rbd/$img" --conf "$CEPH_CONF" --passphrase-file "$TEST_TMP/pA" \
  --volume-id "$vol" --mount "$mnt" --attach userspace
assert_clean
check_data B
pass "metadata A -> metadata B: B opens, data intact, A's passphrase refused, one keyslot"

# Without --kms-id the metadata names the current KMS; B -> D (default).
cli rotate-key "rbd/$img" "${C[@]}" --new-kms-id D
[ "$(meta rbdgw.csi/encryptionKMSID)" = D ] || fail "metadata does not name KMS D"
[ -z "$(meta rbd.csi.ceph.com/dek)" ] || fail "the metadata DEK stayed after moving to the default KMS"
header_copy
opens "$TEST_TMP/sD" || fail "the default KMS's passphrase does not open the header"
opens "$TEST_TMP/pB" && fail "B's passphrase still opens the header"
[ "$(keyslots)" = 1 ] || fail "expected 1 keyslot, got $(keyslots)"
check_data D
pass "metadata B -> default D"

# default D -> metadata A: a fresh random passphrase again.
cli rotate-key "rbd/$img" "${C[@]}" --kms-id D --new-kms-id A
[ "$(meta rbdgw.csi/encryptionKMSID)" = A ] || fail "metadata does not name KMS A"
unwrap A "$TEST_TMP/pA2"
cmp -s "$TEST_TMP/pA" "$TEST_TMP/pA2" && fail "A's new passphrase is the old one"
header_copy
opens "$TEST_TMP/pA2" || fail "A's new passphrase does not open the header"
opens "$TEST_TMP/sD" && fail "the default passphrase still opens the header"
[ "$(keyslots)" = 1 ] || fail "expected 1 keyslot, got $(keyslots)"
check_data A
pass "default D -> metadata A"

# The same KMS ID: only the passphrase changes.
cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id A
unwrap A "$TEST_TMP/pA3"
cmp -s "$TEST_TMP/pA2" "$TEST_TMP/pA3" && fail "passphrase rotation within KMS A changed nothing"
header_copy
opens "$TEST_TMP/pA3" || fail "the rotated passphrase does not open the header"
opens "$TEST_TMP/pA2" && fail "the previous passphrase still opens the header"
check_data A
pass "A -> A: a new passphrase under the same KMS ID"
