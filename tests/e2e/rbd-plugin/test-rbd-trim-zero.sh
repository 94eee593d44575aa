#!/usr/bin/env bash
# Trim (discard) and zero (write-zeroes) read back as zeros and free space
# in RADOS (rbd du on a fast-diff image), and NBD fast-zero is offered.
source "$(dirname "$0")/common.sh"

new_image img 32M --image-feature layering,exclusive-lock,object-map,fast-diff
serve sk np "rbd/$img"
uri=$(nbd_uri "$sk")
used() { rbd_cli du --format json "rbd/$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"])'; }

head -c $((32 * MiB)) /dev/urandom >"$TEST_TMP/in"
nbdcopy "$TEST_TMP/in" "$uri"
[ "$(used)" = $((32 * MiB)) ] || fail "expected 32 MiB used after the fill, got $(used)"

# Zero, trim and fast-zero whole objects, zero an unaligned range; apply
# the same to a local copy (the expected image) and compare both ways.
nbdsh -u "$uri" -c "
MiB = 1 << 20
assert h.can_fast_zero() and h.can_trim() and h.can_zero()
ops = [('zero', 0, 8 * MiB, 0), ('trim', 8 * MiB, 8 * MiB, 0),
       ('zero', 16 * MiB, 4 * MiB, nbd.CMD_FLAG_FAST_ZERO),
       ('zero', 20 * MiB + 1000, 3 * MiB + 5, 0)]
with open('$TEST_TMP/in', 'r+b') as f:
    for op, off, n, flags in ops:
        getattr(h, op)(n, off, flags)
        f.seek(off); f.write(bytes(n))
        assert h.pread(n, off) == bytes(n), (op, off)
    f.seek(0); expected = f.read()
h.flush()
for off in range(0, 32 * MiB, 4 * MiB):
    assert h.pread(4 * MiB, off) == expected[off:off + 4 * MiB], off
"
export_image "$img" "$TEST_TMP/out"
cmp "$TEST_TMP/in" "$TEST_TMP/out" || fail "rbd export differs from the expected image after zero/trim"
u=$(used)
[ "$u" -le $((12 * MiB)) ] || fail "zero/trim did not free the zeroed objects: rbd du says $u bytes used (expected <= 12 MiB)"
pass "zero and trim read back as zeros (NBD and rbd export); used $((32 * MiB)) -> $u bytes"
