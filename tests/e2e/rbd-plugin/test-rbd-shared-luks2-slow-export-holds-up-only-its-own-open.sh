#!/usr/bin/env bash
# A shared decrypting gateway (`nbdkit --filter=luks2 rbd exports-dir=...
# passphrase-store=...`): an export whose image reads slowly (here a librbd
# QoS limit on the image, rbd_qos_read_bps_limit; in the field as well a pool
# with PGs down, where reads hang) delays only its own first open. The
# header and key material of a volume are read from the image before the
# filter's one-PBKDF-at-a-time lock is taken, so another export's first open
# meanwhile takes its usual fraction of a second, not the slow image's
# seconds (review RF: it waited 6.5 s behind a 7.5 s unlock).
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires bc --version

exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
new_secret_store

# make_volume NAME: a cryptsetup-formatted LUKS2 image with its own random
# passphrase in the store, registered as export NAME.
declare -A image
make_volume() {
  local f="$TEST_TMP/$1.luks"
  head -c 24 /dev/urandom | base64 | tr -d '\n' >"$TEST_TMP/$1.pass"
  truncate -s $((20 << 20)) "$f"
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$TEST_TMP/$1.pass" "$f"
  image[$1]=$(unique "$TEST_NAME")
  cleanup_fn "rbd_cli rm --no-progress rbd/${image[$1]}"
  rbd_cli import --no-progress "$f" "rbd/${image[$1]}" >/dev/null
  register_export "$exdir" "$1" "${image[$1]}"
  install -m 0600 "$TEST_TMP/$1.pass" "$store/$1.passphrase"
}
make_volume slow
make_volume fast1
make_volume fast2
# About 300 KB are read to unlock (headers and one keyslot's 256,000 bytes
# of key material): several seconds at 40 kB/s.
rbd_cli image-meta set "rbd/${image[slow]}" conf_rbd_qos_read_bps_limit 40000

sock=$TEST_TMP/gw.sock
nbdkit -f -v -U "$sock" -P "$TEST_TMP/gw.pid" --filter="$RBDGW_FILTER" "$RBDGW_PLUGIN" \
  "exports-dir=$exdir" exclusive=true durable-writes=true "conf=$CEPH_CONF" \
  "passphrase-store=$store" 2>>"$log" &
pid=$!
cleanup_fn "kill $pid; for _ in \$(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; kill -9 $pid"
for _ in $(seq 300); do [ -S "$sock" ] && [ -s "$TEST_TMP/gw.pid" ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
[ -S "$sock" ] || { cat "$log" >&2; fail "the gateway did not start"; }

now() { date +%s.%N; }
t0=$(now)
nbdinfo --size "$(export_uri "$sock" fast1)" >/dev/null || { cat "$log" >&2; fail "fast1 does not open"; }
alone=$(echo "$(now) - $t0" | bc)
pass "fast1's first open alone: ${alone}s"

t0=$(now)
nbdinfo --size "$(export_uri "$sock" slow)" >"$TEST_TMP/slow.out" 2>&1 &
spid=$!
sleep 1.5
kill -0 $spid 2>/dev/null || fail "the throttled export opened within 1.5 s: the QoS limit does not slow it (nothing to test)"
t1=$(now)
nbdinfo --size "$(export_uri "$sock" fast2)" >/dev/null || { cat "$log" >&2; fail "fast2 does not open"; }
during=$(echo "$(now) - $t1" | bc)
slow_running=0
kill -0 $spid 2>/dev/null && slow_running=1
wait $spid || { cat "$TEST_TMP/slow.out" "$log" >&2; fail "the throttled export did not open"; }
slow=$(echo "$(now) - $t0" | bc)
pass "the throttled export opened in ${slow}s"
[ "$(echo "$during < 2" | bc)" = 1 ] && [ "$slow_running" = 1 ] ||
  fail "fast2's first open took ${during}s while the throttled export unlocked (alone: ${alone}s; throttled one still opening after it: $slow_running): one export's slow image held up another's open"
pass "fast2's first open took ${during}s while the throttled export was still unlocking"
