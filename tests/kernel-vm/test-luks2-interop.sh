#!/usr/bin/env bash
# The userspace luks2 filter and the kernel's dm-crypt read each other's
# data, in a real kernel (one VM boot), for 512- and 4096-byte sectors:
#   userspace -> kernel: a file formatted by lib/luks in userspace (in-memory
#     header) and written through `nbdkit --filter=luks2 file`, exported plain
#     to /dev/nbdN (block size = sector size), opens with `cryptsetup open`
#     and shows the same bytes;
#   kernel -> userspace: /dev/nbdN formatted with LuksFormat, opened with
#     LuksOpen (LuksStatus checked), written through dm-crypt, closed with
#     LuksClose, reads back the same bytes through the luks2 filter.
# On the host this boots the VM (tests/kernel-vm/run-in-vm.sh) and runs
# itself inside; exit 77 (skip) when the VM prerequisites are missing.
source "${RBDGW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/tests/lib/functions.sh"

KVM_LUKS=$RBDGW_BUILD_DIR/tests/kernel-vm/kvm-luks
for f in "$RBDGW_FILTER" "$KVM_LUKS"; do
  [ -e "$f" ] || fail "$f not built (build the nbdkit-luks2-filter and kvm-luks targets)"
done

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  rc=0
  "$RBDGW_SOURCE_DIR/tests/kernel-vm/run-in-vm.sh" --timeout 480 "$0" || rc=$?
  exit "$rc"
fi

# --- in the guest ----------------------------------------------------------------
requires which nbdkit nbdcopy nbd-client cryptsetup blockdev
modprobe nbd
modprobe dm-crypt

key=$TEST_TMP/key
printf 'interop-%s-%s' "$RANDOM" "$RANDOM" >"$key"
vol_size=$((64 << 20))
seg_size=$((vol_size - (16 << 20)))  # LUKS2 data segment at 16 MiB
data_size=$((8 << 20))

# nbd_attach DEV SOCK BLOCKSIZE: connects DEV to the export, disconnected at exit.
nbd_attach() {
  nbd-client -unix "$2" "$1" -N default -b "$3" -t 30 >/dev/null
  cleanup_fn "nbd-client -d $1"
  [ "$(blockdev --getss "$1")" = "$3" ] || fail "$1: logical block size $(blockdev --getss "$1"), expected $3"
}
stop_nbdkit() {
  kill "$1"
  for _ in $(seq 100); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done
  fail "nbdkit $1 did not stop"
}

for sector in 512 4096; do
  # userspace -> kernel
  vol=$TEST_TMP/u2k-$sector.img
  truncate -s "$vol_size" "$vol"
  "$KVM_LUKS" format-file "$vol" "$sector" "$key"
  head -c "$data_size" /dev/urandom >"$TEST_TMP/data"
  printf 'unaligned tail' >>"$TEST_TMP/data"  # ends mid-sector: read-modify-write
  start_nbdkit sock pid --filter="$RBDGW_FILTER" file "$vol" passphrase=+"$key"
  [ "$(nbdinfo --size "$(nbd_uri "$sock")")" = "$seg_size" ] || fail "luks2 filter export size"
  nbdcopy "$TEST_TMP/data" "$(nbd_uri "$sock")"
  stop_nbdkit "$pid"

  start_nbdkit sock pid file "$vol"
  nbd_attach /dev/nbd0 "$sock" "$sector"
  name=kvm-u2k-$sector
  cryptsetup open --readonly --key-file "$key" /dev/nbd0 "$name"
  cleanup_fn "cryptsetup close $name"
  cryptsetup status "$name" | grep -Eq "sector size: +$sector\$" ||
    fail "$name: not $sector-byte sectors: $(cryptsetup status "$name")"
  cmp -n "$(stat -c %s "$TEST_TMP/data")" "$TEST_TMP/data" "/dev/mapper/$name" ||
    fail "$sector-byte sectors: data written through the luks2 filter differs under dm-crypt"
  cryptsetup close "$name"
  nbd-client -d /dev/nbd0 >/dev/null
  stop_nbdkit "$pid"
  pass "$sector-byte sectors: lib/luks format + luks2 filter write -> dm-crypt read"

  # kernel -> userspace
  vol=$TEST_TMP/k2u-$sector.img
  truncate -s "$vol_size" "$vol"
  start_nbdkit sock pid file "$vol"
  nbd_attach /dev/nbd1 "$sock" "$sector"
  "$KVM_LUKS" format /dev/nbd1 "$sector" "$key"
  name=kvm-k2u-$sector
  dev=$("$KVM_LUKS" open /dev/nbd1 "$name" "$key")
  cleanup_fn "cryptsetup close $name"
  [ "$dev" = "/dev/mapper/$name" ] || fail "LuksOpen returned '$dev'"
  st=$("$KVM_LUKS" status "$name") || fail "LuksStatus: $st"
  echo "LuksStatus: $st"
  [[ $st == *"active, aes-xts-plain64"*" $sector-byte sectors, on /dev/nbd1 at offset 16777216"* ]] ||
    fail "LuksStatus reports '$st'"
  head -c "$data_size" /dev/urandom >"$TEST_TMP/data"
  dd if="$TEST_TMP/data" of="$dev" bs=1M oflag=direct conv=fsync status=none
  "$KVM_LUKS" close "$name"
  st=$("$KVM_LUKS" status "$name") && fail "LuksStatus after LuksClose: $st"
  [ "$st" = "$name: not active" ] || fail "LuksStatus after LuksClose: '$st'"
  nbd-client -d /dev/nbd1 >/dev/null
  stop_nbdkit "$pid"

  start_nbdkit sock pid --filter="$RBDGW_FILTER" file "$vol" passphrase=+"$key"
  nbdcopy "$(nbd_uri "$sock")" "$TEST_TMP/out"
  stop_nbdkit "$pid"
  [ "$(stat -c %s "$TEST_TMP/out")" = "$seg_size" ] || fail "luks2 filter export size"
  cmp -n "$data_size" "$TEST_TMP/data" "$TEST_TMP/out" ||
    fail "$sector-byte sectors: data written through dm-crypt differs through the luks2 filter"
  rm -f "$TEST_TMP"/*.img "$TEST_TMP/out"
  pass "$sector-byte sectors: LuksFormat + LuksOpen + dm-crypt write -> luks2 filter read"
done

# Nothing left: no mapping, no connected nbd device.
left=
for m in /dev/mapper/*; do case $m in /dev/mapper/control | "/dev/mapper/*") ;; *) left+=" $m" ;; esac; done
[ -z "$left" ] || fail "dm mappings left:$left"
if ls /sys/block/nbd*/pid >/dev/null 2>&1; then fail "nbd devices left connected: $(ls /sys/block/nbd*/pid)"; fi
pass "no mapping or nbd connection left"
