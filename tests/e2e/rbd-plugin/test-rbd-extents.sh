#!/usr/bin/env bash
# Extents (nbdinfo --map) report the holes of an image: from the object map
# on a fast-diff image (whole objects), by asking each object otherwise.
source "$(dirname "$0")/common.sh"

for features in layering,exclusive-lock,object-map,fast-diff layering; do
  new_image img 64M --object-size 4M --image-feature "$features"
  serve sk np "rbd/$img"
  uri=$(nbd_uri "$sk")
  nbdsh -u "$uri" -c "
h.pwrite(b'x' * 4096, 0)
h.pwrite(b'y' * 10, (20 << 20) + 5)   # inside object 5
h.pwrite(b'z' * (5 << 20), 40 << 20)   # objects 10 and 11
h.flush()
"
  nbdinfo --map "$uri" >"$TEST_TMP/map"
  python3 - "$TEST_TMP/map" "$features" <<'PY' || fail "$features: wrong map: $(cat "$TEST_TMP/map")"
import sys
MiB = 1 << 20
data, holes = [], []
for line in open(sys.argv[1]):
    off, n, t = (int(x) for x in line.split()[:3])
    (holes if t == 3 else data).append((off, off + n))
    assert t in (0, 3), line
def covered(ranges, a, b):
    return any(s <= a and b <= e for s, e in ranges)
# Everything written is data...
for a, b in [(0, 4096), (20 * MiB + 5, 20 * MiB + 15), (40 * MiB, 45 * MiB)]:
    assert covered(data, a, b), (a, b)
# ...and objects never written are holes.
for obj in [1, 2, 3, 4, 6, 7, 8, 9, 12, 13, 14, 15]:
    assert covered(holes, obj * 4 * MiB, (obj + 1) * 4 * MiB), obj
total = sum(e - s for s, e in data)
if 'fast-diff' in sys.argv[2]:
    assert total == 16 * MiB, total   # whole objects 0, 5, 10, 11
else:
    assert total < 6 * MiB, total     # finer than objects
PY
  pass "$features: nbdinfo --map: written ranges are data, unwritten objects holes"
done
