#!/usr/bin/env bash
# --conn-depth (a shared gateway's volume): a further connection that the
# server accepts but never answers (no NBD handshake: a gateway whose
# accepting thread is alive but whose connection threads are stuck or
# cannot start) must not hold up the requests sent to its slot, nor those
# behind them: they move to the connection there is once the handshake
# has waited 5 s, and the slot is not tried again for a while. Before, the
# request making the connection waited forever for the handshake, holding
# its slot's lock, and every request that picked the slot waited with it
# (review helper-40's finding, left open in stop 23).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which fio timeout
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so

# 8 workers per connection, reads held 20 ms: 32 readers fill one
# connection and spill over.
start_nbdkit sock gw --threads 8 --filter=delay memory 64M rdelay=20ms
# A unix-socket proxy in front of it: the first connection is relayed to
# nbdkit, every later one is accepted and then left silent.
proxy=$TEST_TMP/proxy.sock
/usr/bin/python3 - "$proxy" "$sock" "$TEST_TMP/silent" <<'PY' 2>"$TEST_TMP/proxy.log" &
import os, socket, sys, threading
listen_path, target, silent_log = sys.argv[1:]
srv = socket.socket(socket.AF_UNIX)
srv.bind(listen_path)
srv.listen(16)
held, first = [], True
def pump(a, b):
    try:
        while (d := a.recv(1 << 20)):
            b.sendall(d)
    except OSError:
        pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
while True:
    c, _ = srv.accept()
    if first:
        first = False
        t = socket.socket(socket.AF_UNIX)
        t.connect(target)
        threading.Thread(target=pump, args=(c, t), daemon=True).start()
        threading.Thread(target=pump, args=(t, c), daemon=True).start()
    else:
        held.append(c)  # accepted, never answered
        with open(silent_log, "a") as f: f.write("x\n")
PY
proxy_pid=$!
cleanup_fn "kill $proxy_pid"
for _ in $(seq 100); do [ -S "$proxy" ] && break; sleep 0.1; done
[ -S "$proxy" ] || fail "the proxy did not start"

start_exporter "$proxy" --connections 4 --conn-depth 8 --threads 32 --idle-threads 2 --reconnect-timeout 300
write_data 8
start=$(now)
# 120 s bounds a hang (the proxy never answers, so without the fix the
# readers never finish); it is no speed threshold: the fix's worst case is
# one 5 s handshake wait per reader.
timeout -s KILL 120 fio --name=spill --filename="$disk" --rw=randread --bs=4k --direct=1 \
  --ioengine=psync --numjobs=32 --size=8M --number_ios=40 --group_reporting \
  --output="$TEST_TMP/fio.txt" ||
  { cat "$TEST_TMP/fio.txt" "$exporter_log" >&2; fail "the reads did not finish while a further connection's handshake hung"; }
took=$(elapsed "$start")
grep -q "err= 0" "$TEST_TMP/fio.txt" || { cat "$TEST_TMP/fio.txt" >&2; fail "fio reported errors"; }
[ -s "$TEST_TMP/silent" ] || fail "no further connection was tried (the test did not test the hang)"
grep -q "a further connection to .* failed (.*handshake.*5 s" "$exporter_log" ||
  { cat "$exporter_log" >&2; fail "the hung handshake was not logged with its cause"; }
if grep -q "giving up" "$exporter_log"; then cat "$exporter_log" >&2; fail "the exporter gave up"; fi
pass "32 parallel readers served on the relayed connection ($(secs "$took") s), the silent spare logged"
# A second burst within the slots' pause: no new silent connection is made.
tries=$(wc -l <"$TEST_TMP/silent")
timeout -s KILL 120 fio --name=spill2 --filename="$disk" --rw=randread --bs=4k --direct=1 \
  --ioengine=psync --numjobs=32 --size=8M --number_ios=40 --group_reporting \
  --output="$TEST_TMP/fio2.txt" || { cat "$TEST_TMP/fio2.txt" >&2; fail "the second burst failed"; }
grep -q "err= 0" "$TEST_TMP/fio2.txt" || { cat "$TEST_TMP/fio2.txt" >&2; fail "fio reported errors"; }
[ "$(wc -l <"$TEST_TMP/silent")" = "$tries" ] || fail "the silent slot was tried again at once"
pass "a second spilling burst leaves the silent slots alone (still $tries tries)"
cmp -s <(dd if="$disk" bs=1M count=8 iflag=direct status=none) "$TEST_TMP/data" || fail "the data read back differs"
pass "data intact"
attach_loop
assert_torn_down
