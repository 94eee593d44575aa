#!/usr/bin/env bash
# exports-dir: ONE nbdkit serves 20 images as 20 exports at once. Mixed I/O
# (random writes, zeroes, checked reads, flushes) on all 20 concurrently
# leaves each image holding exactly what was written to it (read back
# through librbd by `rbd export`, not through the gateway). Meanwhile
# exports with bad input (a registry entry naming a removed image, a
# malformed entry, a name nobody registered) each fail their own open,
# naming the cause, and disturb none of the others' I/O. The exclusive lock
# is per image: taken at the export's first open and held while it is
# registered, also with no connection left (an exporter that dropped its
# idle connection or crashed); let go once its registry file is removed and
# its last connection closed, other images untouched.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"

N=20
exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 16M
  register_export "$exdir" "v$i" "${img[$i]}"
done
# Bad input: an image removed after it was registered, a malformed entry.
new_image gone 16M
register_export "$exdir" gone "$gone"
rbd_cli rm --no-progress "rbd/$gone"
printf 'image=rbd/x\nbogus=1\n' >"$exdir/malformed"

start_shared sock pid "$log" "$exdir"
[ "$(pgrep -c -f -- "exports-dir=$exdir")" = 1 ] || fail "not exactly one gateway process"

# The bad exports, tried over and over while the good ones do their I/O.
bad_opens() {
  local k name
  for k in 1 2 3 4 5; do
    for name in gone malformed unregistered; do
      if nbdinfo "$(export_uri "$sock" "$name")" >/dev/null 2>&1; then
        echo "export '$name' opened" >"$TEST_TMP/bad-opened"
      fi
    done
  done
}

pids=()
for i in $(seq 1 $N); do
  mixed_io "$(export_uri "$sock" "v$i")" "$i" "$TEST_TMP/model$i" 2>"$TEST_TMP/io$i.err" &
  pids+=($!)
done
bad_opens &
bad=$!
for i in $(seq 1 $N); do
  wait "${pids[$((i - 1))]}" || { cat "$TEST_TMP/io$i.err" >&2; fail "mixed I/O on export v$i failed"; }
done
wait $bad
[ ! -e "$TEST_TMP/bad-opened" ] || fail "$(cat "$TEST_TMP/bad-opened")"
kill -0 "$pid" || fail "the gateway died"
pass "mixed I/O on $N exports of one gateway, bad exports refused meanwhile"

grep -q "$gone" "$log" || { cat "$log" >&2; fail "the removed image is not named"; }
grep -q "export 'malformed'.*unknown or malformed line 'bogus'" "$log" || { cat "$log" >&2; fail "the malformed entry is not named"; }
grep -q "export 'unregistered': not registered" "$log" || { cat "$log" >&2; fail "the unregistered export is not named"; }
pass "each bad export's open failed naming its cause"

for i in $(seq 1 $N); do
  export_image "${img[$i]}" "$TEST_TMP/image$i"
  cmp -s "$TEST_TMP/model$i" "$TEST_TMP/image$i" || fail "image ${img[$i]} (export v$i) differs from what was written to it"
done
pass "all $N images hold exactly what was written (rbd export)"

# The exclusive lock is per image: every export was opened and none has a
# connection now, yet each is registered, so each image is still locked.
locked() { [ -n "$(rbd_cli lock ls "rbd/$1")" ]; }
for i in 1 2 3; do
  locked "${img[$i]}" || fail "v$i is registered (no connection left) but its image has no lock"
done
# Unregistered with no connection: the registry watcher lets it go.
rm "$exdir/v2"
for _ in $(seq 50); do locked "${img[2]}" || break; sleep 0.1; done
locked "${img[2]}" && fail "v2's lock not let go within 5 s of its registry file's removal"
# Unregistered while a connection uses it: held until that one closes.
nbdsh -u "$(export_uri "$sock" v1)" -c 'import time; time.sleep(5)' &
holder=$!
sleep 2
rm "$exdir/v1"
sleep 2
kill -0 $holder 2>/dev/null || fail "the v1 connection ended early"
locked "${img[1]}" || fail "v1's lock let go while a connection still uses it"
wait $holder
for _ in $(seq 50); do locked "${img[1]}" || break; sleep 0.1; done
locked "${img[1]}" && fail "v1's lock not let go after its last connection closed, unregistered"
locked "${img[3]}" || fail "v3 (still registered) lost its lock"
pass "each image's lock held while its export is registered (with or without a connection), let go after"
