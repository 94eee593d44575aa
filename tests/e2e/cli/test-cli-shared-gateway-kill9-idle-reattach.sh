#!/usr/bin/env bash
# kill -9 of a shared gateway while its volumes are idle (their exporters
# closed their connections, the gateway held the images open): `rbdgw
# reattach` brings every volume back, each image locked again by the new
# gateway, and everything fsynced before is read back, before and after
# another idle close.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which ss jq sha256sum
export RBDGW_IDLE_DISCONNECT=1
N=3
declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 64M
  mkdir -p "$TEST_TMP/m$i"
  cli map "rbd/${img[$i]}" --conf "$CEPH_CONF" --shared-gateway --mount "$TEST_TMP/m$i" >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of volume $i failed"; }
  head -c 2M /dev/urandom >"$TEST_TMP/m$i/f"
  sync -f "$TEST_TMP/m$i/f"
  (cd "$TEST_TMP/m$i" && sha256sum f) >"$TEST_TMP/sum$i"
done
gw=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway"
sock=$(echo "$RUN_ROOT"/@shared-*/nbd.sock)
conns() { connections_on "$sock"; }
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "connections still open 10 s after the volumes went idle"
kill -9 "$gw"
sleep 1
cli reattach >"$TEST_TMP/re.out" 2>"$TEST_TMP/re.err" || { cat "$TEST_TMP/re.err" >&2; fail "reattach failed"; }
[ "$(grep -c "ok$" "$TEST_TMP/re.out")" = $N ] || { cat "$TEST_TMP/re.out" "$TEST_TMP/re.err" >&2; fail "not every volume ok after reattach"; }
gw2=$(pgrep -f -- "exports-dir=$RUN_ROOT/") || fail "no shared gateway after reattach"
for i in $(seq 1 $N); do
  dd if="$TEST_TMP/m$i/f" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1 >"$TEST_TMP/got" ||
    fail "volume $i: read after reattach failed"
  [ "$(cat "$TEST_TMP/got")" = "$(cut -d' ' -f1 "$TEST_TMP/sum$i")" ] || fail "volume $i: data differs after reattach"
  dd if=/dev/urandom of="$TEST_TMP/m$i/g" bs=1M count=1 conv=fsync status=none || fail "volume $i: write after reattach failed"
done
pass "killed -9 while idle; reattach; every volume reads its data back and writes"
for _ in $(seq 100); do [ "$(conns)" = 0 ] && break; sleep 0.1; done
[ "$(conns)" = 0 ] || fail "connections still open 10 s after the volumes went idle again"
for i in $(seq 1 $N); do
  [ -n "$(rbd_cli lock ls "rbd/${img[$i]}")" ] || fail "volume $i: image not locked while idle after reattach"
  dd if="$TEST_TMP/m$i/f" bs=1M iflag=direct status=none | sha256sum | cut -d' ' -f1 >"$TEST_TMP/got"
  [ "$(cat "$TEST_TMP/got")" = "$(cut -d' ' -f1 "$TEST_TMP/sum$i")" ] || fail "volume $i: data differs after the second idle close"
done
for i in $(seq 1 $N); do
  [ -e "$(echo "$RUN_ROOT"/@shared-*/exports)/.open.rbd.${img[$i]}" ] || fail "volume $i: no .open marker while its image is open"
done
for i in $(seq 1 $N); do cli unmap "rbd.${img[$i]}" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "unmap $i failed"; }; done
for i in $(seq 1 $N); do
  [ -z "$(rbd_cli lock ls "rbd/${img[$i]}")" ] || fail "volume $i: still locked after unmap"
done
assert_clean
pass "idle again, still locked, data intact; unmapped, locks gone"
