#!/usr/bin/env bash
# bench/attach/run.sh OUTPUT.md [--runtime S] [--ramp S] [--size SIZE] [--only COLS]
#
# The speed of rbdgw's userspace attach path, layer by layer, in one run
# (issue 12). Starts a throwaway bluestore cluster, and runs the same four
# fio jobs (1M write qd16, 1M read qd16, 4K randread qd32, 4K randwrite
# qd32, one job each) on these columns, side by side:
#   librbd     fio --ioengine=rbd --direct=1 on image `bench` (direct librbd,
#              cache off: what the durable gateway does, see
#              docs/benchmarks.md section 4)
#   export     fio --ioengine=nbd on the gateway's socket of
#              `rbdgw map rbd/bench --attach userspace` (nbdkit rbd exactly
#              as rbdgw starts it, durable-writes=true)
#   loop       fio libaio O_DIRECT on that map's loop device (no filesystem:
#              gateway + rbdgw-fuse + loop)
#   mounted    fio libaio O_DIRECT on a file in the ext4 of
#              `rbdgw map rbd/mnt --mount DIR --attach userspace`
#   encrypted  the same on `rbdgw map rbd/enc --mount DIR` of an encrypted
#              volume (luks2 filter; passphrase from a 0600 file)
#   nbdfuse    the peer: nbdkit rbd (the same gateway argv) + libnbd's
#              nbdfuse (its defaults) + losetup --direct-io=on (without it
#              reads come from the page cache of nbdfuse's file) + the same
#              ext4 of rbd/mnt
# Beside each figure: the CPU (utime+stime from /proc/PID/stat, sampled
# after the ramp and at the end) of the gateway and exporter processes
# (nbdkit, rbdgw-fuse or nbdfuse; never fio, the loop device's kernel
# worker or the OSD), as core-seconds per GiB moved (1M rows) or per 1000
# I/Os (4K rows; the same number as cores per 1000 IOPS). Then ratios.
# Prints the commands it ran, writes the tables to OUTPUT.md and leaves
# nothing behind.
#
# --only COLS: a comma-separated subset of the columns (librbd is needed
# for export/librbd, export for the other ratios).
#
# Environment: RBDGW_BUILD_DIR (default: build), BENCH_DIR (default: a new
# /var/tmp dir), RBDGW_SECRET_DIR (default: a new dir in /dev/shm, removed
# at the end). Levers, to measure a setting without rebuilding (default:
# as shipped): BENCH_NBDKIT_ARGS (extra nbdkit options, e.g. "-t 32",
# put before the plugin), BENCH_PLUGIN_ARGS (extra plugin parameters),
# BENCH_FUSE_ARGS (extra rbdgw-fuse options, e.g. "--connections 8"),
# BENCH_LOOP_DIO (on|off: replaces rbdgw's losetup --direct-io=),
# BENCH_LOOP_NR_REQUESTS (written to the loop device's queue/nr_requests).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
usage="usage: run.sh OUTPUT.md [--runtime S] [--ramp S] [--size SIZE] [--only COLS]"
out=${1:?$usage}
shift
runtime=8
ramp=2
size=2G
only=librbd,export,loop,mounted,encrypted,nbdfuse
while [ $# -gt 0 ]; do
  case $1 in
    --runtime) runtime=$2; shift 2 ;;
    --ramp) ramp=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    *) echo "run.sh: unknown option '$1'" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
want() { [[ ",$only," == *",$1,"* ]]; }
build=${RBDGW_BUILD_DIR:-$src/build}
build=$(cd "$build" && pwd)
plugin=$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so
filter=$build/nbdkit-plugin/luks2/nbdkit-luks2-filter.so
rbdgw=$build/csi-shim/cli/rbdgw
fuse=$build/csi-shim/fuse/rbdgw-fuse
for f in "$plugin" "$filter" "$rbdgw" "$fuse"; do
  [ -e "$f" ] || { echo "run.sh: $f not built (RBDGW_BUILD_DIR=$build)" >&2; exit 1; }
