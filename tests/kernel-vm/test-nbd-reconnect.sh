#!/usr/bin/env bash
# lib/attach's netlink NBD client (attach/nbd_netlink.hpp, via kvm-nbd) in a
# real kernel (one VM boot): the server of /dev/nbdN is killed with -9 and
# restarted on the same socket, nbd_reconnect hands the device a new
# connection, and the I/O issued while the server was dead completes with the
# right data; the same under dm-crypt + ext4 (fsync waits and succeeds, fsck
# clean). The kernel logs no I/O error; nothing is left connected.
# Host half: nbd_probe's handshake against nbdkit (vs nbdinfo) and its errors.
source "${RBDGW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/tests/lib/functions.sh"

KVM_NBD=$RBDGW_BUILD_DIR/tests/kernel-vm/kvm-nbd
[ -e "$KVM_NBD" ] || fail "$KVM_NBD not built (build the kvm-nbd target)"
requires which nbdkit nbdinfo

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  # --- host: the handshake ------------------------------------------------------
  start_nbdkit sock pid memory 64M
  out=$("$KVM_NBD" probe "$sock")
  [[ $out == "size=$(nbdinfo --size "$(nbd_uri "$sock")") "* ]] || fail "probe: '$out'"
  start_nbdkit rsock rpid --readonly --filter=blocksize-policy memory 1M blocksize-minimum=4096
  out=$("$KVM_NBD" probe "$rsock")
  [[ $out == size=1048576\ * && $out == *" block=4096/"* ]] || fail "probe (read-only, 4096-byte minimum): '$out'"
  (( $(sed 's/.*flags=\(0x[0-9a-f]*\).*/\1/' <<<"$out") & 2 )) || fail "probe: read-only flag missing in '$out'"
  err=$("$KVM_NBD" probe "$TEST_TMP/none.sock" 2>&1) && fail "probe of a missing socket succeeded"
  [[ $err == *"connect to NBD server: $TEST_TMP/none.sock: No such file or directory"* ]] || fail "probe error: $err"
  pass "host: handshake (size, flags, block sizes) and errors"

  rc=0
  "$RBDGW_SOURCE_DIR/tests/kernel-vm/run-in-vm.sh" --timeout 360 "$0" || rc=$?
  exit "$rc"
fi

# --- in the guest ----------------------------------------------------------------
requires which cryptsetup mkfs.ext4 e2fsck dmesg cmp
modprobe nbd
modprobe dm-crypt

sock=$TEST_TMP/gw.sock
pidfile=$TEST_TMP/gw.pid
disk=$TEST_TMP/disk.img
truncate -s 64M "$disk"

# The "gateway": nbdkit file on a fixed socket; kill -9 leaves the socket file.
gw_start() {
  rm -f "$sock" "$pidfile"
  nbdkit -U "$sock" -P "$pidfile" file "$disk"
  for _ in $(seq 300); do [ -s "$pidfile" ] && [ -S "$sock" ] && break; sleep 0.1; done
  [ -s "$pidfile" ] || fail "nbdkit did not start"
  gw=$(cat "$pidfile")
}
gw_kill() {
  kill -9 "$gw"
  for _ in $(seq 100); do kill -0 "$gw" 2>/dev/null || return 0; sleep 0.1; done
  fail "nbdkit $gw did not die"
}
cleanup_fn 'kill -9 $gw'
# wait_blocked PID: PID is alive and waits in the kernel (state D): its I/O
# hit the dead connection and waits for the reconnect instead of failing.
wait_blocked() {
  local state
  for _ in $(seq 300); do
    kill -0 "$1" 2>/dev/null || { wait "$1" || fail "I/O failed while the server was dead"; fail "I/O done while the server was dead"; }
    read -r _ _ state _ <"/proc/$1/stat"
    [ "$state" = D ] && return 0
    sleep 0.1
  done
  fail "process $1 is not waiting for I/O on $dev (state $state)"
}
gw_start

