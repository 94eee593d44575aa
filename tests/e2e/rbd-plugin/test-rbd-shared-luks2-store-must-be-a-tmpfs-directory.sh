#!/usr/bin/env bash
# `nbdkit --filter=luks2 ... passphrase-store=STORE` takes a volume's
# passphrase only from a store that passes lib/attach's checks (a directory
# of its own, not a symbolic link; on tmpfs): a symlinked store is refused
# however it is spelt, also with a trailing '/' (which makes the kernel
# follow the link despite O_NOFOLLOW: review RF, the export opened), and a
# store on a persistent disk is refused; the refusal names the export and
# the cause, and the same volume opens from a good store.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version

exdir=$TEST_TMP/exports
mkdir "$exdir"
new_secret_store
link="$store.link"
cleanup_fn "rm -rf '$link'"
ln -s "$store" "$link"
# A store on the build tree's disk (not tmpfs), the same files in it.
disk="$RBDGW_BUILD_DIR/rf-disk-store.$$"
cleanup_fn "rm -rf '$disk'"
mkdir -m 0700 "$disk"
requires test "$(stat -f -c %T "$disk")" != tmpfs

f="$TEST_TMP/vol.luks"
head -c 24 /dev/urandom | base64 | tr -d '\n' >"$TEST_TMP/vol.pass"
truncate -s $((20 << 20)) "$f"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$TEST_TMP/vol.pass" "$f"
img=$(unique "$TEST_NAME")
cleanup_fn "rbd_cli rm --no-progress rbd/$img"
rbd_cli import --no-progress "$f" "rbd/$img" >/dev/null
register_export "$exdir" vol "$img"
for d in "$store" "$disk"; do
  install -m 0600 "$store/boot_id" "$d/boot_id" 2>/dev/null || true
  install -m 0600 "$TEST_TMP/vol.pass" "$d/vol.passphrase"
done

# open_with STORE: 0 when export vol opens through a gateway with
# passphrase-store=STORE; its log in $TEST_TMP/gw.log.
open_with() {
  local sock="$TEST_TMP/gw$RANDOM.sock" pid rc=0
  nbdkit -f -U "$sock" -P "$sock.pid" --filter="$RBDGW_FILTER" "$RBDGW_PLUGIN" \
    "exports-dir=$exdir" "conf=$CEPH_CONF" "passphrase-store=$1" 2>"$TEST_TMP/gw.log" &
  pid=$!
  for _ in $(seq 300); do [ -S "$sock" ] && [ -s "$sock.pid" ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
  [ -S "$sock" ] || { cat "$TEST_TMP/gw.log" >&2; kill $pid 2>/dev/null; fail "the gateway (passphrase-store=$1) did not start"; }
  nbdinfo --size "$(export_uri "$sock" vol)" >/dev/null 2>&1 || rc=1
  kill $pid
  wait $pid || true
  return $rc
}

open_with "$store" || { cat "$TEST_TMP/gw.log" >&2; fail "vol does not open from the good store $store"; }
pass "vol opens from $store"
for st in "$link" "$link/" "$link//"; do
  ! open_with "$st" || fail "vol opened with passphrase-store=$st, a symbolic link to $store"
  grep -q "luks2: export 'vol': .*symbolic link" "$TEST_TMP/gw.log" ||
    fail "passphrase-store=$st: the refusal does not say 'symbolic link': $(cat "$TEST_TMP/gw.log")"
  pass "passphrase-store=$st refused: $(grep -o -m1 "luks2: .*" "$TEST_TMP/gw.log")"
done
for st in "$disk" "$disk/"; do
  ! open_with "$st" || fail "vol opened with passphrase-store=$st, on a persistent disk"
  grep -q "luks2: export 'vol': .*not on tmpfs" "$TEST_TMP/gw.log" ||
    fail "passphrase-store=$st: the refusal does not say 'not on tmpfs': $(cat "$TEST_TMP/gw.log")"
  pass "passphrase-store=$st refused: $(grep -o -m1 "luks2: .*not on tmpfs[^;]*" "$TEST_TMP/gw.log")"
done
