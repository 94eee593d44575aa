#!/usr/bin/env bash
# Installs what rbdgw needs, builds it and runs the whole test suite
# (unit tests, end-to-end tests against a throwaway one-node Ceph cluster,
# and the kernel-path tests in a qemu VM). Exits non-zero on any failure.
#
# Usage: tests/run-all.sh [ctest args...]     (run as root)
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
build=${RBDGW_BUILD_DIR:-$src/build}

step() { printf '\n==> %s\n' "$*"; }

step "installing Debian packages (packaging/install-deps.sh)"
"$src/packaging/install-deps.sh" --with-kernel-vm

step "configuring and building in $build"
# Tests and benchmarks on explicitly: the quick start configures the same
# build directory with them off, and a cached OFF must not survive here.
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRBDGW_BUILD_TESTS=ON -DRBDGW_BUILD_BENCH=ON -DRBDGW_BUILD_CSI=ON >/dev/null
cmake --build "$build" -j"$(nproc)"

step "running the tests (ctest)"
cd "$build"
# --no-tests=error: a build without tests is a failure, never a green run.
ctest --output-on-failure --no-tests=error --timeout 900 "$@"
