#!/usr/bin/env bash
# `rbdgw serve` with TLS against real clients:
#  - libnbd (nbdcopy/nbdinfo) over TLS PSK writes an export, and reads it back
#    over x509 with a client certificate verified against the CA;
#  - qemu-img convert and qemu-io with --object tls-creds-psk / tls-creds-x509;
#  - NBD_OPT_LIST shows each identity only the exports granted to it;
#  - a read-only grant refuses writes (server side: nbdkit --readonly) and
#    still reads the same bytes;
#  - a backend nbdkit killed with -9 is started again by the next connection.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/serve/serve-functions.sh"
requires which qemu-img qemu-io

new_image img 64M

make_psk "$TEST_TMP/server.psk" alice bob
psk_client_file "$TEST_TMP/server.psk" alice "$TEST_TMP/alice.psk"
psk_client_file "$TEST_TMP/server.psk" bob "$TEST_TMP/bob.psk"
make_ca "$TEST_TMP/ca" "rbdgw test CA"
make_cert "$TEST_TMP/ca" "$TEST_TMP/pki" server "localhost" server
make_cert "$TEST_TMP/ca" "$TEST_TMP/carol" client "carol"
mkdir -p "$TEST_TMP/qpsk" && cp "$TEST_TMP/alice.psk" "$TEST_TMP/qpsk/keys.psk"

cat >"$TEST_TMP/serve.json" <<J
{ "listen": ["127.0.0.1:0"],
  "tls": { "psk_file": "$TEST_TMP/server.psk", "certificates": "$TEST_TMP/pki" },
  "cluster": { "conf": "$CEPH_CONF" },
  "run_dir": "$SERVE_RUN",
  "exports": [
    { "name": "vol", "image": "rbd/$img", "encryption": "none",
      "allow": ["psk:alice", "x509:carol"] },
    { "name": "vol-ro", "image": "rbd/$img", "read_only": true, "encryption": "none",
      "allow": ["psk:alice", "psk:bob", "x509:carol"] } ] }
J
start_serve "$TEST_TMP/serve.json"
[ -n "$SERVE_PORT" ] || fail "no TCP port in the server log"
P=$SERVE_PORT
psk_uri() { echo "nbds://$1@127.0.0.1:$P/$2?tls-psk-file=$TEST_TMP/$1.psk"; }
x509_uri() { echo "nbds://127.0.0.1:$P/$1?tls-certificates=$TEST_TMP/carol"; }

# libnbd, PSK: write; x509: read back.
head -c 64M /dev/urandom >"$TEST_TMP/data"
nbdcopy "$TEST_TMP/data" "$(psk_uri alice vol)"
pass "nbdcopy wrote 64 MiB over TLS PSK"
size=$(nbdinfo --size "$(x509_uri vol)")
[ "$size" = $((64 << 20)) ] || fail "size over x509: $size"
nbdcopy "$(x509_uri vol)" "$TEST_TMP/back"
cmp "$TEST_TMP/data" "$TEST_TMP/back" || fail "bytes read over x509 differ from those written over PSK"
pass "nbdcopy read the same bytes back over TLS x509 (client certificate)"
log_has "as psk:alice"
log_has "as x509:carol"

# Listing: only granted exports.
nbdinfo --list --json "nbds://bob@127.0.0.1:$P/?tls-psk-file=$TEST_TMP/bob.psk" >"$TEST_TMP/list-bob" ||
  fail "nbdinfo --list as bob failed"
grep -q '"export-name": "vol-ro"' "$TEST_TMP/list-bob" || fail "bob's list lacks vol-ro"
grep -q '"export-name": "vol"' "$TEST_TMP/list-bob" && fail "bob's list shows vol, not granted to him"
nbdinfo --list --json "$(psk_uri alice "")" >"$TEST_TMP/list-alice" || fail "nbdinfo --list as alice failed"
grep -q '"export-name": "vol"' "$TEST_TMP/list-alice" || fail "alice's list lacks vol"
pass "NBD_OPT_LIST shows each identity only its granted exports"

# Read-only grant: writes refused by the server, reads fine.
if nbdcopy "$TEST_TMP/data" "$(psk_uri bob vol-ro)" 2>"$TEST_TMP/err"; then
  fail "a write to the read-only export succeeded"
