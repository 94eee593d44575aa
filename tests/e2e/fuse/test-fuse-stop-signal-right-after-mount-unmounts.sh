#!/usr/bin/env bash
# A SIGTERM (or SIGHUP) that comes the moment after rbdgw-fuse has
# mounted its file, before libfuse's signal handlers are in place, still
# ends the session cleanly: the file is unmounted and the exporter exits
# 0. Before, such a signal killed the exporter with its default action and
# left a dead FUSE mount behind (every access ENOTCONN until an unmount by
# hand): lib/attach sends SIGTERM to an exporter whose mount it gave up
# waiting for. An LD_PRELOAD probe (probe/slow_signal_handlers.c) holds
# that moment open for 2 s; the signal is sent inside it.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/fuse/fuse-functions.sh"
probe=$RBDGW_BUILD_DIR/tests/e2e/fuse/probe/libslow-signal-handlers.so
requires test -f "$probe"

start_nbdkit sock gw memory 16M
disk=$TEST_TMP/disk
# Not SIGINT: bash starts a background job with it ignored, and libfuse
# leaves an ignored signal alone.
for sig in TERM HUP; do
  : >"$disk"
  mark=$TEST_TMP/mark.$sig
  RBDGW_PROBE_MARK=$mark LD_PRELOAD=$probe "$RBDGW_FUSE" "$sock" "$disk" 2>"$TEST_TMP/fuse.$sig.log" &
  pid=$!
  cleanup_fn "fusermount3 -u -z '$disk' 2>/dev/null; kill -9 $pid 2>/dev/null"
  for _ in $(seq 100); do [ -e "$mark" ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done
  [ -e "$mark" ] || { cat "$TEST_TMP/fuse.$sig.log" >&2; fail "rbdgw-fuse never reached its signal handlers (no $mark)"; }
  findmnt -n "$disk" >/dev/null || fail "$disk is not mounted when the handlers are about to be set"
  kill -s "$sig" $pid
  rc=0
  wait $pid || rc=$?
  if findmnt -n "$disk" >/dev/null; then
    cat "$TEST_TMP/fuse.$sig.log" >&2
    fail "SIG$sig right after the mount left $disk mounted (exporter exit status $rc)"
  fi
  [ "$rc" = 0 ] || { cat "$TEST_TMP/fuse.$sig.log" >&2; fail "SIG$sig right after the mount: the exporter exited $rc, not 0"; }
  pass "SIG$sig right after the mount: $disk unmounted, exit status 0"
done
