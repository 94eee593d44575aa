#!/usr/bin/env bash
# A shared decrypting gateway (`nbdkit --filter=luks2 rbd exports-dir=...
# passphrase-store=...`) runs one PBKDF at a time. A volume whose store
# entry holds a wrong passphrase, opened again and again (rbdgw-fuse
# reconnects every 0.5 s for 300 s), must not keep that PBKDF slot busy: a
# wrong passphrase is tried again only when the store entry or the volume's
# header changed, and other exports' first opens take their usual fraction
# of a second (review RF: 1.8 to 2.5 s each behind two clients retrying an
# argon2id volume). The refusal still says 'wrong passphrase'; a corrected
# store entry opens at once.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires bc --version

exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
new_secret_store

# make_volume NAME [cryptsetup pbkdf options]: a LUKS2 image with a random
# passphrase ($TEST_TMP/NAME.pass, and in the store), registered as NAME.
make_volume() {
  local name=$1 f="$TEST_TMP/$1.luks" img
  shift
  head -c 24 /dev/urandom | base64 | tr -d '\n' >"$TEST_TMP/$name.pass"
  truncate -s $((20 << 20)) "$f"
  cryptsetup luksFormat -q --type luks2 "$@" --key-file "$TEST_TMP/$name.pass" "$f"
  img=$(unique "$TEST_NAME")
  cleanup_fn "rbd_cli rm --no-progress rbd/$img"
  rbd_cli import --no-progress "$f" "rbd/$img" >/dev/null
  register_export "$exdir" "$name" "$img"
  install -m 0600 "$TEST_TMP/$name.pass" "$store/$name.passphrase"
}
make_volume bad --pbkdf argon2id --iter-time 1000 --pbkdf-memory 262144
printf 'not the passphrase' >"$TEST_TMP/wrong"
install -m 0600 "$TEST_TMP/wrong" "$store/bad.passphrase+"
mv "$store/bad.passphrase+" "$store/bad.passphrase"
for v in good1 good2 good3 good4; do
  make_volume "$v" --pbkdf pbkdf2 --pbkdf-force-iterations 1000
done

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
! nbdinfo --size "$(export_uri "$sock" bad)" >/dev/null 2>&1 || fail "bad opened with a wrong passphrase"
pass "bad's first (refused) open: $(echo "$(now) - $t0" | bc)s"

# Two clients retrying bad's open, as fast as they can.
retry_bad() {
  while [ ! -e "$TEST_TMP/stop" ]; do
    ! nbdinfo --size "$(export_uri "$sock" bad)" >/dev/null 2>&1 || echo opened >"$TEST_TMP/bad-opened"
  done
}
retry_bad & r1=$!
retry_bad & r2=$!
cleanup_fn "touch '$TEST_TMP/stop'; kill $r1 $r2 2>/dev/null || true"
sleep 2
slowest=0
for v in good1 good2 good3 good4; do
  t0=$(now)
  nbdinfo --size "$(export_uri "$sock" $v)" >/dev/null || { cat "$log" >&2; fail "$v does not open"; }
  t=$(echo "$(now) - $t0" | bc)
  pass "$v's first open while bad's open is retried: ${t}s"
  [ "$(echo "$t > $slowest" | bc)" = 1 ] && slowest=$t
done
touch "$TEST_TMP/stop"
wait $r1 $r2
[ ! -e "$TEST_TMP/bad-opened" ] || fail "bad opened with a wrong passphrase"
n=$(grep -c "luks2: export 'bad': wrong passphrase" "$log")
[ "$(echo "$slowest < 1" | bc)" = 1 ] ||
  fail "the slowest first open took ${slowest}s while bad's open was retried ($n refusals): one volume's wrong passphrase held up the others' opens"
pass "every first open took under 1 s (slowest ${slowest}s) while bad's open was refused $n times"

# The store entry corrected: bad opens, at once.
install -m 0600 "$TEST_TMP/bad.pass" "$store/bad.passphrase+"
mv "$store/bad.passphrase+" "$store/bad.passphrase"
nbdinfo --size "$(export_uri "$sock" bad)" >/dev/null || { cat "$log" >&2; fail "bad does not open after its store entry was corrected"; }
pass "bad opens after its store entry was corrected"
