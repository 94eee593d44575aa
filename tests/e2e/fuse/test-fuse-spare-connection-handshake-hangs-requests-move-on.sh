#!/usr/bin/env bash
# --conn-depth (a shared gateway's volume): a further connection that the
# server accepts but never answers (no NBD handshake: a gateway whose
# accepting thread is alive but whose connection threads are stuck or
# cannot start) must not hold up the requests sent to its slot, nor those
# behind them: they move to the connection there is once the handshake
# has waited 5 s, and the slot is not tried again for a while. Before, the
# request making the connection waited forever for the handshake, holding
# its slot's lock, and every request that picked the slot waited with it
# (review helper-40's finding, left open in stop 23).
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which fio timeout
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-delay-filter.so

# 8 workers per connection, reads held 20 ms: 32 readers fill one
# connection and spill over.
start_nbdkit sock gw --threads 8 --filter=delay memory 64M rdelay=20ms
# A proxy in front of it: the first connection is relayed to nbdkit, every
# later one is accepted and then left silent.
start_proxy proxy "$sock" first
start_exporter "$proxy" --connections 4 --conn-depth 8 --threads 32 --idle-threads 2 --reconnect-timeout 300
write_data 8
start=$(now)
# 120 s bounds a hang (the proxy never answers, so without the fix the
# readers never finish); it is no speed threshold: the fix's worst case is
# one 5 s handshake wait.
timeout -s KILL 120 fio --name=spill --filename="$disk" --rw=randread --bs=4k --direct=1 \
  --ioengine=psync --numjobs=32 --size=8M --number_ios=40 --group_reporting \
  --output="$TEST_TMP/fio.txt" ||
  { cat "$TEST_TMP/fio.txt" "$exporter_log" >&2; fail "the reads did not finish while a further connection's handshake hung"; }
took=$(elapsed "$start")
grep -q "err= 0" "$TEST_TMP/fio.txt" || { cat "$TEST_TMP/fio.txt" >&2; fail "fio reported errors"; }
[ -s "$TEST_TMP/silent" ] || fail "no further connection was tried (the test did not test the hang)"
grep -q "a further connection to .* failed (.*handshake.*5 s" "$exporter_log" ||
  { cat "$exporter_log" >&2; fail "the hung handshake was not logged with its cause"; }
if grep -q "giving up" "$exporter_log"; then cat "$exporter_log" >&2; fail "the exporter gave up"; fi
pass "32 parallel readers served on the relayed connection ($(secs "$took") s), the silent spare logged"
# A second burst within the slots' pause: no new silent connection is made.
tries=$(wc -l <"$TEST_TMP/silent")
timeout -s KILL 120 fio --name=spill2 --filename="$disk" --rw=randread --bs=4k --direct=1 \
  --ioengine=psync --numjobs=32 --size=8M --number_ios=40 --group_reporting \
  --output="$TEST_TMP/fio2.txt" || { cat "$TEST_TMP/fio2.txt" >&2; fail "the second burst failed"; }
grep -q "err= 0" "$TEST_TMP/fio2.txt" || { cat "$TEST_TMP/fio2.txt" >&2; fail "fio reported errors"; }
[ "$(wc -l <"$TEST_TMP/silent")" = "$tries" ] || fail "the silent slot was tried again at once"
pass "a second spilling burst leaves the silent slots alone (still $tries tries)"
cmp -s <(dd if="$disk" bs=1M count=8 iflag=direct status=none) "$TEST_TMP/data" || fail "the data read back differs"
pass "data intact"
attach_loop
assert_torn_down

# The same without --conn-depth (a volume's own gateway: 2 connections in
# turn): every read succeeds, the silent second connection is tried once.
start_proxy proxy2 "$sock" first
: >"$TEST_TMP/silent"
start_exporter "$proxy2" --connections 2 --threads 8 --reconnect-timeout 300
for i in 1 2 3 4 5 6; do
  timeout -s KILL 60 dd if="$disk" bs=4k count=1 skip=$i iflag=direct status=none of="$TEST_TMP/r" ||
    { cat "$exporter_log" >&2; fail "read $i failed or hung with connections taken in turn"; }
  cmp -s "$TEST_TMP/r" <(dd if="$TEST_TMP/data" bs=4k count=1 skip=$i status=none) || fail "read $i differs"
done
[ "$(wc -l <"$TEST_TMP/silent")" = 1 ] || fail "the silent connection was tried $(wc -l <"$TEST_TMP/silent") times, not once"
pass "connections in turn: 6 reads served by the relayed one, the silent one tried once"
attach_loop
assert_torn_down
