#!/usr/bin/env bash
# A resize of the image (rbd resize, while nbdkit serves it) is seen by new
# connections, and the new space is usable.
source "$(dirname "$0")/common.sh"

new_image img 8M
serve sk np "rbd/$img"
uri=$(nbd_uri "$sk")
[ "$(nbdinfo --size "$uri")" = $((8 * MiB)) ] || fail "initial size wrong"
rbd_cli resize --no-progress --size 20M "rbd/$img" >/dev/null
size=
for _ in $(seq 50); do   # the header watch notification is asynchronous
  size=$(nbdinfo --size "$uri")
  [ "$size" = $((20 * MiB)) ] && break
  sleep 0.2
done
[ "$size" = $((20 * MiB)) ] || fail "new connection sees $size bytes after growing to 20M"
nbdsh -u "$uri" -c "h.pwrite(b'tail' * 1024, (20 << 20) - 4096); h.flush()"
export_image "$img" "$TEST_TMP/out"
[ "$(tail -c 4096 "$TEST_TMP/out" | head -c 8)" = tailtail ] || fail "write in the grown area lost"
rbd_cli resize --no-progress --allow-shrink --size 4M "rbd/$img" >/dev/null
for _ in $(seq 50); do
  size=$(nbdinfo --size "$uri")
  [ "$size" = $((4 * MiB)) ] && break
  sleep 0.2
done
[ "$size" = $((4 * MiB)) ] || fail "new connection sees $size bytes after shrinking to 4M"
pass "resize 8M -> 20M -> 4M seen by new connections; grown area writable"