dev=$("$KVM_NBD" connect "$sock" 120 5 "rbdgw-test:$$") || fail "connect: $dev"
cleanup_fn "'$KVM_NBD' disconnect $dev"
name=${dev#/dev/}
echo "connected $dev"
[ "$("$KVM_NBD" status "$dev")" = connected ] || fail "status of $dev after connect"
[ "$(blockdev --getsize64 "$dev")" = $((64 << 20)) ] || fail "$dev size $(blockdev --getsize64 "$dev")"
[ "$(cat "/sys/block/$name/backend")" = "rbdgw-test:$$" ] || fail "backend of $dev: $(cat "/sys/block/$name/backend")"
err=$("$KVM_NBD" reconnect "$dev" "$sock" 2>&1) && fail "reconnect with a live connection succeeded"
[[ $err == *"$dev (server $sock): the kernel kept its connection"* ]] || fail "reconnect on a live device: $err"

head -c $((8 << 20)) /dev/urandom >"$TEST_TMP/a"
head -c $((8 << 20)) /dev/urandom >"$TEST_TMP/b"
dd if="$TEST_TMP/a" of="$dev" bs=1M oflag=direct status=none
dd if="$dev" of="$TEST_TMP/r" bs=1M count=8 iflag=direct status=none
cmp "$TEST_TMP/a" "$TEST_TMP/r" || fail "read back through $dev"
pass "connect: $dev written and read back"

# 1. Server dies while idle; a reader issued meanwhile waits for the reconnect.
gw_kill
dd if="$dev" of="$TEST_TMP/r" bs=1M count=8 iflag=direct status=none &
reader=$!
wait_blocked "$reader"
[ "$("$KVM_NBD" status "$dev")" = connected ] || fail "status of $dev with its server dead"
gw_start
"$KVM_NBD" reconnect "$dev" "$sock"
wait "$reader" || fail "read issued while the server was dead failed after the reconnect"
cmp "$TEST_TMP/a" "$TEST_TMP/r" || fail "data read after the reconnect differs"
pass "reader during the outage completes after nbd_reconnect, data intact"

# 2. A writer during the outage: its data reaches the restarted server.
gw_kill
dd if="$TEST_TMP/b" of="$dev" bs=1M seek=16 oflag=direct conv=fsync status=none &
writer=$!
wait_blocked "$writer"
gw_start
"$KVM_NBD" reconnect "$dev" "$sock"
wait "$writer" || fail "write issued while the server was dead failed after the reconnect"
cmp -n $((8 << 20)) "$TEST_TMP/b" <(dd if="$disk" bs=1M skip=16 count=8 status=none) ||
  fail "data written during the outage is not in the server's file"
pass "writer during the outage completes after nbd_reconnect, data on the server"

# A different export is refused and the device keeps working.
start_nbdkit osock opid memory 32M
err=$("$KVM_NBD" reconnect "$dev" "$osock" 2>&1) && fail "reconnect to a 32M export succeeded"
[[ $err == *"the export has 33554432 bytes, the device 67108864"* ]] || fail "reconnect to another export: $err"
dd if="$dev" of="$TEST_TMP/r" bs=1M count=8 iflag=direct status=none
cmp "$TEST_TMP/a" "$TEST_TMP/r" || fail "device after a refused reconnect"
pass "reconnect to a different export refused; device unaffected"

# 3. dm-crypt + ext4 on top: the outage is invisible to the filesystem.
printf 'reconnect-%s' "$RANDOM$RANDOM" >"$TEST_TMP/key"
dm=nbdrc-$$
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$TEST_TMP/key" "$dev"
cryptsetup open --key-file "$TEST_TMP/key" "$dev" "$dm"
cleanup_fn "cryptsetup close $dm"
mkfs.ext4 -q "/dev/mapper/$dm"
mnt=$TEST_TMP/mnt
mkdir "$mnt"
mount "/dev/mapper/$dm" "$mnt"
cleanup_fn "umount $mnt"
cp "$TEST_TMP/a" "$mnt/a"
sync -f "$mnt/a"
gw_kill
cp "$TEST_TMP/b" "$mnt/b"
sync "$mnt/b" &
syncer=$!
wait_blocked "$syncer"
gw_start
"$KVM_NBD" reconnect "$dev" "$sock"
wait "$syncer" || fail "fsync during the outage failed after the reconnect"
echo 3 >/proc/sys/vm/drop_caches
cmp "$TEST_TMP/a" "$mnt/a" && cmp "$TEST_TMP/b" "$mnt/b" || fail "files differ after the reconnect"
umount "$mnt"
e2fsck -fn "/dev/mapper/$dm" || fail "fsck after the outage"
cryptsetup close "$dm"
pass "dm-crypt + ext4: fsync across the outage, data intact, fsck clean"

if dmesg | grep -E "I/O error|EXT4-fs error|Buffer I/O"; then
  fail "the kernel logged I/O errors"
fi
"$KVM_NBD" disconnect "$dev"
[ "$("$KVM_NBD" status "$dev")" = disconnected ] || fail "status of $dev after disconnect"
[ ! -e "/sys/block/$name/pid" ] || fail "$dev still has a pid after disconnect"
"$KVM_NBD" disconnect "$dev"  # idempotent
pass "no I/O error logged; disconnected, nothing left"
