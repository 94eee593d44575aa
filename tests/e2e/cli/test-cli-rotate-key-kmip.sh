#!/usr/bin/env bash
# rbdgw rotate-key between a metadata KMS and a kmip KMS (a real
# pykmip-server, tests/e2e/kms/kmip-functions.sh), both ways: after
# metadata -> kmip the image's DEK is in ceph-csi's kmip format (unwrapped
# independently with PyKMIP to the passphrase that opens the header), the
# old passphrase opens nothing and the data is intact through the kmip KMS;
# kmip -> metadata likewise. Killed after its keyslot step, a rotation to
# kmip leaves the volume opening with the metadata KMS and a re-run finishes.
# With the KMIP server down a rotation to it fails and changes nothing.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which cryptsetup
requires test -f "$RBDGW_SOURCE_DIR/tests/e2e/kms/kmip-functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/kms/kmip-functions.sh"

k="$TEST_TMP/kmip"
mkdir "$k"
# pykmip-server's policy-monitor child outlives a server killed -9 (kmip_stop's
# and the cleanup's last resort): end every process of this server's config.
_kmip_reap() {
  local p
  for p in $(ps -eo pid=,args= | awk -v c="$k/server.conf" 'index($0, c) {print $1}'); do
    kill "$p" 2>/dev/null || true
  done
  sleep 0.5
  for p in $(ps -eo pid=,args= | awk -v c="$k/server.conf" 'index($0, c) {print $1}'); do
    kill -9 "$p" 2>/dev/null || true
  done
}
cleanup_fn _kmip_reap
kmip_start "$k"
uid=$(kmip_tool "$k" create)
printf '%s' "$uid" >"$k/creds/UNIQUE_IDENTIFIER"
chmod 600 "$k/creds/UNIQUE_IDENTIFIER"

new_image img 64M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
vol="vol-$img"
printf 'kms secret A\n' >"$TEST_TMP/sA"
chmod 600 "$TEST_TMP/sA"
cat >"$TEST_TMP/kms.json" <<JSON
{ "A": { "encryptionKMSType": "metadata", "passphraseFile": "$TEST_TMP/sA" },
  "K": { "encryptionKMSType": "kmip", "KMIP_ENDPOINT": "127.0.0.1:$(cat "$k/port")",
         "TLS_SERVER_NAME": "kmip.test", "READ_TIMEOUT": 5, "WRITE_TIMEOUT": 5,
         "secretsDir": "$k/creds" } }
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
unwrap() {
  rm -f "$2"
  cli dek unwrap "rbd/$img" "${C[@]}" --kms-id "$1" --output "$2"
}
check_data() {
  cli map "rbd/$img" "${C[@]}" --kms-id "$1" --mount "$mnt" --attach userspace >/dev/null
  [ "$(cat "$mnt/f")" = "data before rotation" ] || fail "data lost (opened with KMS $1)"
  cli unmap "$mnt"
  assert_clean
}
snapshot_state() {
  header_copy
  { sha256sum <"$TEST_TMP/hdr"; rbd_cli image-meta list "rbd/$img" --format json; } >"$TEST_TMP/$1"
}

cli format "rbd/$img" --conf "$CEPH_CONF" --kms-id A --kms-config "$TEST_TMP/kms.json" \
  --volume-id "$vol" --pbkdf pbkdf2:1000
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null
echo "data before rotation" >"$mnt/f"
cli unmap "$mnt"
unwrap A "$TEST_TMP/pA"

# metadata A -> kmip K.
cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id K
[ "$(meta rbdgw.csi/encryptionKMSID)" = K ] || fail "metadata does not name KMS K"
unwrap K "$TEST_TMP/pK"
meta rbd.csi.ceph.com/dek | kmip_tool "$k" unwrap "$uid" >"$TEST_TMP/pK.pykmip" ||
  fail "PyKMIP cannot unwrap the stored DEK: $(meta rbd.csi.ceph.com/dek)"
cmp -s "$TEST_TMP/pK" "$TEST_TMP/pK.pykmip" || fail "PyKMIP unwraps another DEK than rbdgw"
header_copy
opens "$TEST_TMP/pK" || fail "the kmip KMS's passphrase does not open the header"
opens "$TEST_TMP/pA" && fail "the metadata KMS's old passphrase still opens the header"
[ "$(keyslots)" = 1 ] || fail "$(keyslots) keyslots, expected 1"
check_data K
pass "metadata -> kmip: the DEK in ceph-csi's kmip format, data intact, old passphrase refused"

# kmip K -> metadata A.
cli rotate-key "rbd/$img" "${C[@]}" --new-kms-id A
[ "$(meta rbdgw.csi/encryptionKMSID)" = A ] || fail "metadata does not name KMS A"
unwrap A "$TEST_TMP/pA2"
header_copy
opens "$TEST_TMP/pA2" || fail "the metadata KMS's new passphrase does not open the header"
opens "$TEST_TMP/pK" && fail "the kmip KMS's passphrase still opens the header"
check_data A
pass "kmip -> metadata"

# Killed after the keyslot step of a rotation to kmip: A still opens, a re-run finishes.
RBDGW_TEST_PAUSE_AT=added "$RBDGW_CLI" --run-root "$RUN_ROOT" rotate-key "rbd/$img" "${C[@]}" \
  --kms-id A --new-kms-id K 2>"$TEST_TMP/rot.err" &
pid=$!
for ((i = 0; i < 600; i++)); do
  grep -q "stopped after step added" "$TEST_TMP/rot.err" &&
    [[ "$(ps -o stat= -p $pid | tr -d " ")" == T* ]] && break
  kill -0 $pid 2>/dev/null || { cat "$TEST_TMP/rot.err" >&2; fail "rotate-key exited early"; }
  sleep 0.1
done
kill -9 $pid
wait $pid || true
[ "$(meta rbdgw.csi/encryptionKMSID)" = A ] || fail "killed after 'added': metadata does not name A"
check_data A
cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id K
check_data K
header_copy
[ "$(keyslots)" = 1 ] || fail "$(keyslots) keyslots after the re-run, expected 1"
pass "killed after 'added' towards kmip: opens with A, a re-run finishes with K"

# Back to A, then the KMIP server down: a rotation to it changes nothing.
cli rotate-key "rbd/$img" "${C[@]}" --kms-id K --new-kms-id A
kmip_stop "$k"
_kmip_reap
snapshot_state before
start=$(date +%s)
if cli rotate-key "rbd/$img" "${C[@]}" --kms-id A --new-kms-id K 2>"$TEST_TMP/down.err"; then
  fail "rotation to a KMIP server that is down succeeded"
fi
(($(date +%s) - start < 60)) || fail "rotation to a down KMIP server took $(($(date +%s) - start)) s"
grep -q "KMS 'K'" "$TEST_TMP/down.err" || fail "the error does not name the KMS: $(cat "$TEST_TMP/down.err")"
snapshot_state after
cmp -s "$TEST_TMP/before" "$TEST_TMP/after" || fail "a failed rotation to kmip changed the volume"
check_data A
pass "KMIP server down: the rotation fails ($(head -c 200 "$TEST_TMP/down.err")), nothing changed"
