#!/usr/bin/env bash
# `rbdgw serve` refuses, with a clear error on both sides, and keeps serving
# the others: a wrong PSK, an unknown PSK identity, a client certificate from
# an untrusted CA, no client certificate, an export not granted to the
# identity, a plain connection to a TLS-only server, an idle client (after
# negotiation_timeout; a connection past GO has none). A configuration without
# TLS is refused unless insecure_plain is explicit, which then warns.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/serve/serve-functions.sh"
requires which qemu-io

new_image img 16M
new_image img2 16M

make_psk "$TEST_TMP/server.psk" alice bob
psk_client_file "$TEST_TMP/server.psk" alice "$TEST_TMP/alice.psk"
psk_client_file "$TEST_TMP/server.psk" bob "$TEST_TMP/bob.psk"
echo "alice:$(openssl rand -hex 32)" >"$TEST_TMP/alice-wrong.psk"
echo "mallory:$(openssl rand -hex 32)" >"$TEST_TMP/mallory.psk"
chmod 0600 "$TEST_TMP"/*.psk
make_ca "$TEST_TMP/ca" "rbdgw test CA"
make_ca "$TEST_TMP/evil-ca" "some other CA"
make_cert "$TEST_TMP/ca" "$TEST_TMP/pki" server localhost server
make_cert "$TEST_TMP/ca" "$TEST_TMP/carol" client carol
# Same name, signed by a CA the server does not trust; trusts the real server CA.
make_cert "$TEST_TMP/evil-ca" "$TEST_TMP/fake-carol" client carol
cp "$TEST_TMP/ca/ca-cert.pem" "$TEST_TMP/fake-carol/ca-cert.pem"
mkdir -p "$TEST_TMP/nocert" && cp "$TEST_TMP/ca/ca-cert.pem" "$TEST_TMP/nocert/"

cat >"$TEST_TMP/serve.json" <<J
{ "listen": ["127.0.0.1:0"],
  "tls": { "psk_file": "$TEST_TMP/server.psk", "certificates": "$TEST_TMP/pki" },
  "cluster": { "conf": "$CEPH_CONF" },
  "run_dir": "$SERVE_RUN",
  "negotiation_timeout": 3,
  "exports": [
    { "name": "vol", "image": "rbd/$img", "encryption": "none",
      "allow": ["psk:alice", "psk:bob", "x509:carol"] },
    { "name": "private", "image": "rbd/$img2", "encryption": "none", "allow": ["psk:alice"] } ] }
J
start_serve "$TEST_TMP/serve.json"
P=$SERVE_PORT
alice_ok() {
  local s
  s=$(nbdinfo --size "nbds://alice@127.0.0.1:$P/vol?tls-psk-file=$TEST_TMP/alice.psk") ||
    fail "after $1: the server no longer serves alice"
  [ "$s" = $((16 << 20)) ] || fail "after $1: size $s"
}
# refused WHAT URI CLIENT-ERROR-REGEX SERVER-LOG-TEXT
refused() {
  local what=$1 uri=$2 cre=$3 slog=$4
  if nbdinfo --size "$uri" >"$TEST_TMP/out" 2>"$TEST_TMP/err"; then
    fail "$what: connection accepted (size $(cat "$TEST_TMP/out"))"
  fi
  grep -qiE "$cre" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "$what: client error does not say why (want /$cre/)"; }
  sleep 0.2
  log_has "$slog"
  alice_ok "$what"
  pass "$what: refused (client: $(head -c 160 "$TEST_TMP/err" | tr '\n' ' ')); server: '$slog'; others still served"
}
# Another client holds a connection open through all the refusals, and
# reads once they are done.
mkdir -p "$TEST_TMP/qpsk" && cp "$TEST_TMP/alice.psk" "$TEST_TMP/qpsk/keys.psk"
mkfifo "$TEST_TMP/hold"
qemu-io --object "tls-creds-psk,id=tls0,dir=$TEST_TMP/qpsk,username=alice,endpoint=client" \
  --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=vol,tls-creds=tls0" \
  <"$TEST_TMP/hold" >"$TEST_TMP/held" 2>&1 &
holder=$!
exec 7>"$TEST_TMP/hold"
cleanup_fn "exec 7>&-; kill $holder"
for ((i = 0; i < 100; i++)); do grep -q "export 'vol' opened" "$TEST_TMP/serve.log" && break; sleep 0.1; done
log_has "export 'vol' opened"

refused "wrong PSK" "nbds://alice@127.0.0.1:$P/vol?tls-psk-file=$TEST_TMP/alice-wrong.psk" \
  "tls|handshake|alert|decrypt" "TLS handshake refused"
refused "unknown PSK identity" "nbds://mallory@127.0.0.1:$P/vol?tls-psk-file=$TEST_TMP/mallory.psk" \
  "tls|handshake|alert|credentials" "unknown PSK identity 'mallory'"
refused "client certificate from an untrusted CA" "nbds://127.0.0.1:$P/vol?tls-certificates=$TEST_TMP/fake-carol" \
  "tls|handshake|alert|certificate" "client certificate:"
refused "no client certificate" "nbds://127.0.0.1:$P/vol?tls-certificates=$TEST_TMP/nocert" \
  "tls|handshake|alert|certificate" "peer did not return a certificate"
refused "export not granted" "nbds://bob@127.0.0.1:$P/private?tls-psk-file=$TEST_TMP/bob.psk" \
  "not available|unknown|No such|not found|export" "export 'private' refused: not granted to this identity"
refused "no such export" "nbds://bob@127.0.0.1:$P/nosuch?tls-psk-file=$TEST_TMP/bob.psk" \
  "not available|unknown|No such|not found|export" "export 'nosuch' refused: no such export"
refused "plain connection to a TLS-only server" "nbd://127.0.0.1:$P/vol" \
  "TLS" "this server requires TLS"

# An idle client (connects, sends nothing) is cut off after negotiation_timeout.
exec 8<>"/dev/tcp/127.0.0.1/$P"
t0=$(date +%s)
timeout 20 cat <&8 >/dev/null || fail "an idle client was not disconnected within 20 s"
exec 8<&-
el=$(($(date +%s) - t0))
[ "$el" -le 10 ] || fail "idle client disconnected after ${el}s, negotiation_timeout is 3"
log_has "negotiation timed out"
alice_ok "an idle client"
pass "an idle client is disconnected after negotiation_timeout (${el}s); others still served"

printf 'read -P 0 0 64k\nquit\n' >&7
exec 7>&-
wait "$holder" || { cat "$TEST_TMP/held" >&2; fail "the connection held through the refusals failed"; }
grep -q "read 65536/65536 bytes" "$TEST_TMP/held" || { cat "$TEST_TMP/held" >&2; fail "the held connection did not read"; }
pass "a connection held open through every refusal still reads"
stop_serve "$SERVE_PID"
assert_serve_clean

# Configuration: TLS is the default; plain NBD only when asked for, with a warning.
cat >"$TEST_TMP/plain.json" <<J
{ "listen": ["127.0.0.1:0"], "cluster": { "conf": "$CEPH_CONF" }, "run_dir": "$SERVE_RUN",
  "exports": [ { "name": "vol", "image": "rbd/$img", "encryption": "none", "allow": ["anonymous"] } ] }
J
rc=0
"$RBDGW_CLI" serve --config "$TEST_TMP/plain.json" --check 2>"$TEST_TMP/err" || rc=$?
[ "$rc" = 2 ] || fail "a config without TLS: exit $rc, expected 2"
grep -q "TLS is required" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "no clear error for a config without TLS"; }
pass "a config without TLS is refused ($(cat "$TEST_TMP/err"))"
sed -i 's/"listen"/"insecure_plain": true, "listen"/' "$TEST_TMP/plain.json"
start_serve "$TEST_TMP/plain.json"
log_has "serving NBD WITHOUT TLS"
s=$(nbdinfo --size "nbd://127.0.0.1:$SERVE_PORT/vol") || fail "plain client on an insecure_plain server"
[ "$s" = $((16 << 20)) ] || fail "plain size $s"
pass "insecure_plain serves plain NBD, with a warning in the log"
stop_serve "$SERVE_PID"
assert_serve_clean
