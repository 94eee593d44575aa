#!/usr/bin/env bash
# rbdgw quick start: on a fresh Debian 12 machine (as root), installs the
# dependencies, builds rbdgw, starts a local throwaway one-node Ceph cluster,
# creates an RBD image, serves it with `nbdkit rbd`, copies data in and out
# through NBD and checks that it matches.
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

step() { printf '\n==> %s\n' "$*"; }

stop() {
  step "stopping nbdkit and the throwaway cluster in $state"
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

step "1/6 installing Debian packages (packaging/install-deps.sh)"
"$src/packaging/install-deps.sh"

step "2/6 building rbdgw in $build"
cmake -S "$src" -B "$build" -DRBDGW_BUILD_TESTS=OFF -DRBDGW_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" 2>&1 | grep -E '^\[|error' | sed -n '$p'

step "3/6 starting a throwaway one-node Ceph cluster in $cluster (about 15 s)"
mkdir -p "$state"; chmod 0700 "$state"
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster")"

step "4/6 creating the RBD image rbd/quickstart (256 MiB)"
rbd -c "$CEPH_CONF" create rbd/quickstart --size 256M

step "5/6 serving it with: nbdkit rbd rbd/quickstart conf=$CEPH_CONF"
nbdkit -U "$sock" -P "$pidfile" "$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so" \
  rbd/quickstart conf="$CEPH_CONF"
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
nbdinfo "nbd+unix:///?socket=$sock" | sed 's/^/    /'

step "6/6 copying 64 MiB of random data in and out through NBD"
head -c 64M /dev/urandom >"$state/in.bin"
nbdcopy --progress "$state/in.bin" "nbd+unix:///?socket=$sock"
nbdcopy --progress "nbd+unix:///?socket=$sock" - | head -c 64M >"$state/out.bin"
rbd -c "$CEPH_CONF" export rbd/quickstart - 2>/dev/null | head -c 64M >"$state/rados.bin"
if cmp -s "$state/in.bin" "$state/out.bin" && cmp -s "$state/in.bin" "$state/rados.bin"; then
  echo "    OK: the data read back through NBD and through 'rbd export' matches what was written"
else
  echo "    MISMATCH: data read back differs" >&2
  exit 1
fi
rm -f "$state"/*.bin

cat <<MSG

Done. Still running:
  cluster  CEPH_CONF=$CEPH_CONF   (try: rbd -c $CEPH_CONF du rbd/quickstart)
  nbdkit   serving rbd/quickstart on nbd+unix:///?socket=$sock
           (try: nbdinfo --map 'nbd+unix:///?socket=$sock')
Tear it all down with:
  $0 stop
MSG
