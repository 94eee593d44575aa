#!/usr/bin/env bash
# conf= and keyring= given as relative file names are found from where
# nbdkit was started, also once it has daemonized (it changes to / first,
# and the image is opened in .after_fork): without -f, for one image and
# for exports-dir=, nbdkit exits 0 and its daemon serves. Before, the check
# in .get_ready passed, nbdkit exited 0, and the daemon died at once.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"

new_image img 16M
work=$TEST_TMP/work
mkdir -p "$work/exports"
cp "$CEPH_CONF" "$work/ceph.conf"
register_export "$work/exports" v "$img"

serve_daemonized() {  # serve_daemonized NAME PARAMS...: URI of the export on stdout
  local name=$1 pid
  shift
  (cd "$work" && nbdkit -U "$TEST_TMP/$name.sock" -P "$TEST_TMP/$name.pid" "$RBDGW_PLUGIN" "$@" \
    2>"$TEST_TMP/$name.log") || { cat "$TEST_TMP/$name.log" >&2; fail "$name: nbdkit exited non-zero"; }
  for _ in $(seq 100); do [ -s "$TEST_TMP/$name.pid" ] && break; sleep 0.1; done
  pid=$(cat "$TEST_TMP/$name.pid")
  cleanup_fn "kill $pid"
}

serve_daemonized one "rbd/$img" conf=ceph.conf
size=$(timeout 30 nbdinfo --size "nbd+unix:///?socket=$TEST_TMP/one.sock") ||
  fail "image= with conf=ceph.conf (relative): the daemon does not serve ($(tail -2 "$TEST_TMP/one.log"))"
[ "$size" = $((16 * 1024 * 1024)) ] || fail "image=: size $size"
pass "image= with a relative conf=: the daemonized nbdkit serves ($size bytes)"

serve_daemonized many "exports-dir=$work/exports" conf=ceph.conf
size=$(timeout 30 nbdinfo --size "$(export_uri "$TEST_TMP/many.sock" v)") ||
  fail "exports-dir= with conf=ceph.conf (relative): the daemon does not serve ($(tail -2 "$TEST_TMP/many.log"))"
[ "$size" = $((16 * 1024 * 1024)) ] || fail "exports-dir=: size $size"
pass "exports-dir= with a relative conf=: the daemonized nbdkit serves ($size bytes)"
