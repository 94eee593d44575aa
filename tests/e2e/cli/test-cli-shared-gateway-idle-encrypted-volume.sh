#!/usr/bin/env bash
# An idle encrypted volume on the decrypting shared gateway costs it no
# threads either: its exporter closes the idle connection (here after 2 s,
# RBDGW_IDLE_DISCONNECT=2), the gateway keeps the unlocked volume while the
# volume is mapped (its key found in the gateway's memory with no
# connection open), the next I/O connects again unnoticed and reads what
# was written. Unmap wipes that key from the gateway's memory, while the
# gateway goes on serving the other volume.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which sha256sum ss cryptsetup
requires test "$(id -u)" = 0
find_mem="$(dirname "$0")/../rbd-plugin/find_in_memory.py"
export RBDGW_IDLE_DISCONNECT=2

for v in a b; do
  new_image "$v" 64M
  mkdir -p "$TEST_TMP/m$v"
  printf 'passphrase of %s %s' "$v" "$(head -c 9 /dev/urandom | base64)" >"$TEST_TMP/p$v"
  chmod 600 "$TEST_TMP/p$v"
  cli map "rbd/${!v}" --conf "$CEPH_CONF" --shared-gateway --mount "$TEST_TMP/m$v" \
    --passphrase-file "$TEST_TMP/p$v" --pbkdf pbkdf2:1000 >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of $v failed"; }
done
gw=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway process"
[ "$(echo "$gw" | wc -w)" = 1 ] || fail "expected one decrypting shared gateway: $gw"
grep -q -- "--filter=" "/proc/$gw/cmdline" || fail "the shared gateway does not decrypt"
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
fuse_log=$RUN_ROOT/rbd.$a/fuse.log
conns() { connections_on "$sock"; }

# a's volume key, read off its header (the image is readable while mapped).
rbd_cli export --no-progress "rbd/$a" "$TEST_TMP/a.img" >/dev/null
cryptsetup luksDump -q --dump-volume-key --volume-key-file "$TEST_TMP/a.vk" \
  --key-file "$TEST_TMP/pa" "$TEST_TMP/a.img" >/dev/null || fail "luksDump of a's header failed"
rm -f "$TEST_TMP/a.img"
[ "$(stat -c %s "$TEST_TMP/a.vk")" = 64 ] || fail "a: not a 512-bit volume key"

head -c 4M /dev/urandom >"$TEST_TMP/ma/f"
sync -f "$TEST_TMP/ma/f"
(cd "$TEST_TMP/ma" && sha256sum f) >"$TEST_TMP/sum"
sync -f "$TEST_TMP/ma/f"  # the read's atime update, else journalled up to 5 s later
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "$(conns) connection(s) still open 10 s after both encrypted volumes went idle"
if /usr/bin/python3 "$find_mem" "$gw" "$TEST_TMP/a.vk" >/dev/null; then
  fail "a's key is not in the gateway's memory while a is mapped and idle"
fi
pass "idle encrypted volumes: no connection; a's unlocked volume kept by the gateway"

dd if="$TEST_TMP/ma/f" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1 >"$TEST_TMP/direct"
[ "$(cat "$TEST_TMP/direct")" = "$(cut -d' ' -f1 "$TEST_TMP/sum")" ] || fail "an O_DIRECT read after the idle close differs"
dd if=/dev/urandom of="$TEST_TMP/ma/g" bs=1M count=2 conv=fsync status=none || fail "a write after the idle close failed"
if grep -E "lost|reconnect|giving up|wrong passphrase|no passphrase" "$fuse_log"; then
  fail "the exporter logged an error across the reconnect"
fi
pass "read back (O_DIRECT) and written again after the idle close, nothing logged"

cli unmap "rbd.$a" 2>/dev/null || fail "unmap of a failed"
/usr/bin/python3 "$find_mem" --gone-within 5 "$gw" "$TEST_TMP/a.vk" >"$TEST_TMP/found" ||
  fail "a's key still in the gateway's memory 5 s after its unmap: $(cat "$TEST_TMP/found")"
kill -0 "$gw" || fail "the shared gateway stopped with b still mapped"
dd if=/dev/urandom of="$TEST_TMP/mb/h" bs=1M count=2 conv=fsync status=none || fail "a write on b failed after a's unmap"
pass "a unmapped: its key wiped from the gateway, which goes on serving b"

cli unmap "rbd.$b" 2>/dev/null || fail "unmap of b failed"
assert_clean
pass "unmapped: nothing left behind"
