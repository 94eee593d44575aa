#!/usr/bin/env bash
# A passphrase is the exact bytes of its file, as `cryptsetup --key-file`
# reads them (trailing newline, trailing spaces and NUL bytes included), on
# every path, checked both ways against the real cryptsetup:
#  (a) a volume `rbdgw map --encrypted --passphrase-file F` (or a `default`
#      KMS, from passphraseFile or --kms-secret-file) formats opens with
#      `cryptsetup --key-file F`, and not with F minus its newline;
#  (b) a volume `cryptsetup luksFormat --key-file F` made (rbd import) maps
#      with --passphrase-file F; F minus its newline or its trailing spaces
#      is refused as a wrong passphrase, with a hint when the file ends in
#      a newline (older rbdgw stripped it);
#  (c) the luks2 filter's passphrase=-FD and passphrase=+FILE and the rbd
#      plugin's encryption-passphrase=-FD/+FILE take the same bytes.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires nbdinfo --version

nl="$TEST_TMP/pass-newline"       # ends in a newline (editors, kubectl --from-file)
nonl="$TEST_TMP/pass-no-newline"  # the same without it
odd="$TEST_TMP/pass-odd"          # an embedded NUL and trailing spaces
trimmed="$TEST_TMP/pass-odd-trimmed"
printf 'correct horse battery staple\n' >"$nl"
printf 'correct horse battery staple' >"$nonl"
printf 'nul\0inside, spaces after  ' >"$odd"
printf 'nul\0inside, spaces after' >"$trimmed"
chmod 600 "$nl" "$nonl" "$odd" "$trimmed"

opens() {  # opens KEYFILE FILE: cryptsetup accepts KEYFILE for FILE
  cryptsetup open --test-passphrase --key-file "$1" "$2" 2>/dev/null
}
map_raw() {  # map_raw IMAGE ARGS...: raw block map through the luks2 filter
  cli map "rbd/$1" --conf "$CEPH_CONF" --attach userspace "${@:2}"
}

# (a) rbdgw formats, cryptsetup opens.
for f in "$nl" "$odd"; do
  new_image img 64M
  map_raw "$img" --encrypted --passphrase-file "$f" --pbkdf pbkdf2:1000 >/dev/null
  cli unmap "rbd/$img"
  assert_clean
  rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/raw" >/dev/null
  opens "$f" "$TEST_TMP/raw" ||
    fail "(a) $(basename "$f"): cryptsetup --key-file does not open what rbdgw map formatted"
  if opens "$([ "$f" = "$nl" ] && echo "$nonl" || echo "$trimmed")" "$TEST_TMP/raw"; then
    fail "(a) $(basename "$f"): the header also opens with the file's bytes changed"
  fi
  rm "$TEST_TMP/raw"
  pass "(a) rbdgw map formatted with $(basename "$f") byte for byte: cryptsetup --key-file opens it"
done

# (a) the same through a `default` KMS, its secret from passphraseFile and
# from --kms-secret-file.
cat >"$TEST_TMP/kms.json" <<JSON
{ "shared-file": { "encryptionKMSType": "default", "passphraseFile": "$nl" },
  "shared": { "encryptionKMSType": "default" } }
JSON
for how in file option; do
  new_image img 64M
  if [ $how = file ]; then
    map_raw "$img" --kms-id shared-file --kms-config "$TEST_TMP/kms.json" --pbkdf pbkdf2:1000 >/dev/null
  else
    map_raw "$img" --kms-id shared --kms-config "$TEST_TMP/kms.json" --kms-secret-file "$nl" \
      --pbkdf pbkdf2:1000 >/dev/null
  fi
  cli unmap "rbd/$img"
  assert_clean
  rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/raw" >/dev/null
  opens "$nl" "$TEST_TMP/raw" ||
    fail "(a) default KMS, secret by $how: cryptsetup --key-file does not open it"
  if opens "$nonl" "$TEST_TMP/raw"; then fail "(a) default KMS, secret by $how: opens without the newline"; fi
  rm "$TEST_TMP/raw"
  pass "(a) default KMS, secret by $how: the LUKS passphrase is the file's exact bytes"
done

