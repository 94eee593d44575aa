#!/usr/bin/env bash
# A map while rotate-key is in its middle (stopped after step added, alive,
# holding the image's exclusive lock) does not open the volume under it: it
# fails naming the volume as in use, leaving nothing mounted or running;
# the rotation, let go on, finishes, and the volume then opens with the new
# KMS only, data intact.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"

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

cli format "rbd/$img" --conf "$CEPH_CONF" --kms-id A --kms-config "$TEST_TMP/kms.json" \
  --volume-id "$vol" --pbkdf pbkdf2:1000
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null
echo "data before rotation" >"$mnt/f"
cli unmap "$mnt"
rbd_cli image-meta set "rbd/$img" rbdgw.csi/encryptionKMSID A

RBDGW_TEST_PAUSE_AT=added "$RBDGW_CLI" --run-root "$RUN_ROOT" rotate-key "rbd/$img" "${C[@]}" \
  --kms-id A --new-kms-id B 2>"$TEST_TMP/rot.err" &
rot=$!
cleanup_fn "kill -CONT $rot 2>/dev/null; kill -9 $rot 2>/dev/null"
for ((i = 0; i < 600; i++)); do
  grep -q "stopped after step added" "$TEST_TMP/rot.err" && [[ "$(ps -o stat= -p $rot | tr -d " ")" == T* ]] && break
  kill -0 $rot 2>/dev/null || { cat "$TEST_TMP/rot.err" >&2; fail "rotate-key exited before step added"; }
  sleep 0.1
done
((i < 600)) || fail "rotate-key did not stop after step added"

for k in A B; do
  rc=0
  timeout 120 "$RBDGW_CLI" --run-root "$RUN_ROOT" map "rbd/$img" "${C[@]}" --kms-id $k --mount "$mnt" \
    --attach userspace >/dev/null 2>"$TEST_TMP/map.err" || rc=$?
  if [ $rc = 0 ]; then
    cli unmap "$mnt" || true
    fail "map with KMS $k succeeded while rotate-key holds the volume in its middle"
  fi
  echo "  map with KMS $k during the rotation: exit $rc: $(tail -1 "$TEST_TMP/map.err")"
  grep -Eq "in use|lock|busy|rotat" "$TEST_TMP/map.err" || fail "map with $k: message: $(cat "$TEST_TMP/map.err")"
  [ -z "$(awk -v m="$mnt" '$5 == m' /proc/self/mountinfo)" ] || fail "map with $k left a mount"
done
pass "a map while rotate-key is stopped in its middle fails naming the volume as in use"

kill -CONT $rot
wait $rot || { cat "$TEST_TMP/rot.err" >&2; fail "the rotation did not finish after SIGCONT"; }
[ -z "$(meta rbdgw.io/keyRotation)" ] || fail "rotation record left"
[ "$(meta rbdgw.csi/encryptionKMSID)" = B ] || fail "metadata does not name B"
rc=0
cli map "rbd/$img" "${C[@]}" --kms-id A --mount "$mnt" --attach userspace >/dev/null 2>"$TEST_TMP/mapA.err" || rc=$?
[ $rc != 0 ] || { cli unmap "$mnt"; fail "the old KMS A still opens after the rotation"; }
echo "  map with the old KMS A after the rotation: exit $rc: $(tail -1 "$TEST_TMP/mapA.err")"
assert_clean
cli map "rbd/$img" "${C[@]}" --kms-id B --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "data before rotation" ] || fail "data lost"
cli unmap "$mnt"
assert_clean
pass "the rotation let go on finishes; the volume opens with B, data intact"
