#!/usr/bin/env bash
# Install every Debian 12 package that rbdgw's build, tests and benchmarks use.
# Idempotent: packages already present are skipped; safe to run on every CI run.
#
# Usage: packaging/install-deps.sh [--with-kernel-vm]
#   --with-kernel-vm  also install qemu-system + Debian's kernel for the
#                     kernel-path test harness (tests/kernel-vm/).
set -euo pipefail

want_vm=0
for a in "$@"; do
  case "$a" in
    --with-kernel-vm) want_vm=1 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install-deps: unknown option '$a'" >&2; exit 2 ;;
  esac
done

packages=(
  # build
  build-essential cmake pkg-config git
  # Ceph client libraries and the daemons of the throwaway test cluster
  ceph-mon ceph-osd ceph-mgr ceph-common
  librbd-dev librados-dev libradospp-dev
  # nbdkit (plugin headers, luks filter for comparison) and libnbd tools
  nbdkit nbdkit-plugin-dev libnbd-bin libnbd-dev python3-libnbd
  # crypto and LUKS
  libssl-dev libcryptsetup-dev cryptsetup-bin
  # CSI shim
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  nlohmann-json3-dev
  # attaching and filesystems
  fuse3 libfuse3-dev e2fsprogs xfsprogs util-linux kmod nbd-client
  keyutils  # keyctl: re-adoption tests under a fresh session keyring
  # tests
  libgtest-dev libgmock-dev python3 python3-cryptography python3-yaml jq
  golang-go  # builds the vendored csi-sanity conformance suite (tests/e2e/csi-sanity)
  python3-pykmip  # pykmip-server: the real KMIP server of the kmip KMS tests
  parted  # partition tables for lib/luks probe() tests
  iproute2  # ss: counting a server's open NBD connections (e2e.fuse idle-disconnect test)
  clang  # libFuzzer target tests/fuzz/luks2-header (-fsanitize=fuzzer,address)
  # benchmarks and peers
  libbenchmark-dev fio qemu-utils qemu-block-extra
  # Debian package build
  debhelper dpkg-dev fakeroot man-db  # man-db: man -l in the packaging test
)
if [ "$want_vm" = 1 ]; then
  packages+=(qemu-system-x86 linux-image-amd64 busybox-static cpio)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/rbdgw-install-deps.log 2>&1 || {
  echo "install-deps: apt-get install failed; last lines of /tmp/rbdgw-install-deps.log:" >&2
  tail -n 30 /tmp/rbdgw-install-deps.log >&2
  exit 1
}
echo "install-deps: done"
