#!/usr/bin/env bash
# bench/rbd-fio/run.sh OUTPUT.md [--runtime S] [--size SIZE]
#
# One command: starts a throwaway bluestore cluster, creates and fills an
# image, and runs the same fio jobs three ways:
#   librbd    fio --ioengine=rbd (direct librbd: the ceiling)
#   nbdkit    fio --ioengine=nbd against `nbdkit rbd` on a unix socket
#   qemu-nbd  fio --ioengine=nbd against qemu-nbd's rbd driver
# Jobs: 4M sequential read and write at iodepth 16, 4K random read and write
# at iodepth 32, one job each. Prints one markdown table (MiB/s or IOPS and
# the ratio to librbd) and writes it to OUTPUT.md. Leaves nothing behind.
#
# Environment: RBDGW_PLUGIN (default: build/nbdkit-plugin/rbd/...),
# NBDKIT_THREADS (default 32), BENCH_DIR (default: a new /var/tmp dir).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
out=${1:?usage: run.sh OUTPUT.md [--runtime S] [--size SIZE]}
shift
runtime=15
size=2G
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) runtime=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    *) echo "run.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
plugin=${RBDGW_PLUGIN:-$src/build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so}
threads=${NBDKIT_THREADS:-32}
[ -f "$plugin" ] || { echo "run.sh: plugin $plugin not built" >&2; exit 1; }
for t in fio nbdkit qemu-nbd rbd python3; do
  command -v "$t" >/dev/null || { echo "run.sh: $t is missing (packaging/install-deps.sh)" >&2; exit 1; }
done

dir=${BENCH_DIR:-$(mktemp -d /var/tmp/rbdgw-bench.XXXXXX)}
cluster=$dir/cluster
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  "$src/tests/cluster/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "rbd-fio: $*" >&2; }
log "starting a bluestore cluster in $cluster"
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster" --bluestore)"
export CEPH_CONF
img=bench
rbd create --size "$size" "rbd/$img"
log "filling rbd/$img ($size) so that reads read real data"
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=$img \
  --rw=write --bs=4M --iodepth=16 --direct=1 --output=/dev/null

sock=$dir/nbd.sock
start_server() {  # nbdkit | qemu-nbd
  rm -f "$sock"
  case $1 in
    nbdkit) nbdkit -f -t "$threads" -U "$sock" "$plugin" "rbd/$img" 2>"$dir/server.log" & ;;
    qemu-nbd) qemu-nbd -f raw --cache=writeback --shared=8 --persistent -k "$sock" \
                "rbd:rbd/$img:conf=$CEPH_CONF:id=admin" 2>"$dir/server.log" & ;;
  esac
  server_pid=$!
  for _ in $(seq 300); do [ -S "$sock" ] && return; sleep 0.1; done
  cat "$dir/server.log" >&2
  echo "run.sh: $1 did not start" >&2
  exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }

# run_fio WAY NAME RW BS DEPTH: prints MiB/s (bs 4M) or IOPS (bs 4K).
run_fio() {
  local way=$1 name=$2 rw=$3 bs=$4 depth=$5 engine
  case $way in
    librbd) engine=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname=$img) ;;
    *) engine=(--ioengine=nbd "--uri=nbd+unix:///?socket=$sock") ;;
  esac
  fio --name="$name" "${engine[@]}" --rw="$rw" --bs="$bs" --iodepth="$depth" --direct=1 \
    --time_based --runtime="$runtime" --ramp_time=5 --output-format=json \
    --output="$dir/$way-$name.json"
  python3 - "$dir/$way-$name.json" "$rw" "$bs" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
d = j["read" if "read" in sys.argv[2] else "write"]
print(f'{d["bw"] / 1024:.0f}' if sys.argv[3] == "4M" else f'{d["iops"]:.0f}')
PY
}

jobs=("4M seq read (qd16)|seqread|read|4M|16|MiB/s"
      "4M seq write (qd16)|seqwrite|write|4M|16|MiB/s"
      "4K rand read (qd32)|randread|randread|4k|32|IOPS"
      "4K rand write (qd32)|randwrite|randwrite|4k|32|IOPS")
table="| workload | librbd (fio rbd, ceiling) | nbdkit rbd (fio nbd) | ratio | qemu-nbd (fio nbd) | ratio |
|---|---|---|---|---|---|"
for j in "${jobs[@]}"; do
  IFS='|' read -r title name rw bs depth unit <<<"$j"
  declare -A r=()
  for way in librbd nbdkit qemu-nbd; do
    [ "$way" != librbd ] && start_server "$way"
    log "$title: $way"
    r[$way]=$(run_fio "$way" "$name" "$rw" "$bs" "$depth")
    [ "$way" != librbd ] && stop_server
  done
  ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
  table+="
| $title | ${r[librbd]} $unit | ${r[nbdkit]} $unit | $(ratio "${r[nbdkit]}" "${r[librbd]}") | ${r[qemu-nbd]} $unit | $(ratio "${r[qemu-nbd]}" "${r[librbd]}") |"
done
table+="

One-node bluestore cluster on 127.0.0.1 ($(nproc) cores), image $size, librbd defaults
(rbd_cache on, writearound; but fio's rbd engine turns the cache off with --direct=1, and
librbd stays write-through until a first flush, which these jobs never send), fio $(fio --version | sed 's/fio-//'), ${runtime} s per job after 5 s ramp,
one job each; nbdkit -t $threads; qemu-nbd --cache=writeback. $(date -u +%Y-%m-%d)."
echo "$table" | tee "$out"
