#!/usr/bin/env bash
# Key management through the CLI with a metadata KMS (a DEK per volume in
# the image metadata, wrapped with a KEK from the KMS secret):
# `rbdgw format` refuses an image with data and formats a blank one, `map`
# gets the passphrase from the KMS, `dek unwrap` recovers it (disaster
# recovery), `rotate-key` re-wraps the DEK for another KMS secret, after
# which the old secret is refused (status 7) and the new one opens it.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"

new_image img 128M
new_image full 64M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
vol="vol-$img"
printf 'kms secret one\n' >"$TEST_TMP/s1"
printf 'kms secret two\n' >"$TEST_TMP/s2"
chmod 600 "$TEST_TMP/s1" "$TEST_TMP/s2"
cat >"$TEST_TMP/kms.json" <<JSON
{ "one": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/s1" },
  "two": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/s2" } }
JSON
kms() { echo --kms-id "$1" --kms-config "$TEST_TMP/kms.json" --volume-id "$vol"; }

# An image with data is never formatted.
dev=$(cli map "rbd/$full" --conf "$CEPH_CONF" --attach userspace)
head -c 1M /dev/urandom >"$dev"
sync -f "$mnt"
cli unmap "rbd/$full"
expect_status 5 cli format "rbd/$full" --conf "$CEPH_CONF" $(kms one) --pbkdf pbkdf2:1000
grep -q "refusing to format" "$TEST_TMP/err" || fail "message: $(cat "$TEST_TMP/err")"
expect_status 3 cli format "rbd/$img" --conf "$CEPH_CONF" $(kms three) --pbkdf pbkdf2:1000
grep -q "three" "$TEST_TMP/err" || fail "unknown KMS ID not named: $(cat "$TEST_TMP/err")"

cli format "rbd/$img" --conf "$CEPH_CONF" $(kms one) --pbkdf pbkdf2:1000
[ "$(rbd_cli image-meta get "rbd/$img" rbd.csi.ceph.com/encrypted)" = encryptionPrepared ] ||
  fail "format did not tag the image encryptionPrepared"
cli map "rbd/$img" --conf "$CEPH_CONF" $(kms one) --mount "$mnt" --attach userspace >/dev/null
echo "kms data" >"$mnt/f"
cli unmap "$mnt"
assert_clean
[ "$(rbd_cli image-meta get "rbd/$img" rbd.csi.ceph.com/encrypted)" = encrypted ] ||
  fail "first map did not mark the image encrypted"
pass "format refuses data, formats blank; map through the KMS"

cli dek unwrap "rbd/$img" --conf "$CEPH_CONF" $(kms one) --output "$TEST_TMP/recovered"
[ "$(stat -c %a "$TEST_TMP/recovered")" = 600 ] || fail "recovered passphrase file is not 0600"
expect_status 5 cli dek unwrap "rbd/$img" --conf "$CEPH_CONF" $(kms one) --output "$TEST_TMP/recovered"
cli map "rbd/$img" --conf "$CEPH_CONF" --passphrase-file "$TEST_TMP/recovered" --volume-id "$vol" \
  --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "kms data" ] || fail "recovered passphrase does not open the volume"
cli unmap "$mnt"
pass "dek unwrap recovers the passphrase"

cli rotate-key "rbd/$img" --conf "$CEPH_CONF" $(kms one) --new-kms-id two
expect_status 7 cli dek unwrap "rbd/$img" --conf "$CEPH_CONF" $(kms one) --output "$TEST_TMP/old"
[ ! -e "$TEST_TMP/old" ] || fail "a refused unwrap wrote its output"
cli map "rbd/$img" --conf "$CEPH_CONF" $(kms two) --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "kms data" ] || fail "volume does not open with the new KMS secret"
cli unmap "$mnt"
assert_clean
pass "rotate-key: old secret refused, new secret opens the volume"
