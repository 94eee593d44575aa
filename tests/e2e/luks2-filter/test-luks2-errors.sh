#!/usr/bin/env bash
# The luks2 filter refuses what it cannot serve with a clear error, and
# nbdkit neither crashes nor stops serving (nbdkit 1.32's own luks filter
# segfaults on the first client after such a refusal):
#  - per connection: blank, ext4, LUKS1, a wrong passphrase, an unsupported
#    cipher, a truncated header, a truncated data segment. Two clients in a
#    row are refused with the cause in nbdkit's log, nbdkit is still
#    running, and it exits normally on SIGTERM;
#  - at start-up: a passphrase on the command line, no passphrase.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires nbdinfo --version
requires mkfs.ext4 -V

key="$TEST_TMP/passphrase"
printf 'correct horse' >"$key"
printf 'wrong horse' >"$TEST_TMP/wrong"
luks2() {  # luks2 FILE [cryptsetup args]: a LUKS2 volume with 4 MiB of data
  truncate -s 20M "$1"
  cryptsetup luksFormat -q --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file "$key" \
    "${@:2}" "$1"
}

# refused NAME EXPECTED-MESSAGE FILE [FILTER ARGS]: nbdkit serves FILE
# through the filter; two clients are refused, EXPECTED-MESSAGE (an ERE) is
# in the log, nbdkit survives and exits with status 0 on SIGTERM.
refused() {
  local name=$1 expect=$2 file=$3 sock="$TEST_TMP/$1.sock" log="$TEST_TMP/$1.log" pid i rc
  shift 3
  nbdkit -f -U "$sock" --filter="$RBDGW_FILTER" file "$file" "$@" 2>"$log" &
  pid=$!
  cleanup_fn "kill -9 $pid"
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && break; sleep 0.1; done
  for i in 1 2; do
    if nbdinfo --size "$(nbd_uri "$sock")" >/dev/null 2>>"$log"; then
      fail "$name: client $i was served"
    fi
    kill -0 "$pid" 2>/dev/null || fail "$name: nbdkit died after client $i: $(cat "$log")"
  done
  [ "$(grep -cE "luks2: .*$expect" "$log")" -ge 2 ] ||
    fail "$name: expected '$expect' for each client; log: $(cat "$log")"
  kill "$pid"
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "$name: nbdkit exited with status $rc; log: $(cat "$log")"
  pass "$name: refused with '$expect', nbdkit survived"
}

truncate -s 20M "$TEST_TMP/blank"
refused blank 'not a LUKS2 volume \(found blank\)' "$TEST_TMP/blank" passphrase=+"$key"

truncate -s 20M "$TEST_TMP/ext4"
mkfs.ext4 -q "$TEST_TMP/ext4"
refused ext4 'not a LUKS2 volume \(found ext2/3/4 filesystem\)' "$TEST_TMP/ext4" \
  passphrase=+"$key"

luks2 "$TEST_TMP/luks1" --type luks1
refused luks1 'LUKS1 is not supported' "$TEST_TMP/luks1" passphrase=+"$key"

luks2 "$TEST_TMP/good" --type luks2
refused wrong-passphrase 'wrong passphrase' "$TEST_TMP/good" passphrase=+"$TEST_TMP/wrong"

luks2 "$TEST_TMP/cbc" --type luks2 --cipher aes-cbc-essiv:sha256
refused cipher 'cipher aes-cbc-essiv:sha256 is not supported' "$TEST_TMP/cbc" \
  passphrase=+"$key"

head -c 10000 "$TEST_TMP/good" >"$TEST_TMP/short-header"
refused truncated-header 'truncated LUKS2 header' "$TEST_TMP/short-header" passphrase=+"$key"

head -c 16M "$TEST_TMP/good" >"$TEST_TMP/short-data"
refused truncated-data 'truncated LUKS2 volume' "$TEST_TMP/short-data" passphrase=+"$key"

# The good volume is served (the refusals above are not the filter failing
# on everything).
nbdkit -U - --filter="$RBDGW_FILTER" file "$TEST_TMP/good" passphrase=+"$key" \
  --run 'nbdinfo --size "$uri"' >"$TEST_TMP/size" || fail "good volume: not served"
[ "$(cat "$TEST_TMP/size")" = $((4 << 20)) ] || fail "good volume: size $(cat "$TEST_TMP/size")"
pass "good volume: served, 4 MiB"

# Start-up refusals: nbdkit exits non-zero before serving.
startup_refused() {
  local name=$1 expect=$2 log="$TEST_TMP/$1.log"
  shift 2
  if nbdkit -f -U "$TEST_TMP/$name.sock" --filter="$RBDGW_FILTER" file "$TEST_TMP/good" "$@" \
    2>"$log"; then
    fail "$name: nbdkit started"
  fi
  grep -qE "$expect" "$log" || fail "$name: expected '$expect'; log: $(cat "$log")"
  pass "$name: nbdkit refused to start with '$expect'"
}
startup_refused passphrase-in-argv 'never on the command line' passphrase='correct horse'
startup_refused no-passphrase 'passphrase=\+FILE .* is required'
startup_refused bad-key-file "key-file.*$TEST_TMP/missing" key-file="$TEST_TMP/missing"