done
for t in fio nbdkit nbdfuse rbd python3 jq losetup mkfs.ext4 fusermount3; do
  command -v "$t" >/dev/null || { echo "run.sh: $t is missing (packaging/install-deps.sh)" >&2; exit 1; }
done

dir=${BENCH_DIR:-$(mktemp -d /var/tmp/rbdgw-bench-attach.XXXXXX)}
cluster=$dir/cluster
run_root=$dir/run
secrets=
if [ -z "${RBDGW_SECRET_DIR:-}" ]; then
  secrets=$(mktemp -d /dev/shm/rbdgw-bench-secrets.XXXXXX)
  export RBDGW_SECRET_DIR=$secrets
fi
export RBDGW_PLUGIN=$plugin RBDGW_FILTER=$filter RBDGW_FUSE_EXPORTER=$fuse
mapped=()
peer_nbdkit= peer_fuse= peer_loop=
cleanup() {
  set +e
  mountpoint -q "$dir/peer-mnt" 2>/dev/null && umount "$dir/peer-mnt"
  [ -n "$peer_loop" ] && losetup -d "$peer_loop"
  [ -n "$peer_fuse" ] && { fusermount3 -u "$dir/peer-fuse" 2>/dev/null; sleep 0.2; kill "$peer_fuse" 2>/dev/null; wait "$peer_fuse" 2>/dev/null; }
  [ -n "$peer_nbdkit" ] && { kill "$peer_nbdkit" 2>/dev/null; wait "$peer_nbdkit" 2>/dev/null; }
  for m in "${mapped[@]}"; do unmap_ "$m"; done
  "$src/tests/cluster/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1
  [ -n "$secrets" ] && rm -rf "$secrets"
  # Never through a mount left behind (a FUSE file whose gateway is gone
  # would hang rm): then say so and leave the directory.
  if grep -q " $dir/" /proc/self/mountinfo || losetup -a | grep -q "$dir/"; then
    echo "attach-bench: something under $dir is still mounted or looped; left in place" >&2
  else
    rm -rf --one-file-system "$dir"
  fi
}
# unmap_ SPEC: rbdgw unmap, retried: a mount namespace made meanwhile by
# someone else's `unshare -m` holds a copy of the filesystem, and with it
# the loop device, until it ends.
unmap_() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    "$rbdgw" --run-root "$run_root" unmap "$1" >/dev/null 2>"$dir/unmap.log" && return 0
    sleep 3
  done
  echo "attach-bench: unmap $1 failed: $(cat "$dir/unmap.log")" >&2
  return 1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { echo "attach-bench: $*" >&2; }
cmds=()
cmd() { cmds+=("$*"); }  # records a command for the report

# Lever wrappers (only when asked): nbdkit with extra arguments, rbdgw-fuse
# with extra options, losetup with another --direct-io.
mkdir -p "$dir/bin"
if [ -n "${BENCH_NBDKIT_ARGS:-}${BENCH_PLUGIN_ARGS:-}" ]; then
  cat >"$dir/bin/nbdkit-lever" <<SH
#!/bin/bash
# BENCH_NBDKIT_ARGS first, BENCH_PLUGIN_ARGS after image=
a=()
for x; do case \$x in image=*) a+=("\$x" ${BENCH_PLUGIN_ARGS:-}) ;; *) a+=("\$x") ;; esac; done
exec nbdkit ${BENCH_NBDKIT_ARGS:-} "\${a[@]}"
SH
  chmod +x "$dir/bin/nbdkit-lever"
  export NBDKIT=$dir/bin/nbdkit-lever
fi
if [ -n "${BENCH_FUSE_ARGS:-}" ]; then
  printf '#!/bin/sh\nexec %q %s "$@"\n' "$fuse" "$BENCH_FUSE_ARGS" >"$dir/bin/fuse-lever"
  chmod +x "$dir/bin/fuse-lever"
  export RBDGW_FUSE_EXPORTER=$dir/bin/fuse-lever
