# Helpers for the rbdgw CLI tests: source after tests/lib/functions.sh.
# Every test maps volumes under its own run root ($RUN_ROOT in $TEST_TMP),
# so the leftover checks look only at what this test made.

RBDGW_CLI="$RBDGW_BUILD_DIR/csi-shim/cli/rbdgw"
RUN_ROOT="$TEST_TMP/run"

requires test -x "$RBDGW_CLI"
requires test -x "$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse"
requires test -f "$RBDGW_PLUGIN"
requires test -e /dev/fuse
requires which fusermount3 losetup mkfs.ext4 fsck.ext4
requires test -n "${CEPH_CONF:-}"

cli() { "$RBDGW_CLI" --run-root "$RUN_ROOT" "$@"; }

# Unmaps whatever this test left mapped (also run by each image's cleanup,
# before the image is removed).
_cli_unmap_all() {
  local s
  for s in "$RUN_ROOT"/*/stash.json; do
    [ -e "$s" ] || continue
    cli unmap "$(basename "$(dirname "$s")")" || true
  done
}
cleanup_fn _cli_unmap_all

# Fails unless nothing of this test is left: no mount, FUSE mount or loop
# device under $TEST_TMP, no live gateway or exporter, an empty run root.
assert_clean() {
  if grep -q "$TEST_TMP" /proc/self/mountinfo; then
    grep "$TEST_TMP" /proc/self/mountinfo >&2
    fail "mounts left behind"
  fi
  if losetup -a | grep -q "$TEST_TMP"; then
    losetup -a | grep "$TEST_TMP" >&2
    fail "loop devices left behind"
  fi
  if ps -eo stat=,args= | awk '$1 !~ /^Z/' | grep -v grep | grep -q "$RUN_ROOT"; then
    ps -eo pid,stat,args | grep "$RUN_ROOT" | grep -v grep >&2
    fail "processes left behind"
  fi
  if [ -n "$(ls -A "$RUN_ROOT" 2>/dev/null)" ]; then
    ls -lR "$RUN_ROOT" >&2
    fail "run root not empty"
  fi
}

# new_image VAR SIZE: creates a uniquely named image, removed at the end.
new_image() {
  local __var=$1 name
  name=$(unique "cli")
  rbd_cli create --size "$2" "rbd/$name"
  cleanup_fn "_cli_unmap_all; rbd -c '$CEPH_CONF' rm --no-progress 'rbd/$name'"
  printf -v "$__var" '%s' "$name"
}

# expect_status N CMD...: runs CMD, fails unless it exits with N; its
# stderr is kept in $TEST_TMP/err.
expect_status() {
  local want=$1 rc=0
  shift
  "$@" >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
  if [ "$rc" != "$want" ]; then
    cat "$TEST_TMP/err" >&2
    fail "'$*' exited $rc, expected $want"
  fi
}
