# Helpers for the `rbdgw serve` tests: source after tests/lib/functions.sh.
# TLS material is made by the test itself with openssl (x509) and random
# hex keys (PSK); the server listens on 127.0.0.1 on a port the kernel picks.

RBDGW_CLI="$RBDGW_BUILD_DIR/csi-shim/cli/rbdgw"
requires test -x "$RBDGW_CLI"
requires test -f "$RBDGW_PLUGIN"
requires test -n "${CEPH_CONF:-}"
requires which nbdinfo nbdcopy openssl nbdkit

SERVE_RUN="$TEST_TMP/serve-run"

# new_image VAR SIZE: a uniquely named image, removed at the end.
new_image() {
  local __var=$1 name
  name=$(unique "serve")
  rbd_cli create --size "$2" "rbd/$name"
  cleanup_fn "rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
  printf -v "$__var" '%s' "$name"
}

# make_psk FILE IDENTITY...: a PSK file (nbdkit/psktool format, 0600) with a
# fresh random key per identity.
make_psk() {
  local f=$1 id
  shift
  : >"$f"
  chmod 0600 "$f"
  for id in "$@"; do echo "$id:$(openssl rand -hex 32)" >>"$f"; done
}

# psk_line FILE IDENTITY: that identity's line, as a one-line PSK file for a client.
psk_client_file() {
  local src=$1 id=$2 out=$3
  grep "^$id:" "$src" >"$out"
  chmod 0600 "$out"
}

# make_ca DIR NAME: a CA (DIR/ca-key.pem, DIR/ca-cert.pem).
make_ca() {
  mkdir -p "$1"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$2" \
    -keyout "$1/ca-key.pem" -out "$1/ca-cert.pem" 2>/dev/null
}

# make_cert CA-DIR OUT-DIR PREFIX CN [server]: OUT-DIR/PREFIX-{cert,key}.pem
# signed by the CA, and the CA's certificate as OUT-DIR/ca-cert.pem (the
# layout nbdkit, libnbd and qemu read). A server certificate names
# 127.0.0.1 and localhost.
make_cert() {
  local ca=$1 out=$2 prefix=$3 cn=$4 kind=${5:-client} ext="$TEST_TMP/ext-$RANDOM"
  mkdir -p "$out"
  if [ "$kind" = server ]; then
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$ext"
  else
    printf 'extendedKeyUsage=clientAuth\n' >"$ext"
  fi
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$cn" -keyout "$out/$prefix-key.pem" \
    -out "$out/$prefix.csr" 2>/dev/null
  openssl x509 -req -in "$out/$prefix.csr" -CA "$ca/ca-cert.pem" -CAkey "$ca/ca-key.pem" \
    -CAcreateserial -days 2 -extfile "$ext" -out "$out/$prefix-cert.pem" 2>/dev/null
  chmod 0600 "$out/$prefix-key.pem"
  cp "$ca/ca-cert.pem" "$out/ca-cert.pem"
}

# start_serve CONFIG: starts `rbdgw serve --config CONFIG` (log in
# $TEST_TMP/serve.log), waits until it is ready, sets SERVE_PID and
# SERVE_PORT (its first TCP listener), registers its stop.
start_serve() {
  local cfg=$1 i
  : >"$TEST_TMP/serve.log"
  "$RBDGW_CLI" serve --config "$cfg" >>"$TEST_TMP/serve.log" 2>&1 &
  SERVE_PID=$!
  cleanup_fn "stop_serve $SERVE_PID"
  for ((i = 0; i < 600; i++)); do
    grep -q "rbdgw serve: ready" "$TEST_TMP/serve.log" && break
    kill -0 "$SERVE_PID" 2>/dev/null || { cat "$TEST_TMP/serve.log" >&2; fail "rbdgw serve exited"; }
    sleep 0.1
  done
  grep -q "rbdgw serve: ready" "$TEST_TMP/serve.log" || { cat "$TEST_TMP/serve.log" >&2; fail "rbdgw serve not ready"; }
  SERVE_PORT=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$TEST_TMP/serve.log" | head -1)
}

# stop_serve PID: SIGTERM, then checks that it and its backends are gone.
stop_serve() {
  local pid=$1 i
  kill "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# assert_serve_clean: no process of ours left, no socket left in the run dir.
assert_serve_clean() {
  if ps -eo stat=,args= | awk '$1 !~ /^Z/' | grep -v grep | grep -q "$SERVE_RUN"; then
    ps -eo pid,stat,args | grep "$SERVE_RUN" | grep -v grep >&2
    fail "processes left behind"
  fi
  if [ -n "$(ls -A "$SERVE_RUN" 2>/dev/null)" ]; then
    ls -la "$SERVE_RUN" >&2
    fail "sockets left behind in the run dir"
  fi
}

# log_has TEXT: the server logged TEXT (fixed string).
log_has() {
  grep -qF -- "$1" "$TEST_TMP/serve.log" || { cat "$TEST_TMP/serve.log" >&2; fail "server log lacks: $1"; }
}