fi
if [ -n "${BENCH_LOOP_DIO:-}" ]; then
  real_losetup=$(command -v losetup)
  cat >"$dir/bin/losetup" <<SH
#!/bin/bash
a=()
for x; do case \$x in --direct-io=*) a+=(--direct-io=$BENCH_LOOP_DIO) ;; *) a+=("\$x") ;; esac; done
exec $real_losetup "\${a[@]}"
SH
  chmod +x "$dir/bin/losetup"
  export PATH=$dir/bin:$PATH
fi

log "starting a bluestore cluster in $cluster"
eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster" --bluestore)"
export CEPH_CONF
fsize=$(python3 -c "import sys; s = sys.argv[1]; m = {'M': 2**20, 'G': 2**30}[s[-1].upper()]; print(int(s[:-1]) * m // 2 // 2**20)" "$size")M

rbdgw_() { "$rbdgw" --run-root "$run_root" "$@"; }
stash() { jq -r "$2" "$run_root/$1/stash.json"; }
source "$src/bench/lib/cpu.sh"  # clk, cpu_ticks

# job COLUMN ROW PIDS FIO-ARGS...: one fio job; appends
# "COLUMN ROW VALUE CPU-PER-UNIT" to $dir/results.
rows=("w1m|write|1M|16" "r1m|read|1M|16" "r4k|randread|4k|32" "w4k|randwrite|4k|32")
job() {
  local col=$1 row=$2 pids=$3 rw bs depth
  shift 3
  for r in "${rows[@]}"; do
    IFS='|' read -r name rw bs depth <<<"$r"
    [ "$name" = "$row" ] && break
  done
  log "$col: $rw $bs qd$depth"
  local json=$dir/$col-$row.json
  local args=(fio --name="$col-$row" "$@" --rw="$rw" --bs="$bs" --iodepth="$depth" --direct=1
              --time_based --runtime="$runtime" --ramp_time="$ramp" --output-format=json)
  [ "$row" = w1m ] && cmd "${args[*]}"
  ( sleep "$ramp"; cpu_ticks $pids >"$dir/cpu0" ) &
  local sampler=$!
  "${args[@]}" --output="$json"
  wait "$sampler"
  local c1; c1=$(cpu_ticks $pids)
  python3 - "$json" "$rw" "$bs" "$(cat "$dir/cpu0")" "$c1" "$clk" "$col" "$row" "$pids" \
    >>"$dir/results" <<'PY'
import json, sys
js, rw, bs, c0, c1, clk, col, row, pids = sys.argv[1:]
j = json.load(open(js))["jobs"][0]
d = j["read" if "read" in rw else "write"]
cpu = (int(c1) - int(c0)) / int(clk) if pids.strip() else None
if bs == "1M":
    v = d["bw"] / 1024
    per = cpu / (d["io_bytes"] / 2**30) if cpu is not None and d["io_bytes"] else None
else:
    v = d["iops"]
    per = cpu / (d["total_ios"] / 1000) if cpu is not None and d["total_ios"] else None
print(col, row, f"{v:.0f}", "-" if per is None else f"{per:.3f}")
PY
  log "  $(tail -1 "$dir/results")"
}
all_rows() {  # COLUMN PIDS FIO-ARGS...
  local col=$1 pids=$2
  shift 2
  for r in "${rows[@]}"; do job "$col" "${r%%|*}" "$pids" "$@"; done
}
set_nr_requests() {  # LOOPDEV
  [ -n "${BENCH_LOOP_NR_REQUESTS:-}" ] || return 0
  echo "$BENCH_LOOP_NR_REQUESTS" >"/sys/block/$(basename "$1")/queue/nr_requests"
}
loop_info() {  # LOOPDEV: dio and queue settings, for the notes
  local b=/sys/block/$(basename "$1")
  echo "$(basename "$1"): dio=$(cat $b/loop/dio) nr_requests=$(cat $b/queue/nr_requests) max_sectors_kb=$(cat $b/queue/max_sectors_kb)"
}
notes=()

