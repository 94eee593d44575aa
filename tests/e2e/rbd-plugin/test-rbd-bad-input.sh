#!/usr/bin/env bash
# Bad input makes nbdkit exit non-zero before it serves (no pid file), with
# an error naming the object and the cause: unknown parameter, malformed
# spec, missing pool, image or snapshot, wrong key, wrong user, missing
# keyring, unreachable cluster, a secret on the command line.
source "$(dirname "$0")/common.sh"
requires which ceph-authtool

new_image img 4M
expect_refusal "unknown parameter 'foo'" "rbd/$img" foo=bar
expect_refusal "image spec 'justanimage': no pool given" justanimage
expect_refusal "image spec 'rbd/a/b/c': too many '/'" rbd/a/b/c
expect_refusal "image spec 'rbd/x@': empty snapshot name" "rbd/x@"
expect_refusal "no image given" "conf=$CEPH_CONF"
expect_refusal "parameter 'image': given more than once" "rbd/$img" "image=rbd/$img"
expect_refusal "pool 'nosuchpool' does not exist" nosuchpool/img
expect_refusal "image 'rbd/nosuchimage' does not exist" rbd/nosuchimage
expect_refusal "snapshot 'nosnap' of image 'rbd/$img' does not exist" "rbd/$img@nosnap"
expect_refusal "read ceph config: /nonexistent.conf: No such file" "rbd/$img" conf=/nonexistent.conf
expect_refusal "keyring: /nonexistent.keyring: No such file" "rbd/$img" keyring=/nonexistent.keyring
expect_refusal "parameter 'durable-writes': 'maybe': expected true or false" "rbd/$img" durable-writes=maybe
expect_refusal "parameters 'durable-writes' and 'ceph.rbd_cache_policy' exclude each other" \
  "rbd/$img" durable-writes=true ceph.rbd_cache_policy=writeback
# An image whose own configuration caches writes cannot give durable writes.
rbd_cli config image set "rbd/$img" rbd_cache true
expect_refusal "rbd/$img: its own configuration .* acknowledges writes before they are on the OSDs" \
  "rbd/$img" durable-writes=true
rbd_cli config image remove "rbd/$img" rbd_cache

# A well-formed but wrong cephx key, from a file (the right one works).
ceph-authtool --gen-print-key >"$TEST_TMP/wrong.key"
ceph -c "$CEPH_CONF" auth get-key client.admin >"$TEST_TMP/right.key"
chmod 600 "$TEST_TMP"/*.key
expect_refusal "rados_connect: client.admin to mon_host .*: authentication failed" \
  "rbd/$img" "key=+$TEST_TMP/wrong.key"
expect_refusal "rados_connect: client.nobody to mon_host .*: authentication failed" \
  "rbd/$img" id=nobody
expect_refusal "parameter 'key': is a secret" "rbd/$img" "key=$(cat "$TEST_TMP/wrong.key")"
expect_refusal "'keyring' and 'key' exclude each other" \
  "rbd/$img" "keyring=$TEST_TMP/right.key" "key=+$TEST_TMP/right.key"
serve sk np "rbd/$img" "key=+$TEST_TMP/right.key"
[ "$(nbdinfo --size "$(nbd_uri "$sk")")" = $((4 * MiB)) ] || fail "right key from a file not accepted"
pass "right key from key=+FILE serves"

# Nothing listens on port 9 (discard): connecting times out after 3 s.
expect_refusal "rados_connect: client.admin to mon_host '127.0.0.1:9': cluster unreachable" \
  "rbd/$img" mon_host=127.0.0.1:9 timeout=3
expect_refusal "parameter 'timeout': 'soon' is not a positive number" "rbd/$img" timeout=soon

# exports-dir= checks the cluster at start too (in a child process, so that
# nbdkit stays single-threaded): the same errors, before it serves.
mkdir -p "$TEST_TMP/exports"
expect_refusal "rados_connect: client.admin to mon_host .*: authentication failed" \
  "exports-dir=$TEST_TMP/exports" "conf=$CEPH_CONF" "key=+$TEST_TMP/wrong.key"
expect_refusal "rados_connect: client.admin to mon_host '127.0.0.1:9': cluster unreachable" \
  "exports-dir=$TEST_TMP/exports" mon_host=127.0.0.1:9 timeout=3
expect_refusal "read ceph config: /nonexistent.conf: No such file" \
  "exports-dir=$TEST_TMP/exports" conf=/nonexistent.conf
