#!/usr/bin/env bash
# A volume's exporter puts as many requests on one connection as the shared
# gateway it joins has workers per connection (rbdgw-fuse --conn-depth),
# and a restarted gateway keeps the count its volumes' exporters run with:
# RBDGW_SHARED_GATEWAY_THREADS (or the default, after an upgrade) read at
# a later map or reattach must not split the two. Review helper-45 found
# both: a map with another setting gave its exporter 16 connections of
# depth 2 on a gateway of 8 workers (16 x 9 gateway threads), and a
# reattach with another setting left the running exporters at depth 8 on
# a gateway of 2 (8 requests served at once, not 32). The gateway also
# runs with its open files limit raised to the hard limit (3 descriptors
# per connection; at a soft limit of 1024 about 20 busy volumes ran it
# out). Read from the processes' command lines and limits; no timing.
source "$(dirname "$0")/../../lib/functions.sh"
source "$(dirname "$0")/cli-functions.sh"

arg_of() {  # arg_of PID OPTION: the value after OPTION on PID's command line
  tr '\0' '\n' <"/proc/$1/cmdline" | grep -A1 -x -- "$2" | tail -1
}
fuse_of() { jq -r .fuse.pid "$RUN_ROOT/rbd.$1/stash.json"; }
gateway() { pgrep -f -- "exports-dir=$RUN_ROOT/" || fail "no shared gateway"; }
map() {  # map IMAGE [ENV...]
  local img=$1
  shift
  env "$@" "$RBDGW_CLI" --run-root "$RUN_ROOT" map "rbd/$img" --conf "$CEPH_CONF" --shared-gateway \
    --attach userspace >/dev/null 2>"$TEST_TMP/err" || { cat "$TEST_TMP/err" >&2; fail "map of rbd/$img failed"; }
}

new_image a 32M
new_image b 32M
# The first map starts the gateway with 8 workers per connection, from a
# shell whose soft open files limit is low.
hard=$(ulimit -Hn)
(ulimit -Sn 256 && map "$a" RBDGW_SHARED_GATEWAY_THREADS=8)
gw=$(gateway)
[ "$(arg_of "$gw" --threads)" = 8 ] || fail "the gateway runs --threads $(arg_of "$gw" --threads), not 8"
soft=$(awk '/^Max open files/ {print $4}' "/proc/$gw/limits")
[ "$soft" = "$hard" ] || fail "the shared gateway's open files soft limit is $soft (started from a shell at 256; hard limit $hard)"
pass "the gateway started with 8 workers, its open files limit raised 256 -> $soft"
[ "$(arg_of "$(fuse_of "$a")" --conn-depth)" = 8 ] || fail "volume a's exporter has --conn-depth $(arg_of "$(fuse_of "$a")" --conn-depth) on a gateway of 8"
[ "$(arg_of "$(fuse_of "$a")" --connections)" = 4 ] || fail "volume a's exporter has --connections $(arg_of "$(fuse_of "$a")" --connections), not 32 / 8"

# A second volume mapped with the default (2) joins the gateway of 8.
map "$b"
[ "$(arg_of "$(fuse_of "$b")" --conn-depth)" = 8 ] ||
  fail "volume b, mapped with another setting, got --conn-depth $(arg_of "$(fuse_of "$b")" --conn-depth) on the gateway of 8 workers"
[ "$(arg_of "$(fuse_of "$b")" --connections)" = 4 ] || fail "volume b's exporter has --connections $(arg_of "$(fuse_of "$b")" --connections), not 4"
pass "a volume mapped with another setting takes the running gateway's depth (8, 4 connections)"

# kill -9 and a reattach with yet another setting: the new gateway keeps 8.
kill -9 "$gw"
for _ in $(seq 50); do kill -0 "$gw" 2>/dev/null || break; sleep 0.1; done
RBDGW_SHARED_GATEWAY_THREADS=4 cli reattach >"$TEST_TMP/re.out" 2>"$TEST_TMP/re.err" ||
  { cat "$TEST_TMP/re.err" >&2; fail "reattach failed"; }
gw2=$(gateway)
[ "$gw2" != "$gw" ] || fail "the gateway was not restarted"
[ "$(arg_of "$gw2" --threads)" = 8 ] ||
  fail "the restarted gateway runs --threads $(arg_of "$gw2" --threads), not the 8 its volumes' exporters were started for"
for v in a b; do
  img=${!v}
  dev=$(jq -r .device "$RUN_ROOT/rbd.$img/stash.json")
  dd if=/dev/urandom of="$dev" bs=64k count=4 oflag=direct status=none || fail "write to volume $v after reattach failed"
done
pass "after kill -9 and a reattach with another setting the gateway runs 8 workers again, and both volumes write"

# Every volume gone: the gateway's dir goes, and the next one takes the
# setting of its own start (the default).
cli unmap "rbd/$a" >/dev/null || fail "unmap of rbd/$a failed"
cli unmap "rbd/$b" >/dev/null || fail "unmap of rbd/$b failed"
map "$a"
gw3=$(gateway)
[ "$(arg_of "$gw3" --threads)" = 2 ] || fail "a new gateway after the last unmap runs --threads $(arg_of "$gw3" --threads), not the default 2"
[ "$(arg_of "$(fuse_of "$a")" --conn-depth)" = 2 ] || fail "its exporter has --conn-depth $(arg_of "$(fuse_of "$a")" --conn-depth), not 2"
[ "$(arg_of "$(fuse_of "$a")" --connections)" = 16 ] || fail "its exporter has --connections $(arg_of "$(fuse_of "$a")" --connections), not 16"
pass "a new gateway (no volume left of the old) runs the default 2 workers, its volume 16 connections of depth 2"
cli unmap "rbd/$a" >/dev/null || fail "unmap of rbd/$a failed"
assert_clean
