#!/usr/bin/env bash
# The shared gateway under 20 mounted filesystems: ONE nbdkit rbd
# exports-dir serves 20 images, each through its own rbdgw-fuse --export,
# loop device (--direct-io=on) and ext4 mount, as the userspace path stacks
# them (set up here by hand: `rbdgw map` does not start a shared gateway
# yet). Files are written and fsynced on all 20 at once; the gateway is
# killed -9 in the middle and a new one started on the same socket and
# registry (what rbdgw's reattach does for one volume's gateway). Every
# exporter reconnects, the writers carry on, and afterwards every file whose
# fsync returned holds what was written (read after a remount), and every
# filesystem is clean (fsck -fn). Nothing is left behind.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"
requires which nbdkit sha256sum

N=20
sh=$RUN_ROOT/shared log=$TEST_TMP/gateway.log
mkdir -p "$sh/exports"
gw_pid=
wpids=()

start_gateway() {
  rm -f "$sh/sock"  # nbdkit killed -9 leaves its socket behind
  nbdkit -f --log=stderr -U "$sh/sock" -P "$sh/nbdkit.pid" "$RBDGW_PLUGIN" "exports-dir=$sh/exports" \
    exclusive=true durable-writes=true "conf=$CEPH_CONF" 2>>"$log" &
  gw_pid=$!
  for _ in $(seq 300); do [ -S "$sh/sock" ] && break; sleep 0.1; done
  [ -S "$sh/sock" ] || { cat "$log" >&2; fail "the shared gateway did not start"; }
}

teardown() {
  local - i d
  set +e  # best effort: each step whether or not the one before worked
  # Writers first: one left running keeps its filesystem busy.
  touch "$TEST_TMP/stop"
  [ ${#wpids[@]} -gt 0 ] && kill "${wpids[@]}" 2>/dev/null
  for i in $(seq 1 $N); do
    d=$sh/v$i
    [ -d "$d" ] || continue
    mountpoint -q "$d/mnt" && umount "$d/mnt"
    [ -s "$d/loop" ] && losetup -d "$(cat "$d/loop")"
    mountpoint -q "$d/disk" && fusermount3 -u "$d/disk"
    if [ -s "$d/fuse.pid" ] && kill -0 "$(cat "$d/fuse.pid")" 2>/dev/null; then
      kill "$(cat "$d/fuse.pid")"
      sleep 0.2
      kill -9 "$(cat "$d/fuse.pid")" 2>/dev/null
    fi
  done
  if [ -n "$gw_pid" ]; then
    kill "$gw_pid"
    for _ in $(seq 100); do kill -0 "$gw_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$gw_pid" 2>/dev/null
  fi
  rm -rf "$sh"
}
cleanup_fn teardown

declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 64M
  echo "image=rbd/${img[$i]}" >"$sh/exports/v$i"
done
start_gateway
for i in $(seq 1 $N); do
  d=$sh/v$i
  mkdir -p "$d/mnt"
  : >"$d/disk"
  chmod 600 "$d/disk"
  "$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse" --name "rbdgw:v$i" --export "v$i" --size-file "$d/size" \
    "$sh/sock" "$d/disk" 2>"$d/fuse.log" &
  echo $! >"$d/fuse.pid"
  for _ in $(seq 300); do mountpoint -q "$d/disk" && break; sleep 0.05; done
  mountpoint -q "$d/disk" || { cat "$d/fuse.log" >&2; fail "exporter of v$i not up"; }
  losetup --find --show --direct-io=on "$d/disk" >"$d/loop"
  mkfs.ext4 -q "$(cat "$d/loop")"
  mount -o nodev,nosuid "$(cat "$d/loop")" "$d/mnt"
done
[ "$(pgrep -c -f -- "exports-dir=$sh/exports")" = 1 ] || fail "not exactly one gateway"
pass "$N ext4 filesystems mounted over one shared gateway"

# writer I: 256 KiB files, each fsynced; a file's checksum is recorded
# only once its fsync returned.
writer() {
  local m=$sh/v$1/mnt k=0
  while [ ! -e "$TEST_TMP/stop" ]; do
    dd if=/dev/urandom of="$m/f$k" bs=256K count=1 conv=fsync status=none 2>/dev/null || break
    (cd "$m" && sha256sum "f$k") >>"$TEST_TMP/acked$1"
    k=$((k + 1))
  done
}
for i in $(seq 1 $N); do
  : >"$TEST_TMP/acked$i"
  writer "$i" &
  wpids+=($!)
done
acked_at_least() {  # acked_at_least N: every writer has N files acknowledged
  local i
  for i in $(seq 1 $N); do [ "$(wc -l <"$TEST_TMP/acked$i")" -ge "$1" ] || return 1; done
}
for _ in $(seq 600); do acked_at_least 3 && break; sleep 0.1; done
acked_at_least 3 || fail "writers made no progress before the kill"
before=$(cat "$TEST_TMP"/acked* | wc -l)
kill -9 "$gw_pid"
wait "$gw_pid" 2>/dev/null || true
sleep 1
start_gateway
# The writers carry on once their exporters have reconnected.
for _ in $(seq 900); do [ "$(cat "$TEST_TMP"/acked* | wc -l)" -ge $((before + 3 * N)) ] && break; sleep 0.1; done
touch "$TEST_TMP/stop"
# Bounded: a writer stuck in fsync (its exporter still waiting for a
# gateway) is a failure named here, not a hang.
for _ in $(seq 600); do
  alive=0
  for p in "${wpids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  [ "$alive" = 0 ] && break
  sleep 0.1
done
[ "$alive" = 0 ] || fail "$alive writers still stuck 60 s after the restart (gateway log: $(tail -3 "$log"))"
for p in "${wpids[@]}"; do wait "$p" || true; done
wpids=()
after=$(cat "$TEST_TMP"/acked* | wc -l)
[ "$after" -ge $((before + 3 * N)) ] || fail "writes did not resume after the gateway restart ($before before, $after after)"
pass "killed -9 under load, restarted: writes resumed ($before files acknowledged before, $after in all)"

for i in $(seq 1 $N); do
  d=$sh/v$i
  umount "$d/mnt"
  fsck.ext4 -fn "$(cat "$d/loop")" >"$TEST_TMP/fsck$i" 2>&1 || { cat "$TEST_TMP/fsck$i" >&2; fail "v$i: fsck found errors"; }
  mount -o ro,nodev,nosuid "$(cat "$d/loop")" "$d/mnt"
  (cd "$d/mnt" && sha256sum --quiet -c "$TEST_TMP/acked$i") || fail "v$i: an acknowledged file differs after the restart"
done
pass "all $N filesystems clean, every fsynced file intact"

teardown
gw_pid=
assert_clean
pass "nothing left behind"
