#!/usr/bin/env bash
# A shared decrypting gateway reads export N's passphrase from the secret
# store with all of attach::load_secret's checks (the store a 0700
# directory of this service on tmpfs, not a symbolic link, written in this
# boot). The unlocked volume kept with no connection open must not outlive
# those checks: once the store fails them, the next open is refused as an
# open with no kept volume is, not served with the kept key.
# (review RK: the kept volume is reused on the entry file's lstat identity
# alone, under the store directory as it is now.)
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires test "$(id -u)" = 0

exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
new_secret_store
make_luks_export "$exdir" vol
start_decrypting sock pid "$log" "$exdir"
uri=$(export_uri "$sock" vol)
nbdinfo --size "$uri" >/dev/null || { tail -20 "$log" >&2; fail "vol does not open"; }
pass "vol unlocked (its key kept with no connection open)"

# check WHAT PATTERN: the next open must be refused with an error matching PATTERN.
bad=()
check() {
  sleep 1.5  # more than a sweep period
  if nbdinfo --size "$uri" >/dev/null 2>&1; then
    bad+=("$1: vol still served with the kept key")
  elif ! grep -Eq "$2" "$log"; then
    bad+=("$1: refused, but not with /$2/")
  else
    pass "$1: refused"
  fi
}

chmod 0755 "$store"
check "store directory made mode 0755" "mode 0755, must be 0700"
chmod 0700 "$store"

mv "$store" "$store.real"
cleanup_fn "rm -rf '$store.real'"
ln -s "$store.real" "$store"
check "store directory replaced by a symbolic link to it" "is a symbolic link; refusing it"
rm "$store"
mv "$store.real" "$store"

cp "$store/boot_id" "$TEST_TMP/boot_id"
echo 00000000-0000-0000-0000-000000000000 >"$store/boot_id"
check "store's boot id not this boot's" "not trusting its secrets"
cp "$TEST_TMP/boot_id" "$store/boot_id"

[ "${#bad[@]}" = 0 ] || fail "$(printf '%s; ' "${bad[@]}")"
