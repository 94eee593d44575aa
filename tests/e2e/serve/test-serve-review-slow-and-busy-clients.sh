#!/usr/bin/env bash
# `rbdgw serve` against clients that are slow or busy (review R3):
# - negotiation_timeout bounds the whole time from accept to NBD_OPT_GO: a
#   client that trickles a valid handshake one byte a second (each read well
#   inside the timeout) is still cut off once the timeout has passed;
# - a client with reads and writes in flight at once (its replies read by
#   another thread, as libnbd, qemu and the kernel do) gets every reply: the
#   relay must not stop reading the backend's replies while it is blocked
#   writing the client's requests to it.
# - a thousand idle connections (under the usual soft limit of 1024 open
#   files, systemd's default) do not lock a good client out until their
#   negotiation timeouts run out;
# - a client-chosen export name is logged escaped: a newline in it cannot
#   forge a log line.
# Plain NBD (insecure_plain) so that hand-made clients can speak it; the
# front's relay and deadline are the same code with TLS.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/serve/serve-functions.sh"
requires which python3
CLIENT="$RBDGW_SOURCE_DIR/tests/e2e/serve/review_client.py"

new_image img 64M
cat >"$TEST_TMP/serve.json" <<J
{ "listen": ["127.0.0.1:0"], "insecure_plain": true,
  "cluster": { "conf": "$CEPH_CONF" }, "run_dir": "$SERVE_RUN",
  "negotiation_timeout": 3,
  "exports": [ { "name": "vol", "image": "rbd/$img", "encryption": "none", "allow": ["anonymous"] } ] }
J
start_serve "$TEST_TMP/serve.json"
P=$SERVE_PORT

# 1. A trickling client: a byte a second for 10 s, timeout 3 s.
t0=$(date +%s)
r=$(timeout 60 python3 "$CLIENT" drip 127.0.0.1 "$P" 10) || fail "drip client failed"
el=$(($(date +%s) - t0))
[ "$r" = closed ] || fail "a client trickling its handshake for ${el}s was still served (negotiation_timeout 3): '$r'"
log_has "negotiation timed out"
s=$(nbdinfo --size "nbd://127.0.0.1:$P/vol") || fail "after the trickling client: not served"
[ "$s" = $((64 << 20)) ] || fail "size $s"
pass "a client trickling its handshake is cut off at negotiation_timeout; others still served"

# 2. Reads and writes in flight at once: 64 pairs of 1 MiB READ + 1 MiB WRITE.
r=$(timeout 120 python3 "$CLIENT" mixed 127.0.0.1 "$P" vol 64 1) || fail "mixed client failed: $r"
case "$r" in
  done*) ;;
  *) fail "reads and writes in flight at once through the relay: $r" ;;
esac
# The writes landed: every 1 MiB slot holds the pattern.
nbdcopy "nbd://127.0.0.1:$P/vol" "$TEST_TMP/back.raw" || fail "read back"
python3 - "$TEST_TMP/back.raw" <<'PY' || fail "written pattern not read back"
import sys
p = bytes(range(256)) * 4096
d = open(sys.argv[1], "rb").read()
assert len(d) == 64 << 20
assert all(d[i:i + len(p)] == p for i in range(0, len(d), len(p))), "mismatch"
PY
pass "64 MiB of reads and 64 MiB of writes in flight at once: $r, data read back"

# 4. A refused export name with a newline cannot forge a log line.
r=$(python3 "$CLIENT" goname 127.0.0.1 "$P" 'nosuch\nrbdgw: info: 10.0.0.9:1 (psk:admin): export secret opened')
[ "$r" = refused ] || fail "export 'nosuch...' with a newline: $r"
sleep 0.2
if grep -q '^rbdgw: info: 10.0.0.9:1' "$TEST_TMP/serve.log"; then
  grep -n -B1 '^rbdgw: info: 10.0.0.9:1' "$TEST_TMP/serve.log" >&2
  fail "a client-chosen export name forged a log line"
fi
log_has "export 'nosuch\x0arbdgw: info: 10.0.0.9:1"
pass "a client-chosen export name is logged escaped (no forged log line)"

stop_serve "$SERVE_PID"
assert_serve_clean

# 3. 1100 idle connections, soft limit 1024 open files, negotiation_timeout 30:
#    a good client still gets in at once.
requires which prlimit
hard=$(ulimit -Hn)
[ "$hard" = unlimited ] || [ "$hard" -gt 4096 ] || { echo "SKIP: hard open-files limit $hard"; exit 77; }
sed -i 's/"negotiation_timeout": 3/"negotiation_timeout": 30/' "$TEST_TMP/serve.json"
RBDGW_CLI_REAL=$RBDGW_CLI
printf '#!/bin/sh\nexec prlimit --nofile=1024:%s %s "$@"\n' "$hard" "$RBDGW_CLI_REAL" >"$TEST_TMP/rbdgw-1024"
chmod +x "$TEST_TMP/rbdgw-1024"
RBDGW_CLI=$TEST_TMP/rbdgw-1024
start_serve "$TEST_TMP/serve.json"
RBDGW_CLI=$RBDGW_CLI_REAL
P=$SERVE_PORT
mkfifo "$TEST_TMP/idle-ready"
python3 - "$P" >"$TEST_TMP/idle-ready" <<'PY' &
import socket, sys, time
ss = []
for _ in range(1100):
    try:
        ss.append(socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=0.5))
    except OSError:
        pass
print(len(ss), flush=True)
time.sleep(40)
PY
idler=$!
cleanup_fn "kill $idler 2>/dev/null"
read -r held <"$TEST_TMP/idle-ready"
[ "${held:-0}" -ge 1000 ] || fail "could open only ${held:-0} of 1100 idle connections"
sleep 1
t0=$(date +%s%N)
s=$(timeout 25 nbdinfo --size "nbd://127.0.0.1:$P/vol") || fail "with 1100 idle connections open, a good client was not served within 25 s"
ms=$((($(date +%s%N) - t0) / 1000000))
[ "$ms" -lt 5000 ] || fail "with 1100 idle connections open, a good client waited ${ms} ms"
if grep -q "Too many open files" "$TEST_TMP/serve.log"; then fail "accept ran out of descriptors"; fi
kill "$idler" 2>/dev/null; wait "$idler" 2>/dev/null || true
pass "1100 idle connections (soft limit 1024 open files): a good client served in ${ms} ms"
stop_serve "$SERVE_PID"
assert_serve_clean
