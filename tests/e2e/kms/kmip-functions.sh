# A real KMIP server for the tests: pykmip-server (Debian python3-pykmip)
# on 127.0.0.1 and a free port, TLS 1.2 with client certificates, its
# config, sqlite database and log in one directory. Source after
# tests/lib/functions.sh.
#
#   kmip_start DIR   makes a CA, a server certificate (DNS kmip.test, IP
#                    127.0.0.1), a client certificate, an unrelated CA with
#                    its own client certificate (other-*.pem), starts the
#                    server (stopped by the test's cleanup) and writes
#                    DIR/port. DIR/creds/ holds CA_CERT, CLIENT_CERT,
#                    CLIENT_KEY as files (rbdgw's secretsDir).
#   kmip_tool DIR create|revoke ID|destroy ID|wrap ID|unwrap ID
#                    (kmip_tool.py)

# Debian's python3 (where python3-pykmip is), not whatever python3 is first in PATH.
KMIP_PY=/usr/bin/python3
requires which pykmip-server openssl
requires "$KMIP_PY" -c 'import kmip.pie.client, cryptography'

_KMIP_TOOL="$RBDGW_SOURCE_DIR/tests/e2e/kms/kmip_tool.py"
kmip_tool() { "$KMIP_PY" "$_KMIP_TOOL" "$@"; }

_kmip_certs() {
  local d=$1
  ( cd "$d" && umask 077 &&
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
      -subj "/CN=rbdgw test KMIP CA" &&
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=kmip.test" &&
    printf 'subjectAltName=DNS:kmip.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext &&
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile server.ext -out server.pem &&
    openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj "/CN=rbdgw-client" &&
    printf 'extendedKeyUsage=clientAuth\n' >client.ext &&
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
      -extfile client.ext -out client.pem &&
    openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 \
      -subj "/CN=unrelated CA" &&
    openssl req -newkey rsa:2048 -nodes -keyout other-client.key -out other-client.csr \
      -subj "/CN=rbdgw-client" &&
    openssl x509 -req -in other-client.csr -CA other-ca.pem -CAkey other-ca.key -CAcreateserial \
      -days 2 -extfile client.ext -out other-client.pem ) >"$d/openssl.log" 2>&1 ||
    { cat "$d/openssl.log" >&2; fail "making the KMIP test certificates"; }
  mkdir -m 700 "$d/creds"
  cp "$d/ca.pem" "$d/creds/CA_CERT"
  cp "$d/client.pem" "$d/creds/CLIENT_CERT"
  cp "$d/client.key" "$d/creds/CLIENT_KEY"
  chmod 600 "$d/creds/"*
}

kmip_start() {
  local d=$1 port pid
  mkdir -p "$d/policies"
  _kmip_certs "$d"
  port=$("$KMIP_PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "$port" >"$d/port"
  cat >"$d/server.conf" <<CONF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$d/server.pem
key_path=$d/server.key
ca_path=$d/ca.pem
auth_suite=TLS1.2
policy_path=$d/policies
enable_tls_client_auth=True
logging_level=INFO
database_path=$d/pykmip.db
CONF
  : >"$d/client.conf"
  # Its own process group: pykmip-server forks a multiprocessing manager,
  # which outlives a killed server unless the whole group is killed.
  setsid pykmip-server -f "$d/server.conf" -l "$d/server.log" >"$d/server.out" 2>&1 &
  pid=$!
  echo "$pid" >"$d/pid"
  cleanup_fn "kmip_stop '$d'"
  for _ in $(seq 100); do
    if "$KMIP_PY" -c "import socket,sys; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null; then
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$d/server.out" "$d/server.log" >&2
  fail "pykmip-server did not start on 127.0.0.1:$port"
}

# kmip_stop DIR: stops the server's process group (SIGTERM, then SIGKILL).
kmip_stop() {
  local d=$1 pid
  pid=$(cat "$d/pid")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 30); do kill -0 -- "-$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
}
