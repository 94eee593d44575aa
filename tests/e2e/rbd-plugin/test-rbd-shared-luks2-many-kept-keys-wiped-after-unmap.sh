#!/usr/bin/env bash
# Many exports on one decrypting gateway, each unlocked once and kept with
# no connection open, while opens of the others go on: once every store
# entry is removed (unmap of all), every key is gone from the gateway's
# memory within 3 s, and the gateway serves on.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires test "$(id -u)" = 0
find_mem="$(dirname "$0")/find_in_memory.py"

exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
new_secret_store
n=12
for i in $(seq $n); do make_luks_export "$exdir" v$i $((17 << 20)); done
start_decrypting sock pid "$log" "$exdir"
for i in $(seq $n); do nbdinfo --size "$(export_uri "$sock" v$i)" >/dev/null || fail "v$i does not open"; done
keys=()
for i in $(seq $n); do keys+=("$TEST_TMP/v$i.vk"); done
if /usr/bin/python3 "$find_mem" "$pid" "${keys[@]}" >/dev/null; then fail "no key kept (nothing to test)"; fi
# Reconnects of all while the entries go.
( for r in 1 2 3; do for i in $(seq $n); do nbdinfo --size "$(export_uri "$sock" v$i)" >/dev/null 2>&1 || true; done; done ) &
loop=$!
for i in $(seq $n); do rm "$store/v$i.passphrase"; sleep 0.05; done
wait $loop
sleep 3
/usr/bin/python3 "$find_mem" "$pid" "${keys[@]}" >"$TEST_TMP/found" ||
  fail "keys left 3 s after the last entry's removal: $(cat "$TEST_TMP/found")"
kill -0 "$pid" || fail "the gateway died"
pass "$n exports: every kept key wiped within 3 s of its entry's removal"
