#!/usr/bin/env bash
# CTest entry: the harness's own self-test in a VM (nbdkit -> /dev/nbd0 ->
# dm-crypt LUKS2 -> ext4), proving that the kernel the tests boot has what the
# kernel attach path needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exec "$here/run-in-vm.sh" --quiet --timeout 360 "$here/selftest.sh"
