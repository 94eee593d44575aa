#!/usr/bin/env bash
# --idle-disconnect 1 with I/O bursts from 8 threads, each burst starting
# about 1 s after the last reply (so that requests arrive while the idle
# close is being decided or sent): every write and read succeeds and reads
# back what was written, nothing is logged, and after many idle
# close/reconnect cycles neither rbdgw-fuse (besides libfuse's on-demand
# request workers) nor the server has more threads or fds than after the
# first.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which ss

start_nbdkit sock gw -t 4 memory 64M
start_exporter "$sock" --idle-disconnect 1 --connections 1
conns() { connections_on "$sock"; }
count() { echo "$(ls "/proc/$1/task" | wc -l) threads, $(ls "/proc/$1/fd" | wc -l) fds"; }
# rbdgw-fuse's threads other than libfuse's request workers (those it starts
# on demand up to --threads, each idle one waiting in fuse_dev_do_read), and
# its fds.
own() { echo "$(grep -vxc fuse_dev_do_read /proc/"$1"/task/*/wchan | awk -F: '{ n += $2 } END { print n }') threads besides FUSE workers, $(ls "/proc/$1/fd" | wc -l) fds"; }

burst() {  # ROUNDS: 8 threads, each writes and verifies its own 64 KiB per round
  /usr/bin/python3 - "$disk" "$1" <<'PY'
import mmap, os, random, sys, threading, time
path, rounds = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
N, L = 8, 65536
bar = threading.Barrier(N + 1)
errors = []
def worker(i):
    w = mmap.mmap(-1, L); r = mmap.mmap(-1, L)
    for k in range(rounds):
        bar.wait()
        try:
            w.seek(0); w.write(os.urandom(L))
            off = (i * rounds + k) * L
            if os.pwritev(fd, [w], off) != L: raise OSError("short write")
            if os.preadv(fd, [r], off) != L: raise OSError("short read")
            if r[:] != w[:]: raise OSError("read back differs at %d" % off)
        except OSError as e:
            errors.append("thread %d round %d: %s" % (i, k, e))
        bar.wait()
ts = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
for t in ts: t.start()
for k in range(rounds):
    bar.wait(); bar.wait()
    time.sleep(1.0 + random.uniform(-0.03, 0.03))
for t in ts: t.join()
if errors:
    print("\n".join(errors), file=sys.stderr); sys.exit(1)
PY
}
burst 2 || fail "the first bursts failed"
for _ in $(seq 50); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
first_fuse=$(own "$exporter") first_gw=$(count "$gw")
burst 40 2>"$TEST_TMP/burst.err" || { cat "$TEST_TMP/burst.err" >&2; fail "I/O failed or read back wrong across idle closes"; }
if grep -E "lost|reconnect|giving up" "$exporter_log"; then fail "rbdgw-fuse logged a lost connection or a reconnect"; fi
pass "40 bursts of 8 threads around the idle close: all succeeded and read back, nothing logged"
for _ in $(seq 50); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "the connection did not close once idle"
[ "$(own "$exporter")" = "$first_fuse" ] || fail "rbdgw-fuse: $first_fuse idle after 2 bursts, $(own "$exporter") after 40"
[ "$(count "$gw")" = "$first_gw" ] || fail "nbdkit: $first_gw idle after 2 bursts, $(count "$gw") after 40"
pass "idle again: rbdgw-fuse $first_fuse, nbdkit $first_gw, as after the first bursts"
attach_loop
assert_torn_down
