#!/usr/bin/env bash
# `rbdgw map --attach=kernel` for real, in a real kernel (one VM boot), and
# the choice `--attach=auto` makes on each side:
#   host:  auto picks the userspace path (no nbd, no device-mapper here);
#   guest: a throwaway cluster runs inside the VM (the guest has no network,
#          so the host's cluster is out of reach); an encrypted volume is
#          mapped with --attach=kernel: gateway (nbdkit rbd) -> /dev/nbdN ->
#          LUKS2-formatted on first use -> LuksOpen as /dev/mapper/luks-<id>
#          (LuksStatus checked) -> ext4 -> mounted; data written, unmapped,
#          mapped again with --attach=auto (which must pick the kernel path)
#          and read back; unmapped; nothing left behind either time, and the
#          image holds a LUKS2 header and no plaintext.
# Needs the "ceph" fixture on the host (CEPH_CONF) for the host half.
source "${RBDGW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/tests/lib/functions.sh"

KVM_LUKS=$RBDGW_BUILD_DIR/tests/kernel-vm/kvm-luks
for f in "$RBDGW_PLUGIN" "$KVM_LUKS" "$RBDGW_BUILD_DIR/csi-shim/cli/rbdgw"; do
  [ -e "$f" ] || fail "$f not built (build nbdkit-rbd-plugin, kvm-luks and rbdgw-cli)"
done

# mode_of VOLUME: the attach path `rbdgw status` reports.
mode_of() { cli status "$1" --json | jq -r .mode; }

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  # --- host: auto -> userspace ----------------------------------------------------
  source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
  new_image img 64M
  mkdir "$TEST_TMP/mnt"
  cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$TEST_TMP/mnt" --attach auto >/dev/null
  [ "$(mode_of "rbd.$img")" = userspace ] || fail "--attach=auto on the host picked '$(mode_of "rbd.$img")'"
  cli unmap "rbd.$img"
  assert_clean
  pass "host: --attach=auto picked the userspace path"

  # --- the guest half ---------------------------------------------------------------
  rc=0
  "$RBDGW_SOURCE_DIR/tests/kernel-vm/run-in-vm.sh" --mem 2048 --timeout 900 "$0" || rc=$?
  exit "$rc"
fi

# --- in the guest ----------------------------------------------------------------
modprobe nbd
modprobe dm-crypt
modprobe fuse  # /dev/fuse, which cli-functions.sh requires (unused on the kernel path)
cluster=$TEST_TMP/cluster
start=$(date +%s)
eval "$(CEPH_CLUSTER_TIMEOUT=600 CEPH_CLUSTER_CLI_TIMEOUT=300 "$RBDGW_SOURCE_DIR/tests/cluster/ceph-cluster.sh" start "$cluster")"
cleanup_fn "'$RBDGW_SOURCE_DIR/tests/cluster/ceph-cluster.sh' stop '$cluster'"
echo "cluster up in the guest in $(( $(date +%s) - start )) s"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"

new_image img 128M
vol=rbd.$img
dm=luks-$vol
mnt=$TEST_TMP/mnt
mkdir "$mnt"
printf 'kernel path passphrase %s\n' "$RANDOM$RANDOM" >"$TEST_TMP/pass"
chmod 600 "$TEST_TMP/pass"
map() { cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --passphrase-file "$TEST_TMP/pass" "$@"; }

# Kernel-path leftovers (assert_clean covers mounts, processes, the run root).
assert_kernel_clean() {
  assert_clean
  [ ! -e "/dev/mapper/$dm" ] || fail "/dev/mapper/$dm left behind"
  if ls /sys/block/nbd*/pid >/dev/null 2>&1; then fail "nbd device left connected: $(ls /sys/block/nbd*/pid)"; fi
  if ls -A "${RBDGW_SECRET_DIR:-/run/rbdgw/@secrets}" 2>/dev/null | grep -qF "$vol."; then
    fail "secrets of $vol left in the secret store"
  fi
}

# First map: LUKS2-formatted on first use, opened by dm-crypt, mkfs, mount.
[ "$(map --attach kernel --pbkdf pbkdf2:1000)" = "$mnt" ] || fail "map did not print the mount point"
st=$(cli status "$vol" --json)
echo "$st"
[ "$(jq -r '.mode, .device, .encrypted, .healthy' <<<"$st" | tr '\n' ' ')" = "kernel /dev/mapper/$dm true true " ] ||
  fail "status after map --attach=kernel: $st"
nbd=$(jq -r .nbd_device "$RUN_ROOT/$vol/stash.json")
[[ $nbd == /dev/nbd[0-9]* ]] && [ -e "/sys/block/${nbd#/dev/}/pid" ] || fail "no connected nbd device ($nbd)"
luks=$("$KVM_LUKS" status "$dm") || fail "LuksStatus: $luks"
echo "LuksStatus: $luks"
[[ $luks == "$dm: active, aes-xts-plain64 512-bit key, 4096-byte sectors, on $nbd at offset 16777216" ]] ||
  fail "LuksStatus reports '$luks'"
[ "$(findmnt -n -o SOURCE,FSTYPE --target "$mnt" | tr -s ' ')" = "/dev/mapper/$dm ext4" ] ||
  fail "mount: $(findmnt -n --target "$mnt")"
[ "$(rbd_cli image-meta get "rbd/$img" rbd.csi.ceph.com/encrypted)" = encrypted ] ||
  fail "volume not marked encrypted after its first map"
pid=$(jq -r .gateway.pid "$RUN_ROOT/$vol/stash.json")
if tr '\0' '\n' <"/proc/$pid/cmdline" | grep -qF "$(cat "$TEST_TMP/pass")"; then fail "passphrase in the gateway's argv"; fi
pass "map --attach=kernel: $nbd, dm-crypt $dm, ext4 on $mnt"

marker="plaintext-marker-$RANDOM$RANDOM"
for _ in $(seq 200); do echo "$marker"; done >"$mnt/marker"
head -c $((4 << 20)) /dev/urandom >"$TEST_TMP/data"
cp "$TEST_TMP/data" "$mnt/data"
sync
cli unmap "$vol"
assert_kernel_clean
pass "unmap: nothing left behind"

magic=$(rbd_cli export --no-progress "rbd/$img" - 2>/dev/null | od -An -N8 -tx1 | tr -d ' \n' || true)
[ "$magic" = 4c554b53babe0002 ] || fail "image does not start with a LUKS2 header: $magic"
n=$(rbd_cli export --no-progress "rbd/$img" - | grep -ac "$marker" || true)
[ "$n" = 0 ] || fail "plaintext found in the image"
pass "the image holds a LUKS2 header and no plaintext"

# Second map: auto picks the kernel path here; the data survived.
map --attach auto >/dev/null
[ "$(mode_of "$vol")" = kernel ] || fail "--attach=auto in the guest picked '$(mode_of "$vol")'"
"$KVM_LUKS" status "$dm" >/dev/null || fail "not opened by dm-crypt on the second map"
cmp "$TEST_TMP/data" "$mnt/data" || fail "data differs after unmap + map"
grep -q "$marker" "$mnt/marker" || fail "marker file differs after unmap + map"
cli unmap "$mnt"
assert_kernel_clean
pass "guest: --attach=auto picked the kernel path; data read back after remount; nothing left"
