#!/usr/bin/env bash
# bench/rbd-fio/durable.sh OUTPUT.md [--runtime S] [--ramp S] [--rounds N] [--size SIZE] [--no-mount]
#
# What durable writes cost (issue 9): the gateway of rbdgw's attach paths
# runs `nbdkit rbd durable-writes=true` (librbd cache off: a completed write
# is on the OSDs); before, it ran with librbd's default cache policy (16.2:
# rbd_cache=true, writearound: a write completes before RADOS holds it).
# librbd stays write-through until its client's first flush
# (rbd_cache_writethrough_until_flush=true); every filesystem flushes, fio
# never does, so the "cache on" ways below are put in that state first.
# One command: starts a throwaway bluestore cluster, fills an image and runs
# the same fio jobs, side by side, these ways:
#   librbd          fio --ioengine=rbd, cache on (rbd_cache_writethrough_until_flush
#                   =false in the client's ceph.conf: as after a first flush;
#                   --direct=0, since with --direct=1 fio turns the cache off)
#   librbd-nocache  --direct=1 and rbd_cache=false in the ceph.conf
#   nbdkit          fio --ioengine=nbd on `nbdkit rbd` (cache on: the old
#                   gateway), after one NBD flush
#   nbdkit-durable  fio --ioengine=nbd on `nbdkit rbd durable-writes=true`,
#                   after one NBD flush as well
#   mount           `rbdgw map IMAGE --mount DIR --attach userspace`, fio libaio
#                   O_DIRECT on a file in its ext4, the gateway started without
#                   durable-writes=true (the old default; NBDKIT points to a
#                   wrapper that drops that one argument)
#   mount-durable   the same as shipped (durable-writes=true)
# Jobs: 4K random write qd32, 4M sequential write qd16, 4K random read qd32,
# 4M sequential read qd16, 4K random write qd1 (IOPS and mean latency). In
# each round every way runs each job in turn; the table shows medians over
# the rounds and the ratio durable / cached ("cost"). Writes OUTPUT.md and
# leaves nothing behind.
#
# Environment: RBDGW_BUILD_DIR (default: build), NBDKIT_THREADS (default 32,
# the nbdkit columns; the mounted gateway runs as rbdgw starts it),
# BENCH_DIR (default: a new /var/tmp dir), RBDGW_SECRET_DIR (default: a new
# dir in /dev/shm, removed at the end).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
usage="usage: durable.sh OUTPUT.md [--runtime S] [--ramp S] [--rounds N] [--size SIZE] [--no-mount]"
out=${1:?$usage}
shift
runtime=10
ramp=3
rounds=1
size=2G
mount=1
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --no-mount) mount=0; shift ;;
    *) echo "durable.sh: unknown option '$1'" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
build=${RBDGW_BUILD_DIR:-$src/build}
plugin=$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so
rbdgw=$build/csi-shim/cli/rbdgw
threads=${NBDKIT_THREADS:-32}
[ -f "$plugin" ] || { echo "durable.sh: plugin $plugin not built" >&2; exit 1; }
if [ "$mount" = 1 ]; then
  [ -x "$rbdgw" ] && [ -x "$build/csi-shim/fuse/rbdgw-fuse" ] ||
    { echo "durable.sh: $rbdgw or rbdgw-fuse not built (or use --no-mount)" >&2; exit 1; }
fi
for t in fio nbdkit rbd python3; do
  command -v "$t" >/dev/null || { echo "durable.sh: $t is missing (packaging/install-deps.sh)" >&2; exit 1; }
done

dir=${BENCH_DIR:-$(mktemp -d /var/tmp/rbdgw-bench.XXXXXX)}
cluster=$dir/cluster
run_root=$dir/run
mnt=$dir/mnt
secrets=
if [ -z "${RBDGW_SECRET_DIR:-}" ]; then
  secrets=$(mktemp -d /dev/shm/rbdgw-bench-secrets.XXXXXX)
  export RBDGW_SECRET_DIR=$secrets
