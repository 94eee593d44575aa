#!/usr/bin/env bash
# Read-only volumes on a shared gateway: a read-only map and a snapshot map
# (--shared-gateway) join the plain gateway of a read-write volume, each
# as a read-only export (registry "read-only=true") that takes no lock:
# the data reads back, writes are refused, the image's lock stays free
# while the read-write volume on the same gateway holds its own.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which jq sha256sum

new_image a 64M
new_image b 64M
mkdir -p "$TEST_TMP/ma" "$TEST_TMP/mb" "$TEST_TMP/ms"
map() { cli map "$@" --conf "$CEPH_CONF" --shared-gateway; }
map "rbd/$a" --mount "$TEST_TMP/ma" >/dev/null 2>&1 || fail "map of a failed"
head -c 1M /dev/urandom >"$TEST_TMP/ma/f"
(cd "$TEST_TMP/ma" && sha256sum f) >"$TEST_TMP/sum"
cli unmap "rbd.$a" 2>/dev/null
rbd_cli snap create "rbd/$a@s1"
cleanup_fn "rbd -c '$CEPH_CONF' snap purge 'rbd/$a'"

map "rbd/$b" --mount "$TEST_TMP/mb" >/dev/null 2>&1 || fail "map of b failed"
map "rbd/$a" --mount "$TEST_TMP/ma" --read-only >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "read-only map failed"; }
map "rbd/$a@s1" --mount "$TEST_TMP/ms" >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "snapshot map failed"; }
gws=$(ps -eo stat=,args= | awk '$1 !~ /^Z/' | grep -v grep | grep -c "exports-dir=$RUN_ROOT/" || true)
[ "$gws" = 1 ] || fail "expected the three volumes on one shared gateway, got $gws"
for m in ma ms; do (cd "$TEST_TMP/$m" && sha256sum --quiet -c "$TEST_TMP/sum") || fail "$m: data differs"; done
if echo x 2>/dev/null >"$TEST_TMP/ma/new"; then fail "a write to the read-only volume succeeded"; fi
[ -z "$(rbd_cli lock ls "rbd/$a" 2>/dev/null)" ] || { rbd_cli lock ls "rbd/$a" >&2; fail "a read-only export took the image's lock"; }
[ -n "$(rbd_cli lock ls "rbd/$b")" ] || fail "the read-write volume on the same gateway holds no lock"
grep -qx "read-only=true" "$RUN_ROOT"/@shared-*/exports/"rbd.$a" || fail "the read-only registry entry does not say read-only=true"
dd if=/dev/urandom of="$TEST_TMP/mb/g" bs=1M count=2 conv=fsync status=none || fail "write on b failed"
pass "read-only and snapshot maps on the shared gateway: data read back, writes refused, no lock taken"
for s in "$RUN_ROOT"/*/stash.json; do cli unmap "$(jq -r .volume_id "$s")" 2>/dev/null || fail "unmap failed"; done
assert_clean
pass "nothing left behind"
