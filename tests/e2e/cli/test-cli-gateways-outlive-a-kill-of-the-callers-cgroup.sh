#!/usr/bin/env bash
# Where gateways live (docs/attach-paths.md): `rbdgw map` run inside a
# cgroup v2 group (a "container") with RBDGW_GATEWAY_HOST naming a gateway
# host outside it leaves nothing in the group: killing the group the way
# runc does (cgroup.kill) leaves the gateway and the FUSE exporter alive and
# the mounted filesystem writable. A named host that is not there is an
# error naming its socket, and nothing is started.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
: "${RBDGW_GATEWAY_HOST_BIN:=$RBDGW_BUILD_DIR/csi-shim/rbdgw-gateway-host}"
requires test -x "$RBDGW_GATEWAY_HOST_BIN"
croot=/sys/fs/cgroup/unified
[ -e "$croot/cgroup.procs" ] || croot=/sys/fs/cgroup
requires test -e "$croot/cgroup.subtree_control"

cg="$croot/rbdgw-test-cli-$$"
mkdir "$cg" || exit 77
cleanup_fn "rmdir '$cg'"
[ -e "$cg/cgroup.kill" ] || exit 77
cleanup_fn "echo 1 >'$cg/cgroup.kill'"

sock="$TEST_TMP/gateway-host.sock"
setsid "$RBDGW_GATEWAY_HOST_BIN" --socket "$sock" 2>"$TEST_TMP/gateway-host.log" &
host=$!
cleanup_fn "kill -TERM -- -$host"
for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && break; sleep 0.05; done
[ -S "$sock" ] || fail "the gateway host did not come up: $(cat "$TEST_TMP/gateway-host.log")"

# in_cgroup CMD...: CMD as a process of the group, with the gateway host.
in_cgroup() {
  sh -c 'echo 0 >"$1/cgroup.procs" && shift && exec "$@"' sh "$cg" \
    env RBDGW_GATEWAY_HOST="$sock" "$RBDGW_CLI" --run-root "$RUN_ROOT" "$@"
}

new_image img 128M
mnt="$TEST_TMP/mnt"
mkdir "$mnt"
stash="$RUN_ROOT/rbd.$img/stash.json"
in_cgroup map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
gateway=$(jq -r .gateway.pid "$stash")
fuse=$(jq -r .fuse.pid "$stash")
[ -z "$(cat "$cg/cgroup.procs")" ] ||
  fail "processes were started in the caller's cgroup: $(cat "$cg/cgroup.procs" | xargs ps -o pid,args -p)"
grep -q "started .*nbdkit as pid $gateway" "$TEST_TMP/gateway-host.log" ||
  fail "the gateway host did not start the gateway: $(cat "$TEST_TMP/gateway-host.log")"
head -c 4M /dev/urandom >"$TEST_TMP/a"
cp "$TEST_TMP/a" "$mnt/a"
sync -f "$mnt/a"

# Start a writer inside the group too, then kill the whole group.
sh -c 'echo 0 >"$1/cgroup.procs" && exec sleep 600' sh "$cg" &
sleep 0.2
[ -n "$(cat "$cg/cgroup.procs")" ] || fail "the group is empty before the kill"
echo 1 >"$cg/cgroup.kill"
for ((i = 0; i < 100; i++)); do [ -z "$(cat "$cg/cgroup.procs")" ] && break; sleep 0.05; done
[ -z "$(cat "$cg/cgroup.procs")" ] || fail "cgroup.kill left processes"
kill -0 "$gateway" && kill -0 "$fuse" || fail "the gateway or the exporter died with the caller's cgroup"
head -c 4M /dev/urandom >"$TEST_TMP/b"
cp "$TEST_TMP/b" "$mnt/b" && sync -f "$mnt/b" || fail "a write after the kill failed"
cli status "rbd/$img" >/dev/null || fail "the volume is not healthy after the kill"
pass "gateway and exporter outlive a kill of the caller's cgroup; writes go on"

cli unmap "$mnt"
assert_clean
cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null
cmp "$TEST_TMP/a" "$mnt/a" && cmp "$TEST_TMP/b" "$mnt/b" || fail "data differs after a fresh map"
cli unmap "$mnt"
assert_clean
pass "data intact after unmap and a fresh map"

# A gateway host named but not running: a clear error, nothing started.
kill -TERM -- -"$host"
wait "$host" 2>/dev/null
rc=0
in_cgroup map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace >/dev/null 2>"$TEST_TMP/err" || rc=$?
[ "$rc" != 0 ] || fail "map succeeded without its gateway host"
grep -q "$sock" "$TEST_TMP/err" || fail "the error does not name the socket: $(cat "$TEST_TMP/err")"
[ -z "$(cat "$cg/cgroup.procs")" ] || fail "a daemon was started in the caller's cgroup without the host"
_cli_unmap_all
assert_clean
pass "an absent gateway host is an error naming its socket; nothing started in the caller's cgroup"
