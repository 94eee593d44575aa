#!/usr/bin/env bash
# bench/attach/many-volumes.sh [-n N | --100] [--encrypted] [--shared | --map-shared]
#
# What each mapped volume costs on a node: starts a throwaway memstore
# cluster (tests/cluster/ceph-cluster.sh), creates N images (N=20, or 100
# with --100), maps them all with `rbdgw map --attach userspace` (each with
# its own gateway nbdkit and exporter rbdgw-fuse, today's one-process-per-
# volume shape; --encrypted: LUKS2 volumes through the luks2 filter), and
# prints
#   - the time to map all N and to unmap all N (one after the other, as a
#     CSI node plugin would),
#   - the processes, RSS (sum of ps rss) and threads (sum of ps nlwp) of
#     the gateways and of the exporters, in total and per volume, and the
#     cost of the last half of the volumes (per additional volume); beside
#     each per-volume RSS the PSS (sum of /proc/PID/smaps_rollup's Pss),
#     which counts a shared library's pages once, not once per exporter.
# --shared: the shared gateway instead, set up by this script (not yet by
# `rbdgw map`): ONE nbdkit rbd exports-dir=DIR (durable-writes, exclusive,
# as lib/attach starts gateways) serving every volume as its own export,
# and per volume a registry entry, an rbdgw-fuse --export NAME and a loop
# device (--direct-io=on), as the userspace path has. Levers:
# BENCH_NBDKIT_ARGS (e.g. "-t 4": nbdkit's threads are per connection),
# BENCH_FUSE_ARGS (e.g. "--connections 2 --threads 2").
# --map-shared: `rbdgw map --shared-gateway` (the product's shared gateway:
# one per kind, lib/attach/step_shared_gateway.cpp); with --encrypted too.
# Volumes there close their idle connections: a last sample is taken
# once they have (RBDGW_IDLE_DISCONNECT + 3 s after the I/O).
# --busy K: then K volumes at once at queue depth 32 (fio 4K random reads on
# their loop devices, 8 s), with the peak threads and RSS of the gateways
# and the exporters (sampled every 0.5 s) and the IOPS of the K together:
# what a node pays while many volumes are busy, not only per volume.
# Leaves nothing behind (unmaps, stops the cluster, removes its directory).
# Uses the build in $RBDGW_BUILD_DIR (default: build/ in the source tree).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
n=20 encrypted= shared= mapargs=() busy=0
while [ $# -gt 0 ]; do
  case $1 in
    -n) n=$2; shift 2 ;;
    --100) n=100; shift ;;
    --encrypted) encrypted=1; shift ;;
    --shared) shared=1; shift ;;
    --map-shared) mapargs=(--shared-gateway); shift ;;
    --busy) busy=$2; shift 2 ;;
    *) echo "usage: many-volumes.sh [-n N | --100] [--encrypted] [--shared | --map-shared] [--busy K]" >&2; exit 2 ;;
  esac
