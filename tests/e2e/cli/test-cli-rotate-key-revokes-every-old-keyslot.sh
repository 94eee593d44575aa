#!/usr/bin/env bash
# rotate-key revokes the old secret: when the old passphrase opens more than
# one keyslot (ceph-csi's EncryptionKeyRotation copies it to a spare keyslot
# first, so one of its rotations that stopped there leaves it twice), after
# the rotation the old passphrase opens none (cryptsetup on a copy of the
# header), the new one does, and a keyslot of another passphrase is kept.
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
printf 'a recovery passphrase\n' >"$TEST_TMP/recovery"
chmod 600 "$TEST_TMP/sA" "$TEST_TMP/sB" "$TEST_TMP/recovery"
cat >"$TEST_TMP/kms.json" <<JSON
{ "A": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sA" },
  "B": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sB" } }
JSON
C=(--conf "$CEPH_CONF" --kms-config "$TEST_TMP/kms.json" --volume-id "$vol")
header_copy() {
  rm -f "$TEST_TMP/hdr"
  rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/hdr" >/dev/null
  truncate -s 16M "$TEST_TMP/hdr"
}
opens() { cryptsetup open --test-passphrase --key-file "$1" "$TEST_TMP/hdr" >/dev/null 2>&1; }
slots_of() { cryptsetup open --test-passphrase --key-file "$1" "$TEST_TMP/hdr" -v 2>&1 | grep -o 'Key slot [0-9]*'; }

cli format "rbd/$img" --conf "$CEPH_CONF" --kms-id A --kms-config "$TEST_TMP/kms.json" \
  --volume-id "$vol" --pbkdf pbkdf2:1000
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null
echo "data before rotation" >"$mnt/f"
cli unmap "$mnt"
rbd_cli image-meta set "rbd/$img" rbdgw.csi/encryptionKMSID A
cli dek unwrap "rbd/$img" "${C[@]}" --kms-id A --output "$TEST_TMP/pA"

# The old passphrase in a second keyslot, and a recovery passphrase in a
# third: the image rewritten with its header so edited, its metadata kept.
rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/raw" >/dev/null
add() { cryptsetup luksAddKey --batch-mode --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$TEST_TMP/pA" "$TEST_TMP/raw" "$1"; }
add "$TEST_TMP/pA"
add "$TEST_TMP/recovery"
meta_json=$(rbd_cli image-meta list "rbd/$img" --format json)
rbd_cli rm --no-progress "rbd/$img" >/dev/null 2>&1
rbd_cli import --no-progress "$TEST_TMP/raw" "rbd/$img" >/dev/null
python3 -c 'import json,sys; [print(k, v, sep="\0", end="\0") for k, v in json.loads(sys.argv[1]).items()]' \
  "$meta_json" | while IFS= read -r -d '' k && IFS= read -r -d '' v; do rbd_cli image-meta set "rbd/$img" "$k" "$v"; done
header_copy
[ "$(slots_of "$TEST_TMP/pA" | head -1)" = "Key slot 0" ] || fail "setup: A's passphrase does not open slot 0"
[ "$(cryptsetup luksDump "$TEST_TMP/hdr" | grep -cE '^  [0-9]+: luks2')" = 3 ] || fail "setup: not 3 keyslots"

cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id B 2>"$TEST_TMP/rot.err" ||
  { cat "$TEST_TMP/rot.err" >&2; fail "rotate-key failed"; }
header_copy
cli dek unwrap "rbd/$img" "${C[@]}" --kms-id B --output "$TEST_TMP/pB"
opens "$TEST_TMP/pB" || fail "B's new passphrase does not open"
opens "$TEST_TMP/recovery" || fail "the recovery passphrase's keyslot was lost"
if opens "$TEST_TMP/pA"; then
  fail "after rotate-key the old passphrase still opens ($(slots_of "$TEST_TMP/pA"))"
fi
cli map "rbd/$img" "${C[@]}" --kms-id B --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "data before rotation" ] || fail "data lost"
cli unmap "$mnt"
assert_clean
pass "the old passphrase in two keyslots: rotate-key revokes both, keeps the recovery keyslot"
