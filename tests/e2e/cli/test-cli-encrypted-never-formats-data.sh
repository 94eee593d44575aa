#!/usr/bin/env bash
# An encrypted volume that holds data anywhere is never formatted: not by
# `rbdgw map --encrypted` (LUKS2 header + mkfs), not by `rbdgw format`, not
# when a LUKS2 header is already there (untagged, tagged encryptionPrepared
# or tagged encrypted) and the plaintext holds data past its first MiB.
# Each is refused with status 5 naming the offset, the image is unchanged
# and nothing is left behind. An image too large to prove blank without a
# fast-diff map is refused (status 6) rather than guessed about.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which cryptsetup nbdsh

mnt="$TEST_TMP/mnt"
mkdir "$mnt"
printf 'never-format-data' >"$TEST_TMP/pass"
chmod 600 "$TEST_TMP/pass"
meta_key=rbd.csi.ceph.com/encrypted

digest() { rbd_cli export --no-progress "rbd/$1" - | md5sum; }

# check_refused IMAGE STATUS CMD...: CMD exits STATUS saying it refuses, the
# image's bytes and encryption tag are unchanged, nothing is left behind.
check_refused() {
  local img=$1 want=$2 before after tag_before tag_after
  shift 2
  before=$(digest "$img")
  tag_before=$(rbd_cli image-meta get "rbd/$img" "$meta_key" 2>/dev/null || echo none)
  expect_status "$want" "$@"
  grep -Eq "refusing to|cannot prove" "$TEST_TMP/err" ||
    fail "$img: message does not say it refuses: $(cat "$TEST_TMP/err")"
  after=$(digest "$img")
  [ "$before" = "$after" ] || fail "$img: content changed by a refused '$*'"
  tag_after=$(rbd_cli image-meta get "rbd/$img" "$meta_key" 2>/dev/null || echo none)
  [ "$tag_before" = "$tag_after" ] || fail "$img: tag changed from $tag_before to $tag_after"
  assert_clean
}

map_enc() {
  cli map "rbd/$1" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace --encrypted \
    --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000
}

# write_plaintext FILE OFFSET: $TEST_TMP/plain into the plaintext of the
# LUKS2 volume FILE at OFFSET, through the luks2 filter.
write_plaintext() {
  local sock pid
  start_nbdkit sock pid --filter="$RBDGW_FILTER" file "$1" passphrase=+"$TEST_TMP/pass"
  /usr/bin/python3 - "$sock" "$TEST_TMP/plain" "$2" <<'EOF'
import sys, nbd
h = nbd.NBD()
h.connect_unix(sys.argv[1])
h.pwrite(open(sys.argv[2], 'rb').read(), int(sys.argv[3]))
h.flush()
h.shutdown()
EOF
  kill "$pid"
}

# 1. Blank first 16 MiB, 1 MiB of data at 40 MiB.
truncate -s 128M "$TEST_TMP/data40"
head -c 1M /dev/urandom | dd of="$TEST_TMP/data40" bs=1M seek=40 conv=notrunc status=none
name=$(unique cli); rbd_cli import --no-progress "$TEST_TMP/data40" "rbd/$name"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
check_refused "$name" 5 map_enc "$name"
grep -q "holds data at offset 41943040" "$TEST_TMP/err" || fail "offset of the data not named: $(cat "$TEST_TMP/err")"
pass "map --encrypted refuses data at 40 MiB"
check_refused "$name" 5 cli format "rbd/$name" --conf "$CEPH_CONF" \
  --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000
pass "format refuses data at 40 MiB"
# Tagged encryptionPrepared (as CreateVolume tags it): refused all the same.
rbd_cli image-meta set "rbd/$name" "$meta_key" encryptionPrepared
check_refused "$name" 5 map_enc "$name"
pass "map of an encryptionPrepared volume refuses data at 40 MiB"

