#!/usr/bin/env bash
# The kmip KMS checks the server's name and bounds its waits: against a real
# pykmip-server, a TLS_SERVER_NAME its certificate does not carry, and an
# endpoint host it does not carry with no TLS_SERVER_NAME, are TLS errors
# naming the KMS; a server that trickles its reply one byte at a time and
# one that never answers the TLS handshake fail within READ_TIMEOUT (plus
# the connect), naming the KMS; each time nothing is changed (no metadata,
# no header) and, while rbdgw waits, the client key is in none of its argv,
# its environment, its run directory or its messages.
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
for mode in trickle notls; do
  "$KMIP_PY" "$RBDGW_SOURCE_DIR/tests/e2e/kms/slow_kmip_server.py" "$K/server.pem" "$K/server.key" \
    "$K/slow-$mode.port" "$mode" &
  cleanup_fn "kill $!"
done
for mode in trickle notls; do
  for _ in $(seq 50); do [ -e "$K/slow-$mode.port" ] && break; sleep 0.1; done
done

entry() {  # entry ID ENDPOINT [SERVER_NAME]
  printf '"%s": {"encryptionKMSType": "kmip", "KMIP_ENDPOINT": "%s", %s
    "READ_TIMEOUT": 3, "WRITE_TIMEOUT": 3, "secretsDir": "%s"}' "$1" "$2" \
    "${3:+\"TLS_SERVER_NAME\": \"$3\",}" "$K/creds"
}
cat >"$TEST_TMP/kms.json" <<JSON
{ $(entry kmip "127.0.0.1:$port" kmip.test),
  $(entry wrong-name "127.0.0.1:$port" other.test),
  $(entry host-not-in-cert "localhost:$port"),
  $(entry trickle "127.0.0.1:$(cat "$K/slow-trickle.port")" kmip.test),
  $(entry notls "127.0.0.1:$(cat "$K/slow-notls.port")" kmip.test) }
JSON

new_image blank 64M
kms() { echo --kms-id "$1" --kms-config "$TEST_TMP/kms.json" --volume-id "$2"; }
meta() { rbd_cli image-meta get "rbd/$1" "$2" 2>/dev/null || true; }
key_line=$(sed -n 2p "$K/client.key")  # a line of the key's base64

# The good path first: the server and the credentials work.
new_image img 64M
cli format "rbd/$img" --conf "$CEPH_CONF" $(kms kmip "vol-$img") --pbkdf pbkdf2:1000
[ "$(meta "$img" rbd.csi.ceph.com/encrypted)" = encryptionPrepared ] || fail "format with KMS kmip did not prepare"
pass "a KMIP server whose certificate carries TLS_SERVER_NAME: format works"

# bad_format ID PATTERN MAX_S: format fails naming the KMS and PATTERN within MAX_S, changes nothing.
bad_format() {
  local t0 t1 pid rc=0
  t0=$(date +%s)
  "$RBDGW_CLI" --run-root "$RUN_ROOT" format "rbd/$blank" --conf "$CEPH_CONF" $(kms "$1" "vol-$blank") \
    --pbkdf pbkdf2:1000 >/dev/null 2>"$TEST_TMP/err" &
  pid=$!
  sleep 1
  if kill -0 $pid 2>/dev/null; then  # still waiting: what it exposes meanwhile
    grep -qF -- "$key_line" /proc/$pid/cmdline /proc/$pid/environ && fail "$1: the client key is in argv or environ"
    grep -rqF -- "$key_line" "$RUN_ROOT" 2>/dev/null && fail "$1: the client key is in a file under the run root"
  fi
  wait $pid || rc=$?
  t1=$(date +%s)
  [ $rc != 0 ] || fail "$1: format succeeded"
  grep -Eq "$2" "$TEST_TMP/err" || fail "$1: message lacks /$2/: $(cat "$TEST_TMP/err")"
  grep -q "KMS '$1'" "$TEST_TMP/err" || fail "$1: KMS ID not named: $(cat "$TEST_TMP/err")"
  grep -qF -- "$key_line" "$TEST_TMP/err" && fail "$1: the client key is in the message"
  [ $((t1 - t0)) -le "$3" ] || fail "$1: format took $((t1 - t0)) s, more than $3"
  echo "  $1 ($((t1 - t0)) s, exit $rc): $(tail -1 "$TEST_TMP/err")"
  [ -z "$(meta "$blank" rbd.csi.ceph.com/encrypted)" ] && [ -z "$(meta "$blank" rbd.csi.ceph.com/dek)" ] ||
    fail "$1: a failed format left metadata"
  [ "$(rbd_cli export "rbd/$blank" - 2>/dev/null | head -c 4096 | tr -d '\0' | wc -c)" = 0 ] ||
    fail "$1: a failed format wrote to the image"
}
bad_format wrong-name "TLS" 10
bad_format host-not-in-cert "TLS" 10
pass "a TLS_SERVER_NAME, or an endpoint host, the server certificate does not carry: TLS errors naming the KMS"
bad_format trickle "no answer within 3 s|truncated|malformed" 12
bad_format notls "no answer within 3 s" 12
pass "a reply trickled a byte at a time, a server silent in the TLS handshake: bounded by READ_TIMEOUT"
