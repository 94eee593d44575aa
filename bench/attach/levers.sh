#!/usr/bin/env bash
# bench/attach/levers.sh OUTPUT.md [--runtime S] [--rounds N] CONFIG...
#
# A/B of settings of the userspace path on one cluster, interleaved (round
# 1: every CONFIG in turn, round 2: again...) so that the machine's load
# hits them alike. A CONFIG is NAME:VAR=VALUE,VAR=VALUE with the lever
# variables of run.sh (BENCH_LOOP_DIO, BENCH_FUSE_ARGS, BENCH_NBDKIT_ARGS,
# BENCH_PLUGIN_ARGS), e.g.
#   bench/attach/levers.sh out.md off:BENCH_LOOP_DIO=off on:BENCH_LOOP_DIO=on
# Each config maps rbd/bench (`rbdgw map --attach userspace`) and runs the
# four jobs of run.sh on the export (fio nbd) and the bare loop device;
# prints medians over the rounds with CPU (gateway + exporter) per GiB or
# per 1000 I/Os, and the thread counts (ps -o nlwp) of gateway and exporter
# after the 4K random read on the loop device. BENCH_MAP_ARGS="ARGS" adds
# arguments to that map (e.g. --shared-gateway: the volume on the node's
# shared gateway, whose export is then the volume's named export; space-
# separated; $RBDGW_SHARED_GATEWAY_THREADS passes through, or per config
# BENCH_SHARED_THREADS=N: the shared gateway stops with its last volume, so
# each config's map starts its own). BENCH_ENCRYPTED=1 maps an encrypted
# volume instead (rbd/bench-enc, LUKS2-formatted by its first map and
# filled through its device once; passphrase from a file, PBKDF2 1000
# iterations; with --shared-gateway on the decrypting shared gateway).
# BENCH_FUSE_BIN=PATH runs
# another rbdgw-fuse binary, BENCH_PLUGIN_BIN=PATH another nbdkit-rbd-plugin.so
# (A/Bs of old and new code). Leaves nothing
# behind.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
out=${1:?usage: levers.sh OUTPUT.md [--runtime S] [--rounds N] CONFIG...}
shift
runtime=5 rounds=2
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) runtime=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "levers.sh: no CONFIG" >&2; exit 2; }
build=$(cd "${RBDGW_BUILD_DIR:-$src/build}" && pwd)
rbdgw=$build/csi-shim/cli/rbdgw fuse=$build/csi-shim/fuse/rbdgw-fuse
export RBDGW_PLUGIN=$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so
export RBDGW_FILTER=$build/nbdkit-plugin/luks2/nbdkit-luks2-filter.so
dir=$(mktemp -d /var/tmp/rbdgw-bench-levers.XXXXXX)
run_root=$dir/run cluster=$dir/cluster
mapped= img=rbd/bench
cleanup() {
  set +e
  [ -n "$mapped" ] && "$rbdgw" --run-root "$run_root" unmap "$img" >/dev/null 2>&1
  "$src/tests/cluster/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1
  if grep -q " $dir/" /proc/self/mountinfo || losetup -a | grep -q "$dir/"; then
    echo "levers: something under $dir is still mounted; left in place" >&2
  else
    rm -rf --one-file-system "$dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "levers: $*" >&2; }
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster" --bluestore)"
export CEPH_CONF
rbd create --size 2G rbd/bench
rbd create --size 2G rbd/bench-enc
printf 'bench-passphrase' >"$dir/pass"
chmod 600 "$dir/pass"
enc_filled=
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
  --rw=write --bs=4M --iodepth=16 --direct=1 --output=/dev/null
source "$src/bench/lib/cpu.sh"  # clk, cpu_ticks
real_losetup=$(command -v losetup) real_nbdkit=$(command -v nbdkit)
# map_with CONFIG-BODY: rbdgw map with that config's wrappers.
map_with() {
  local body=$1 kv dio= fa= na= pa= ma= fb=$fuse pb=$RBDGW_PLUGIN enc=()
  img=rbd/bench
  local sthreads=${RBDGW_SHARED_GATEWAY_THREADS-}
  IFS=',' read -ra kvs <<<"$body"
  for kv in "${kvs[@]}"; do
    case $kv in
      BENCH_LOOP_DIO=*) dio=${kv#*=} ;;
      BENCH_FUSE_ARGS=*) fa=${kv#*=} ;;
      BENCH_NBDKIT_ARGS=*) na=${kv#*=} ;;
      BENCH_PLUGIN_ARGS=*) pa=${kv#*=} ;;
      BENCH_MAP_ARGS=*) ma=${kv#*=} ;;
      BENCH_FUSE_BIN=*) fb=${kv#*=} ;;
      BENCH_PLUGIN_BIN=*) pb=${kv#*=} ;;
      BENCH_SHARED_THREADS=*) sthreads=${kv#*=} ;;
      BENCH_ENCRYPTED=1) img=rbd/bench-enc enc=(--encrypted --passphrase-file "$dir/pass" --pbkdf pbkdf2:1000) ;;
      "") ;;
      *) echo "levers.sh: unknown lever '$kv'" >&2; exit 2 ;;
    esac
  done
  local bin=$dir/bin.$RANDOM
  mkdir -p "$bin"
  printf '#!/bin/bash\na=()\nfor x; do case $x in image=*) a+=("$x" %s) ;; %q) a+=(%q) ;; *) a+=("$x") ;; esac; done\nexec %s %s "${a[@]}"\n' "$pa" "$RBDGW_PLUGIN" "$pb" "$real_nbdkit" "$na" >"$bin/nbdkit"
  printf '#!/bin/sh\nexec %q %s "$@"\n' "$fb" "$fa" >"$bin/fuse"
  if [ -n "$dio" ]; then
    printf '#!/bin/bash\na=()\nfor x; do case $x in --direct-io=*) a+=(--direct-io=%s) ;; *) a+=("$x") ;; esac; done\nexec %s "${a[@]}"\n' "$dio" "$real_losetup" >"$bin/losetup"
  else
    ln -s "$real_losetup" "$bin/losetup"
  fi
  chmod +x "$bin"/*
  dev=$(PATH=$bin:$PATH NBDKIT=$bin/nbdkit RBDGW_FUSE_EXPORTER=$bin/fuse \
        env ${sthreads:+RBDGW_SHARED_GATEWAY_THREADS=$sthreads} \
        "$rbdgw" --run-root "$run_root" map "$img" --attach userspace "${enc[@]}" $ma 2>"$dir/map.log") ||
    { cat "$dir/map.log" >&2; exit 1; }
  mapped=1
  if [ ${#enc[@]} -gt 0 ] && [ -z "$enc_filled" ]; then
    fio --name=fill --filename="$dev" --ioengine=libaio --rw=write --bs=4M --iodepth=16 --direct=1 \
      --output=/dev/null
    enc_filled=1
  fi
}
rows=("w1m|write|1M|16" "r1m|read|1M|16" "r4k|randread|4k|32" "w4k|randwrite|4k|32")
for ((round = 1; round <= rounds; round++)); do
  for cfg in "$@"; do
    name=${cfg%%:*} body=${cfg#*:}
    map_with "$body"
    st=$run_root/${img/\//.}/stash.json
    gw=$(jq -r .gateway.pid "$st") fu=$(jq -r .fuse.pid "$st") sock=$(jq -r .socket "$st")
    # On a shared gateway the volume is the export named by its id.
    exp=$(jq -r 'if .shared_dir then .volume_id else "" end' "$st")
    for col in export loop; do
      for r in "${rows[@]}"; do
        IFS='|' read -r row rw bs depth <<<"$r"
        if [ $col = export ]; then eng=(--ioengine=nbd "--uri=nbd+unix:///$exp?socket=$sock"); pids=$gw
        else eng=(--ioengine=libaio "--filename=$dev"); pids="$gw $fu"; fi
        c0=$(cpu_ticks $pids)
        fio --name=x "${eng[@]}" --rw=$rw --bs=$bs --iodepth=$depth --direct=1 --time_based \
          --runtime=$runtime --output-format=json --output="$dir/j.json"
        c1=$(cpu_ticks $pids)
        python3 - "$dir/j.json" $rw $bs $c0 $c1 $clk "$name" $col $row $round >>"$dir/results" <<'PY'
import json, sys
js, rw, bs, c0, c1, clk, name, col, row, rnd = sys.argv[1:]
d = json.load(open(js))["jobs"][0]["read" if "read" in rw else "write"]
cpu = (int(c1) - int(c0)) / int(clk)
v, per = (d["bw"] / 1024, cpu / (d["io_bytes"] / 2**30)) if bs == "1M" else (d["iops"], cpu / (d["total_ios"] / 1000))
print(name, col, row, rnd, f"{v:.0f}", f"{per:.3f}")
PY
        log "$(tail -1 "$dir/results")"
        if [ $col = loop ] && [ $row = r4k ]; then
          echo "$name $round $(ps -o nlwp= -p "$gw" | tr -d ' ') $(ps -o nlwp= -p "$fu" | tr -d ' ')" >>"$dir/threads"
        fi
      done
    done
    "$rbdgw" --run-root "$run_root" unmap "$img" >/dev/null
    mapped=
  done
done
python3 - "$dir/results" "$(cut -d' ' -f1-3 /proc/loadavg)" "$runtime" "$rounds" "$dir/threads" "$@" <<'PY' | tee "$out"
import statistics, sys
res, load, runtime, rounds, thr, *cfgs = sys.argv[1:]
r = {}
for l in open(res):
    n, c, row, rnd, v, per = l.split()
    r.setdefault((n, c, row), []).append((float(v), float(per)))
rows = [("w1m", "1M write qd16", "MiB/s"), ("r1m", "1M read qd16", "MiB/s"), ("r4k", "4K randread qd32", "IOPS"), ("w4k", "4K randwrite qd32", "IOPS")]
names = [c.split(":")[0] for c in cfgs]
print("| workload | " + " | ".join(f"{n} export | {n} loop | {n} loop/export" for n in names) + " |")
print("|---|" + "---:|---:|---:|" * len(names))
for key, title, unit in rows:
    cells = []
    for n in names:
        e = r.get((n, "export", key), []); lp = r.get((n, "loop", key), [])
        me = statistics.median(x[0] for x in e); ml = statistics.median(x[0] for x in lp)
        ce = statistics.median(x[1] for x in e); cl = statistics.median(x[1] for x in lp)
        cells += [f"{me:.0f} ({ce:.2f})", f"{ml:.0f} ({cl:.2f})", f"{ml / me:.2f}x"]
    print(f"| {title} {unit} | " + " | ".join(cells) + " |")
print(f"\nmedians of {rounds} interleaved rounds, {runtime} s per job; (CPU s/GiB or s/kIO, gateway+exporter); load {load}")
t = {}
for l in open(thr):
    n, rnd, g, f = l.split()
    t.setdefault(n, []).append((int(g), int(f)))
print("threads after 4K randread on the loop device (gateway + exporter, nlwp): " + "; ".join(
    f"{n} {statistics.median(x[0] for x in t[n]):.0f} + {statistics.median(x[1] for x in t[n]):.0f}" for n in names if n in t))
print("configs: " + "; ".join(cfgs))
PY
