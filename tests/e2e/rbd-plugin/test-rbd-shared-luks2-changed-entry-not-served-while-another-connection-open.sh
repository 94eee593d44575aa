#!/usr/bin/env bash
# A shared decrypting gateway never serves an export with its old key once
# the export's secret store entry changed (nbdkit-luks2-filter(1): "a kept
# volume is never used once its entry changed"): whether a new connection
# is refused must not depend on whether another connection of the export
# happens to be open. Here connection A stays open; the entry is replaced
# by a wrong passphrase (a new file) or removed; a new connection B must be
# refused, as it is with A closed (test-rbd-shared-luks2-reconnect-reuses-
# key-while-in-store). A itself goes on working.
# (review RK: unlock_export_locked returns slot->vol.lock() when a
# connection holds it, before anything compares the entry.)
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version

exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
new_secret_store
make_luks_export "$exdir" vol
start_decrypting sock pid "$log" "$exdir"
uri=$(export_uri "$sock" vol)

export READY=$TEST_TMP/ready GO=$TEST_TMP/go
nbdsh -u "$uri" -c '
import os, time
h.pwrite(b"\xa5" * 4096, 0)
open(os.environ["READY"], "w").close()
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.05)
assert h.pread(4096, 0) == b"\xa5" * 4096
' >"$TEST_TMP/hold.out" 2>&1 &
hold=$!
for _ in $(seq 200); do [ -e "$READY" ] && break; sleep 0.1; done
[ -e "$READY" ] || { cat "$TEST_TMP/hold.out" >&2; fail "connection A did not open"; }

bad=()
printf 'not the passphrase %s' "$(head -c 9 /dev/urandom | base64)" >"$TEST_TMP/wrong"
install -m 0600 "$TEST_TMP/wrong" "$store/vol.passphrase.new"
mv "$store/vol.passphrase.new" "$store/vol.passphrase"
sleep 1.5
if nbdinfo --size "$uri" >/dev/null 2>&1; then bad+=("entry replaced by a wrong passphrase: B served with the old key")
else pass "entry replaced by a wrong passphrase: B refused"; fi
rm "$store/vol.passphrase"
sleep 1.5
if nbdinfo --size "$uri" >/dev/null 2>&1; then bad+=("entry removed: B served with the old key")
else pass "entry removed: B refused"; fi
touch "$GO"
wait $hold || { cat "$TEST_TMP/hold.out" >&2; fail "connection A failed"; }
[ "${#bad[@]}" = 0 ] || fail "with connection A open: $(printf '%s; ' "${bad[@]}")"