# 2. A LUKS2 volume whose plaintext is zero in its first MiB but holds data
#    at 8 MiB: untagged, tagged encryptionPrepared, tagged encrypted.
truncate -s 128M "$TEST_TMP/luks"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --key-file "$TEST_TMP/pass" "$TEST_TMP/luks"
head -c 256K /dev/urandom >"$TEST_TMP/plain"
write_plaintext "$TEST_TMP/luks" $((8 << 20))
for tag in none encryptionPrepared encrypted; do
  name=$(unique cli); rbd_cli import --no-progress "$TEST_TMP/luks" "rbd/$name"
  cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
  [ "$tag" = none ] || rbd_cli image-meta set "rbd/$name" "$meta_key" "$tag"
  check_refused "$name" 5 map_enc "$name"
  grep -q "holds data at offset 8388608" "$TEST_TMP/err" || fail "$tag: offset not named: $(cat "$TEST_TMP/err")"
  pass "LUKS2 volume ($tag) with plaintext data at 8 MiB: no mkfs"
done

# 2b. A LUKS2 header (tagged encryptionPrepared, as an interrupted format
#     leaves it) whose data starts at 4 MiB, below the default header area,
#     with plaintext data at 1 MiB: `rbdgw format` does not replace it.
truncate -s 64M "$TEST_TMP/luks4"
cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
  --luks2-keyslots-size 1M --offset 8192 --key-file "$TEST_TMP/pass" "$TEST_TMP/luks4"
write_plaintext "$TEST_TMP/luks4" $((1 << 20))
name=$(unique cli); rbd_cli import --no-progress "$TEST_TMP/luks4" "rbd/$name"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
rbd_cli image-meta set "rbd/$name" "$meta_key" encryptionPrepared
check_refused "$name" 5 cli format "rbd/$name" --conf "$CEPH_CONF" \
  --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000
grep -q "holds data at offset" "$TEST_TMP/err" || fail "4 MiB data offset: $(cat "$TEST_TMP/err")"
pass "format does not replace a prepared LUKS2 header whose data (from 4 MiB) holds plaintext"

# 3. Unencrypted: the same rule, data at 40 MiB behind a zero first MiB.
name=$(unique cli); rbd_cli import --no-progress "$TEST_TMP/data40" "rbd/$name"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
check_refused "$name" 5 cli map "rbd/$name" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace
pass "unencrypted volume with data at 40 MiB: no mkfs"

# 4. Allocated but all zeros (written through librbd): provably blank, formatted.
name=$(unique cli); rbd_cli create --size 128M "rbd/$name"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
/usr/bin/python3 - "$CEPH_CONF" "$name" <<'EOF'
import sys, rados, rbd
with rados.Rados(conffile=sys.argv[1]) as c, c.open_ioctx('rbd') as io, rbd.Image(io, sys.argv[2]) as img:
    img.write(b'\0' * (1 << 20), 40 << 20)
EOF
[ -n "$(rbd_cli diff "rbd/$name")" ] || fail "zeros written through librbd left no allocated extent"
map_enc "$name" >/dev/null || fail "a volume holding only zeros was refused: see above"
cli unmap "$mnt"
assert_clean
pass "a volume holding only zeros is formatted"

# 5. Too large to prove blank without a fast-diff map: refused at once, not
#    guessed about (exporting 300 GiB to compare would take too long: its
#    allocation map must stay empty instead).
name=$(unique cli)
rbd_cli create --size 300G --image-feature layering,exclusive-lock "rbd/$name"
cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
expect_status 6 cli map "rbd/$name" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace
grep -q "cannot prove within the time bound" "$TEST_TMP/err" || fail "refusal not explained: $(cat "$TEST_TMP/err")"
grep -q "fast-diff" "$TEST_TMP/err" || fail "refusal does not say what to do: $(cat "$TEST_TMP/err")"
[ -z "$(rbd_cli diff "rbd/$name")" ] || fail "the refused map wrote to the image"
assert_clean
pass "300 GiB without fast-diff: refused within the time bound"
