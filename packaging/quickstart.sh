#!/usr/bin/env bash
# rbdgw quick start: on a fresh Debian 12 machine (as root), installs the
# dependencies, builds rbdgw, starts a local throwaway one-node Ceph cluster,
# creates an RBD image, serves it with `nbdkit rbd`, copies data in and out
# through NBD and checks that it matches; then maps an encrypted volume
# through the userspace path (rbd plugin + luks2 filter + FUSE + loop, no
# kernel rbd/nbd/dm-crypt needed), mounts it, writes a file and reads it back
# after an unmap and a fresh map.
#
#   packaging/quickstart.sh          run it (leaves the cluster and nbdkit up)
#   packaging/quickstart.sh stop     tear everything down
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${RBDGW_BUILD_DIR:-$src/build}
state=${RBDGW_QUICKSTART_DIR:-/var/tmp/rbdgw-quickstart}
cluster="$state/cluster"
sock="$state/nbd.sock"
pidfile="$state/nbdkit.pid"
mnt="$state/mnt"
rbdgw="$build/csi-shim/cli/rbdgw"
# Run from the build tree: tell rbdgw where the plugin and filter are
# (an installed package puts them in nbdkit's own directories).
export RBDGW_PLUGIN="$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so"
export RBDGW_FILTER="$build/nbdkit-plugin/luks2/nbdkit-luks2-filter.so"

step() { printf '\n==> %s\n' "$*"; }

stop() {
  step "stopping nbdkit and the throwaway cluster in $state"
  if [ -x "$rbdgw" ] && [ -d "$state" ]; then "$rbdgw" unmap rbd/secure 2>/dev/null || true; fi
  if [ -s "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; fi
  if [ -d "$cluster" ]; then "$src/tests/cluster/ceph-cluster.sh" stop "$cluster"; fi
  rm -rf "$state"
  echo "stopped; nothing is left in $state"
}

if [ "${1:-}" = stop ]; then stop; exit 0; fi
if [ -n "${1:-}" ]; then echo "usage: $0 [stop]" >&2; exit 2; fi
if [ -e "$state" ]; then
  echo "quickstart: $state exists from an earlier run; run '$0 stop' first" >&2
  exit 1
fi

step "1/9 installing Debian packages (packaging/install-deps.sh)"
"$src/packaging/install-deps.sh"

step "2/9 building rbdgw in $build"
cmake -S "$src" -B "$build" -DRBDGW_BUILD_TESTS=OFF -DRBDGW_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" 2>&1 | grep -E '^\[|error' | sed -n '$p'

step "3/9 starting a throwaway one-node Ceph cluster in $cluster (about 15 s)"
mkdir -p "$state"; chmod 0700 "$state"
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster")"

step "4/9 creating the RBD image rbd/quickstart (256 MiB)"
rbd -c "$CEPH_CONF" create rbd/quickstart --size 256M

step "5/9 serving it with: nbdkit rbd rbd/quickstart conf=$CEPH_CONF"
nbdkit -U "$sock" -P "$pidfile" "$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so" \
  rbd/quickstart conf="$CEPH_CONF"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
nbdinfo "nbd+unix:///?socket=$sock" | sed 's/^/    /'

step "6/9 copying 64 MiB of random data in and out through NBD"
progress=(); [ -t 1 ] && progress=(--progress)
head -c 64M /dev/urandom >"$state/in.bin"
nbdcopy "${progress[@]}" "$state/in.bin" "nbd+unix:///?socket=$sock"
nbdcopy "${progress[@]}" "nbd+unix:///?socket=$sock" "$state/out.bin"
rbd -c "$CEPH_CONF" export rbd/quickstart "$state/rados.bin" >/dev/null 2>&1
if cmp -s -n 64M "$state/in.bin" "$state/out.bin" && cmp -s -n 64M "$state/in.bin" "$state/rados.bin"; then
  echo "    OK: the data read back through NBD and through 'rbd export' matches what was written"
else
  echo "    MISMATCH: data read back differs" >&2
  exit 1
fi
rm -f "$state"/*.bin

step "7/9 mapping an encrypted volume rbd/secure through the userspace path"
echo "    rbdgw map creates the LUKS2 header on first use (argon2id: ~15 s), unlocks it in"
echo "    userspace, serves it with nbdkit rbd + the luks2 filter, exposes it through FUSE,"
echo "    attaches a loop device, makes an ext4 filesystem and mounts it at $mnt"
rbd -c "$CEPH_CONF" create rbd/secure --size 512M
umask 077
head -c 32 /dev/urandom | base64 >"$state/passphrase"
mkdir -p "$mnt"
"$rbdgw" map rbd/secure --conf "$CEPH_CONF" --encrypted --passphrase-file "$state/passphrase" \
  --attach userspace --mount "$mnt" --fstype ext4

step "8/9 writing a file, then unmapping and mapping again to read it back"
echo "hello from an encrypted RBD volume, $(date)" >"$mnt/hello.txt"
sync -f "$mnt"
"$rbdgw" unmap rbd/secure
"$rbdgw" map rbd/secure --conf "$CEPH_CONF" --encrypted --passphrase-file "$state/passphrase" \
  --attach userspace --mount "$mnt" --fstype ext4 >/dev/null
echo "    read back: $(cat "$mnt/hello.txt")"
"$rbdgw" list | sed 's/^/    /'

step "9/9 checking that the raw image holds a LUKS2 header and no plaintext"
rbd -c "$CEPH_CONF" export rbd/secure "$state/raw.bin" >/dev/null 2>&1
echo "    first bytes of the raw image: $(head -c 6 "$state/raw.bin" | tr -c '[:print:]' '.')"
if grep -qa "hello from an encrypted" "$state/raw.bin"; then
  rm -f "$state/raw.bin"; echo "    PLAINTEXT FOUND in the raw image" >&2; exit 1
fi
rm -f "$state/raw.bin"
echo "    OK: the file's text does not appear in the raw image"

cat <<MSG

Done. Still running:
  cluster  CEPH_CONF=$CEPH_CONF   (try: rbd -c $CEPH_CONF du)
  nbdkit   serving rbd/quickstart on nbd+unix:///?socket=$sock
           (try: nbdinfo --map 'nbd+unix:///?socket=$sock')
  volume   rbd/secure, encrypted, mounted at $mnt   (try: $rbdgw status rbd/secure)
Tear it all down (unmap, stop nbdkit and the cluster, remove $state) with:
  $0 stop
MSG
