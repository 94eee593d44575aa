#!/usr/bin/env bash
# Encrypted (LUKS2) volumes through `rbdgw serve`, chosen per export:
#  - "decrypted": the luks2 filter in the gateway; the client reads and writes
#    plaintext and holds no key;
#  - "ciphertext": the raw image; its bytes equal the image's (rbd export),
#    and the client can open LUKS2 itself (here: nbdkit's luks2 filter over a
#    copy) to find the same plaintext.
# The choice is explicit: an export without "encryption" is refused, and so
# is a passphrase file readable by others.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/serve/serve-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which cryptsetup

new_image img 48M
pass_file="$TEST_TMP/vol.pass"
printf 'serve test passphrase' >"$pass_file"
chmod 0600 "$pass_file"
truncate -s 48M "$TEST_TMP/luks.img"
cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$pass_file" "$TEST_TMP/luks.img"
rbd_cli import --no-progress "$TEST_TMP/luks.img" "rbd/$img.tmp"
rbd_cli rm --no-progress "rbd/$img"
rbd_cli mv "rbd/$img.tmp" "rbd/$img"
rm -f "$TEST_TMP/luks.img"

make_psk "$TEST_TMP/server.psk" alice
cat >"$TEST_TMP/serve.json" <<J
{ "listen": ["127.0.0.1:0"],
  "tls": { "psk_file": "$TEST_TMP/server.psk" },
  "cluster": { "conf": "$CEPH_CONF" },
  "run_dir": "$SERVE_RUN",
  "exports": [
    { "name": "plain", "image": "rbd/$img", "encryption": "decrypted",
      "passphrase_file": "$pass_file", "allow": ["psk:alice"] },
    { "name": "raw", "image": "rbd/$img", "encryption": "ciphertext", "read_only": true,
      "allow": ["psk:alice"] } ] }
J
# Explicit choice only.
sed 's/"encryption": "ciphertext", //' "$TEST_TMP/serve.json" >"$TEST_TMP/noenc.json"
rc=0
"$RBDGW_CLI" serve --config "$TEST_TMP/noenc.json" --check 2>"$TEST_TMP/err" || rc=$?
[ "$rc" = 2 ] && grep -q "'encryption' must be given explicitly" "$TEST_TMP/err" ||
  { cat "$TEST_TMP/err" >&2; fail "an export without 'encryption' was not refused clearly (exit $rc)"; }
pass "an export must say its encryption ($(cat "$TEST_TMP/err"))"
chmod 0644 "$pass_file"
rc=0
timeout 60 "$RBDGW_CLI" serve --config "$TEST_TMP/serve.json" 2>"$TEST_TMP/err" || rc=$?
[ "$rc" != 0 ] && grep -q "readable by group or others" "$TEST_TMP/err" ||
  { cat "$TEST_TMP/err" >&2; fail "a world-readable passphrase file was accepted (exit $rc)"; }
chmod 0600 "$pass_file"
pass "a passphrase file readable by others is refused"
assert_serve_clean

start_serve "$TEST_TMP/serve.json"
ps -eo args | grep -v grep | grep -F "$SERVE_RUN" | grep -q "serve test passphrase" &&
  fail "the passphrase is on a command line"
psk_client_file "$TEST_TMP/server.psk" alice "$TEST_TMP/alice.psk"
u() { echo "nbds://alice@127.0.0.1:$SERVE_PORT/$1?tls-psk-file=$TEST_TMP/alice.psk"; }

s=$(nbdinfo --size "$(u plain)")
[ "$s" = $((32 << 20)) ] || fail "decrypted export size $s, expected 32 MiB (48 MiB minus the 16 MiB header)"
s=$(nbdinfo --size "$(u raw)")
[ "$s" = $((48 << 20)) ] || fail "ciphertext export size $s, expected 48 MiB"
head -c 32M /dev/urandom >"$TEST_TMP/plaintext"
nbdcopy "$TEST_TMP/plaintext" "$(u plain)"
nbdcopy "$(u plain)" "$TEST_TMP/plain-back"
cmp "$TEST_TMP/plaintext" "$TEST_TMP/plain-back" || fail "decrypted export reads back different bytes"
pass "decrypted export: plaintext written and read back"

nbdcopy "$(u raw)" "$TEST_TMP/cipher"
rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/rbd-export"
cmp "$TEST_TMP/cipher" "$TEST_TMP/rbd-export" || fail "ciphertext export differs from the raw image"
cmp -s -n $((32 << 20)) <(tail -c 32M "$TEST_TMP/cipher") "$TEST_TMP/plaintext" &&
  fail "the ciphertext export carries the plaintext"
pass "ciphertext export: bytes equal the raw image (rbd export), not the plaintext"

start_nbdkit lsock lpid --filter="$RBDGW_FILTER" file "$TEST_TMP/cipher" passphrase=+"$pass_file"
nbdcopy "$(nbd_uri "$lsock")" "$TEST_TMP/client-decrypted"
cmp "$TEST_TMP/plaintext" "$TEST_TMP/client-decrypted" || fail "client-side LUKS2 open of the ciphertext differs"
pass "ciphertext export opened by the client's own LUKS2 gives the plaintext"

stop_serve "$SERVE_PID"
assert_serve_clean
