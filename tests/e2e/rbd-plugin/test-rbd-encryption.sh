#!/usr/bin/env bash
# An image formatted with `rbd encryption format luks2` is served decrypted
# with the right passphrase (given as +FILE and as -FD, never in argv):
# plaintext written through the plugin reads back, is not visible in the raw
# image (rbd export), and survives a restart. A wrong passphrase, the wrong
# format and an unformatted image are refused before serving.
source "$(dirname "$0")/common.sh"

new_image img 48M
printf 'correct horse battery staple' >"$TEST_TMP/pass"
printf 'wrong passphrase' >"$TEST_TMP/wrong"
chmod 600 "$TEST_TMP/pass" "$TEST_TMP/wrong"
rbd_cli encryption format "rbd/$img" luks2 "$TEST_TMP/pass"

serve sk np "rbd/$img" encryption-format=luks2 "encryption-passphrase=+$TEST_TMP/pass"
uri=$(nbd_uri "$sk")
# The LUKS2 header (16 MiB data offset) is not part of the export.
[ "$(nbdinfo --size "$uri")" = $((32 * MiB)) ] || fail "decrypted size is $(nbdinfo --size "$uri")"
if ps -ww -o args= -p "$np" | grep -q "correct horse"; then fail "passphrase in argv"; fi
nbdsh -u "$uri" -c "
h.pwrite(b'PLAINTEXT-MARKER-0123456789' * 4000, 5000)
h.flush()
assert h.pread(27, 5000) == b'PLAINTEXT-MARKER-0123456789'
"
export_image "$img" "$TEST_TMP/raw"
if grep -q PLAINTEXT-MARKER "$TEST_TMP/raw"; then fail "plaintext visible in the raw image"; fi
head -c 4 "$TEST_TMP/raw" | grep -q LUKS || fail "raw image has no LUKS header"
kill "$np"
for _ in $(seq 50); do kill -0 "$np" 2>/dev/null || break; sleep 0.1; done
pass "written through the plugin: readable, not visible raw"

# Again, with the passphrase from a file descriptor.
serve sk2 np2 "rbd/$img" encryption-format=luks2 encryption-passphrase=-3 3<"$TEST_TMP/pass"
nbdsh -u "$(nbd_uri "$sk2")" -c "assert h.pread(27, 5000) == b'PLAINTEXT-MARKER-0123456789'"
pass "passphrase from -FD: decrypted content after a restart"

expect_refusal "rbd_encryption_load: rbd/$img \(luks2\): wrong passphrase" \
  "rbd/$img" encryption-format=luks2 "encryption-passphrase=+$TEST_TMP/wrong"
expect_refusal "rbd_encryption_load: rbd/$img \(luks1\): no valid encryption header" \
  "rbd/$img" encryption-format=luks1 "encryption-passphrase=+$TEST_TMP/pass"
new_image plain 8M
expect_refusal "rbd_encryption_load: rbd/$plain \(luks2\): no valid encryption header" \
  "rbd/$plain" encryption-format=luks2 "encryption-passphrase=+$TEST_TMP/pass"
expect_refusal "'encryption-format' needs 'encryption-passphrase'" "rbd/$img" encryption-format=luks2
expect_refusal "parameter 'encryption-passphrase': is a secret" \
  "rbd/$img" encryption-format=luks2 encryption-passphrase=plain-in-argv
expect_refusal "encryption format 'luks9': unknown" \
  "rbd/$img" encryption-format=luks9 "encryption-passphrase=+$TEST_TMP/pass"
