#!/usr/bin/env bash
# A snapshot is served read-only and shows the snapshot's content, not the
# image's later writes.
source "$(dirname "$0")/common.sh"

new_image img 8M
head -c $((8 * MiB)) /dev/urandom >"$TEST_TMP/v1"
serve sk np "rbd/$img"
nbdcopy "$TEST_TMP/v1" "$(nbd_uri "$sk")"
rbd_cli snap create "rbd/$img@s1" >/dev/null 2>&1
nbdsh -u "$(nbd_uri "$sk")" -c "h.pwrite(b'after-snapshot' * 1000, 4096); h.flush()"

serve sk2 np2 "rbd/$img@s1"
uri=$(nbd_uri "$sk2")
nbdinfo "$uri" | grep -q "is_read_only: true" || fail "snapshot export is not read-only"
nbdcopy "$uri" "$TEST_TMP/back"
cmp "$TEST_TMP/v1" "$TEST_TMP/back" || fail "snapshot export does not show the snapshot's content"
nbdsh -u "$uri" -c "
import errno
h.set_strict_mode(0)   # send the write; let the server refuse it
try:
    h.pwrite(b'x', 0)
except nbd.Error as e:
    assert e.errnum == errno.EPERM, e
else:
    raise AssertionError('write to a snapshot accepted')
" || fail "a write to the snapshot was not refused with EPERM"
export_image "$img@s1" "$TEST_TMP/snap"
cmp "$TEST_TMP/v1" "$TEST_TMP/snap" || fail "snapshot changed"
pass "snapshot served read-only with the snapshot's content; writes refused (EPERM)"
