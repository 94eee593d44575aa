#!/usr/bin/env bash
# exports-dir: nbdkit writes its pid file before the plugin's .after_fork
# connects to the cluster, so a pid file and a socket do not say that the
# gateway serves. DIR/.connected does (rbdgw's shared-gateway start waits
# for it): it exists once the gateway is connected, an export read at that
# moment answers, and it goes when the gateway ends. A stale one (an
# earlier gateway killed -9) is removed at start, also by a gateway that
# then refuses to start (wrong key).
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"

new_image img 16M
exdir=$TEST_TMP/exports
mkdir -p "$exdir"
register_export "$exdir" v "$img"
marker=$exdir/.connected

# A stale marker and a gateway that cannot connect: refused, marker gone.
: >"$marker"
ceph-authtool --gen-print-key >"$TEST_TMP/wrong.key"
rc=0
nbdkit -f -U "$TEST_TMP/bad.sock" "$RBDGW_PLUGIN" "exports-dir=$exdir" "conf=$CEPH_CONF" \
  "key=+$TEST_TMP/wrong.key" 2>"$TEST_TMP/bad.log" || rc=$?
[ "$rc" != 0 ] || fail "nbdkit with a wrong key exited 0"
grep -q 'authentication failed' "$TEST_TMP/bad.log" || { cat "$TEST_TMP/bad.log" >&2; fail "no 'authentication failed' in the refusal"; }
[ ! -e "$marker" ] || fail "a refused gateway left $marker (stale from an earlier gateway)"
pass "a refused gateway removes a stale .connected and writes none"

# A gateway that serves: the marker appears, and the export answers then.
: >"$marker"
start_shared sock pid "$TEST_TMP/gw.log" "$exdir"
for _ in $(seq 300); do [ -e "$marker" ] && break; sleep 0.05; done
[ -e "$marker" ] || { cat "$TEST_TMP/gw.log" >&2; fail "$marker not written by a serving gateway"; }
size=$(timeout 20 nbdinfo --size "$(export_uri "$sock" v)") || fail "the export did not answer once .connected existed"
[ "$size" = $((16 * 1024 * 1024)) ] || fail "export size $size, expected 16 MiB"
pass ".connected written once serving; the export answered at once ($size bytes)"

kill "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "the gateway did not exit on SIGTERM"
[ ! -e "$marker" ] || fail "$marker left after the gateway ended"
pass ".connected removed when the gateway ends"
