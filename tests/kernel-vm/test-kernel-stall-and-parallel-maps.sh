#!/usr/bin/env bash
# The kernel attach path (`rbdgw map --attach=kernel`) across a stalled
# gateway and under parallel maps, in a real kernel (one VM boot, its own
# cluster in the guest):
#
# 1. I/O waits out a stall. A writer issues O_DIRECT writes of 64 KiB, each
#    followed by fsync, to /dev/nbdN; the gateway is stopped (SIGSTOP) for
#    longer than the old 30 s I/O timeout (45 s), so a write or flush waits
#    that long; then resumed. Every write and fsync must complete without an
#    error, every block read back (O_DIRECT, and from RADOS with librbd)
#    must hold its pattern, and the kernel must not have dropped the
#    connection ("Connection timed out") nor logged an I/O error. While the
#    gateway is stopped, `rbdgw status` says the connection is up.
# 2. Status tells a dead connection. After a kill -9 of the gateway,
#    `rbdgw status --json` has nbd_connected false; `rbdgw reattach`
#    reconnects the device and the volume is healthy and writable again.
#    With lib/attach's netlink client alone (kvm-nbd, a 3 s I/O timeout), a
#    connection the kernel gave up while its server is alive (stopped) reads
#    as down (nbd_server_connected), and up before.
# 3. Parallel maps get their own devices. Six images are mapped at once:
#    every map succeeds, each on its own /dev/nbdN connected for its own
#    volume (sysfs backend), each device reads back its own data after all
#    were written; the unmaps (also at once) leave nothing. A map that fails
#    after its device was connected (asked for xfs, the volume holds ext4)
#    disconnects only its own device: another volume's stays up.
#
# Knobs (host environment, passed into the guest): RBDGW_TEST_PARTS (which
# parts to run, default "stall parallel"), RBDGW_TEST_STALL_S (45),
# RBDGW_TEST_RESUME_WAIT_S (120: how long the writer may take after SIGCONT;
# the pre-fix kernel setup fails its requests with EIO only after the 300 s
# dead-connection timeout, so 330 shows the EIO).
source "${RBDGW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/tests/lib/functions.sh"

KVM_NBD=$RBDGW_BUILD_DIR/tests/kernel-vm/kvm-nbd
for f in "$RBDGW_PLUGIN" "$RBDGW_BUILD_DIR/csi-shim/cli/rbdgw" "$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse" "$KVM_NBD"; do
  [ -e "$f" ] || fail "$f not built (build nbdkit-rbd-plugin, rbdgw-cli, rbdgw-fuse and kvm-nbd)"
done

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  rc=0
  "$RBDGW_SOURCE_DIR/tests/kernel-vm/run-in-vm.sh" --mem 2048 --timeout "${RBDGW_VM_TIMEOUT:-1500}" "$0" || rc=$?
  exit "$rc"
fi

# --- in the guest ----------------------------------------------------------------
requires which blockdev jq dmesg cmp nbdkit /usr/bin/python3
/usr/bin/python3 -c 'import rados, rbd' 2>/dev/null || { echo "python3-rbd missing" >&2; exit 77; }
modprobe nbd
modprobe dm-crypt
modprobe fuse  # /dev/fuse, which cli-functions.sh requires (unused on the kernel path)
stall_s=${RBDGW_TEST_STALL_S:-45}
resume_wait_s=${RBDGW_TEST_RESUME_WAIT_S:-120}
cluster=$TEST_TMP/cluster
start=$(date +%s)
eval "$(CEPH_CLUSTER_TIMEOUT=600 CEPH_CLUSTER_CLI_TIMEOUT=300 "$RBDGW_SOURCE_DIR/tests/cluster/ceph-cluster.sh" start "$cluster")"
cleanup_fn "'$RBDGW_SOURCE_DIR/tests/cluster/ceph-cluster.sh' stop '$cluster'"
echo "cluster up in the guest in $(( $(date +%s) - start )) s"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

