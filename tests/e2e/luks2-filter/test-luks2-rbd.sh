#!/usr/bin/env bash
# The luks2 filter over the rbd plugin, against librbd's own LUKS2:
#  - an image formatted by `rbd encryption format ... luks2` opens through
#    `nbdkit --filter=luks2 rbd`;
#  - data written through the filter reads back identically through librbd's
#    encryption (the rbd plugin's encryption-format=luks2), and the reverse.
# (Images formatted by rbdgw opening in librbd: unit-luks2-filter-rbd.)
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
requires test -f "$RBDGW_FILTER"
requires test -f "$RBDGW_PLUGIN"
requires test -n "${CEPH_CONF:-}"
requires rbd --version
requires nbdcopy --version

img="rbd/$(unique luks2-rbd)"
pass_file="$TEST_TMP/passphrase"
printf 'rbd luks2 passphrase' >"$pass_file"
rbd_cli create --size 48M "$img"
cleanup_fn "rbd -c '$CEPH_CONF' rm --no-progress '$img'"
# librbd formats with libcryptsetup's default PBKDF (argon2id): slow but real.
rbd_cli encryption format "$img" luks2 "$pass_file"

start_nbdkit sock1 pid1 --filter="$RBDGW_FILTER" "$RBDGW_PLUGIN" "$img" conf="$CEPH_CONF" \
  passphrase=+"$pass_file"
size=$(nbdinfo --size "$(nbd_uri "$sock1")")
[ "$size" = $((32 << 20)) ] || fail "size through the filter: $size, expected 32 MiB"
pass "rbd encryption format image opens through the filter (32 MiB segment)"

# Filter -> librbd.
head -c 32M /dev/urandom >"$TEST_TMP/a"
nbdcopy "$TEST_TMP/a" "$(nbd_uri "$sock1")"
kill "$pid1"
while kill -0 "$pid1" 2>/dev/null; do sleep 0.1; done  # releases the image
start_nbdkit sock2 pid2 "$RBDGW_PLUGIN" "$img" conf="$CEPH_CONF" \
  encryption-format=luks2 encryption-passphrase=+"$pass_file"
nbdcopy --no-extents "$(nbd_uri "$sock2")" "$TEST_TMP/b"
cmp -s "$TEST_TMP/a" "$TEST_TMP/b" ||
  fail "data written through the filter differs through librbd's encryption"
pass "data written through the filter reads back through librbd's encryption"

# librbd -> filter.
head -c 32M /dev/urandom >"$TEST_TMP/c"
nbdcopy "$TEST_TMP/c" "$(nbd_uri "$sock2")"
kill "$pid2"
while kill -0 "$pid2" 2>/dev/null; do sleep 0.1; done
start_nbdkit sock3 pid3 --filter="$RBDGW_FILTER" "$RBDGW_PLUGIN" "$img" conf="$CEPH_CONF" \
  passphrase=+"$pass_file"
nbdcopy --no-extents "$(nbd_uri "$sock3")" "$TEST_TMP/d"
cmp -s "$TEST_TMP/c" "$TEST_TMP/d" ||
  fail "data written through librbd's encryption differs through the filter"
pass "data written through librbd's encryption reads back through the filter"
kill "$pid3"
while kill -0 "$pid3" 2>/dev/null; do sleep 0.1; done