fi
grep -qiE "read.?only|permission|not permitted|EPERM|EROFS" "$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "read-only refusal without a clear error"; }
nbdinfo --json "$(psk_uri bob vol-ro)" | grep -q '"is_read_only": true' || fail "vol-ro not advertised read-only"
nbdcopy "$(psk_uri bob vol-ro)" "$TEST_TMP/back-ro"
cmp "$TEST_TMP/data" "$TEST_TMP/back-ro" || fail "read-only export reads different bytes"
pass "read-only grant: writes refused, reads the same bytes"

# qemu: x509 and PSK creds.
qemu-img convert -O raw \
  --object "tls-creds-x509,id=tls0,dir=$TEST_TMP/carol,endpoint=client" \
  --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=vol,tls-creds=tls0" \
  "$TEST_TMP/qemu-x509" || fail "qemu-img convert over x509"
cmp "$TEST_TMP/data" "$TEST_TMP/qemu-x509" || fail "qemu-img convert (x509) read different bytes"
pass "qemu-img convert with tls-creds-x509 reads the export"
qemu-img convert -O raw \
  --object "tls-creds-psk,id=tls0,dir=$TEST_TMP/qpsk,username=alice,endpoint=client" \
  --image-opts "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,export=vol,tls-creds=tls0" \
  "$TEST_TMP/qemu-psk" || fail "qemu-img convert over PSK"
cmp "$TEST_TMP/data" "$TEST_TMP/qemu-psk" || fail "qemu-img convert (PSK) read different bytes"
pass "qemu-img convert with tls-creds-psk reads the export"

qopts="driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$P,tls-creds=tls0"
qemu-io --object "tls-creds-psk,id=tls0,dir=$TEST_TMP/qpsk,username=alice,endpoint=client" \
  --image-opts "$qopts,export=vol" -c "write -P 0xab 1M 64k" -c "flush" >"$TEST_TMP/qio" 2>&1 ||
  { cat "$TEST_TMP/qio" >&2; fail "qemu-io write over PSK"; }
qemu-io --object "tls-creds-x509,id=tls0,dir=$TEST_TMP/carol,endpoint=client" \
  --image-opts "$qopts,export=vol" -c "read -P 0xab 1M 64k" >"$TEST_TMP/qio" 2>&1 ||
  { cat "$TEST_TMP/qio" >&2; fail "qemu-io read-back over x509"; }
grep -q "Pattern verification failed" "$TEST_TMP/qio" && fail "qemu-io read a different pattern"
pass "qemu-io writes over PSK, reads the pattern back over x509"
if qemu-io --object "tls-creds-psk,id=tls0,dir=$TEST_TMP/qpsk,username=alice,endpoint=client" \
  --image-opts "$qopts,export=vol-ro" -c "write -P 0xcd 0 64k" >"$TEST_TMP/qio" 2>&1 &&
  ! grep -qiE "error|denied|read-only|not permitted" "$TEST_TMP/qio"; then
  cat "$TEST_TMP/qio" >&2
  fail "qemu-io wrote to the read-only export"
fi
pass "qemu-io write to the read-only export refused ($(grep -m1 -iE 'error|denied|read-only|not permitted' "$TEST_TMP/qio"))"

# A backend that dies is started again at the next connection.
ro_pid=$(sed -n "s/.*export 'vol-ro': .* served by nbdkit pid \([0-9]*\).*/\1/p" "$TEST_TMP/serve.log" | head -1)
[ -n "$ro_pid" ] || fail "no pid of vol-ro's nbdkit in the log"
nbdcopy "$(psk_uri bob vol-ro)" "$TEST_TMP/ref-ro"  # with qemu-io's pattern
kill -9 "$ro_pid"
nbdcopy "$(psk_uri bob vol-ro)" "$TEST_TMP/back-ro2" || fail "vol-ro not served after its nbdkit was killed"
cmp "$TEST_TMP/ref-ro" "$TEST_TMP/back-ro2" || fail "restarted vol-ro reads different bytes"
log_has "export 'vol-ro': its nbdkit (pid $ro_pid) was killed by signal 9; restarting it"
pass "a killed backend (kill -9) is restarted at the next connection"

stop_serve "$SERVE_PID"
assert_serve_clean
pass "server stopped; no backend or socket left"