# --- librbd, export, loop: image bench, filled so that reads read data.
rbd create --size "$size" rbd/bench
cmd rbd create --size "$size" rbd/bench
log "filling rbd/bench ($size)"
fio --name=fill --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench \
  --rw=write --bs=4M --iodepth=16 --direct=1 --output=/dev/null
if want librbd; then
  all_rows librbd "" --ioengine=rbd --clientname=admin --pool=rbd --rbdname=bench
fi
if want export || want loop; then
  cmd rbdgw map rbd/bench --attach userspace
  dev=$(rbdgw_ map rbd/bench --attach userspace 2>"$dir/map.log") || { cat "$dir/map.log" >&2; exit 1; }
  mapped+=(rbd/bench)
  gw=$(stash rbd.bench .gateway.pid) fu=$(stash rbd.bench .fuse.pid) sock=$(stash rbd.bench .socket)
  notes+=("gateway: $(tr '\0' ' ' </proc/$gw/cmdline | sed 's/key=-[0-9]*/key=-FD/')")
  notes+=("exporter: $(tr '\0' ' ' </proc/$fu/cmdline)")
  set_nr_requests "$dev"
  notes+=("rbdgw's loop device $(loop_info "$dev")")
  want export && all_rows export "$gw" --ioengine=nbd "--uri=nbd+unix:///?socket=$sock"
  want loop && all_rows loop "$gw $fu" --ioengine=libaio "--filename=$dev"
  unmap_ rbd/bench && mapped=() || true
fi

# --- mounted (and the nbdfuse peer on the same image and file).
if want mounted || want nbdfuse; then
  rbd create --size "$size" rbd/mnt
  mkdir -p "$dir/mnt"
  cmd rbdgw map rbd/mnt --mount "$dir/mnt" --attach userspace
  rbdgw_ map rbd/mnt --mount "$dir/mnt" --attach userspace >/dev/null 2>"$dir/map.log" ||
    { cat "$dir/map.log" >&2; exit 1; }
  mapped+=(rbd/mnt)
  gw=$(stash rbd.mnt .gateway.pid) fu=$(stash rbd.mnt .fuse.pid)
  set_nr_requests "$(stash rbd.mnt .loop_device)"
  gw_argv=$(tr '\0' '\n' </proc/$gw/cmdline)
  log "laying out $dir/mnt/fio.dat ($fsize)"
  fio --name=layout --ioengine=libaio --direct=1 --filename="$dir/mnt/fio.dat" --size="$fsize" \
    --rw=write --bs=1M --iodepth=16 --output=/dev/null
  want mounted && all_rows mounted "$gw $fu" --ioengine=libaio "--filename=$dir/mnt/fio.dat" "--size=$fsize"
  unmap_ rbd/mnt && mapped=() || true
