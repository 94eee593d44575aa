#!/usr/bin/env bash
# nbdkit calls .get_ready, then closes stdin and stdout and reopens both on
# /dev/null, expecting fds 0 and 1 back: it must still be single-threaded
# there. A thread left running by .get_ready that opens a socket in between
# (librados' messenger connecting to the mgr or an OSD) takes fd 0, and
# nbdkit exits with "open: Success" before it serves (then crashed on its way
# out with librados' threads running: the shared gateway "killed by signal 11"
# of a CI run). An LD_PRELOAD probe (probe/threads_at_switch_stdio.c) counts
# the process's threads at that moment, for each way the plugin is run:
# one image (image=), exports-dir=, and exports-dir under the luks2 filter
# (passphrase-store=). Each must be one thread, and serve afterwards.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
probe=$RBDGW_BUILD_DIR/tests/e2e/rbd-plugin/probe/libthreads-at-switch-stdio.so
[ -f "$probe" ] || fail "probe library not built: $probe"

new_image img 16M
exdir=$TEST_TMP/exports
mkdir -p "$exdir"
new_image shared_img 16M
register_export "$exdir" plain "$shared_img"
new_secret_store
exdir2=$TEST_TMP/exports2
mkdir -p "$exdir2"
make_luks_export "$exdir2" vol

# check MODE [LABEL]: the probe (its file probe.MODE) saw one thread.
check() {
  local out=$TEST_TMP/probe.$1
  set -- "${2:-$1}"
  [ -s "$out" ] || fail "$1: the probe never ran (nbdkit no longer reopens stdin on /dev/null?)"
  [ "$(wc -l <"$out")" = 1 ] || { cat "$out" >&2; fail "$1: the probe ran more than once"; }
  grep -qx 'threads=1 [^,]*' "$out" || fail "$1: threads running while nbdkit switches stdio: $(cat "$out")"
  pass "$1: single-threaded when nbdkit switches stdio ($(cat "$out"))"
}

RBDGW_PROBE_OUT=$TEST_TMP/probe.image LD_PRELOAD=$probe \
  serve sock pid "rbd/$img" exclusive=true durable-writes=true "conf=$CEPH_CONF"
check image
[ "$(nbdinfo --size "$(nbd_uri "$sock")")" = $((16 * MiB)) ] || fail "image: does not serve"

RBDGW_PROBE_OUT=$TEST_TMP/probe.exports-dir LD_PRELOAD=$probe \
  start_shared ssock spid "$TEST_TMP/shared.log" "$exdir"
check exports-dir
[ "$(nbdinfo --size "$(export_uri "$ssock" plain)")" = $((16 * MiB)) ] || fail "exports-dir: does not serve"

RBDGW_PROBE_OUT=$TEST_TMP/probe.luks2 LD_PRELOAD=$probe \
  start_decrypting dsock dpid "$TEST_TMP/decrypting.log" "$exdir2"
check luks2 "exports-dir under the luks2 filter"
[ "$(nbdinfo --size "$(export_uri "$dsock" vol)")" -gt 0 ] || { grep -v debug "$TEST_TMP/decrypting.log" | tail >&2; fail "luks2: does not serve"; }
pass "each serves afterwards"
