#!/usr/bin/env bash
# bench/rbd-fio/run.sh OUTPUT.md [--runtime S] [--size SIZE]
#
# One command: starts a throwaway bluestore cluster, creates and fills an
# image, and runs the same fio jobs four ways:
#   librbd    fio --ioengine=rbd (direct librbd: the ceiling)
#   nbdkit    fio --ioengine=nbd against `nbdkit rbd` on a unix socket
#   qemu-nbd  fio --ioengine=nbd against qemu-nbd's rbd driver
#   aio       fio --ioengine=nbd against bench-aio-nbd-server, an experiment:
#             an NBD server on librbd's aio API with no thread per request
#             (aio_nbd_server.cpp; skipped when not built)
# Jobs: 4M sequential read and write at iodepth 16, 4K random read and write
# at iodepth 32, one job each. Prints one markdown table (MiB/s or IOPS and
# the ratio to librbd, and each server's CPU per GiB or per 1000 I/Os) and
# writes it to OUTPUT.md. Leaves nothing behind.
#
# Environment: RBDGW_PLUGIN (default: build/nbdkit-plugin/rbd/...),
# AIO_SERVER (default: build/bench/rbd-fio/bench-aio-nbd-server),
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
aio_server=${AIO_SERVER:-$src/build/bench/rbd-fio/bench-aio-nbd-server}
ways=(librbd nbdkit qemu-nbd)
[ -x "$aio_server" ] && ways+=(aio)
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
start_server() {  # nbdkit | qemu-nbd | aio
  rm -f "$sock"
  case $1 in
    nbdkit) nbdkit -f -t "$threads" -U "$sock" "$plugin" "rbd/$img" 2>"$dir/server.log" & ;;
    qemu-nbd) qemu-nbd -f raw --cache=writeback --shared=8 --persistent -k "$sock" \
                "rbd:rbd/$img:conf=$CEPH_CONF:id=admin" 2>"$dir/server.log" & ;;
    aio) "$aio_server" --socket "$sock" "rbd/$img" 2>"$dir/server.log" & ;;
  esac
  server_pid=$!
  for _ in $(seq 300); do [ -S "$sock" ] && return; sleep 0.1; done
  cat "$dir/server.log" >&2
  echo "run.sh: $1 did not start" >&2
  exit 1
}
stop_server() { kill "$server_pid"; wait "$server_pid" 2>/dev/null || true; server_pid=; }

source "$src/bench/lib/cpu.sh"  # clk, cpu_ticks

# run_fio WAY NAME RW BS DEPTH: prints MiB/s (bs 4M) or IOPS (bs 4K), and
# the server's CPU (core-seconds) per GiB or per 1000 I/Os ("-" for librbd),
# sampled from the end of the ramp to the end of the job.
run_fio() {
  local way=$1 name=$2 rw=$3 bs=$4 depth=$5 engine
  case $way in
    librbd) engine=(--ioengine=rbd --clientname=admin --pool=rbd --rbdname=$img) ;;
    *) engine=(--ioengine=nbd "--uri=nbd+unix:///?socket=$sock") ;;
  esac
  ( sleep 5; cpu_ticks "$server_pid" >"$dir/cpu0" ) &
  local sampler=$!
  fio --name="$name" "${engine[@]}" --rw="$rw" --bs="$bs" --iodepth="$depth" --direct=1 \
    --time_based --runtime="$runtime" --ramp_time=5 --output-format=json \
    --output="$dir/$way-$name.json"
  wait "$sampler"
  python3 - "$dir/$way-$name.json" "$rw" "$bs" "$(cat "$dir/cpu0")" "$(cpu_ticks "$server_pid")" \
    "$clk" "$server_pid" <<'PY'
import json, sys
js, rw, bs, c0, c1, clk, pid = sys.argv[1:]
j = json.load(open(js))["jobs"][0]
d = j["read" if "read" in rw else "write"]
cpu = (int(c1) - int(c0)) / int(clk)
if bs == "4M":
    v, per = f'{d["bw"] / 1024:.0f}', cpu / (d["io_bytes"] / 2**30)
else:
    v, per = f'{d["iops"]:.0f}', cpu / (d["total_ios"] / 1000)
print(v, f"{per:.2f}" if pid else "-")
PY
}

jobs=("4M seq read (qd16)|seqread|read|4M|16|MiB/s"
      "4M seq write (qd16)|seqwrite|write|4M|16|MiB/s"
      "4K rand read (qd32)|randread|randread|4k|32|IOPS"
      "4K rand write (qd32)|randwrite|randwrite|4k|32|IOPS")
declare -A head=([nbdkit]="nbdkit rbd (fio nbd)" [qemu-nbd]="qemu-nbd (fio nbd)"
                  [aio]="aio experiment (fio nbd)")
table="| workload | librbd (fio rbd, ceiling) |"
sep="|---|---|"
for way in "${ways[@]:1}"; do table+=" ${head[$way]} | ratio |"; sep+="---|---|"; done
table+="
$sep"
ratio() { python3 -c "print(f'{$1 / $2:.2f}x')"; }
for j in "${jobs[@]}"; do
  IFS='|' read -r title name rw bs depth unit <<<"$j"
  declare -A r=() c=()
  for way in "${ways[@]}"; do
    [ "$way" != librbd ] && start_server "$way"
    log "$title: $way"
    read -r "r[$way]" "c[$way]" < <(run_fio "$way" "$name" "$rw" "$bs" "$depth")
    [ "$way" != librbd ] && stop_server
  done
  cu=$([ "$unit" = IOPS ] && echo s/kIO || echo s/GiB)
  table+="
| $title | ${r[librbd]} $unit |"
  for way in "${ways[@]:1}"; do
    table+=" ${r[$way]} $unit (${c[$way]} $cu) | $(ratio "${r[$way]}" "${r[librbd]}") |"
  done
done
table+="

One-node bluestore cluster on 127.0.0.1 ($(nproc) cores), image $size, librbd defaults
(rbd_cache on, writearound; but fio's rbd engine turns the cache off with --direct=1, and
librbd stays write-through until a first flush, which these jobs never send), fio $(fio --version | sed 's/fio-//'), ${runtime} s per job after 5 s ramp,
one job each; nbdkit -t $threads; qemu-nbd --cache=writeback; the aio experiment with rbd_cache=false.
In brackets: the server's CPU (utime+stime, core-seconds) per GiB or per 1000 I/Os. $(date -u +%Y-%m-%d)."
echo "$table" | tee "$out"
