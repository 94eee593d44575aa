#!/usr/bin/env bash
# LuksOpen/LuksClose/LuksStatus against the real dm-crypt: runs unit-luks's
# device-mapper test inside the kernel VM (tests/kernel-vm/run-in-vm.sh).
# Exit 77 (skip) when the VM prerequisites are missing.
#   usage: test-luks-dm-in-vm.sh [UNIT_LUKS_BINARY]
#   (default: $RBDGW_BUILD_DIR/tests/unit/luks/unit-luks, as CTest sets it)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${1:-${RBDGW_BUILD_DIR:-}/tests/unit/luks/unit-luks}
[ -x "$bin" ] || { echo "test-luks-dm-in-vm: no unit-luks binary at '$bin'" >&2; exit 2; }
bin=$(realpath -e -- "$bin")

if [ "${RBDGW_IN_VM:-}" = 1 ]; then
  modprobe dm-crypt
  modprobe loop 2>/dev/null || true
  export RBDGW_REQUIRE_DM=1  # a skip here would hide a broken setup
  exec "$bin" --gtest_filter='LuksTest.DmCryptMappingMatchesUserspace:LuksTest.DeviceMapper*'
fi
exec "$here/../../kernel-vm/run-in-vm.sh" --timeout 600 "$here/test-luks-dm-in-vm.sh" "$bin"
