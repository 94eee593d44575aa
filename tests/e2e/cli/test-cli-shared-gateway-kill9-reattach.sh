#!/usr/bin/env bash
# kill -9 of a shared gateway (rbdgw map --shared-gateway) under fsync load
# on its 10 mounted volumes: `rbdgw reattach` restarts it once (one new
# gateway process for all of them, not one per volume), every volume's
# exporter reconnects by itself and its writer carries on; after unmap each
# image, read through librbd, is fsck-clean and holds every file whose fsync
# returned.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which sha256sum debugfs e2fsck

N=10
declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 64M
  mkdir -p "$TEST_TMP/m$i"
  cli map "rbd/${img[$i]}" --conf "$CEPH_CONF" --mount "$TEST_TMP/m$i" --shared-gateway >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of volume $i failed"; }
done
gateway_pids() { ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' | grep -v grep | grep "exports-dir=$RUN_ROOT/" | awk '{print $1}' || true; }
[ "$(gateway_pids | wc -l)" = 1 ] || fail "expected one shared gateway for $N volumes"
gw=$(gateway_pids)

writer() {  # 128 KiB files, each fsynced; recorded once its fsync returned
  local m=$TEST_TMP/m$1 k=0
  mkdir -p "$TEST_TMP/want$1"
  while [ ! -e "$TEST_TMP/stop" ]; do
    head -c 131072 /dev/urandom >"$TEST_TMP/w$1"
    dd if="$TEST_TMP/w$1" of="$m/f$k" bs=128K conv=fsync status=none 2>/dev/null || break
    mv "$TEST_TMP/w$1" "$TEST_TMP/want$1/f$k"
    k=$((k + 1))
  done
}
wpids=()
for i in $(seq 1 $N); do writer "$i" & wpids+=($!); done
acked() { local n=0 i; for i in $(seq 1 $N); do n=$((n + $(ls "$TEST_TMP/want$i" 2>/dev/null | wc -l))); done; echo $n; }
for _ in $(seq 600); do [ "$(acked)" -ge $((3 * N)) ] && break; sleep 0.1; done
before=$(acked)
kill -9 "$gw"
sleep 1
cli reattach >"$TEST_TMP/reattach.out" 2>"$TEST_TMP/reattach.err" || { cat "$TEST_TMP/reattach.err" >&2; fail "reattach failed"; }
starts=$(grep -c "starting the shared gateway" "$TEST_TMP/reattach.err" || true)
[ "$starts" = 1 ] || { cat "$TEST_TMP/reattach.err" >&2; fail "the shared gateway was started $starts times, expected once"; }
[ "$(gateway_pids | wc -l)" = 1 ] || fail "expected one shared gateway after reattach, got $(gateway_pids | wc -l)"
[ "$(grep -c "ok$" "$TEST_TMP/reattach.out")" = $N ] || { cat "$TEST_TMP/reattach.out" >&2; fail "not every volume ok after reattach"; }
for _ in $(seq 900); do [ "$(acked)" -ge $((before + 3 * N)) ] && break; sleep 0.1; done
touch "$TEST_TMP/stop"
for p in "${wpids[@]}"; do wait "$p" || true; done
after=$(acked)
[ "$after" -ge $((before + 3 * N)) ] || fail "writes did not resume after reattach ($before before, $after after)"
for i in $(seq 1 $N); do
  [ "$(cli status "rbd.${img[$i]}" --json | jq -r .gateway_alive)" = true ] || fail "volume $i: status says its gateway is dead"
done
pass "killed -9 under fsync load on $N volumes; reattach started the gateway once; writes resumed ($before acknowledged before, $after in all)"

for i in $(seq 1 $N); do cli unmap "rbd.${img[$i]}" 2>/dev/null || fail "unmap of volume $i failed"; done
for i in $(seq 1 $N); do
  rbd_cli export --no-progress "rbd/${img[$i]}" "$TEST_TMP/copy" >/dev/null
  e2fsck -fn "$TEST_TMP/copy" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "volume $i: fsck -fn of the image is not clean"; }
  for f in "$TEST_TMP/want$i"/*; do
    debugfs -R "dump /$(basename "$f") $TEST_TMP/got" "$TEST_TMP/copy" >/dev/null 2>&1
    cmp -s "$f" "$TEST_TMP/got" || fail "volume $i: fsynced file $(basename "$f") differs in the image"
    rm -f "$TEST_TMP/got"
  done
  rm -f "$TEST_TMP/copy"
done
pass "all $N images fsck-clean with every fsynced file intact"
assert_clean
