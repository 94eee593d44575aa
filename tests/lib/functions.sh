# Shared helpers for rbdgw's shell tests. Source it first:
#   source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
# Conventions (after nbdkit's tests): `requires CMD...` skips (exit 77) when
# a tool is missing; `cleanup_fn CMD...` registers cleanup run on any exit;
# every test works in its own $TEST_TMP, removed at the end.
set -euo pipefail

: "${RBDGW_SOURCE_DIR:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
: "${RBDGW_BUILD_DIR:=$RBDGW_SOURCE_DIR/build}"
: "${RBDGW_PLUGIN:=$RBDGW_BUILD_DIR/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so}"
: "${RBDGW_FILTER:=$RBDGW_BUILD_DIR/nbdkit-plugin/luks2/nbdkit-luks2-filter.so}"
export RBDGW_SOURCE_DIR RBDGW_BUILD_DIR RBDGW_PLUGIN RBDGW_FILTER

TEST_NAME=$(basename "$0" .sh)
# The name is cut short: unix socket paths under it (a gateway's
# run/<volume>/nbd.sock) must stay within 107 bytes, and long test names
# with a long pid and $RANDOM in the image name went past that.
TEST_TMP=$(mktemp -d "/tmp/rbdgw-${TEST_NAME:0:28}.XXXXXX")
chmod 0700 "$TEST_TMP"
# tests/lib/run-test.sh (CTest runs every shell test through it) sweeps
# this directory if the test overruns or leaves something behind.
[ -n "${RBDGW_TEST_TMP_FILE:-}" ] && echo "$TEST_TMP" >>"$RBDGW_TEST_TMP_FILE"

_cleanup_fns=()
cleanup_fn() { _cleanup_fns+=("$*"); }
_run_cleanup() {
  local rc=$? i
  for ((i = ${#_cleanup_fns[@]} - 1; i >= 0; i--)); do
    eval "${_cleanup_fns[$i]}" >/dev/null 2>&1 || true
  done
  rm -rf "$TEST_TMP"
  exit $rc
}
trap _run_cleanup EXIT
trap 'exit 130' INT TERM

requires() {
  if ! "$@" >/dev/null 2>&1; then
    echo "$TEST_NAME: SKIP: requirement not met: $*"
    exit 77
  fi
}

fail() { echo "$TEST_NAME: FAIL: $*" >&2; exit 1; }
pass() { echo "$TEST_NAME: ok: $*"; }

# A unique name for images etc. (always called as $(unique ...): the
# subshell's own pid tells two names of one test apart; $RANDOM alone did
# not, with 20-odd images per test: "image ... already exists").
unique() { echo "${1:-t}-$$-$BASHPID"; }

# rbd CLI against the test cluster ($CEPH_CONF).
rbd_cli() { rbd -c "$CEPH_CONF" "$@"; }

# resume_osd PID ID: SIGCONT to the stopped OSD osd.ID (pid PID), then waits
# until none of its PGs is laggy. Ceph 16.2 on a one-OSD cluster can leave
# a PG "laggy" for good after the OSD was stopped for longer than its read
# lease (~16 s): every op on it waits "for readable" forever and the
# cluster is wedged for every later test (ceph/ceph-container#1682; seen
# twice in 4 runs of io-waits-out-a-ceph-stall, 2026-12-03). With replicas
# the lease acks clear it; here nothing does, so after 10 s the OSD is
# marked down once (`ceph osd down`: a new interval, which peering clears;
# the OSD marks itself up again at once) and that is logged.
resume_osd() {
  local pid=$1 id=$2 i
  kill -CONT "$pid"
  laggy() { ceph -c "$CEPH_CONF" pg ls laggy 2>/dev/null | grep -q laggy; }
  for ((i = 0; i < 20; i++)); do laggy || return 0; sleep 0.5; done
  echo "resume_osd: PGs of osd.$id still laggy 10 s after SIGCONT ($(ceph -c "$CEPH_CONF" pg ls laggy 2>/dev/null | awk '/laggy/ {print $1}' | tr '\n' ' ')): Ceph's one-OSD read-lease wedge (ceph/ceph-container#1682); marking osd.$id down once" >&2
  ceph -c "$CEPH_CONF" osd down "$id" >&2
  for ((i = 0; i < 60; i++)); do
    laggy || { ceph -c "$CEPH_CONF" osd dump 2>/dev/null | grep -q "^osd.$id up" && return 0; }
    sleep 0.5
  done
  fail "osd.$id still laggy or down 30 s after 'ceph osd down'"
}

# start_nbdkit SOCKVAR PIDVAR nbdkit-args...: starts nbdkit on a unix socket
# in $TEST_TMP, waits until it serves, registers its cleanup.
start_nbdkit() {
  local __sockvar=$1 __pidvar=$2; shift 2
  local __s="$TEST_TMP/nbd-$RANDOM.sock" __p="$TEST_TMP/nbdkit-$RANDOM.pid" __i __pid
  nbdkit -U "$__s" -P "$__p" "$@" || return 1
  for ((__i = 0; __i < 300; __i++)); do
    [ -s "$__p" ] && [ -S "$__s" ] && break
    sleep 0.1
  done
  [ -s "$__p" ] || { echo "start_nbdkit: nbdkit did not start: $*" >&2; return 1; }
  __pid=$(cat "$__p")
  cleanup_fn "kill $__pid; for _ in \$(seq 50); do kill -0 $__pid 2>/dev/null || break; sleep 0.1; done; kill -9 $__pid"
  printf -v "$__sockvar" '%s' "$__s"
  printf -v "$__pidvar" '%s' "$__pid"
}

# connections_on SOCK: how many connections a server has accepted on the
# unix socket SOCK and not closed (ss: the server side's local address is
# the socket's path).
connections_on() { ss -xH state connected 2>/dev/null | awk -v s="$1" '$5 == s' | wc -l; }

# nbd URI for a unix socket.
nbd_uri() { echo "nbd+unix:///?socket=$1"; }
