#!/usr/bin/env bash
# The gateway restarts into handshakes that hang (it accepts and never
# answers: its image open stuck in a Ceph outage, say) and no connection
# works: the requests waiting to reconnect share one connect attempt per
# slot instead of each making its own after the one before (review
# helper-41: each waiter behind the slot's lock tried again, 5 s more per
# place in the queue, one hung connection per request); they fail with EIO
# at the reconnect timeout; after that give-up a request makes one quick
# attempt (5 s), not another full wait, yet a gateway that answers slowly
# (7 s) gets the volume back (review helper-42: after the give-up every
# attempt was cut at 5 s, so it never did); a hung connection is given up
# after 5 s for a new one when the gateway answers new ones (helper-42:
# the first attempt kept the whole reconnect timeout); and SIGUSR2 ends a
# request waiting in a hung handshake at once. Before stop 24 such a
# handshake hung forever.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which timeout

start_nbdkit sock gw --threads 8 memory 64M
start_proxy proxy "$sock" until-flag
start_exporter "$proxy" --connections 2 --conn-depth 8 --threads 16 --reconnect-timeout 20
write_data 4
: >"$TEST_TMP/silent"
proxy_hang "$proxy"  # the relayed connections are cut, every new one is silent

# 8 readers at once (all on the first slot: --conn-depth 8): all fail with
# EIO at the timeout.
start=$(now)
pids=()
for i in 0 1 2 3 4 5 6 7; do
  timeout -s KILL 120 dd if="$disk" bs=4k count=1 skip=$i iflag=direct status=none of=/dev/null \
    2>"$TEST_TMP/dd$i.err" &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  if wait "${pids[$i]}"; then fail "read $i succeeded with no server answering"; fi
  grep -q "Input/output error" "$TEST_TMP/dd$i.err" || { cat "$TEST_TMP/dd$i.err" >&2; fail "read $i did not fail with EIO"; }
done
took=$(elapsed "$start")
tries=$(wc -l <"$TEST_TMP/silent")
# Attempts of 5, 10 and the last 5 s of the 20 s on the slot, shared (a
# few more if a request retried after its backoff); 8 or more is one per
# request.
[ "$tries" -ge 1 ] && [ "$tries" -le 5 ] ||
  { cat "$exporter_log" >&2; fail "$tries silent connections for 8 requests on 2 slots (each request tried on its own?)"; }
grep -q "giving up after 20 s" "$exporter_log" || { cat "$exporter_log" >&2; fail "no give-up logged"; }
pass "8 waiting reads failed with EIO after $(secs "$took") s, sharing $tries connect attempts"

# After the give-up: one quick attempt (5 s), not the 20 s timeout again.
start=$(now)
if timeout -s KILL 120 dd if="$disk" bs=4k count=1 iflag=direct status=none of=/dev/null 2>/dev/null; then
  fail "a read after the give-up succeeded with no server answering"
fi
took=$(elapsed "$start")
[ "$took" -lt 15000 ] || fail "the read after the give-up took $(secs "$took") s: it waited out the timeout again"
pass "a read after the give-up failed after $(secs "$took") s (one 5 s attempt)"

# The gateway back but slow to answer (7 s a handshake): reads get through
# again (attempts of 5 s, then 10 s).
echo 7 >"$proxy.relay"
ok=
for i in 1 2 3 4 5 6; do
  if timeout -s KILL 120 dd if="$disk" bs=4k count=1 iflag=direct status=none of="$TEST_TMP/r" 2>/dev/null; then
    ok=$i
    break
  fi
done
[ -n "$ok" ] || { cat "$exporter_log" >&2; fail "a gateway slow to answer (7 s) never got the volume back after the give-up"; }
cmp -s "$TEST_TMP/r" <(head -c 4096 "$TEST_TMP/data") || fail "the read after the recovery differs"
grep -q "requests to .* succeed again" "$exporter_log" || fail "the recovery was not logged"
pass "a gateway slow to answer got the volume back at read $ok after the give-up"

# behind_hung_proxy VAR: the exporter replaced by one with a 300 s timeout
# behind a new proxy (path in VAR) whose connections were cut and whose
# later ones stay silent; $before: the silent connections so far.
behind_hung_proxy() {
  fusermount3 -u "$disk" || fail "unmounting the exporter failed"
  wait "$exporter" || true
  start_proxy "$1" "$sock" until-flag
  start_exporter "${!1}" --connections 2 --conn-depth 8 --threads 16 --reconnect-timeout 300
  proxy_hang "${!1}"
  before=$(wc -l <"$TEST_TMP/silent")
}

# One hung connection, the next answered at once: the requests get through
# long before the 300 s reconnect timeout.
behind_hung_proxy proxy3
start=$(now)
pids=()
for i in 0 1 2 3; do
  timeout -s KILL 120 dd if="$disk" bs=4k count=1 skip=$i iflag=direct status=none of="$TEST_TMP/q$i" &
  pids+=($!)
done
for _ in $(seq 100); do [ "$(wc -l <"$TEST_TMP/silent")" -gt "$before" ] && break; sleep 0.1; done
[ "$(wc -l <"$TEST_TMP/silent")" -gt "$before" ] || fail "no connection was left silent"
echo 0 >"$proxy3.relay"
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { cat "$exporter_log" >&2; fail "read $i did not get through a new connection (the hung one kept it)"; }
  cmp -s "$TEST_TMP/q$i" <(dd if="$TEST_TMP/data" bs=4k count=1 skip=$i status=none) || fail "read $i differs"
done
pass "one hung connection: 4 reads got through a new one after $(secs "$(elapsed "$start")") s (timeout 300 s)"

# SIGUSR2 during a hung handshake: another exporter with a 300 s timeout.
behind_hung_proxy proxy2
timeout -s KILL 120 dd if="$disk" bs=4k count=1 iflag=direct status=none of=/dev/null 2>"$TEST_TMP/dd.err" &
reader=$!
for _ in $(seq 100); do [ "$(wc -l <"$TEST_TMP/silent")" -gt "$before" ] && break; sleep 0.1; done
sleep 1
start=$(now)
kill -USR2 "$exporter"
if wait "$reader"; then fail "the read succeeded after SIGUSR2"; fi
took=$(elapsed "$start")
[ "$took" -lt 10000 ] || fail "the read in a hung handshake ended $(secs "$took") s after SIGUSR2 (timeout 300 s)"
grep -q "Input/output error" "$TEST_TMP/dd.err" || { cat "$TEST_TMP/dd.err" >&2; fail "the read did not fail with EIO"; }
pass "SIGUSR2 ended a read waiting in a hung handshake after $(secs "$took") s"
loop=$(losetup --find --show --direct-io=off "$disk")
cleanup_fn "losetup -d $loop"
assert_torn_down
