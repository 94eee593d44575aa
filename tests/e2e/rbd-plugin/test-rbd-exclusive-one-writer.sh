#!/usr/bin/env bash
# One writer per image (issue 10 item 1): a gateway started with
# exclusive=true holds the image's exclusive lock for its whole life. A
# second exclusive gateway (another node, or the same one) refuses to start,
# naming the first (its node, client and pid); librbd never hands the lock to
# a cooperative client either; the first keeps taking writes and flushes
# throughout, and only its data is in the image. Once the first exits
# cleanly, the lock is free again.
# (Before: two gateways on one image both served, taking the lock in turn.)
source "$(dirname "$0")/common.sh"

new_image img 16M   # the default features include exclusive-lock

serve s1 p1 "rbd/$img" exclusive=true node=node-a
head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/a"
write_and_flush() {  # write_and_flush SOCK FILE
  nbdsh -u "$(nbd_uri "$1")" -c "
data = open('$2', 'rb').read()
h.pwrite(data, 0)
h.flush()
"
}
write_and_flush "$s1" "$TEST_TMP/a" || fail "the first exclusive gateway did not take a write"

# The holder record names the first gateway.
rbd_cli image-meta get "rbd/$img" rbdgw.io/holder >"$TEST_TMP/holder" || fail "no holder record"
python3 - "$TEST_TMP/holder" "$p1" <<'PY' || fail "holder record wrong: $(cat "$TEST_TMP/holder")"
import json, sys
h = json.load(open(sys.argv[1]))
assert h["node"] == "node-a", h
assert h["pid"] == int(sys.argv[2]), h
assert h["client"] and h["boot_id"] and h["since"] and h["pid_ns"].startswith("pid:["), h
PY
client=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["client"])' "$TEST_TMP/holder")
rbd_cli lock ls --format json "rbd/$img" | grep -q "$client" || fail "the lock is not held by the recorded client $client"
pass "the exclusive gateway holds the lock and its record names it ($client, pid $p1)"

# A second exclusive gateway, on another node or on the same one: refused
# before it serves, naming the first.
expect_refusal "image rbd/$img is in use: its exclusive lock is held by $client on node node-a since .* \(rbdgw gateway pid $p1\)" \
  "rbd/$img" exclusive=true node=node-b
expect_refusal "held by $client on node node-a" "rbd/$img" exclusive=true node=node-a

# A cooperative client (a gateway without exclusive=true, librbd's default
# mode) asks for the lock on its first write: it is not handed over.
serve s2 p2 "rbd/$img"
head -c $((1 * MiB)) /dev/urandom >"$TEST_TMP/b"
if write_and_flush "$s2" "$TEST_TMP/b" 2>"$TEST_TMP/b.err"; then
  fail "a cooperative gateway wrote to an image an exclusive gateway holds"
fi
kill "$p2"
pass "a cooperative gateway's write is refused ($(grep -m1 -o 'nbd_pwrite:.*' "$TEST_TMP/b.err" || head -1 "$TEST_TMP/b.err"))"

# The first still writes, and only its data is in the image.
head -c $((4 * MiB)) /dev/urandom >"$TEST_TMP/a2"
write_and_flush "$s1" "$TEST_TMP/a2" || fail "the first gateway stopped taking writes"
export_image "$img" "$TEST_TMP/out"
cmp -n $((4 * MiB)) "$TEST_TMP/a2" "$TEST_TMP/out" || fail "the image does not hold the first gateway's data"
[ "$(rbd_cli lock ls --format json "rbd/$img" | grep -o "$client" | wc -l)" = 1 ] ||
  fail "lock owner changed: $(rbd_cli lock ls "rbd/$img")"
pass "the first gateway kept the lock and took every write; rbd export holds its data only"

# A clean exit lets the lock go: the next exclusive gateway starts at once.
kill "$p1"
for _ in $(seq 100); do kill -0 "$p1" 2>/dev/null || break; sleep 0.1; done
serve s3 p3 "rbd/$img" exclusive=true node=node-b
write_and_flush "$s3" "$TEST_TMP/a" || fail "the next exclusive gateway did not take a write"
rbd_cli image-meta get "rbd/$img" rbdgw.io/holder | grep -q '"node":"node-b"' || fail "record not rewritten by node-b"
pass "after the first exited, an exclusive gateway on node-b took the lock"
