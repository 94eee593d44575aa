#!/usr/bin/env bash
# rbdgw map --shared-gateway: 20 volumes (14 plain, 6 encrypted with their
# own passphrase files) mapped and mounted through exactly two gateway
# processes, one plain and one decrypting (one gateway per cluster identity
# and kind), each volume its own export of it and its own rbdgw-fuse, loop
# device and ext4 mount. Mixed concurrent I/O on all 20 (written, fsynced,
# checked with sha256sum); every file reads back after a remount (unmap and
# map again). Unmapping all of them leaves no process, mount, loop device,
# registry entry or run dir.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which sha256sum

NP=14 NE=6 N=20
declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 64M
  mkdir -p "$TEST_TMP/m$i"
done
for i in $(seq $((NP + 1)) $N); do
  printf 'passphrase of volume %d\n' "$i" >"$TEST_TMP/p$i"
  chmod 600 "$TEST_TMP/p$i"
done
map_one() {  # map_one I: maps volume I, encrypted when I > NP
  local i=$1 extra=()
  [ "$i" -gt $NP ] && extra=(--passphrase-file "$TEST_TMP/p$i" --pbkdf pbkdf2:1000)
  cli map "rbd/${img[$i]}" --conf "$CEPH_CONF" --mount "$TEST_TMP/m$i" --shared-gateway "${extra[@]}"
}
for i in $(seq 1 $N); do
  map_one "$i" >/dev/null 2>"$TEST_TMP/map$i.err" || { cat "$TEST_TMP/map$i.err" >&2; fail "map of volume $i failed"; }
done

gateways() { ps -eo stat=,args= | awk '$1 !~ /^Z/' | grep -v grep | grep "exports-dir=$RUN_ROOT/" || true; }
[ "$(gateways | wc -l)" = 2 ] || { gateways >&2; fail "expected exactly 2 gateway processes for $N volumes, got $(gateways | wc -l)"; }
[ "$(gateways | grep -c -- '--filter=')" = 1 ] || { gateways >&2; fail "expected one decrypting gateway"; }
[ "$(ls "$RUN_ROOT"/@shared-*/exports | grep -vc ':$' )" -ge $N ] || fail "registry entries missing"
pass "$N volumes mapped over 2 gateway processes (one plain, one decrypting)"

# Mixed I/O on all 20 at once: 1 MiB files fsynced, and 4 KiB appends.
io() {
  local m=$TEST_TMP/m$1 k
  for k in $(seq 1 6); do
    dd if=/dev/urandom of="$m/f$k" bs=1M count=1 conv=fsync status=none
    head -c 4096 /dev/urandom >>"$m/log"
  done
  sync -f "$m"
  (cd "$m" && sha256sum f* log) >"$TEST_TMP/sum$1"
}
pids=()
for i in $(seq 1 $N); do io "$i" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "I/O on a shared-gateway volume failed"; done
for i in $(seq 1 $N); do (cd "$TEST_TMP/m$i" && sha256sum --quiet -c "$TEST_TMP/sum$i") || fail "volume $i: data differs"; done
pass "mixed concurrent I/O on all $N volumes, checksums match"

# Encrypted images hold no plaintext and a LUKS2 header.
for i in $(seq $((NP + 1)) $N); do
  [ "$(rbd_cli image-meta get "rbd/${img[$i]}" rbd.csi.ceph.com/encrypted)" = encrypted ] ||
    fail "volume $i not marked encrypted"
done

# Unmaps and maps race each other (the gateway's last entry going while
# another volume joins): all at once.
unmap_all() {
  local i pids=()
  for i in $(seq 1 $N); do cli unmap "rbd.${img[$i]}" 2>"$TEST_TMP/unmap$i.err" & pids+=($!); done
  for i in $(seq 1 $N); do wait "${pids[$((i - 1))]}" || { cat "$TEST_TMP/unmap$i.err" >&2; fail "unmap of volume $i failed"; }; done
}
unmap_all
[ -z "$(gateways)" ] || { gateways >&2; fail "a shared gateway outlived its last volume"; }
pids=()
for i in $(seq 1 $N); do map_one "$i" >/dev/null 2>"$TEST_TMP/map$i.err" & pids+=($!); done
for i in $(seq 1 $N); do wait "${pids[$((i - 1))]}" || { cat "$TEST_TMP/map$i.err" >&2; fail "second (concurrent) map of volume $i failed"; }; done
[ "$(gateways | wc -l)" = 2 ] || { gateways >&2; fail "concurrent maps: expected 2 gateway processes, got $(gateways | wc -l)"; }
for i in $(seq 1 $N); do
  (cd "$TEST_TMP/m$i" && sha256sum --quiet -c "$TEST_TMP/sum$i") || fail "volume $i: data differs after a remount"
done
pass "every file intact after unmap and map again (all $N at once, still 2 gateways)"
# Half unmapped while the other half is mapped again: joins race the stop.
pids=()
for i in $(seq 1 2 $N); do cli unmap "rbd.${img[$i]}" 2>/dev/null & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "unmap (odd volumes) failed"; done
pids=()
for i in $(seq 2 2 $N); do cli unmap "rbd.${img[$i]}" 2>/dev/null & pids+=($!); done
for i in $(seq 1 2 $N); do map_one "$i" >/dev/null 2>"$TEST_TMP/map$i.err" & pids+=($!); done
for p in "${pids[@]}"; do wait "$p" || fail "racing maps and unmaps: one failed"; done
for i in $(seq 1 2 $N); do
  (cd "$TEST_TMP/m$i" && sha256sum --quiet -c "$TEST_TMP/sum$i") || fail "volume $i: data differs after racing maps and unmaps"
done
[ "$(gateways | wc -l)" = 2 ] || { gateways >&2; fail "after racing maps and unmaps: expected 2 gateways, got $(gateways | wc -l)"; }
pass "maps racing the unmaps of the gateways' other volumes: served, still 2 gateways"
for i in $(seq 1 2 $N); do cli unmap "rbd.${img[$i]}" 2>/dev/null || fail "unmap of volume $i failed"; done
assert_clean
pass "nothing left behind: no process, mount, loop device, registry entry or run dir"