done
build=$(cd "${RBDGW_BUILD_DIR:-$src/build}" && pwd)
rbdgw=$build/csi-shim/cli/rbdgw fuse=$build/csi-shim/fuse/rbdgw-fuse
export RBDGW_PLUGIN=$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so
export RBDGW_FILTER=$build/nbdkit-plugin/luks2/nbdkit-luks2-filter.so
dir=$(mktemp -d /var/tmp/rbdgw-bench-many.XXXXXX)
run_root=$dir/run cluster=$dir/cluster
shared_pid=
cleanup() {
  set +e
  local s i
  if [ -n "$shared" ]; then
    for i in $(seq 1 "$n"); do unmap_shared "$i" >/dev/null 2>&1; done
    [ -n "$shared_pid" ] && kill "$shared_pid" && wait "$shared_pid"
  fi
  for s in "$run_root"/*/stash.json; do
    [ -e "$s" ] || continue
    v=$(basename "$(dirname "$s")")
    "$rbdgw" --run-root "$run_root" unmap "$v" >/dev/null 2>&1 ||
      "$rbdgw" --run-root "$run_root" unmap --force "$v" >/dev/null 2>&1
  done
  "$src/tests/cluster/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1
  if grep -q " $dir/" /proc/self/mountinfo || losetup -a | grep -q "$dir/"; then
    echo "many-volumes: something under $dir is still mounted; left in place" >&2
  else
    rm -rf --one-file-system "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "many-volumes: $*" >&2; }
# Room for every volume's writes (a LUKS2 header alone is 16 MiB: 100
# encrypted volumes filled the default 2G and every write blocked); memstore
# takes RAM only as written.
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster" --memstore-size "$((2048 + n * 48))M")"
export CEPH_CONF
enc=()
if [ -n "$encrypted" ]; then
  printf 'bench-passphrase' >"$dir/pass"
  chmod 600 "$dir/pass"
  enc=(--encrypted --passphrase-file "$dir/pass" --pbkdf pbkdf2:1000)
fi
for i in $(seq 1 "$n"); do rbd create --size 256M "rbd/vol$i"; done
log "mapping $n volumes"

# --shared: map_shared I / unmap_shared I.
sh=$dir/shared
map_shared() {
  local i=$1 d=$sh/v$1
  mkdir -p "$d"
  echo "image=rbd/vol$i" >"$sh/exports/v$i"
  : >"$d/disk"
  chmod 600 "$d/disk"
  # shellcheck disable=SC2086
  "$fuse" --name "rbdgw:vol$i" --export "v$i" --size-file "$d/size" ${BENCH_FUSE_ARGS:-} \
    "$sh/sock" "$d/disk" 2>"$d/fuse.log" &
  echo $! >"$d/fuse.pid"
  local k
  for k in $(seq 300); do mountpoint -q "$d/disk" && break; sleep 0.05; done
  mountpoint -q "$d/disk" || { cat "$d/fuse.log" >&2; return 1; }
  losetup --find --show --direct-io=on "$d/disk" >"$d/loop"
}
unmap_shared() {
  local i=$1 d=$sh/v$1
  [ -d "$d" ] || return 0
  [ -s "$d/loop" ] && losetup -d "$(cat "$d/loop")"
  mountpoint -q "$d/disk" && fusermount3 -u "$d/disk"
  local p; p=$(cat "$d/fuse.pid" 2>/dev/null) || p=
  if [ -n "$p" ]; then
    for k in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  fi
  rm -f "$sh/exports/v$i"
  rm -rf "$d"
}
if [ -n "$shared" ]; then
  mkdir -p "$sh/exports"
  # shellcheck disable=SC2086
  nbdkit -f --log=stderr -U "$sh/sock" -P "$sh/nbdkit.pid" ${BENCH_NBDKIT_ARGS:-} "$RBDGW_PLUGIN" \
    "exports-dir=$sh/exports" durable-writes=true exclusive=true "conf=$CEPH_CONF" 2>"$sh/gateway.log" &
  shared_pid=$!
  for k in $(seq 300); do [ -S "$sh/sock" ] && break; sleep 0.1; done
  [ -S "$sh/sock" ] || { cat "$sh/gateway.log" >&2; exit 1; }
fi
map_one() {
  if [ -n "$shared" ]; then map_shared "$1"; return; fi
  "$rbdgw" --run-root "$run_root" map "rbd/vol$1" --attach userspace "${enc[@]}" "${mapargs[@]}" >/dev/null 2>"$dir/map.log" ||
    { cat "$dir/map.log" >&2; exit 1; }
}
unmap_one() {
  if [ -n "$shared" ]; then unmap_shared "$1"; return; fi
  "$rbdgw" --run-root "$run_root" unmap "rbd/vol$1" >/dev/null
}
devices() {
  if [ -n "$shared" ]; then cat "$sh"/v*/loop; return; fi
  local s
  for s in "$run_root"/*/stash.json; do jq -r .device "$s"; done
}

# sample: "procs rss_kib threads pss_kib" of the gateways and the
# exporters of the volumes mapped so far (from their stash files;
# --shared: the one nbdkit).
sample() {
  local s gw=() fu=() p
  if [ -n "$shared" ]; then
    gw=("$shared_pid")
    for s in "$sh"/v*/fuse.pid; do [ -e "$s" ] && fu+=("$(cat "$s")"); done
  fi
  for s in "$run_root"/*/stash.json; do
    [ -e "$s" ] || continue
    gw+=("$(jq -r .gateway.pid "$s")")
    fu+=("$(jq -r .fuse.pid "$s")")
  done
  for p in gw fu; do
    local -n arr=$p
    if [ ${#arr[@]} -eq 0 ]; then echo "0 0 0 0"; continue; fi
    # Each pid once (every volume's stash names the one shared gateway).
    # PSS beside RSS: RSS counts the shared libraries' pages once in every
    # process that maps them; PSS splits each shared page among the
    # processes mapping it, so a sum of PSS is this set's share of the
    # node's memory.
    local pids pss=0 q k
    pids=$(printf '%s\n' "${arr[@]}" | sort -u)
    for q in $pids; do
      k=$(awk '/^Pss:/ {print $2}' "/proc/$q/smaps_rollup" 2>/dev/null) || k=0
      pss=$((pss + ${k:-0}))
    done
    ps -o rss=,nlwp= -p "$(echo $pids | tr ' ' ,)" |
      awk -v pss="$pss" '{r += $1; t += $2; c++} END {printf "%d %d %d %d\n", c, r, t, pss}'
  done
}

t0=$(date +%s.%N)
half=$((n / 2))
[ -z "$shared" ] || read -r -d '' at_0 < <(sample) || true
for i in $(seq 1 "$n"); do
  map_one "$i"
  if [ "$i" = "$half" ]; then sleep 2; read -r -d '' at_half < <(sample) || true; fi
done
t1=$(date +%s.%N)
sleep 2
read -r -d '' at_n < <(sample) || true
# A little I/O on every volume, then sample again (threads grow with use).
for dev in $(devices); do
  dd if=/dev/urandom of="$dev" bs=1M count=4 oflag=direct status=none
  dd if="$dev" of=/dev/null bs=1M count=4 iflag=direct status=none
done
sleep 1
read -r -d '' after_io < <(sample) || true
# --map-shared: idle again, once every volume's exporter has closed its
# idle connection (rbdgw-fuse --idle-disconnect, RBDGW_IDLE_DISCONNECT
# seconds, 10 as shipped; encrypted volumes too, since the luks2 filter
# keeps a mapped volume unlocked).
idle_after=
if [ ${#mapargs[@]} -gt 0 ] && [ "${RBDGW_IDLE_DISCONNECT:-10}" != 0 ]; then
  sleep $(( ${RBDGW_IDLE_DISCONNECT:-10} + 3 ))
  read -r -d '' idle_after < <(sample) || true
fi
# --busy K: K volumes at queue depth 32 at once; peaks sampled meanwhile.
peak= busy_iops=
if [ "$busy" -gt 0 ]; then
  k=0 fios=()
  for dev in $(devices); do
    [ "$k" -lt "$busy" ] || break
    fio --name=busy --filename="$dev" --ioengine=libaio --direct=1 --rw=randread --bs=4k \
      --iodepth=32 --runtime=8 --time_based --output-format=json --output="$dir/busy.$k.json" &
    fios+=($!) k=$((k + 1))
  done
  peak="0 0 0 0
0 0 0 0"
  while kill -0 "${fios[@]}" 2>/dev/null; do
    sleep 0.5
    read -r -d '' now < <(sample) || true
    # Field by field, the larger of the peak so far and this sample.
    peak=$(paste -d' ' <(echo "$peak") <(echo "$now") |
      awk '{ n = NF / 2; l = ""; for (i = 1; i <= n; i++) { v = ($i > $(i + n)) ? $i : $(i + n); l = l (i > 1 ? " " : "") v }; print l }')
  done
  wait "${fios[@]}" || true
  busy_iops=$(cat "$dir"/busy.*.json | jq -s '[.[].jobs[0].read.iops] | add | floor')
fi
t2=$(date +%s.%N)
for i in $(seq 1 "$n"); do unmap_one "$i"; done
t3=$(date +%s.%N)

report() {  # report LABEL "gwline\nfuline" [per]
  local label=$1 lines=$2 per=$3
  { read -r gc gr gt gp; read -r fc fr ft fp; } <<<"$lines"
  awk -v l="$label" -v per="$per" -v gc="$gc" -v gr="$gr" -v gt="$gt" -v fc="$fc" -v fr="$fr" -v ft="$ft" \
      -v gp="${gp:-0}" -v fp="${fp:-0}" 'BEGIN {
    printf "%-22s gateways %3d procs %8.1f MiB %5d thr | exporters %3d procs %8.1f MiB %5d thr | per volume %6.1f MiB %5.1f thr (PSS %5.1f MiB)\n",
      l, gc, gr/1024, gt, fc, fr/1024, ft, (gr+fr)/1024/per, (gt+ft)/per, (gp+fp)/1024/per }'
}
echo "many-volumes: $n volumes$([ -n "$encrypted" ] && echo ' (encrypted)')$([ ${#mapargs[@]} -gt 0 ] && echo ' (rbdgw map --shared-gateway)')$([ -n "$shared" ] && echo " through ONE shared gateway (nbdkit ${BENCH_NBDKIT_ARGS:-} exports-dir; rbdgw-fuse ${BENCH_FUSE_ARGS:-})"), userspace attach, memstore cluster"
printf 'map all:   %.1f s (%.2f s per volume)\n' "$(echo "$t1 - $t0" | bc)" "$(echo "($t1 - $t0) / $n" | bc -l)"
printf 'unmap all: %.1f s (%.2f s per volume)\n' "$(echo "$t3 - $t2" | bc)" "$(echo "($t3 - $t2) / $n" | bc -l)"
[ -z "$shared" ] || report "gateway alone (0)" "$at_0" 1
report "after map ($half)" "$at_half" "$half"
report "after map ($n)" "$at_n" "$n"
report "after I/O ($n)" "$after_io" "$n"
[ -z "$idle_after" ] || report "idle after I/O ($n)" "$idle_after" "$n"
if [ -n "$peak" ]; then
  # Per volume over all n mapped (the idle ones' exporters are in the sums).
  report "peak, $busy of $n busy" "$peak" "$n"
  echo "$busy volumes at queue depth 32 at once (4K random read, 8 s): $busy_iops IOPS together"
fi
# Per additional volume: the last n-half volumes' share.
{ read -r a1 a2 a3 ap; read -r a4 a5 a6 aq; } <<<"$at_half"
{ read -r b1 b2 b3 bp; read -r b4 b5 b6 bq; } <<<"$at_n"
awk -v r=$(( (b2 + b5) - (a2 + a5) )) -v t=$(( (b3 + b6) - (a3 + a6) )) -v k=$((n - half)) \
    -v p=$(( (bp + bq) - (ap + aq) )) \
  'BEGIN { printf "per additional volume (after map): %.1f MiB RSS (PSS %.1f MiB), %.1f threads\n", r/1024/k, p/1024/k, t/k }'
