#!/usr/bin/env bash
# Data written through NBD reads back byte-identical through librbd (rbd
# export), and data imported with librbd (rbd import) reads back
# byte-identical through NBD: bulk copies and unaligned writes across object
# boundaries (objects of 1 MiB here, so many boundaries are crossed).
source "$(dirname "$0")/common.sh"

new_image img 24M --object-size 1M
serve sk np "rbd/$img"
uri=$(nbd_uri "$sk")

# Bulk: nbdcopy a random file in, rbd export it out.
head -c $((24 * MiB)) /dev/urandom >"$TEST_TMP/in"
nbdcopy "$TEST_TMP/in" "$uri"
export_image "$img" "$TEST_TMP/out"
cmp "$TEST_TMP/in" "$TEST_TMP/out" || fail "rbd export differs from what nbdcopy wrote"
pass "nbdcopy in, rbd export out: identical"

# Unaligned writes straddling object boundaries (1 MiB objects), applied to
# a local copy as well; then the export must equal the copy.
nbdsh -u "$uri" -c "
MiB = 1 << 20
import random
random.seed(7)
size = h.get_size()
with open('$TEST_TMP/in', 'r+b') as f:
    for off, n in [(MiB - 1, 2), (3 * MiB - 777, 5000), (5 * MiB + 13, 2 * MiB + 1),
                   (0, 1), (size - 3, 3), (12 * MiB - 4096, 8192)]:
        buf = random.randbytes(n)
        h.pwrite(buf, off)
        f.seek(off); f.write(buf)
        assert h.pread(n, off) == buf, off
    h.flush()
"
export_image "$img" "$TEST_TMP/out"
cmp "$TEST_TMP/in" "$TEST_TMP/out" || fail "rbd export differs after unaligned writes"
pass "unaligned writes across object boundaries: identical in rbd export"

# The other way: rbd import a new image, read it through NBD.
head -c $((10 * MiB + 12345)) /dev/urandom >"$TEST_TMP/imp"
img2=$(unique "$TEST_NAME-imp")
rbd_cli import --no-progress --object-size 1M "$TEST_TMP/imp" "rbd/$img2" >/dev/null
cleanup_fn "rbd_cli rm --no-progress rbd/$img2"
serve sk2 np2 "rbd/$img2"
nbdcopy "$(nbd_uri "$sk2")" "$TEST_TMP/back"
cmp "$TEST_TMP/imp" "$TEST_TMP/back" || fail "NBD read differs from rbd import"
nbdsh -u "$(nbd_uri "$sk2")" -c "
with open('$TEST_TMP/imp', 'rb') as f:
    data = f.read()
for off, n in [((1 << 20) - 5, 10), (3 * (1 << 20) + 1, 1 << 20), (len(data) - 7, 7)]:
    assert h.pread(n, off) == data[off:off + n], off
"
pass "rbd import in, NBD out (bulk and unaligned): identical"
