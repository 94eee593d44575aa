#!/usr/bin/env bash
# Many requests in flight on ONE connection (libnbd aio): 64 O_DIRECT
# writers on a direct-io loop device over the FUSE file (--threads 64), the
# gateway (nbdkit file, 64 threads, each write held 200 ms by its delay
# filter) killed with kill -9 while at least 48 writes are open on the
# connection: once a new gateway serves the socket every write completes
# without error and the image holds exactly what was written. Then the
# image grows under 16 writers that read back each write (SIGUSR1): no
# request fails, the file shows the new size and the writers use it.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-log-filter.so

img="$TEST_TMP/img"
truncate -s 160M "$img"
nbdlog="$TEST_TMP/nbd.log"
start_nbdkit sock gw -t 64 --filter=log --filter=delay file "$img" wdelay=200ms logfile="$nbdlog"
start_exporter "$sock" --connections 1 --threads 64 --max-background 64 --reconnect-timeout 60 --size-file "$TEST_TMP/size"
attach_loop_direct() {
  loop=$(losetup --find --show --direct-io=on "$disk")
  cleanup_fn "losetup -d $loop 2>/dev/null"
}
attach_loop_direct

python3 - "$loop" "$TEST_TMP/want" >"$TEST_TMP/writers.out" 2>&1 <<'PY' &
import mmap, os, sys, threading
dev, want = sys.argv[1:]
fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
per = 1 << 20
image = bytearray(64 * per)
errors = []
def writer(t):
    buf = mmap.mmap(-1, 64 << 10)
    for j in range(per // (64 << 10)):
        off = t * per + j * (64 << 10)
        data = os.urandom(64 << 10)
        buf[:] = data
        try:
            if os.pwrite(fd, buf, off) != len(data): raise OSError("short write")
        except OSError as e:
            errors.append(f"writer {t} at {off}: {e}"); return
        image[off:off + len(data)] = data
threads = [threading.Thread(target=writer, args=(t,)) for t in range(64)]
for t in threads: t.start()
for t in threads: t.join()
os.fsync(fd)
os.close(fd)
open(want, "wb").write(image)
print("\n".join(errors) if errors else "all writes ok")
sys.exit(1 if errors else 0)
PY
writers=$!
cleanup_fn "kill $writers 2>/dev/null"
open_writes() {
  python3 - "$1" <<'PY'
import re, sys
started, done, conns = set(), set(), set()
for l in open(sys.argv[1]):
    if m := re.search(r"connection=(\d+) Write id=(\d+)", l):
        started.add((m[1], m[2])); conns.add(m[1])
    elif m := re.search(r"connection=(\d+) \.\.\.Write id=(\d+)", l):
        done.add((m[1], m[2]))
print(len(started - done), len(conns))
PY
}
open="0 0"
for _ in $(seq 400); do
  open=$(open_writes "$nbdlog" 2>/dev/null) || open="0 0"
  [ "${open% *}" -ge 48 ] && break
  kill -0 "$writers" 2>/dev/null || break
  sleep 0.05
done
kill -9 "$gw"
sleep 0.3
read -r n_open n_conns <<<"$(open_writes "$nbdlog")"
[ "$n_conns" = 1 ] || fail "the writes came on $n_conns connections, not 1"
[ "$n_open" -ge 48 ] || fail "only $n_open write(s) in flight on the connection when the gateway died"
rm -f "$sock"
nbdkit -U "$sock" -P "$TEST_TMP/gw2.pid" -t 64 file "$img"
cleanup_fn "kill \$(cat '$TEST_TMP/gw2.pid')"
wait "$writers" || fail "writes across the kill -9 failed: $(head -5 "$TEST_TMP/writers.out")"
cmp <(head -c $((64 * MiB)) "$img") "$TEST_TMP/want" || fail "the image differs from what the 64 writers wrote"
grep -q "reconnected" "$exporter_log" || fail "the exporter log shows no reconnect"
pass "kill -9 with $n_open writes in flight on one connection: all 64 writers' writes completed, image intact"

python3 - "$loop" "$disk" $((160 * MiB)) $((192 * MiB)) "$img" >"$TEST_TMP/resize.out" 2>&1 <<'PY' &
import mmap, os, sys, threading, time
dev, path, old, new, img = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
fd = os.open(path, os.O_RDWR | os.O_DIRECT)
errors, beyond = [], [0]
t_end = [None]
def worker(t):
    buf, rb, j = mmap.mmap(-1, 64 << 10), mmap.mmap(-1, 64 << 10), 0
    while t_end[0] is None or time.time() < t_end[0]:
        size = os.fstat(fd).st_size
        if size == new and t_end[0] is None: t_end[0] = time.time() + 2
        off = ((t * 997 + j * 131) % (size // (64 << 10))) * (64 << 10); j += 1
        data = os.urandom(64 << 10); buf[:] = data
        try:
            os.pwrite(fd, buf, off); os.preadv(fd, [rb], off)
        except OSError as e:
            errors.append(f"worker {t} at {off} (size {size}): {e}"); return
        if rb[:] != data: errors.append(f"worker {t}: {off} read back other data")
        if off >= old: beyond[0] += 1
        if time.time() > start + 30: errors.append("the new size never showed"); return
start = time.time()
ts = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
for t in ts: t.start()
for t in ts: t.join()
print("\n".join(errors[:5]) if errors else f"ok {beyond[0]} writes beyond the old end")
sys.exit(1 if errors or beyond[0] == 0 else 0)
PY
resizer=$!
cleanup_fn "kill $resizer 2>/dev/null"
sleep 1
truncate -s 192M "$img"
kill -USR1 "$exporter"
wait "$resizer" || fail "I/O across the size refresh: $(cat "$TEST_TMP/resize.out")"
[ "$(cat "$TEST_TMP/size")" = $((192 * MiB)) ] || fail "size file: '$(cat "$TEST_TMP/size" 2>/dev/null)'"
pass "the image grew under 16 writers (SIGUSR1): no error, $(cat "$TEST_TMP/resize.out")"
losetup -d "$loop"
