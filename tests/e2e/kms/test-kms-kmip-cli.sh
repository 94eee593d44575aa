#!/usr/bin/env bash
# The kmip KMS against a real KMIP server (pykmip-server), through the CLI:
# `rbdgw format` wraps a new DEK with KMIP Encrypt, `map` unwraps it with
# Decrypt and opens the volume (data intact across unmap/map), and the
# stored DEK is ceph-csi's format both ways (checked with an independent
# AES-CBC in kmip_tool.py). Bad input each fails with a clear error and
# changes nothing (no metadata, no LUKS header, nothing mounted): server
# down, a server that never answers (bounded by READ_TIMEOUT), wrong CA,
# a client certificate the server refuses, an unknown key ID, a revoked
# key, a destroyed key, garbage / a truncated / a malformed reply.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/kms/kmip-functions.sh"
requires test -f "$RBDGW_FILTER"

K="$TEST_TMP/kmip"
mkdir -p "$K"
kmip_start "$K"
port=$(cat "$K/port")
uid=$(kmip_tool "$K" create) || fail "creating the KMIP key"
echo "$uid" >"$K/creds/UNIQUE_IDENTIFIER"

# creds NAME CA CERT KEY UID: a secretsDir for one KMS entry.
creds() {
  local d="$TEST_TMP/creds-$1"
  mkdir -m 700 "$d"
  cp "$2" "$d/CA_CERT"; cp "$3" "$d/CLIENT_CERT"; cp "$4" "$d/CLIENT_KEY"
  printf '%s\n' "$5" >"$d/UNIQUE_IDENTIFIER"
  chmod 600 "$d"/*
  echo "$d"
}
good_creds() { creds "$1" "$K/ca.pem" "$K/client.pem" "$K/client.key" "$2"; }

other=$(kmip_tool "$K" create) || fail "creating a second key"
revoked=$(kmip_tool "$K" create) && kmip_tool "$K" revoke "$revoked" || fail "revoking a key"
destroyed=$(kmip_tool "$K" create) && kmip_tool "$K" revoke "$destroyed" &&
  kmip_tool "$K" destroy "$destroyed" || fail "destroying a key"

# Fake servers and a port nobody listens on.
for mode in garbage truncated malformed silent; do
  "$KMIP_PY" "$RBDGW_SOURCE_DIR/tests/e2e/kms/fake_kmip_server.py" "$K/server.pem" "$K/server.key" \
    "$K/fake-$mode.port" "$mode" &
  cleanup_fn "kill $!"
done
for mode in garbage truncated malformed silent; do
  for _ in $(seq 50); do [ -e "$K/fake-$mode.port" ] && break; sleep 0.1; done
done
down=$("$KMIP_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

entry() {  # entry ID ENDPOINT SECRETS_DIR
  printf '"%s": {"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "%s", "TLS_SERVER_NAME": "kmip.test",
    "READ_TIMEOUT": 3, "WRITE_TIMEOUT": 3, "secretsDir": "%s"}' "$1" "$2" "$3"
}
cat >"$TEST_TMP/kms.json" <<JSON
{ $(entry kmip "127.0.0.1:$port" "$K/creds"),
  $(entry down "127.0.0.1:$down" "$(good_creds down "$uid")"),
  $(entry wrong-ca "127.0.0.1:$port" "$(creds wrong-ca "$K/other-ca.pem" "$K/client.pem" "$K/client.key" "$uid")"),
  $(entry refused-client "127.0.0.1:$port" "$(creds refused "$K/ca.pem" "$K/other-client.pem" "$K/other-client.key" "$uid")"),
  $(entry unknown-key "127.0.0.1:$port" "$(good_creds unknown 987654)"),
  $(entry other-key "127.0.0.1:$port" "$(good_creds other "$other")"),
  $(entry revoked "127.0.0.1:$port" "$(good_creds revoked "$revoked")"),
  $(entry destroyed "127.0.0.1:$port" "$(good_creds destroyed "$destroyed")"),
  $(entry garbage "127.0.0.1:$(cat "$K/fake-garbage.port")" "$(good_creds garbage "$uid")"),
  $(entry truncated "127.0.0.1:$(cat "$K/fake-truncated.port")" "$(good_creds truncated "$uid")"),
  $(entry malformed "127.0.0.1:$(cat "$K/fake-malformed.port")" "$(good_creds malformed "$uid")"),
  $(entry silent "127.0.0.1:$(cat "$K/fake-silent.port")" "$(good_creds silent "$uid")") }
JSON

new_image img 128M
new_image blank 64M
new_image csi 128M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
vol="vol-$img"
kms() { echo --kms-id "$1" --kms-config "$TEST_TMP/kms.json" --volume-id "$2"; }
meta() { rbd_cli image-meta get "rbd/$1" "$2" 2>/dev/null || true; }

# --- the good path
cli format "rbd/$img" --conf "$CEPH_CONF" $(kms kmip "$vol") --pbkdf pbkdf2:1000
[ "$(meta "$img" rbd.csi.ceph.com/encrypted)" = encryptionPrepared ] || fail "format did not prepare"
cli map "rbd/$img" --conf "$CEPH_CONF" $(kms kmip "$vol") --mount "$mnt" --attach userspace >/dev/null
echo "kmip data" >"$mnt/f"
cli unmap "$mnt"
cli map "rbd/$img" --conf "$CEPH_CONF" $(kms kmip "$vol") --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "kmip data" ] || fail "data not intact after unmap and map"
cli unmap "$mnt"
assert_clean
pass "format and map through a KMIP server, data intact across unmap/map"

# --- ceph-csi's format, both ways, with an independent AES-CBC.
meta "$img" rbd.csi.ceph.com/dek >"$TEST_TMP/wrapped"
grep -Eq '^\{"dek":"[A-Za-z0-9+/=]+","nonce":"[A-Za-z0-9+/=]{22}=="\}$' "$TEST_TMP/wrapped" ||
  fail "stored DEK is not ceph-csi's {\"dek\",\"nonce\"}: $(cat "$TEST_TMP/wrapped")"
(umask 077; kmip_tool "$K" unwrap "$uid" <"$TEST_TMP/wrapped" >"$TEST_TMP/pass")
cli map "rbd/$img" --conf "$CEPH_CONF" --passphrase-file "$TEST_TMP/pass" --volume-id "$vol" \
  --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "kmip data" ] || fail "ceph-csi's unwrap of rbdgw's DEK does not open the volume"
cli unmap "$mnt"
# A volume prepared by ceph-csi: its DEK (a 28-character passphrase) wrapped
# as kmipKMS.EncryptDEK does, state encryptionPrepared.
printf 'cephcsi-made-passphrase-0001' >"$TEST_TMP/csi-pass"
wrapped=$(kmip_tool "$K" wrap "$uid" <"$TEST_TMP/csi-pass")
rbd_cli image-meta set "rbd/$csi" rbd.csi.ceph.com/dek "$wrapped"
rbd_cli image-meta set "rbd/$csi" rbd.csi.ceph.com/encrypted encryptionPrepared
cli map "rbd/$csi" --conf "$CEPH_CONF" $(kms kmip "vol-$csi") --mount "$mnt" --attach userspace \
  --pbkdf pbkdf2:1000 >/dev/null
echo "csi data" >"$mnt/g"
cli unmap "$mnt"
cli map "rbd/$csi" --conf "$CEPH_CONF" --passphrase-file "$TEST_TMP/csi-pass" --volume-id "vol-$csi" \
  --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/g")" = "csi data" ] || fail "ceph-csi's wrapped DEK was not the one rbdgw used"
cli unmap "$mnt"
assert_clean
pass "the wrapped DEK is ceph-csi's format, read and written both ways"

# --- bad input: a clear error, nothing changed.
# bad_format ID STATUS PATTERN: format of the blank image fails, leaves it blank.
bad_format() {
  local t0 t1
  t0=$(date +%s)
  expect_status "$2" cli format "rbd/$blank" --conf "$CEPH_CONF" $(kms "$1" "vol-$blank") --pbkdf pbkdf2:1000
  t1=$(date +%s)
  grep -Eq "$3" "$TEST_TMP/err" || fail "$1: format: message lacks /$3/: $(cat "$TEST_TMP/err")"
  grep -q "KMS '$1'" "$TEST_TMP/err" || fail "$1: KMS ID not named: $(cat "$TEST_TMP/err")"
  [ $((t1 - t0)) -le 20 ] || fail "$1: format took $((t1 - t0)) s"
  echo "  $1 ($((t1 - t0)) s): $(tail -1 "$TEST_TMP/err")"
  [ -z "$(meta "$blank" rbd.csi.ceph.com/encrypted)" ] && [ -z "$(meta "$blank" rbd.csi.ceph.com/dek)" ] ||
    fail "$1: a failed format left metadata"
  [ "$(rbd_cli export "rbd/$blank" - 2>/dev/null | head -c 4096 | tr -d '\0' | wc -c)" = 0 ] ||
    fail "$1: a failed format wrote to the image"
}
# bad_map ID STATUS PATTERN: map of the formatted volume fails, nothing mounted.
bad_map() {
  expect_status "$2" cli map "rbd/$img" --conf "$CEPH_CONF" $(kms "$1" "$vol") --mount "$mnt" --attach userspace
  grep -Eq "$3" "$TEST_TMP/err" || fail "$1: map: message lacks /$3/: $(cat "$TEST_TMP/err")"
  echo "  map $1: $(tail -1 "$TEST_TMP/err")"
  assert_clean
}
bad_format down 1 "127.0.0.1:$down.*(refused|Connection refused)"
bad_map down 1 "Connection refused"
t0=$(date +%s)
bad_format silent 1 "no answer within 3 s"
[ $(($(date +%s) - t0)) -ge 3 ] || fail "silent server: gave up before READ_TIMEOUT"
bad_format wrong-ca 1 "TLS.*certificate verify failed"
bad_map wrong-ca 1 "certificate verify failed"
bad_format refused-client 1 "TLS"
bad_map refused-client 1 "TLS"
bad_format unknown-key 3 "Item Not Found"
bad_map unknown-key 3 "Item Not Found"
# Another (active) key: pykmip's Decrypt fails the PKCS5 padding with a
# General Failure (exit 1), named as a likely wrong key.
bad_map other-key 1 "KMIP Decrypt failed.*wrapped by another key"
bad_format revoked 1 "Permission Denied"
bad_map revoked 1 "Permission Denied"
bad_format destroyed 3 "Item Not Found"
bad_map destroyed 3 "Item Not Found"
for m in garbage truncated malformed; do
  bad_format "$m" 1 "malformed reply|truncated reply"
  bad_map "$m" 1 "malformed reply|truncated reply"
done
grep -q "truncated reply" <(cli format "rbd/$blank" --conf "$CEPH_CONF" $(kms truncated "vol-$blank") 2>&1) ||
  fail "a truncated reply is not called truncated"
pass "server down, silent server, wrong CA, refused client, unknown/other/revoked/destroyed key, bad replies: clear errors, nothing changed"

# The good volume still opens after all that.
cli map "rbd/$img" --conf "$CEPH_CONF" $(kms kmip "$vol") --mount "$mnt" --attach userspace >/dev/null
[ "$(cat "$mnt/f")" = "kmip data" ] || fail "volume damaged by the failed attempts"
cli unmap "$mnt"
assert_clean
grep -q "BEGIN" <(cat "$TEST_TMP/err" "$K/server.log" 2>/dev/null) && fail "a PEM block reached a log"
pass "volume intact after the failures"
