#!/usr/bin/env bash
# Byte compatibility of the luks2 filter with cryptsetup/dm-crypt, both ways,
# for 512- and 4096-byte sectors and 256- and 512-bit keys:
#  - a volume made by `cryptsetup luksFormat`, with data encrypted by an
#    independent implementation (luks2_xts.py: Python's cryptography), reads
#    correctly through `nbdkit --filter=luks2 file`;
#  - data written through the filter (nbdcopy: aligned; nbdsh: unaligned
#    writes and zeroes) decrypts correctly with that implementation, and
#    unaligned reads through the filter return it too;
#  - cryptsetup still accepts the header and passphrase afterwards.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires nbdcopy --version
requires nbdkit --version
# A Python with libnbd's bindings (nbdsh is `python3 -m nbd`) and cryptography.
py=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import nbd, cryptography' 2>/dev/null; then py=$p; break; fi
done
requires test -n "$py"

here="$RBDGW_SOURCE_DIR/tests/e2e/luks2-filter"
seg=$((8 << 20))
key="$TEST_TMP/passphrase"
head -c 48 /dev/urandom >"$key"  # a binary passphrase: key-file semantics

for sector in 512 4096; do
  for bits in 256 512; do
    what="sector $sector, $bits-bit key"
    vol="$TEST_TMP/vol-$sector-$bits"
    vk="$TEST_TMP/vk-$sector-$bits"
    truncate -s $(((16 << 20) + seg)) "$vol"
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
      --sector-size "$sector" --key-size "$bits" --key-file "$key" "$vol"
    cryptsetup luksDump -q --dump-volume-key --volume-key-file "$vk" --key-file "$key" \
      "$vol" >/dev/null

    # cryptsetup volume + independently encrypted data -> reads through the filter.
    head -c "$seg" /dev/urandom >"$TEST_TMP/plain"
    "$py" "$here/luks2_xts.py" encrypt "$vol" "$vk" "$TEST_TMP/plain" 0
    start_nbdkit nbd_sock nbd_pid --filter="$RBDGW_FILTER" file "$vol" key-file="$key"
    uri=$(nbd_uri "$nbd_sock")
    size=$(nbdinfo --size "$uri")
    [ "$size" = "$seg" ] || fail "$what: export size $size, expected $seg"
    nbdcopy --no-extents "$uri" "$TEST_TMP/read"
    cmp -s "$TEST_TMP/plain" "$TEST_TMP/read" || fail "$what: data read through the filter differs"
    pass "$what: cryptsetup volume reads through the filter"

    # Aligned writes through the filter (nbdcopy) -> decrypt independently.
    head -c "$seg" /dev/urandom >"$TEST_TMP/model"
    nbdcopy "$TEST_TMP/model" "$uri"
    "$py" "$here/luks2_xts.py" decrypt "$vol" "$vk" 0 "$seg" "$TEST_TMP/dec"
    cmp -s "$TEST_TMP/model" "$TEST_TMP/dec" || fail "$what: nbdcopy writes do not decrypt"
    pass "$what: aligned writes decrypt with an independent AES-XTS"

    # Unaligned writes, zeroes and reads (nbdsh), checked against a model.
    MODEL="$TEST_TMP/model" SECTOR=$sector "$py" -m nbd -u "$uri" -c '
import os, random
rng = random.Random(int(os.environ["SECTOR"]))
path = os.environ["MODEL"]
model = bytearray(open(path, "rb").read())
size = len(model)
for i in range(300):
    off = rng.randrange(size)
    n = rng.randrange(1, min(size - off, 3 * 4096 + 100) + 1)
    op = rng.randrange(3)
    if op == 0:
        data = os.urandom(n)
        h.pwrite(data, off)
        model[off:off + n] = data
    elif op == 1:
        h.zero(n, off)
        model[off:off + n] = bytes(n)
    else:
        got = h.pread(n, off)
        assert got == model[off:off + n], "read %d+%d differs after %d ops" % (off, n, i)
h.flush()
open(path, "wb").write(model)
' || fail "$what: unaligned I/O through the filter"
    "$py" "$here/luks2_xts.py" decrypt "$vol" "$vk" 0 "$seg" "$TEST_TMP/dec"
    cmp -s "$TEST_TMP/model" "$TEST_TMP/dec" || fail "$what: unaligned writes do not decrypt"
    pass "$what: unaligned writes and zeroes decrypt with an independent AES-XTS"

    kill "$nbd_pid"
    cryptsetup open --test-passphrase --key-file "$key" "$vol" ||
      fail "$what: cryptsetup no longer opens the volume"
    rm -f "$vol" "$vk"
  done
done
