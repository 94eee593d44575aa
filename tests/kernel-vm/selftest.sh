#!/usr/bin/env bash
# Guest-side self-test of the kernel VM harness: checks that the guest has
# what kernel-path tests need, then runs nbdkit -> /dev/nbd0 -> LUKS2
# (dm-crypt) -> ext4 end to end. Prints one PASS/FAIL line per check and
# exits 0 only if every check passed.
#
# Usage (on the host): tests/kernel-vm/run-in-vm.sh tests/kernel-vm/selftest.sh [OUTDIR]
#   OUTDIR  optional; a directory shared with --share OUTDIR: the test writes
#           OUTDIR/selftest.out there (to check that files get out).
set -uo pipefail

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  echo "selftest: must run inside the VM: tests/kernel-vm/run-in-vm.sh $0" >&2
  exit 2
fi

outdir=${1:-}
fails=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
check() {  # check DESCRIPTION COMMAND...
  local what=$1; shift
  local out
  if out=$("$@" 2>&1); then pass "$what"; else fail "$what"; [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/    /'; fi
}

work=$(mktemp -d /tmp/selftest.XXXXXX)
sock=$work/nbd.sock
pidfile=$work/nbdkit.pid
key=$work/key
mnt=$work/mnt
dm=rbdgw-selftest
nbd=/dev/nbd0

cleanup() {
  mountpoint -q "$mnt" 2>/dev/null && umount "$mnt"
  [ -e "/dev/mapper/$dm" ] && cryptsetup close "$dm"
  nbd-client -c "$nbd" >/dev/null 2>&1 && nbd-client -d "$nbd" >/dev/null 2>&1
  [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

# --- the guest environment -----------------------------------------------------
check "running as root" test "$(id -u)" = 0
check "kernel $(uname -r) has /lib/modules" test -d "/lib/modules/$(uname -r)"
check "/ is read-only" sh -c '! touch /.rbdgw-selftest 2>/dev/null'
check "/tmp is writable" touch "$work/probe"
check "/run and /var/tmp are writable" sh -c 'touch /run/.p /var/tmp/.p && rm /run/.p /var/tmp/.p'
check "loopback is up with 127.0.0.1" sh -c 'ip -4 addr show dev lo | grep -q "inet 127.0.0.1"'
check "TCP on 127.0.0.1 works" sh -c \
  'nbdkit --exit-with-parent -f -i 127.0.0.1 -p 10899 null 1M & p=$!; for i in $(seq 50); do nbdinfo --size nbd://127.0.0.1:10899 >/dev/null 2>&1 && { kill $p; wait $p; exit 0; }; sleep 0.1; done; kill $p; exit 1'

# --- modules ---------------------------------------------------------------------
check "modprobe nbd" modprobe nbd
check "/dev/nbd0 exists" test -b /dev/nbd0
check "modprobe dm-crypt" modprobe dm-crypt
check "/dev/mapper/control exists" test -c /dev/mapper/control

# --- nbdkit -> nbd0 -> LUKS2 -> ext4 -------------------------------------------------
run() { echo "+ $*"; "$@"; }
smoke() {
  run nbdkit -U "$sock" -P "$pidfile" memory 64M || return
  run nbd-client -unix "$sock" "$nbd" -N default -b 4096 -t 30 || return
  run test "$(blockdev --getsize64 "$nbd")" = $((64 << 20)) || return
  head -c 64 /dev/urandom >"$key" || return
  run cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
    --pbkdf-force-iterations 1000 --key-file "$key" "$nbd" || return
  run cryptsetup isLuks --type luks2 "$nbd" || return
  run cryptsetup open --key-file "$key" "$nbd" "$dm" || return
  run test -b "/dev/mapper/$dm" || return
  run mkfs.ext4 -q "/dev/mapper/$dm" || return
  mkdir -p "$mnt" || return
  run mount "/dev/mapper/$dm" "$mnt" || return
  head -c $((8 << 20)) /dev/urandom >"$work/data" || return
  run cp "$work/data" "$mnt/data" || return
  sync; echo 3 >/proc/sys/vm/drop_caches
  run cmp "$work/data" "$mnt/data" || return
  run umount "$mnt" || return
  run cryptsetup close "$dm" || return
  # Again, from the ciphertext on the NBD server.
  run cryptsetup open --key-file "$key" "$nbd" "$dm" || return
  run mount -o ro "/dev/mapper/$dm" "$mnt" || return
  run cmp "$work/data" "$mnt/data" || return
  run umount "$mnt" || return
  run cryptsetup close "$dm" || return
  run nbd-client -d "$nbd"
}
start=$(date +%s%N)
check "nbdkit memory -> nbd-client -unix -> LUKS2 (dm-crypt) -> ext4 write/read" smoke
echo "    (took $(( ($(date +%s%N) - start) / 1000000 )) ms)"

# The daemonised nbdkit is reparented to PID 1: it must be reaped once killed.
reaped() {
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
check "nbdkit stops and is reaped" reaped

if [ -n "$outdir" ]; then
  check "write $outdir/selftest.out to the writable share" \
    sh -c "echo 'rbdgw kernel-vm selftest: fails=$fails' >'$outdir/selftest.out'"
fi

if [ "$fails" = 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $fails check(s) failed"; fi
[ "$fails" = 0 ]
