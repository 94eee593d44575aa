# Helpers for the rbd plugin's end-to-end tests, on top of functions.sh.
#   source "$(dirname "$0")/common.sh"
source "$(dirname "${BASH_SOURCE[0]}")/../../lib/functions.sh"

# nbdsh runs `python3 -m nbd`: use Debian's python3 (python3-libnbd).
export PATH=/usr/bin:$PATH

requires test -n "${CEPH_CONF:-}"
requires test -f "$RBDGW_PLUGIN"
requires nbdsh --version
requires nbdinfo --version
requires nbdcopy --version
requires rbd --version

MiB=$((1024 * 1024))

# new_image VAR SIZE [rbd create options...]: creates a uniquely named image
# in pool rbd and registers its removal (with its snapshots).
new_image() {
  local __var=$1 size=$2 name; shift 2
  name=$(unique "$TEST_NAME")
  rbd_cli create --size "$size" "$@" "rbd/$name"
  cleanup_fn "rbd_cli snap purge rbd/$name; rbd_cli rm --no-progress rbd/$name"
  printf -v "$__var" '%s' "$name"
}

# serve SOCKVAR PIDVAR PLUGIN-ARGS...: starts nbdkit with the rbd plugin.
# (start_nbdkit declares locals sock, pidf, pid, i: do not use those names.)
serve() {
  local __s=$1 __p=$2; shift 2
  start_nbdkit "$__s" "$__p" "$RBDGW_PLUGIN" "$@"
}

# expect_refusal PATTERN PLUGIN-ARGS...: nbdkit must exit non-zero before
# serving (no pid file written) and print an error matching PATTERN (ERE).
expect_refusal() {
  local pattern=$1; shift
  local out="$TEST_TMP/refusal.out" sock="$TEST_TMP/refused.sock" pidf="$TEST_TMP/refused.pid"
  rm -f "$pidf"
  if timeout 120 nbdkit -U "$sock" -P "$pidf" "$RBDGW_PLUGIN" "$@" >"$out" 2>&1; then
    [ -s "$pidf" ] && cleanup_fn "kill -9 $(cat "$pidf")"
    fail "nbdkit accepted: $*"
  fi
  [ ! -s "$pidf" ] || fail "nbdkit wrote a pid file although it failed: $*"
  grep -Eq -- "$pattern" "$out" || fail "error for '$*' does not match /$pattern/: $(cat "$out")"
  pass "refused ($*): $(grep -m1 error "$out")"
}

# rbd export of an image (or snapshot) to a file.
export_image() { rm -f "$2"; rbd_cli export --no-progress "rbd/$1" "$2" >/dev/null; }