fi
if want nbdfuse; then
  # The gateway's own argv (durable-writes=true, exclusive=true), on another
  # socket, without the pidfile and the key fd (the keyring is in CEPH_CONF).
  peer_sock=$dir/peer.sock
  mapfile -t a <<<"$gw_argv"
  peer=(nbdkit --foreground --unix "$peer_sock")
  for ((i = 1; i < ${#a[@]}; i++)); do
    case ${a[i]} in
      --foreground|--log=stderr) ;;
      --unix|--pidfile) i=$((i + 1)) ;;
      key=*|node=*) ;;
      *) peer+=("${a[i]}") ;;
    esac
  done
  grep -q '^conf=' <<<"$gw_argv" || peer+=("conf=$CEPH_CONF")
  cmd "${peer[*]}"
  "${peer[@]}" 2>"$dir/peer-nbdkit.log" &
  peer_nbdkit=$!
  for _ in $(seq 300); do [ -S "$peer_sock" ] && break; sleep 0.1; done
  [ -S "$peer_sock" ] || { cat "$dir/peer-nbdkit.log" >&2; exit 1; }
  mkdir -p "$dir/peer-fuse" "$dir/peer-mnt"
  cmd nbdfuse "$dir/peer-fuse/disk" --unix "$peer_sock"
  nbdfuse -P "$dir/peer-fuse.pid" "$dir/peer-fuse/disk" --unix "$peer_sock" 2>"$dir/peer-fuse.log" &
  peer_fuse=$!
  for _ in $(seq 300); do [ -s "$dir/peer-fuse.pid" ] && break; sleep 0.1; done
  [ -s "$dir/peer-fuse.pid" ] || { cat "$dir/peer-fuse.log" >&2; exit 1; }
  # --direct-io=on as rbdgw's: nbdfuse's file is not direct_io, so with it
  # off the loop device reads through the FUSE file's page cache and the
  # peer's reads are memory copies after the first pass.
  peer_loop=$(losetup --find --show --direct-io=on "$dir/peer-fuse/disk")
  cmd losetup --find --show --direct-io=on "$dir/peer-fuse/disk"
  notes+=("nbdfuse's loop device $(loop_info "$peer_loop")")
  mount "$peer_loop" "$dir/peer-mnt"
  all_rows nbdfuse "$peer_nbdkit $peer_fuse" --ioengine=libaio "--filename=$dir/peer-mnt/fio.dat" "--size=$fsize"
  umount "$dir/peer-mnt"
  losetup -d "$peer_loop"; peer_loop=
  fusermount3 -u "$dir/peer-fuse"
  wait "$peer_fuse" 2>/dev/null || true; peer_fuse=
  kill "$peer_nbdkit"; wait "$peer_nbdkit" 2>/dev/null || true; peer_nbdkit=
  rm -f "$peer_sock"
fi

# --- encrypted mounted.
if want encrypted; then
  rbd create --size "$size" rbd/enc
  mkdir -p "$dir/enc"
  pass=$dir/pass
  (umask 077; head -c 24 /dev/urandom | base64 >"$pass")
  cmd rbdgw map rbd/enc --mount "$dir/enc" --attach userspace --passphrase-file "$pass" --pbkdf pbkdf2:1000
  rbdgw_ map rbd/enc --mount "$dir/enc" --attach userspace --passphrase-file "$pass" --pbkdf pbkdf2:1000 \
    >/dev/null 2>"$dir/map.log" || { cat "$dir/map.log" >&2; exit 1; }
  mapped+=(rbd/enc)
  gw=$(stash rbd.enc .gateway.pid) fu=$(stash rbd.enc .fuse.pid)
  set_nr_requests "$(stash rbd.enc .loop_device)"
  log "laying out $dir/enc/fio.dat ($fsize)"
  fio --name=layout --ioengine=libaio --direct=1 --filename="$dir/enc/fio.dat" --size="$fsize" \
    --rw=write --bs=1M --iodepth=16 --output=/dev/null
  all_rows encrypted "$gw $fu" --ioengine=libaio "--filename=$dir/enc/fio.dat" "--size=$fsize"
  unmap_ rbd/enc && mapped=() || true
fi

load=$(cut -d' ' -f1-3 /proc/loadavg)
python3 - "$dir/results" "$out" "$runtime" "$ramp" "$size" "$fsize" "$load" "$(nproc)" \
  "$(fio --version)" "$(date -u +%Y-%m-%dT%H:%MZ)" "${BENCH_NBDKIT_ARGS:-}" "${BENCH_PLUGIN_ARGS:-}" \
  "${BENCH_FUSE_ARGS:-}" "${BENCH_LOOP_DIO:-}" "${BENCH_LOOP_NR_REQUESTS:-}" <<'PY' >/dev/null
