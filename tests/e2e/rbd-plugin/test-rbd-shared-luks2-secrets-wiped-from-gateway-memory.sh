#!/usr/bin/env bash
# A shared decrypting gateway (`nbdkit --filter=luks2 rbd exports-dir=...
# passphrase-store=...`) keeps no copy of a volume's passphrase once the
# volume is unlocked, and none of its volume key once the export's last
# connection closed and its secret store entry is gone (unmap; while the
# entry is there the key is kept for the next connection); nothing of a
# passphrase that failed either, nor of the
# key of a volume unlocked and then refused (an image that ends where its
# data segment starts: an error after the unlock). Searched for in the whole
# readable memory of the gateway (find_in_memory.py); that the search finds
# the key of an open volume shows it can fail.
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
make_luks_export "$exdir" other
# The data segment at 16 MiB of a 16 MiB image: unlocked, then refused.
make_luks_export "$exdir" short $((16 << 20))
printf 'wrong passphrase %s' "$(head -c 12 /dev/urandom | base64)" >"$TEST_TMP/wrong"
install -m 0600 "$TEST_TMP/wrong" "$store/other.passphrase"

sock=$TEST_TMP/gw.sock
nbdkit -f -U "$sock" -P "$TEST_TMP/gw.pid" --filter="$RBDGW_FILTER" "$RBDGW_PLUGIN" \
  "exports-dir=$exdir" exclusive=true durable-writes=true "conf=$CEPH_CONF" \
  "passphrase-store=$store" 2>>"$log" &
pid=$!
cleanup_fn "kill $pid; for _ in \$(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; kill -9 $pid"
for _ in $(seq 300); do [ -S "$sock" ] && [ -s "$TEST_TMP/gw.pid" ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
[ -S "$sock" ] || { cat "$log" >&2; fail "the gateway did not start"; }

# While a connection holds vol: its key is there (the search works), its
# passphrase is not.
export READY=$TEST_TMP/ready DONE=$TEST_TMP/done
nbdsh -u "$(export_uri "$sock" vol)" -c '
import os, time
h.pwrite(os.urandom(65536), 0)
h.flush()
open(os.environ["READY"], "w").close()
while not os.path.exists(os.environ["DONE"]):
    time.sleep(0.05)
' >"$TEST_TMP/hold.out" 2>&1 &
hold=$!
for _ in $(seq 200); do [ -e "$READY" ] && break; sleep 0.1; done
[ -e "$READY" ] || { cat "$TEST_TMP/hold.out" "$log" >&2; fail "vol does not open"; }
if /usr/bin/python3 "$find_mem" "$pid" "$TEST_TMP/vol.vk" >"$TEST_TMP/found"; then
  fail "the key of the open volume vol is not found in the gateway's memory: the search cannot work"
fi
pass "the search finds the open volume's key: $(head -1 "$TEST_TMP/found")"
/usr/bin/python3 "$find_mem" "$pid" "$TEST_TMP/vol.pass" >"$TEST_TMP/found" ||
  fail "vol's passphrase is in the gateway's memory while vol is open: $(cat "$TEST_TMP/found")"
pass "vol's passphrase is not in the gateway's memory after the unlock"
touch "$DONE"
wait $hold || { cat "$TEST_TMP/hold.out" >&2; fail "the connection to vol failed"; }

# A wrong passphrase; a volume refused after its unlock.
for e in other short; do
  ! nbdinfo --size "$(export_uri "$sock" $e)" >/dev/null 2>&1 || fail "export $e opened"
done
grep -q "luks2: export 'other': wrong passphrase" "$log" || { cat "$log" >&2; fail "other: no 'wrong passphrase' error"; }
grep -q "luks2: export 'short': truncated LUKS2 volume" "$log" || { cat "$log" >&2; fail "short: no 'truncated LUKS2 volume' error"; }
pass "other (wrong passphrase) and short (segment past the image's end) refused"
sleep 0.5  # the gateway's close of the last connection
/usr/bin/python3 "$find_mem" "$pid" "$TEST_TMP/vol.pass" "$TEST_TMP/wrong" \
  "$TEST_TMP/short.vk" "$TEST_TMP/short.pass" >"$TEST_TMP/found" ||
  fail "secrets left in the gateway's memory after the last close: $(cat "$TEST_TMP/found")"
pass "no key of short and no passphrase left in the gateway's memory after the last close"

# vol's key is kept while vol's store entry is there (mapped: a reconnect
# needs no PBKDF run), and wiped once the entry is removed (unmap).
if /usr/bin/python3 "$find_mem" "$pid" "$TEST_TMP/vol.vk" >/dev/null; then
  fail "vol's key is gone with its store entry still there"
fi
rm "$store/vol.passphrase"
/usr/bin/python3 "$find_mem" --gone-within 5 "$pid" "$TEST_TMP/vol.vk" >"$TEST_TMP/found" ||
  fail "vol's key still in the gateway's memory 5 s after its store entry was removed: $(cat "$TEST_TMP/found")"
kill -0 $pid || fail "the gateway died"
pass "vol's key kept while its store entry exists, wiped after the entry's removal"