fi
export RBDGW_PLUGIN=$plugin
server_pid=
mapped=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  [ -n "$mapped" ] && "$rbdgw" --run-root "$run_root" unmap "$mapped" >/dev/null 2>&1
  "$src/tests/cluster/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
  [ -n "$secrets" ] && rm -rf "$secrets"
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "durable: $*" >&2; }
log "starting a bluestore cluster in $cluster"
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster" --bluestore)"
export CEPH_CONF
# The client configuration for the two librbd ways ([client] is last).
cp "$CEPH_CONF" "$dir/cache.conf"
printf '\nrbd_cache_writethrough_until_flush = false\n' >>"$dir/cache.conf"
cp "$CEPH_CONF" "$dir/nocache.conf"
printf '\nrbd_cache = false\n' >>"$dir/nocache.conf"
img=bench
rbd create --size "$size" "rbd/$img"
log "filling rbd/$img ($size) so that reads read real data"
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=$img \
  --rw=write --bs=4M --iodepth=16 --direct=1 --output=/dev/null

# The mounted path: its own image, an ext4 made by the first map, one file
# filling half the image (laid out once, so that reads read real data).
fsize=$(python3 -c "import sys; s = sys.argv[1]; m = {'M': 2**20, 'G': 2**30}[s[-1].upper()]; print(int(s[:-1]) * m // 2 // 2**20)" "$size")M
# rbdgw's gateway as it ran before issue 9: the same argv without durable-writes=true.
cat >"$dir/nbdkit-cached" <<'SH'
#!/bin/sh
for a; do shift; [ "$a" = durable-writes=true ] || set -- "$@" "$a"; done
exec nbdkit "$@"
SH
chmod +x "$dir/nbdkit-cached"
map() {  # mount | mount-durable
  local nbdkit=nbdkit
  [ "$1" = mount ] && nbdkit=$dir/nbdkit-cached
  mapped=rbd/mnt
  NBDKIT=$nbdkit "$rbdgw" --run-root "$run_root" map rbd/mnt --mount "$mnt" --attach userspace \
    >/dev/null 2>"$dir/map.log" || { cat "$dir/map.log" >&2; exit 1; }
}
unmap() {
  "$rbdgw" --run-root "$run_root" unmap rbd/mnt >/dev/null 2>"$dir/map.log" ||
    { cat "$dir/map.log" >&2; exit 1; }
  mapped=
}
if [ "$mount" = 1 ]; then
  rbd create --size "$size" rbd/mnt
  mkdir "$mnt"
  map mount-durable
  log "laying out $mnt/fio.dat ($fsize)"
  fio --name=layout --ioengine=libaio --direct=1 --filename="$mnt/fio.dat" --size="$fsize" \
    --rw=write --bs=4M --iodepth=16 --output=/dev/null
  unmap
fi

sock=$dir/nbd.sock
start_server() {  # nbdkit | nbdkit-durable
  local args=()
  [ "$1" = nbdkit-durable ] && args=(durable-writes=true)
  rm -f "$sock"
  nbdkit -f -t "$threads" -U "$sock" "$plugin" "rbd/$img" "${args[@]}" 2>"$dir/server.log" &
  server_pid=$!
  for _ in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
  [ -S "$sock" ] || { cat "$dir/server.log" >&2; echo "durable.sh: $1 did not start" >&2; exit 1; }
  # One flush, as a filesystem makes: it ends librbd's write-through start.
  fio --name=flush --ioengine=nbd "--uri=nbd+unix:///?socket=$sock" --rw=write --bs=4k \
    --size=4k --end_fsync=1 --output=/dev/null
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }

# run_fio WAY NAME RW BS DEPTH: prints "VALUE LAT_US": MiB/s (bs 4M) or
# IOPS (bs 4k), and the mean completion latency in microseconds.
run_fio() {
  local way=$1 name=$2 rw=$3 bs=$4 depth=$5 conf=$dir/cache.conf direct=1 engine
  case $way in
    librbd*) engine=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname=$img) ;;
    nbdkit*) engine=(--ioengine=nbd "--uri=nbd+unix:///?socket=$sock") ;;
    mount*) engine=(--ioengine=libaio "--filename=$mnt/fio.dat" "--size=$fsize") ;;
  esac
  [ "$way" = librbd-nocache ] && conf=$dir/nocache.conf
  # fio's rbd engine sets rbd_cache=false itself when --direct=1 (and has no
  # page cache to bypass): the cache-on way must run without it.
  [ "$way" = librbd ] && direct=0
  CEPH_CONF=$conf fio --name="$name" "${engine[@]}" --rw="$rw" --bs="$bs" --iodepth="$depth" \
    --direct=$direct --time_based --runtime="$runtime" --ramp_time="$ramp" --output-format=json \
    --output="$dir/$way-$name.json"
  python3 - "$dir/$way-$name.json" "$rw" "$bs" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read" if "read" in sys.argv[2] else "write"]