errors=0
bad() { echo "$TEST_NAME: FAIL: $*" >&2; errors=$((errors + 1)); }
assert_kernel_clean() {
  assert_clean
  if ls /dev/mapper/luks-* >/dev/null 2>&1; then fail "dm-crypt mapping left behind: $(ls /dev/mapper/luks-*)"; fi
  if ls /sys/block/nbd*/pid >/dev/null 2>&1; then fail "nbd device left connected: $(ls /sys/block/nbd*/pid)"; fi
}
map_raw() { cli map "rbd/$1" --conf "$CEPH_CONF" --attach kernel "${@:2}"; }
# status_json VOLUME / status_field VOLUME FIELD (rbdgw status exits 1 when unhealthy).
status_json() { { cli status --json "$1" 2>/dev/null || true; } | jq -c '{healthy, gateway_alive, nbd_connected}'; }
status_field() { { cli status --json "$1" 2>/dev/null || true; } | jq -r ".$2"; }

# Blocks of 64 KiB, each a pattern naming it and the run (so an old block
# cannot pass for a new one).
cat >"$TEST_TMP/blocks.py" <<'EOF'
import mmap, os, sys, time
BLOCK = 65536
def pattern(tag, i):
    p = b'%s-block-%06d-' % (tag.encode(), i)
    return (p * (BLOCK // len(p) + 1))[:BLOCK]
cmd, tag = sys.argv[1], sys.argv[2]
if cmd == 'write':      # write TAG DEV COUNT LOG [STOPFILE]: O_DIRECT write + fsync
    dev, count, log = sys.argv[3], int(sys.argv[4]), sys.argv[5]  # each; COUNT at most,
    stop = sys.argv[6] if len(sys.argv) > 6 else None               # fewer once STOPFILE exists
    fd = os.open(dev, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)
    t0 = time.monotonic()
    with open(log, 'w', buffering=1) as out:
        for i in range(count):
            if stop and os.path.exists(stop): break
            buf.seek(0); buf.write(pattern(tag, i))
            try:
                os.pwrite(fd, buf, i * BLOCK)
                os.fsync(fd)
            except OSError as e:
                print('block %d: %s after %.1f s' % (i, e, time.monotonic() - t0), file=out)
                sys.exit(1)
            print('%d %.1f' % (i, time.monotonic() - t0), file=out)
elif cmd == 'check':    # check TAG DEV COUNT: O_DIRECT read of each block
    dev, count = sys.argv[3], int(sys.argv[4])
    fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)
    bad = [i for i in range(count) if os.preadv(fd, [buf], i * BLOCK) != BLOCK or buf[:] != pattern(tag, i)]
    if bad: sys.exit('%d of %d blocks wrong, first %d' % (len(bad), count, bad[0]))
elif cmd == 'rados':    # rados TAG CONF IMAGE COUNT: the same, from RADOS (librbd)
    import rados, rbd
    conf, name, count = sys.argv[3], sys.argv[4], int(sys.argv[5])
    with rados.Rados(conffile=conf) as c, c.open_ioctx('rbd') as io, rbd.Image(io, name, read_only=True) as img:
        bad = [i for i in range(count) if img.read(i * BLOCK, BLOCK) != pattern(tag, i)]
    if bad: sys.exit('%d of %d blocks wrong in RADOS, first %d' % (len(bad), count, bad[0]))
EOF
blocks() { /usr/bin/python3 "$TEST_TMP/blocks.py" "$@"; }

parts=" ${RBDGW_TEST_PARTS:-stall parallel} "
if [[ $parts == *" stall "* ]]; then
# --- 1. I/O waits out a stalled gateway ---------------------------------------------
new_image stall 64M
vol=rbd.$stall
stash="$RUN_ROOT/$vol/stash.json"
dev=$(map_raw "$stall")
[[ $dev == /dev/nbd[0-9]* ]] || fail "map printed '$dev', not /dev/nbdN"
gw=$(jq -r .gateway.pid "$stash")
cleanup_fn "kill -CONT $gw 2>/dev/null"
mount -t debugfs none /sys/kernel/debug 2>/dev/null || true
echo "$dev: I/O timeout (debugfs, jiffies): $(cat "/sys/kernel/debug/nbd/${dev#/dev/}/timeout" 2>/dev/null || echo n/a)"
dmesg -C
# The writer goes on until told to stop (at most the whole 64 MiB image), so
# that it is writing when the gateway stops and again after it resumes.
: >"$TEST_TMP/w.log"
blocks write stall "$dev" 1024 "$TEST_TMP/w.log" "$TEST_TMP/w.stop" 2>"$TEST_TMP/w.err" &
writer=$!
cleanup_fn "kill -9 $writer 2>/dev/null"
for _ in $(seq 600); do [ "$(wc -l <"$TEST_TMP/w.log")" -ge 5 ] && break; sleep 0.1; done
[ "$(wc -l <"$TEST_TMP/w.log")" -ge 5 ] || fail "the writer did not get going: $(cat "$TEST_TMP/w.log" "$TEST_TMP/w.err")"
kill -STOP "$gw"
t_stop=$SECONDS
echo "gateway $gw stopped after $(wc -l <"$TEST_TMP/w.log") writes; waiting ${stall_s} s"
sleep "$stall_s"
if ! kill -0 "$writer" 2>/dev/null; then
  rc=0; wait "$writer" || rc=$?
  bad "the writer ended (rc $rc) while the gateway was stopped: $(tail -1 "$TEST_TMP/w.log")"
fi
up=$(status_field "$vol" nbd_connected)
[ "$up" = true ] || bad "status while the gateway is stopped ${stall_s} s: nbd_connected '$up' (the connection should still be up)"
n_stop=$(wc -l <"$TEST_TMP/w.log")
kill -CONT "$gw"
t_cont=$SECONDS
# After the resume: the blocked write completes and a few more follow.
for _ in $(seq $((resume_wait_s * 10))); do [ "$(wc -l <"$TEST_TMP/w.log")" -ge $((n_stop + 5)) ] && break; kill -0 "$writer" 2>/dev/null || break; sleep 0.1; done
touch "$TEST_TMP/w.stop"
finished=
for _ in $(seq $((resume_wait_s * 10 - (SECONDS - t_cont) * 10))); do kill -0 "$writer" 2>/dev/null || { finished=1; break; }; sleep 0.1; done
if [ -z "$finished" ]; then
  bad "the writer is still blocked $((SECONDS - t_cont)) s after SIGCONT ($((SECONDS - t_stop)) s after SIGSTOP); last: $(tail -1 "$TEST_TMP/w.log")"
  echo "status now: $(status_json "$vol")"
else
  rc=0; wait "$writer" || rc=$?
  count=$(wc -l <"$TEST_TMP/w.log")
  echo "writer ended (rc $rc) $((SECONDS - t_cont)) s after SIGCONT; $n_stop writes done at the stop, $count in all; the one across the stall: $(sed -n "$((n_stop + 1))p" "$TEST_TMP/w.log") (block, seconds since start)"
  if [ "$rc" != 0 ]; then
    bad "a write or fsync failed across the stall: $(tail -1 "$TEST_TMP/w.log") $(cat "$TEST_TMP/w.err")"
  elif [ "$count" -le "$n_stop" ]; then
    bad "no write completed after the resume ($count written)"
  else
    pass "all $count writes+fsyncs completed across a ${stall_s} s gateway stop ($n_stop before it), none failed"
    if err=$(blocks check stall "$dev" "$count" 2>&1); then pass "the device reads back every block"; else bad "device: $err"; fi
    if err=$(blocks rados stall "$CEPH_CONF" "$stall" "$count" 2>&1); then pass "RADOS holds every block"; else bad "$err"; fi
  fi
fi
echo "kernel log on nbd (during the stall):"
{ dmesg | grep -E "nbd" || true; } | sed 's/^\[ *[0-9.]*\] //' | sort | uniq -c | sed 's/^/  /' | head -20
if dmesg | grep -qE "nbd.*(Connection timed out|Dead connection|shutting down sockets)"; then
  bad "the kernel gave up the connection during the stall"
fi
if dmesg | grep -E "I/O error|blk_update_request" | grep -q nbd; then bad "the kernel logged an I/O error on an nbd device"; fi
[ "$(status_field "$vol" healthy)" = true ] && [ "$(status_field "$vol" nbd_connected)" = true ] ||
  bad "status after the stall: $(status_json "$vol")"

# --- 2. status tells a dead connection; reattach repairs it ----------------------------
kill -CONT "$gw" 2>/dev/null
kill -9 "$gw"
for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
sleep 1  # the kernel's receiver sees the connection end
st=$(status_json "$vol")
[ "$st" = '{"healthy":false,"gateway_alive":false,"nbd_connected":false}' ] ||
  bad "status after a kill -9 of the gateway: $st (the connection is dead)"
cli reattach >/dev/null || bad "reattach failed"
st=$(status_json "$vol")
[ "$st" = '{"healthy":true,"gateway_alive":true,"nbd_connected":true}' ] || bad "status after reattach: $st"
if blocks write again "$dev" 4 "$TEST_TMP/w2.log" && blocks check again "$dev" 4; then
  pass "status: a dead gateway's connection reads down, after reattach up; the device takes writes again"
else
  bad "writes after the reattach: $(cat "$TEST_TMP/w2.log")"
fi
cli unmap "$dev" || bad "unmap after the reattach failed"
assert_kernel_clean

# The netlink client alone: a connection the kernel gave up (3 s I/O timeout)
# while its server lives.
ksock=$TEST_TMP/k.sock
nbdkit -U "$ksock" -P "$TEST_TMP/k.pid" memory 16M
for _ in $(seq 100); do [ -s "$TEST_TMP/k.pid" ] && [ -S "$ksock" ] && break; sleep 0.1; done
kpid=$(cat "$TEST_TMP/k.pid")
cleanup_fn "kill -CONT $kpid; kill $kpid"
kdev=$("$KVM_NBD" connect "$ksock" 60 3 "rbdgw-test:drop") || fail "kvm-nbd connect: $kdev"
cleanup_fn "'$KVM_NBD' disconnect $kdev"
up=$("$KVM_NBD" link "$ksock" 2>&1) || true
[ "$up" = up ] || bad "kvm-nbd link on a live connection: '$up'"
kill -STOP "$kpid"
dd if="$kdev" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null &
reader=$!
for _ in $(seq 200); do dmesg | grep -q "${kdev#/dev/}.*Connection timed out" && break; sleep 0.1; done
sleep 1
down=$("$KVM_NBD" link "$ksock" 2>&1) || true
kill -0 "$kpid" || bad "nbdkit died"
[ "$down" = down ] || bad "kvm-nbd link after the kernel gave the connection up (server alive, stopped): '$down'"
[ "$up $down" = "up down" ] && pass "nbd_server_connected: up on a live connection, down once the kernel gave it up"
kill -CONT "$kpid"
"$KVM_NBD" disconnect "$kdev" || bad "kvm-nbd disconnect $kdev"
wait "$reader" 2>/dev/null || true
kill "$kpid"
fi

if [[ $parts == *" parallel "* ]]; then
# --- 3. parallel maps get their own devices ------------------------------------------
n=6
imgs=()
for i in $(seq "$n"); do new_image img 32M; imgs+=("$img"); done
t0=$SECONDS
pids=()
for i in $(seq 0 $((n - 1))); do
  map_raw "${imgs[$i]}" >"$TEST_TMP/map.$i" 2>"$TEST_TMP/map.$i.err" &
  pids+=($!)
done
devs=()
for i in $(seq 0 $((n - 1))); do
  rc=0; wait "${pids[$i]}" || rc=$?
  d=$(cat "$TEST_TMP/map.$i")
  devs+=("$d")
  [ "$rc" = 0 ] || bad "parallel map $i (${imgs[$i]}) failed (rc $rc): $(tail -2 "$TEST_TMP/map.$i.err")"
done
echo "$n parallel maps took $((SECONDS - t0)) s: ${devs[*]}"
dups=$(printf '%s\n' "${devs[@]}" | { grep . || true; } | sort | uniq -d)
[ -z "$dups" ] || bad "parallel maps share a device: $dups"
for i in $(seq 0 $((n - 1))); do
  d=${devs[$i]}
  [[ $d == /dev/nbd[0-9]* ]] || continue
  be=$(cat "/sys/block/${d#/dev/}/backend" 2>/dev/null || true)
  [ "$be" = "rbdgw:rbd.${imgs[$i]}" ] || bad "$d (map $i) is connected for '$be', not rbdgw:rbd.${imgs[$i]}"
  [ "$(status_field "rbd.${imgs[$i]}" healthy)" = true ] || bad "map $i ($d): not healthy: $(status_json "rbd.${imgs[$i]}")"
  blocks write "p$i" "$d" 16 "$TEST_TMP/p$i.log" || bad "write to $d (map $i): $(tail -1 "$TEST_TMP/p$i.log")"
done
ok=0
for i in $(seq 0 $((n - 1))); do
  d=${devs[$i]}
  [[ $d == /dev/nbd[0-9]* ]] || continue
  if err=$(blocks check "p$i" "$d" 16 2>&1) && err=$(blocks rados "p$i" "$CEPH_CONF" "${imgs[$i]}" 16 2>&1); then
    ok=$((ok + 1))
  else
    bad "map $i ($d): $err"
  fi
done
[ "$ok" = "$n" ] && pass "$n parallel maps: each on its own device, connected for its own volume, holding its own data"
pids=()
for i in $(seq 0 $((n - 1))); do cli unmap "rbd.${imgs[$i]}" 2>"$TEST_TMP/unmap.$i.err" & pids+=($!); done
for i in $(seq 0 $((n - 1))); do wait "${pids[$i]}" || bad "parallel unmap $i failed: $(tail -1 "$TEST_TMP/unmap.$i.err")"; done
assert_kernel_clean
pass "parallel unmaps left nothing"

# A map that fails after its device was connected (the filesystem step finds
# ext4 where xfs was asked for) disconnects only its own device.
new_image fsimg 32M
mkdir -p "$TEST_TMP/mnt"
map_raw "$fsimg" --mount "$TEST_TMP/mnt" >/dev/null || fail "map $fsimg with --mount"
cli unmap "rbd.$fsimg" || fail "unmap $fsimg"
new_image other 32M
odev=$(map_raw "$other") || fail "map $other"
blocks write other "$odev" 4 "$TEST_TMP/o.log" || bad "write to $odev"
dmesg -C
if map_raw "$fsimg" --mount "$TEST_TMP/mnt" --fstype xfs >"$TEST_TMP/out" 2>"$TEST_TMP/err"; then
  bad "a map asking for xfs on an ext4 volume succeeded"
fi
echo "map with the wrong fstype: $(tail -1 "$TEST_TMP/err")"
grep -q "holds ext4" "$TEST_TMP/err" || bad "the map did not fail in the filesystem step (after the nbd connect): $(tail -1 "$TEST_TMP/err")"
connected=$({ ls -d /sys/block/nbd*/pid 2>/dev/null || true; } | wc -l)
[ "$connected" = 1 ] || bad "after the failed map $connected nbd devices are connected (expected 1, $odev)"
[ "$(status_field "rbd.$other" healthy)" = true ] && blocks check other "$odev" 4 &&
  pass "a failed map's rollback disconnected its own device only: $odev (another volume's) stays connected and intact" ||
  bad "the other volume's device $odev after the failed map: $(status_json "rbd.$other")"
cli unmap "$odev" || bad "unmap $odev"
assert_kernel_clean
fi

[ "$errors" = 0 ] || fail "$errors check(s) failed"
pass "kernel path: I/O waits out a gateway stall, status tells a dead connection, parallel maps get their own devices"
