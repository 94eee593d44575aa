#!/usr/bin/env bash
# --idle-threads N keeps an idle exporter small, but a FUSE thread must not
# exit the moment it finds itself idle while requests keep coming: under a
# steady load of 16 parallel 4K readers, threads went idle for microseconds
# between requests, libfuse ended them and made new ones, thousands a
# second (issue 13: the shared gateway's reads at 0.8x of its own
# gateway's). A thread now exits only after a second without a request, so
# the load is served by the threads it made; once it is over the idle ones
# still go, and then nothing wakes the exporter.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires which fio

start_nbdkit sock gw memory 64M
start_exporter "$sock" --threads 32 --idle-threads 2 --connections 1
write_data 16
rest=$(ls "/proc/$exporter/task" | wc -l)

# 16 readers for 4 s; every 10 ms the exporter's thread ids are noted (a
# thread that lives 10 ms or more is seen; shorter ones are missed, so the
# count is a lower bound of the threads made).
fio --name=steady --filename="$disk" --direct=1 --rw=randread --bs=4k --size=16M \
  --ioengine=psync --numjobs=16 --time_based --runtime=4 --group_reporting \
  --output="$TEST_TMP/fio.out" &
f=$!
: >"$TEST_TMP/tids"
while kill -0 $f 2>/dev/null; do
  for t in /proc/"$exporter"/task/*; do echo "${t##*/}"; done >>"$TEST_TMP/tids"
  sleep 0.01
done
wait $f || { cat "$TEST_TMP/fio.out" >&2; fail "fio failed"; }
seen=$(sort -u "$TEST_TMP/tids" | wc -l)
iops=$(grep -o 'IOPS=[^,]*' "$TEST_TMP/fio.out" | head -1)
# At most rest + 32 (--threads) can ever live at once; kept threads are
# seen again and again, so the distinct ids stay within that.
[ "$seen" -le $((rest + 32)) ] ||
  fail "$seen distinct exporter threads seen during 4 s of steady load (at rest $rest, --threads 32): threads ended and made again ($iops)"
pass "$seen distinct exporter threads during 4 s of 16 parallel 4K readers (at rest $rest; $iops)"

for _ in $(seq 50); do [ "$(ls "/proc/$exporter/task" | wc -l)" -le $((rest + 2)) ] && break; sleep 0.1; done
after=$(ls "/proc/$exporter/task" | wc -l)
[ "$after" -le $((rest + 2)) ] || fail "$after threads 5 s after the load (at rest $rest, --idle-threads 2)"
pass "$after threads 5 s after the load"

# Idle, the main thread (which ends idle workers) sleeps: no timer wakes it
# (100 idle volumes would otherwise wake 100 exporters 4 times a second).
cs() { awk '/^voluntary_ctxt_switches/ {print $2}' "/proc/$exporter/task/$exporter/status"; }
sleep 1.5
c0=$(cs)
sleep 3
c1=$(cs)
[ $((c1 - c0)) -le 1 ] || fail "the idle exporter's main thread woke $((c1 - c0)) times in 3 s"
pass "the idle exporter's main thread woke $((c1 - c0)) times in 3 s"
# SIGTERM, SIGINT and SIGHUP (libfuse's handlers end the session) are
# blocked in every thread but the main one, which takes them while it
# waits: one taken by another thread would set the exit flag unseen.
stops=$(( (1 << 14) | (1 << 1) | 1 ))
for t in /proc/"$exporter"/task/*; do
  blk=$((16#$(awk '/^SigBlk/ {print $2}' "$t/status")))
  if [ "${t##*/}" = "$exporter" ]; then
    [ $((blk & stops)) = 0 ] || fail "the main thread blocks a stop signal (SigBlk $blk)"
  else
    [ $((blk & stops)) = $stops ] || fail "thread ${t##*/} ($(cat "$t/comm")) takes stop signals (SigBlk $blk)"
  fi
done
pass "only the main thread takes SIGTERM/SIGINT/SIGHUP"
attach_loop
assert_torn_down