v = d["bw"] / 1024 if sys.argv[3] == "4M" else d["iops"]
print(f'{v:.1f} {d["clat_ns"]["mean"] / 1000:.0f}')
PY
}

jobs=("4K rand write (qd32)|randwrite32|randwrite|4k|32|IOPS"
      "4M seq write (qd16)|seqwrite|write|4M|16|MiB/s"
      "4K rand read (qd32)|randread|randread|4k|32|IOPS"
      "4M seq read (qd16)|seqread|read|4M|16|MiB/s"
      "4K rand write (qd1)|randwrite1|randwrite|4k|1|IOPS")
ways=(librbd librbd-nocache nbdkit nbdkit-durable)
[ "$mount" = 1 ] && ways+=(mount mount-durable)
: >"$dir/results"
for ((r = 1; r <= rounds; r++)); do
  for j in "${jobs[@]}"; do
    IFS='|' read -r title name rw bs depth unit <<<"$j"
    for way in "${ways[@]}"; do
      case $way in nbdkit*) start_server "$way" ;; mount*) map "$way" ;; esac
      log "round $r/$rounds, $title: $way"
      echo "$name $way $(run_fio "$way" "$name" "$rw" "$bs" "$depth")" >>"$dir/results"
      case $way in nbdkit*) stop_server ;; mount*) unmap ;; esac
    done
  done
done

python3 - "$dir/results" "$out" "$mount" <<PY
import statistics, sys
res = {}
for line in open(sys.argv[1]):
    name, way, v, lat = line.split()
    res.setdefault((name, way), []).append((float(v), float(lat)))
def med(name, way):
    rs = res[(name, way)]
    return statistics.median(v for v, _ in rs), statistics.median(l for _, l in rs)
def cell(name, way, unit):
    v, lat = med(name, way)
    s = f"{v:.0f} {unit}"
    return s + (f" ({lat:.0f} µs)" if name == "randwrite1" else "")
def ratio(name, a, b):
    return f"{med(name, b)[0] / med(name, a)[0]:.2f}x"
mount = sys.argv[3] == "1"
head = ("| workload | librbd, cache on (fio rbd) | librbd rbd_cache=false | x "
        "| nbdkit rbd (fio nbd) | nbdkit rbd durable-writes=true | cost |")
rule = "|---|---:|---:|---:|---:|---:|---:|"
if mount:
    head += " rbdgw map --mount, cache on | rbdgw map --mount (durable) | cost |"
    rule += "---:|---:|---:|"
rows = [head, rule]
for line in """$(printf '%s\n' "${jobs[@]}")""".splitlines():
    title, name, _, _, _, unit = line.split("|")
    row = (f"| {title} | {cell(name, 'librbd', unit)} | {cell(name, 'librbd-nocache', unit)} "
           f"| {ratio(name, 'librbd', 'librbd-nocache')} | {cell(name, 'nbdkit', unit)} "
           f"| {cell(name, 'nbdkit-durable', unit)} | {ratio(name, 'nbdkit', 'nbdkit-durable')} |")
    if mount:
        row += (f" {cell(name, 'mount', unit)} | {cell(name, 'mount-durable', unit)} "
                f"| {ratio(name, 'mount', 'mount-durable')} |")
    rows.append(row)
open(sys.argv[2], "w").write("\n".join(rows) + "\n")
PY
note="
One-node bluestore cluster on 127.0.0.1 ($(nproc) cores), image $size (mounted: its own
$size image, ext4, a $fsize file), fio $(fio --version | sed 's/fio-//'), ${runtime} s per job after
${ramp} s ramp, one job each, median of $rounds round(s); nbdkit -t $threads; \"cost\" =
durable / cache on; \"cache on\" = librbd's default write-around cache as after the client's
first flush; qd1 rows also show the mean completion latency. $(date -u +%Y-%m-%d).
Load: $(uptime | sed 's/.*load average/load average/')."
echo "$note" >>"$out"
cat "$out"
