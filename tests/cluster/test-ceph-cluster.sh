#!/usr/bin/env bash
# Self-test of ceph-cluster.sh: two memstore clusters side by side, a bluestore
# cluster surviving kill-osd/start-osd, and the error paths. Needs root and the
# Ceph packages; takes ~1 minute. Usage: tests/cluster/test-ceph-cluster.sh
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
CC="$HERE/ceph-cluster.sh"
BASE=$(mktemp -d /tmp/cc-test.XXXXXX)
A="$BASE/a" B="$BASE/b" C="$BASE/c"

pass=0
ok() { pass=$((pass + 1)); printf 'ok %d - %s\n' "$pass" "$*"; }
fail() { printf 'FAIL - %s\n' "$*" >&2; exit 1; }

cleanup() {
  local d
  for d in "$A" "$B" "$C"; do "$CC" stop "$d" 2>/dev/null || true; done
  rm -rf "$BASE"
}
trap cleanup EXIT

# Pids of ceph daemons whose command line mentions DIR.
daemons_of() {
  local p
  for p in $(pgrep -x 'ceph-(mon|mgr|osd)' || true); do
    if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF -- "$1/"; then echo "$p"; fi
  done
}

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- two memstore clusters side by side -------------------------------------
t=$(now)
"$CC" start "$A" >"$BASE/a.env" 2>"$BASE/a.err" &
pa=$!
"$CC" start "$B" >"$BASE/b.env" 2>"$BASE/b.err" || { cat "$BASE/b.err" >&2; fail "start B"; }
wait "$pa" || { cat "$BASE/a.err" >&2; fail "start A"; }
ok "two memstore clusters started in parallel in $(secs "$t")s"
[ "$(cat "$BASE/a.env")" = "export CEPH_CONF=$A/ceph.conf" ] || fail "stdout of start: $(cat "$BASE/a.env")"
ok "start prints only the export line"
pa=$(grep -oE 'v2:127.0.0.1:[0-9]+' "$A/ceph.conf")
pb=$(grep -oE 'v2:127.0.0.1:[0-9]+' "$B/ceph.conf")
[ "$pa" != "$pb" ] || fail "both clusters got $pa"
ok "different mon ports ($pa, $pb)"
[ "$(stat -c %a "$A/ceph.client.admin.keyring")" = 600 ] || fail "keyring mode"
ok "admin keyring is 0600"

for d in "$A" "$B"; do
  (
    eval "$(cat "$BASE/${d##*/}.env")"
    rbd create "rbd/img-${d##*/}" --size 64M
    rbd bench --io-type write --io-size 4M --io-total 64M "rbd/img-${d##*/}" >/dev/null
    [ "$(rbd ls rbd)" = "img-${d##*/}" ] || exit 1
  ) || fail "rbd on $d"
done
ok "rbd create/bench/ls in each cluster, images are separate"
"$CC" status "$A" >/dev/null || fail "status A"
ok "status of a running cluster exits 0"

t=$(now)
"$CC" stop "$A" 2>/dev/null &
pa=$!
"$CC" stop "$B" 2>/dev/null || fail "stop B"
wait "$pa" || fail "stop A"
ok "both stopped in $(secs "$t")s"
if [ -e "$A" ] || [ -e "$B" ]; then fail "dirs left behind"; fi
[ -z "$(daemons_of "$A")$(daemons_of "$B")" ] || fail "daemons left: $(daemons_of "$A") $(daemons_of "$B")"
ok "no daemon and no directory left"
"$CC" stop "$A" 2>/dev/null || fail "second stop"
ok "stop is idempotent"
if "$CC" status "$A" >/dev/null 2>&1; then fail "status of a stopped cluster"; fi
ok "status of a stopped cluster exits non-zero"

# --- error paths ---------------------------------------------------------------
mkdir -p "$C" && touch "$C/x"
if "$CC" start "$C" >/dev/null 2>&1; then fail "start in a non-empty dir"; fi
[ -e "$C/x" ] || fail "non-empty dir was touched"
if "$CC" stop "$C" 2>/dev/null; then fail "stop removed a foreign dir"; fi
[ -e "$C/x" ] || fail "foreign dir was removed"
rm -rf "$C"
ok "non-empty / foreign dirs are refused and left alone"

# --- bluestore: data survives kill -9 of the osd ------------------------------
t=$(now)
env_line=$("$CC" start "$C" --bluestore --bluestore-size 4G 2>"$BASE/c.err") \
  || { cat "$BASE/c.err" >&2; fail "start bluestore"; }
ok "bluestore cluster started in $(secs "$t")s"
eval "$env_line"
port=$(grep -oE 'v2:127.0.0.1:[0-9]+' "$C/ceph.conf" | cut -d: -f3)
if "$CC" start "$A" --port "$port" >/dev/null 2>&1; then fail "start on a used port"; fi
[ ! -e "$A" ] || fail "failed start left $A"
ok "--port on a used port fails and cleans up"
head -c 32M /dev/urandom >"$BASE/data"
rbd import "$BASE/data" rbd/d >/dev/null 2>&1
want=$(sha256sum <"$BASE/data")
"$CC" kill-osd "$C" 2>/dev/null
t=$(now)
"$CC" start-osd "$C" 2>/dev/null || fail "start-osd"
ok "start-osd ready in $(secs "$t")s"
got=$(timeout 60 rbd export rbd/d - 2>/dev/null | sha256sum)
[ "$want" = "$got" ] || fail "data changed after kill-osd/start-osd"
ok "data survives kill-osd/start-osd"
"$CC" stop "$C" 2>/dev/null
if [ -e "$C" ] || [ -n "$(daemons_of "$C")" ]; then fail "bluestore cluster left something"; fi
ok "bluestore cluster stopped"
echo "all $pass checks passed"
