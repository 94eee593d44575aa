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
cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)"

step "running the tests (ctest)"
cd "$build"
ctest --output-on-failure --timeout 900 "$@"
