#!/usr/bin/env bash
# A server may advertise a maximum request size (NBD block size
# constraints; nbdkit's blocksize-policy filter, with the error policy,
# refuses a larger request with EINVAL as the NBD spec lets it): rbdgw-fuse
# splits a FUSE read or write larger than that into requests the server
# takes, so 1 MiB reads and writes on the file and on a loop device over it
# succeed and read back what was written. Reads that reach past the end of
# the export return the bytes up to it, at the end none.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
requires test -f /usr/lib/x86_64-linux-gnu/nbdkit/filters/nbdkit-blocksize-policy-filter.so

start_nbdkit sock gw --filter=blocksize-policy memory 32M blocksize-maximum=64K blocksize-error-policy=error
start_exporter "$sock"
head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/data"
dd if="$TEST_TMP/data" of="$disk" bs=1M count=2 oflag=direct conv=notrunc status=none 2>"$TEST_TMP/w.err" ||
  fail "1 MiB writes on a server with a 64 KiB maximum failed: $(cat "$TEST_TMP/w.err")"
dd if="$disk" bs=1M count=2 iflag=direct status=none 2>"$TEST_TMP/r.err" | cmp - <(head -c $((2 * MiB)) "$TEST_TMP/data") ||
  fail "1 MiB reads on a server with a 64 KiB maximum did not return the data: $(cat "$TEST_TMP/r.err")"
pass "1 MiB O_DIRECT writes and reads on the FUSE file, server maximum 64 KiB"

loop=$(losetup --find --show --direct-io=on "$disk")
cleanup_fn "losetup -d $loop"
dd if="$TEST_TMP/data" of="$loop" bs=1M seek=8 oflag=direct status=none 2>"$TEST_TMP/lw.err" ||
  fail "1 MiB writes on the loop device failed: $(cat "$TEST_TMP/lw.err")"
dd if="$loop" bs=1M skip=8 count=4 iflag=direct status=none | cmp - "$TEST_TMP/data" ||
  fail "the loop device did not read back its 4 MiB"
losetup -d "$loop"
pass "4 MiB through a direct-io loop device in 1 MiB requests, read back"

python3 - "$disk" $((32 * MiB)) <<'PY' || fail "reads at the end of the export"
import os, sys
path, size = sys.argv[1], int(sys.argv[2])
fd = os.open(path, os.O_RDONLY)
assert os.fstat(fd).st_size == size, os.fstat(fd).st_size
n = len(os.pread(fd, 65536, size - 512)); assert n == 512, f"read across the end returned {n} bytes, not 512"
n = len(os.pread(fd, 65536, size)); assert n == 0, f"read at the end returned {n} bytes"
n = len(os.pread(fd, 4096, size + (1 << 20))); assert n == 0, f"read past the end returned {n} bytes"
PY
pass "a read across the end returned the 512 bytes before it, reads at and past the end none"