import sys
res, out, runtime, ramp, size, fsize, load, ncpu, fiov, when, nb, pl, fa, dio, nr = sys.argv[1:]
r = {}
for line in open(res):
    col, row, v, cpu = line.split()
    r[(col, row)] = (float(v), None if cpu == "-" else float(cpu))
cols = [c for c in ["librbd", "export", "loop", "mounted", "encrypted", "nbdfuse"] if any(k[0] == c for k in r)]
titles = {"librbd": "direct librbd (fio rbd)", "export": "NBD export (fio nbd)", "loop": "bare loop (no fs)",
          "mounted": "mounted (FUSE+loop+ext4)", "encrypted": "encrypted mounted (luks2)",
          "nbdfuse": "peer: nbdfuse+loop+ext4"}
rows = [("w1m", "1M write qd16", "MiB/s", "s/GiB"), ("r1m", "1M read qd16", "MiB/s", "s/GiB"),
        ("r4k", "4K randread qd32", "IOPS", "s/kIO"), ("w4k", "4K randwrite qd32", "IOPS", "s/kIO")]
o = ["| workload | " + " | ".join(titles[c] for c in cols) + " |", "|---|" + "---:|" * len(cols)]
for key, title, unit, cu in rows:
    cells = []
    for c in cols:
        if (c, key) not in r:
            cells.append("")
            continue
        v, cpu = r[(c, key)]
        cells.append(f"{v:.0f} {unit}" + ("" if cpu is None else f" ({cpu:.2f} {cu})"))
    o.append(f"| {title} | " + " | ".join(cells) + " |")
ratios = [("mounted", "export", "mounted / export", 0.7), ("loop", "export", "loop / export", 0.9),
          ("encrypted", "export", "encrypted / export", 0.6), ("export", "librbd", "export / librbd", None),
          ("nbdfuse", "export", "nbdfuse peer / export", None), ("mounted", "nbdfuse", "mounted / nbdfuse peer", None)]
ratios = [x for x in ratios if x[0] in cols and x[1] in cols]
if ratios:
    o += ["", "| workload | " + " | ".join(f"{t} (goal)" if g else t for _, _, t, g in ratios) + " |",
          "|---|" + "---:|" * len(ratios)]
    for key, title, unit, cu in rows:
        cells = []
        for a, b, t, g in ratios:
            if (a, key) in r and (b, key) in r and r[(b, key)][0]:
                x = r[(a, key)][0] / r[(b, key)][0]
                goal = g if g else (0.9 if key.endswith("1m") else 0.8) if t == "export / librbd" else None
                mark = "" if goal is None else (" ok" if x >= goal else f" (< {goal})")
                cells.append(f"{x:.2f}x{mark}")
            else:
                cells.append("")
        o.append(f"| {title} | " + " | ".join(cells) + " |")
lev = ", ".join(x for x in [nb and f"nbdkit {nb}", pl and f"plugin {pl}", fa and f"rbdgw-fuse {fa}",
                             dio and f"loop --direct-io={dio}", nr and f"loop nr_requests={nr}"] if x)
o += ["", f"One-node bluestore cluster on 127.0.0.1 ({ncpu} cores), images {size} (mounted: ext4, a {fsize} file), "
      f"{fiov}, {runtime} s per job after {ramp} s ramp, one job each; CPU = gateway + exporter processes "
      f"(core-seconds per GiB, or per 1000 I/Os = cores per 1000 IOPS). {when}, load average at the end {load}."
      + (f" Levers: {lev}." if lev else " Settings as shipped.")]
open(out, "w").write("\n".join(o) + "\n")
PY
{
  cat "$out"
  echo
  echo "Commands (fio shown once per column; the other rows differ in --rw/--bs/--iodepth):"
  for c in "${cmds[@]}"; do echo "    $c"; done
  for n in "${notes[@]}"; do echo "    # $n"; done
} | tee "$out.tmp"
mv "$out.tmp" "$out"
