#!/usr/bin/env bash
# kill -9 of the decrypting shared gateway (luks2 filter, passphrases from
# the secret store per export) under fsync load on its 4 encrypted volumes:
# `rbdgw reattach` restarts it once, with no passphrase handed to it again
# (each export's passphrase is read from the store at its open), the
# writers carry on; mapped again as raw block devices, every filesystem is
# fsck-clean and holds every file whose fsync returned.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which sha256sum

N=4
declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 64M
  mkdir -p "$TEST_TMP/m$i"
  printf 'secret %d' "$i" >"$TEST_TMP/p$i"
  chmod 600 "$TEST_TMP/p$i"
  cli map "rbd/${img[$i]}" --conf "$CEPH_CONF" --mount "$TEST_TMP/m$i" --shared-gateway \
    --passphrase-file "$TEST_TMP/p$i" --pbkdf pbkdf2:1000 >/dev/null 2>"$TEST_TMP/err" ||
    { cat "$TEST_TMP/err" >&2; fail "map of volume $i failed"; }
done
gateway_pids() { ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' | grep -v grep | grep "exports-dir=$RUN_ROOT/" | awk '{print $1}' || true; }
[ "$(gateway_pids | wc -l)" = 1 ] || fail "expected one decrypting shared gateway"
gw=$(gateway_pids)
grep -q -- "--filter=" "/proc/$gw/cmdline" || fail "the shared gateway does not decrypt"
if tr '\0' '\n' <"/proc/$gw/cmdline" | grep -q "secret "; then fail "a passphrase in the gateway's argv"; fi

writer() {
  local m=$TEST_TMP/m$1 k=0
  : >"$TEST_TMP/acked$1"
  while [ ! -e "$TEST_TMP/stop" ]; do
    dd if=/dev/urandom of="$m/f$k" bs=128K count=1 conv=fsync status=none 2>/dev/null || break
    (cd "$m" && sha256sum "f$k") >>"$TEST_TMP/acked$1"
    k=$((k + 1))
  done
}
wpids=()
for i in $(seq 1 $N); do writer "$i" & wpids+=($!); done
acked() { cat "$TEST_TMP"/acked* 2>/dev/null | wc -l; }
for _ in $(seq 600); do [ "$(acked)" -ge $((3 * N)) ] && break; sleep 0.1; done
before=$(acked)
kill -9 "$gw"
sleep 1
cli reattach >"$TEST_TMP/out" 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "reattach failed"; }
[ "$(grep -c "starting the shared gateway" "$TEST_TMP/err")" = 1 ] || { cat "$TEST_TMP/err" >&2; fail "not started exactly once"; }
for _ in $(seq 900); do [ "$(acked)" -ge $((before + 3 * N)) ] && break; sleep 0.1; done
touch "$TEST_TMP/stop"
for p in "${wpids[@]}"; do wait "$p" || true; done
after=$(acked)
[ "$after" -ge $((before + 3 * N)) ] || fail "writes did not resume ($before before, $after after)"
pass "decrypting shared gateway killed -9 under fsync load, restarted once by reattach: writes resumed ($before, then $after)"

for i in $(seq 1 $N); do cli unmap "rbd.${img[$i]}" 2>/dev/null || fail "unmap of volume $i failed"; done
for i in $(seq 1 $N); do
  dev=$(cli map "rbd/${img[$i]}" --conf "$CEPH_CONF" --shared-gateway --passphrase-file "$TEST_TMP/p$i" 2>/dev/null) ||
    fail "block map of volume $i failed"
  fsck.ext4 -fn "$dev" >"$TEST_TMP/fsck" 2>&1 || { cat "$TEST_TMP/fsck" >&2; fail "volume $i: fsck -fn not clean"; }
  mount -o ro,nodev,nosuid,noload "$dev" "$TEST_TMP/m$i"
  (cd "$TEST_TMP/m$i" && sha256sum --quiet -c "$TEST_TMP/acked$i") || { umount "$TEST_TMP/m$i"; fail "volume $i: a fsynced file differs"; }
  umount "$TEST_TMP/m$i"
  cli unmap "rbd.${img[$i]}" 2>/dev/null || fail "unmap of volume $i failed"
done
pass "all $N encrypted filesystems fsck-clean with every fsynced file intact"
assert_clean
