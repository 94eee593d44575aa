#!/usr/bin/env bash
# --idle-disconnect against a server that never hangs up after NBD_CMD_DISC
# (a proxy that forwards the disconnect but keeps both sockets open): the
# next request still connects anew and reads back, and many such cycles
# leave rbdgw-fuse with no more fds or threads (besides libfuse's
# on-demand request workers) than the first.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"

start_nbdkit up gw -t 2 memory 16M
sock=$TEST_TMP/proxy.sock
/usr/bin/python3 - "$sock" "$up" "$TEST_TMP/accepts" <<'PY' &
import os, socket, sys, threading
path, up, log = sys.argv[1:]
keep = []
l = socket.socket(socket.AF_UNIX); l.bind(path); l.listen(16)
def pump(a, b):
    while True:
        d = a.recv(65536)
        if not d:
            return  # EOF from a: tell b nothing, keep both open for good
        b.sendall(d)
while True:
    c, _ = l.accept()
    with open(log, "a") as f: f.write("accepted\n")
    s = socket.socket(socket.AF_UNIX); s.connect(up)
    keep.append((c, s))
    threading.Thread(target=pump, args=(c, s), daemon=True).start()
    threading.Thread(target=pump, args=(s, c), daemon=True).start()
PY
proxy=$!
cleanup_fn "kill $proxy"
for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
start_exporter "$sock" --idle-disconnect 1 --connections 1
own() { echo "$(grep -vxc fuse_dev_do_read /proc/"$1"/task/*/wchan | awk -F: '{ n += $2 } END { print n }') threads besides FUSE workers, $(ls "/proc/$1/fd" | wc -l) fds"; }
head -c 4096 /dev/urandom >"$TEST_TMP/block"
for k in $(seq 1 8); do
  dd if="$TEST_TMP/block" of="$disk" bs=4096 seek=$k oflag=direct conv=notrunc status=none || fail "cycle $k: write failed"
  dd if="$disk" bs=4096 skip=$k count=1 iflag=direct status=none | cmp -s - "$TEST_TMP/block" || fail "cycle $k: read back differs"
  sleep 2  # idle close (1 s), answered by no hang-up
  [ "$k" = 2 ] && first=$(own "$exporter")
done
[ "$(own "$exporter")" = "$first" ] || fail "rbdgw-fuse: $first after 2 cycles, $(own "$exporter") after 8"
n=$(wc -l <"$TEST_TMP/accepts")
[ "$n" -ge 8 ] || fail "only $n connections for 8 idle cycles: the idle close did not happen"
if grep -E "giving up" "$exporter_log"; then fail "rbdgw-fuse gave up"; fi
pass "8 idle closes the server never hung up on: every request connected anew and read back; rbdgw-fuse steady at $first"
attach_loop
assert_torn_down
