#!/usr/bin/env bash
# A shared decrypting gateway keeps an export's unlocked volume after its
# last connection closed while the export's secret store entry is the file
# it was unlocked with, so a client that closes idle connections
# (rbdgw-fuse --idle-disconnect) reconnects without a PBKDF run. It never
# serves from that kept volume once the entry changed:
#   - entry removed (unmap): the next open is refused, "no passphrase";
#   - entry replaced by a wrong passphrase: the next open is refused
#     ("wrong passphrase"), not served with the old key;
#   - entry replaced by the right passphrase (a new file): unlocked afresh;
#   - a connection open across the entry's removal keeps working until it
#     closes, and the key goes with it.
# PBKDF runs are counted by the filter's "unlocked with keyslot" debug line.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires test "$(id -u)" = 0
find_mem="$(dirname "$0")/find_in_memory.py"

exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
new_secret_store
make_luks_export "$exdir" vol
start_decrypting sock pid "$log" "$exdir"
uri=$(export_uri "$sock" vol)
unlocks() { grep -c "luks2: export 'vol': unlocked with keyslot" "$log" || true; }

head -c 1M /dev/urandom >"$TEST_TMP/data"
DATA=$TEST_TMP/data nbdsh -u "$uri" -c '
import os
h.pwrite(open(os.environ["DATA"], "rb").read(), 1 << 20)
h.flush()' || { tail -20 "$log" >&2; fail "first connection to vol failed"; }
[ "$(unlocks)" = 1 ] || fail "$(unlocks) unlocks for the first connection, expected 1"

# Three reconnects, one at a time (no connection open in between).
for i in 1 2 3; do
  nbdsh -u "$uri" -c 'import sys; sys.stdout.buffer.write(h.pread(1 << 20, 1 << 20))' \
    >"$TEST_TMP/back$i" || fail "reconnect $i failed"
  cmp -s "$TEST_TMP/data" "$TEST_TMP/back$i" || fail "reconnect $i read other data"
done
[ "$(unlocks)" = 1 ] || fail "$(unlocks) unlocks after 3 reconnects with the entry unchanged, expected 1"
if /usr/bin/python3 "$find_mem" "$pid" "$TEST_TMP/vol.vk" >/dev/null; then
  fail "vol's key is not kept with no connection open"
fi
pass "3 reconnects, no connection in between: 1 PBKDF run in all, data read back"

# The entry replaced by a wrong passphrase (a new file): refused, not
# served with the kept key.
printf 'not the passphrase %s' "$(head -c 9 /dev/urandom | base64)" >"$TEST_TMP/wrong"
install -m 0600 "$TEST_TMP/wrong" "$store/vol.passphrase.new"
mv "$store/vol.passphrase.new" "$store/vol.passphrase"
! nbdinfo --size "$uri" >/dev/null 2>&1 || fail "vol opened with a wrong passphrase in its entry"
grep -q "luks2: export 'vol': wrong passphrase" "$log" || { tail -20 "$log" >&2; fail "no 'wrong passphrase' error"; }
pass "entry replaced by a wrong passphrase: refused"

# The right passphrase again, as a new file: unlocked afresh.
install -m 0600 "$TEST_TMP/vol.pass" "$store/vol.passphrase.new"
mv "$store/vol.passphrase.new" "$store/vol.passphrase"
nbdinfo --size "$uri" >/dev/null || { tail -20 "$log" >&2; fail "vol does not open with its passphrase back"; }
[ "$(unlocks)" = 2 ] || fail "$(unlocks) unlocks after the entry came back, expected 2"
pass "entry replaced by the right passphrase: unlocked afresh"

# A connection open across the entry's removal keeps working; the key goes
# when it closes, and the next open is refused.
export READY=$TEST_TMP/ready GO=$TEST_TMP/go
nbdsh -u "$uri" -c '
import os, time
h.pwrite(os.urandom(4096), 0)
open(os.environ["READY"], "w").close()
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.05)
h.pwrite(b"\x5a" * 4096, 4096)
h.flush()
assert h.pread(4096, 4096) == b"\x5a" * 4096
' >"$TEST_TMP/hold.out" 2>&1 &
hold=$!
for _ in $(seq 200); do [ -e "$READY" ] && break; sleep 0.1; done
[ -e "$READY" ] || { cat "$TEST_TMP/hold.out" >&2; fail "the holding connection did not open"; }
rm "$store/vol.passphrase"
sleep 2.5  # more than the filter's sweep period
touch "$GO"
wait $hold || { cat "$TEST_TMP/hold.out" "$log" >&2; fail "the open connection failed after the entry's removal"; }
pass "a connection open across the entry's removal went on writing and reading"
/usr/bin/python3 "$find_mem" --gone-within 5 "$pid" "$TEST_TMP/vol.vk" >"$TEST_TMP/found" ||
  fail "vol's key still in memory 5 s after its last connection closed with no entry: $(cat "$TEST_TMP/found")"
! nbdinfo --size "$uri" >/dev/null 2>&1 || fail "vol opened with no entry in the store"
grep -q "luks2: export 'vol': no passphrase in the secret store" "$log" ||
  { tail -20 "$log" >&2; fail "no 'no passphrase in the secret store' error"; }
kill -0 "$pid" || fail "the gateway died"
pass "entry removed: key wiped after the last close, next open refused"
