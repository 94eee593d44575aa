#!/usr/bin/env bash
# exports-dir: kill -9 of the one gateway serving 20 exports while all 20
# are written to. A new gateway on the same registry takes every image's
# exclusive lock over from the dead one (its holder record names a dead
# process on this node), and every export then holds what was written and
# flushed before the kill: the data written before the load, and each
# block whose write and flush were acknowledged under the load. Each export
# takes new writes after.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"

N=20
exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
declare -a img
for i in $(seq 1 $N); do
  new_image "img[$i]" 16M
  register_export "$exdir" "v$i" "${img[$i]}"
done
start_shared sock pid "$log" "$exdir"

cpids=()
for i in $(seq 1 $N); do
  head -c 4M /dev/urandom >"$TEST_TMP/a$i"
  nbdcopy "$TEST_TMP/a$i" "$(export_uri "$sock" "v$i")" &
  cpids+=($!)
done
for p in "${cpids[@]}"; do wait "$p" || fail "writing 4 MiB to an export failed"; done
pass "4 MiB written to each of $N exports"

# Load: 64 KiB blocks in [8 MiB, 16 MiB), each written then flushed; a
# block's number is printed only once its flush was acknowledged.
load() {
  LOAD_TAG=$2 nbdsh -u "$1" -c '
import os, sys
tag = os.environ["LOAD_TAG"]
k = 0
while True:
    blk = k % 128
    data = (("%s-%d;" % (tag, k)).encode() * 65536)[:65536]
    h.pwrite(data, (8 << 20) + blk * 65536)
    h.flush()
    print(k, flush=True)
    k += 1
'
}
lpids=()
for i in $(seq 1 $N); do
  load "$(export_uri "$sock" "v$i")" "v$i" >"$TEST_TMP/acked$i" 2>"$TEST_TMP/load$i.err" &
  lpids+=($!)
done
# Until every export has had 20 writes acknowledged (python starts slowly).
for i in $(seq 1 $N); do
  for _ in $(seq 600); do
    [ "$(wc -l <"$TEST_TMP/acked$i")" -ge 20 ] && break
    kill -0 "${lpids[$((i - 1))]}" 2>/dev/null || { cat "$TEST_TMP/load$i.err" >&2; fail "load on v$i ended"; }
    sleep 0.1
  done
  [ "$(wc -l <"$TEST_TMP/acked$i")" -ge 20 ] || fail "no writes acknowledged on v$i under load"
done
kill -9 "$pid"
for p in "${lpids[@]}"; do wait "$p" || true; done
pass "gateway killed -9 under load on all $N exports"

start_shared sock pid "$log" "$exdir"
for i in $(seq 1 $N); do
  nbdcopy "$(export_uri "$sock" "v$i")" "$TEST_TMP/back$i" ||
    { tail -20 "$log" >&2; fail "export v$i does not open on the new gateway"; }
  cmp -s -n $((4 << 20)) "$TEST_TMP/a$i" "$TEST_TMP/back$i" || fail "v$i: data written before the kill differs"
  last=$(tail -n 1 "$TEST_TMP/acked$i")
  # The last acknowledged write of each block must be there: blocks of the
  # last 128 acknowledged numbers (or fewer) hold their newest write.
  LAST=$last TAG="v$i" BACK="$TEST_TMP/back$i" python3 -c '
import os
last, tag = int(os.environ["LAST"]), os.environ["TAG"]
img = open(os.environ["BACK"], "rb").read()
for k in range(max(0, last - 127), last + 1):
    blk = k % 128
    got = img[(8 << 20) + blk * 65536:(8 << 20) + blk * 65536 + 65536]
    # A later, unacknowledged write of the same block may have landed too.
    ok = [(("%s-%d;" % (tag, j)).encode() * 65536)[:65536] for j in (k, k + 128)]
    if got not in ok:
        raise SystemExit("%s: block %d lost its acknowledged write %d" % (tag, blk, k))
' || fail "an acknowledged write was lost"
done
pass "every export opens on the new gateway with its data and acknowledged writes intact"

for i in $(seq 1 $N); do
  head -c 1M /dev/urandom >"$TEST_TMP/c$i"
  nbdsh -u "$(export_uri "$sock" "v$i")" -c "h.pwrite(open('$TEST_TMP/c$i','rb').read(), 4 << 20); h.flush()" ||
    fail "v$i takes no writes after the restart"
done
kill "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
for i in $(seq 1 $N); do
  export_image "${img[$i]}" "$TEST_TMP/image$i"
  cmp -s "$TEST_TMP/a$i" <(head -c 4M "$TEST_TMP/image$i") || fail "v$i: old data changed"
  cmp -s "$TEST_TMP/c$i" <(tail -c +$(((4 << 20) + 1)) "$TEST_TMP/image$i" | head -c 1M) ||
    fail "v$i: the write after the restart is not in the image"
done
pass "every export takes writes after the restart (rbd export)"