# (b) cryptsetup formats, rbdgw opens.
luks_file() {  # luks_file FILE KEYFILE: a 64 MiB LUKS2 volume made by cryptsetup
  rm -f "$1"
  truncate -s 64M "$1"
  cryptsetup luksFormat -q --type luks2 --key-file "$2" --pbkdf pbkdf2 \
    --pbkdf-force-iterations 1000 --sector-size 4096 "$1"
}
import_image() {  # import_image VAR FILE: rbd import of FILE, removed at the end
  local __n
  __n=$(unique "cli")
  rbd_cli import --no-progress "$2" "rbd/$__n" >/dev/null
  cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$__n'"
  printf -v "$1" '%s' "$__n"
}
for f in "$nl" "$odd"; do
  luks_file "$TEST_TMP/vol" "$f"
  import_image img "$TEST_TMP/vol"
  bad=$([ "$f" = "$nl" ] && echo "$nonl" || echo "$trimmed")
  expect_status 7 map_raw "$img" --encrypted --passphrase-file "$bad"
  grep -q "wrong passphrase" "$TEST_TMP/err" || fail "(b) message: $(cat "$TEST_TMP/err")"
  assert_clean
  dev=$(map_raw "$img" --encrypted --passphrase-file "$f") ||
    fail "(b) $(basename "$f"): rbdgw map refuses the passphrase cryptsetup formatted with"
  [ "$(blockdev --getsize64 "$dev")" = $((48 * 1024 * 1024)) ] || fail "(b) device size $(blockdev --getsize64 "$dev")"
  head -c 1M "$dev" >/dev/null || fail "(b) the mapped device is unreadable"
  cli unmap "rbd/$img"
  assert_clean
  pass "(b) cryptsetup luksFormat --key-file $(basename "$f"): rbdgw map opens it, the changed bytes are refused"
done

# (b) a file ending in a newline on a volume whose passphrase lacks it (what
# rbdgw 0.1.0 and before formatted): refused, with the hint, no retry.
luks_file "$TEST_TMP/vol" "$nonl"
import_image img "$TEST_TMP/vol"
expect_status 7 map_raw "$img" --encrypted --passphrase-file "$nl"
grep -q "wrong passphrase" "$TEST_TMP/err" && grep -q "ends in a newline" "$TEST_TMP/err" ||
  fail "(b) no newline hint: $(cat "$TEST_TMP/err")"
assert_clean
pass "(b) a trailing newline the volume lacks: refused with the hint: $(grep -o 'the passphrase ends.*' "$TEST_TMP/err" | head -c 120)"

# (c) the luks2 filter directly, on the cryptsetup-made file.
served() {  # served LOG NBDKIT-ARGS...: nbdkit with the filter serves the volume
  local log=$1 sock="$TEST_TMP/c.sock" pid rc=0
  shift
  rm -f "$sock"
  nbdkit -f -U "$sock" --filter="$RBDGW_FILTER" "$@" 2>"$log" &
  pid=$!
  for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && break; sleep 0.1; done
  nbdinfo --size "$(nbd_uri "$sock")" >"$log.size" 2>>"$log" || rc=1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  [ $rc = 0 ] && [ "$(cat "$log.size")" = $((48 * 1024 * 1024)) ]
}
for f in "$nl" "$odd"; do
  luks_file "$TEST_TMP/vol" "$f"
  served "$TEST_TMP/c1.log" file "$TEST_TMP/vol" passphrase=-3 3<"$f" ||
    fail "(c) filter passphrase=-FD, $(basename "$f"): $(cat "$TEST_TMP/c1.log")"
  served "$TEST_TMP/c2.log" file "$TEST_TMP/vol" passphrase=+"$f" ||
    fail "(c) filter passphrase=+FILE, $(basename "$f"): $(cat "$TEST_TMP/c2.log")"
  bad=$([ "$f" = "$nl" ] && echo "$nonl" || echo "$trimmed")
  if served "$TEST_TMP/c3.log" file "$TEST_TMP/vol" passphrase=-3 3<"$bad"; then
    fail "(c) filter: $(basename "$bad") opened a volume formatted with $(basename "$f")"
  fi
  grep -q "wrong passphrase" "$TEST_TMP/c3.log" || fail "(c) message: $(cat "$TEST_TMP/c3.log")"
  pass "(c) luks2 filter passphrase=-FD and +FILE: exact bytes of $(basename "$f")"
done

# (c) the rbd plugin's librbd encryption, on a cryptsetup-made image.
for f in "$nl" "$odd"; do
  luks_file "$TEST_TMP/vol" "$f"
  import_image img "$TEST_TMP/vol"
  for arg in "encryption-passphrase=-3" "encryption-passphrase=+$f"; do
    sock="$TEST_TMP/p.sock"
    pidf="$TEST_TMP/p.pid"
    rm -f "$sock" "$pidf"
    timeout 120 nbdkit -U "$sock" -P "$pidf" "$RBDGW_PLUGIN" "rbd/$img" conf="$CEPH_CONF" \
      encryption-format=luks2 "$arg" 3<"$f" >"$TEST_TMP/p.log" 2>&1 ||
      fail "(c) rbd plugin $arg, $(basename "$f"): $(cat "$TEST_TMP/p.log")"
    pid=$(cat "$pidf")
    cleanup_fn "kill -9 $pid"
    size=$(nbdinfo --size "$(nbd_uri "$sock")")
    kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    [ "$size" = $((48 * 1024 * 1024)) ] || fail "(c) rbd plugin: size $size"
  done
  pass "(c) rbd plugin encryption-passphrase=-FD and +FILE: exact bytes of $(basename "$f")"
done
