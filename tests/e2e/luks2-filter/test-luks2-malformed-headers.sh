#!/usr/bin/env bash
# Malformed LUKS2 headers cost bounded memory and end in a clear error, and
# nbdkit neither crashes nor stops serving: a corpus of damaged headers
# (make-malformed-headers.py: huge keyslot areas, absurd numbers, offsets
# past the device, truncation, bad JSON, wrong checksums, a re-encryption in
# progress, an empty export) is served through the luks2 filter under
# `prlimit --as=512 MiB`. For each case two clients are refused with the
# expected message, nbdkit is still running, its peak RSS (VmHWM) stays
# under 64 MiB, and it exits with status 0 on SIGTERM. Cases the corpus
# marks OK must be served.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires nbdinfo --version
requires prlimit --version
requires /usr/bin/python3 -c 'import hashlib, json'

as_limit=$((512 << 20))
rss_limit_kib=$((64 << 10))
key="$TEST_TMP/passphrase"
printf 'correct horse' >"$key"
corpus="$TEST_TMP/corpus"
/usr/bin/python3 "$RBDGW_SOURCE_DIR/tests/e2e/luks2-filter/make-malformed-headers.py" \
  "$corpus" "$key" || fail "could not generate the corpus"

# serve NAME EXPECT PLUGIN-ARGS...: see the top of this file.
serve() {
  local name=$1 expect=$2 sock="$TEST_TMP/$1.sock" log="$TEST_TMP/$1.log" pid i rc hwm
  shift 2
  # One malloc arena, so that the address-space limit bounds allocations
  # rather than per-thread arena reservations.
  MALLOC_ARENA_MAX=1 prlimit --as=$as_limit \
    nbdkit -f -U "$sock" --filter="$RBDGW_FILTER" "$@" passphrase=+"$key" 2>"$log" &
  pid=$!
  cleanup_fn "kill -9 $pid"
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || fail "$name: nbdkit did not start: $(cat "$log")"
  for i in 1 2; do
    if nbdinfo --size "$(nbd_uri "$sock")" >"$TEST_TMP/$name.size" 2>>"$log"; then
      [ "$expect" = OK ] || fail "$name: client $i was served; log: $(cat "$log")"
    else
      [ "$expect" != OK ] || fail "$name: client $i was refused; log: $(cat "$log")"
    fi
    kill -0 "$pid" 2>/dev/null || fail "$name: nbdkit died after client $i: $(cat "$log")"
  done
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
  [ "$hwm" -lt "$rss_limit_kib" ] || fail "$name: nbdkit peak RSS ${hwm} KiB"
  if [ "$expect" != OK ]; then
    [ "$(grep -cE "luks2: .*$expect" "$log")" -ge 2 ] ||
      fail "$name: expected '$expect' for each client; log: $(cat "$log")"
  fi
  kill "$pid"
  rc=0
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || fail "$name: nbdkit exited with status $rc; log: $(cat "$log")"
  if [ "$expect" = OK ]; then
    pass "$name: served, peak RSS ${hwm} KiB"
  else
    pass "$name: refused with '$expect', peak RSS ${hwm} KiB, nbdkit survived"
  fi
}

n=0
while IFS=$'\t' read -r name filter_expect lib_expect; do
  if [ "$name" = @memory0 ]; then
    serve memory-0 "$filter_expect" memory 0
  else
    serve "$name" "$filter_expect" file "$corpus/$name"
  fi
  n=$((n + 1))
done <"$corpus/cases.tsv"
[ "$n" -ge 25 ] || fail "only $n cases in the corpus"
pass "$n cases"
