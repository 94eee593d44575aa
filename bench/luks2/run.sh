#!/usr/bin/env bash
# Benchmark of the luks2 filter: one command, one run.
#
#   bench/luks2/run.sh OUT.md [--runtime SECS] [--rounds N] [--no-rbd]
#
# fio's nbd engine (libnbd) against nbdkit on a unix socket; per variant:
# 4M sequential write and read at iodepth 16, then 4K random read at
# iodepth 32 (in that order, so reads read written data). The variants of a
# plugin take turns for N rounds (default 3) and the table shows medians, so
# that load from other processes hits all of them alike.
#  - memory: plain `memory` plugin; the luks2 and luks filters over the
#    `data` plugin (the memory plugin's sparse RAM allocator, preloaded with
#    a cryptsetup-made header: LUKS2 4096-byte sectors / LUKS1, pbkdf2 at
#    low cost) since `memory` cannot start with content.
#  - rbd: a throwaway one-node bluestore cluster (tests/cluster/
#    ceph-cluster.sh); plain image vs `--filter=luks2` vs librbd's own
#    encryption (the rbd plugin's encryption-format=luks2), the two
#    encrypted variants on the same imported cryptsetup LUKS2 image.
# Writes a markdown table with ratios to plain on the same plugin to OUT.md.
# Environment: RBDGW_BUILD_DIR (default: build), or RBDGW_FILTER/RBDGW_PLUGIN.
set -euo pipefail

out=${1:?usage: run.sh OUT.md [--runtime SECS] [--rounds N] [--no-rbd]}
shift
runtime=10
rounds=3
with_rbd=1
while [ $# -gt 0 ]; do
  case "$1" in
    --runtime) runtime=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --no-rbd) with_rbd=0; shift ;;
    *) echo "run.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done

src=$(cd "$(dirname "$0")/../.." && pwd)
build=${RBDGW_BUILD_DIR:-$src/build}
filter=${RBDGW_FILTER:-$build/nbdkit-plugin/luks2/nbdkit-luks2-filter.so}
plugin=${RBDGW_PLUGIN:-$build/nbdkit-plugin/rbd/nbdkit-rbd-plugin.so}
for f in "$filter" $([ $with_rbd = 1 ] && echo "$plugin"); do
  [ -f "$f" ] || { echo "run.sh: $f not built" >&2; exit 1; }
done
for t in nbdkit fio cryptsetup python3; do
  command -v $t >/dev/null || { echo "run.sh: $t is missing" >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/rbdgw-bench-luks2.XXXXXX)
chmod 0700 "$tmp"
nbdkit_pid=
cluster=
cleanup() {
  [ -n "$nbdkit_pid" ] && kill "$nbdkit_pid" 2>/dev/null && wait "$nbdkit_pid" 2>/dev/null
  [ -n "$cluster" ] && "$src/tests/cluster/ceph-cluster.sh" stop "$cluster" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

size=$((1 << 30))
key="$tmp/passphrase"
head -c 32 /dev/urandom | base64 -w0 >"$key"
# LUKS headers made by cryptsetup (pbkdf2, low cost), cut to their header area.
make_header() {  # make_header FILE TYPE
  truncate -s 32M "$1.vol"
  cryptsetup luksFormat -q --type "$2" --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    $([ "$2" = luks2 ] && echo --sector-size 4096) --key-file "$key" "$1.vol"
  local off
  off=$(cryptsetup luksDump "$1.vol" | awk '/^Payload offset:/ {print $3 * 512} /offset: .* \[bytes\]/ {print $2; exit}' | head -1)
  head -c "$off" "$1.vol" >"$1"
  rm -f "$1.vol"
}

# serve ARGS...: nbdkit in the background on $tmp/sock; sets $uri.
serve() {
  rm -f "$tmp/sock"
  nbdkit -f -U "$tmp/sock" "$@" 2>>"$tmp/nbdkit.log" &
  nbdkit_pid=$!
  local i
  for ((i = 0; i < 300; i++)); do [ -S "$tmp/sock" ] && break; sleep 0.1; done
  uri="nbd+unix:///?socket=$tmp/sock"
  nbdinfo --size "$uri" >/dev/null  # also unlocks an encrypted volume
}
stop() {
  kill "$nbdkit_pid"
  wait "$nbdkit_pid" 2>/dev/null || true
  nbdkit_pid=
}

# nbdkit's CPU time so far (user + system, in clock ticks).
cpu_ticks() { awk '{print $14 + $15}' "/proc/$nbdkit_pid/stat"; }

# bench NAME: fio's three jobs against $uri; appends "NAME W R IOPS WCPU
# RCPU": MiB/s, IOPS, and nbdkit's CPU milliseconds per GiB moved by the 4M
# jobs (ramp included, at the job's mean rate), which load elsewhere on the
# machine disturbs far less than throughput.
bench() {
  local name=$1 job rw bs qd t0 vals=() cpu=()
  for job in write:4M:16 read:4M:16 randread:4k:32; do
    IFS=: read -r rw bs qd <<<"$job"
    t0=$(cpu_ticks)
    fio --name="$name-$rw" --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" \
      --iodepth="$qd" --size="$bench_size" --time_based --runtime="$runtime" --ramp_time=1 \
      --output-format=json --output="$tmp/fio.json" >>"$tmp/fio.log" 2>&1
    read -r v c < <(python3 - "$tmp/fio.json" "$rw" $(($(cpu_ticks) - t0)) \
      "$(getconf CLK_TCK)" "$runtime" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
rw, ticks, hz, secs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]) + 1
d = j["write" if rw == "write" else "read"]
mib_s = d["bw"] / 1024
cpu_ms_per_gib = ticks * 1000 / hz / (mib_s * secs / 1024) if mib_s else 0
print(round(d["iops"]) if rw == "randread" else round(mib_s), round(cpu_ms_per_gib))
EOF
)
    vals+=("$v")
    [ "$rw" = randread ] || cpu+=("$c")
  done
  vals+=("${cpu[@]}")
  echo "$name ${vals[*]}" | tee -a "$tmp/results"
}

bench_size=$size
echo "== memory plugin (runtime ${runtime}s per job)"
make_header "$tmp/luks2.hdr" luks2
make_header "$tmp/luks1.hdr" luks1
for ((r = 1; r <= rounds; r++)); do
  serve memory "$size"; bench "memory plain"; stop
  serve --filter="$filter" data data="<$tmp/luks2.hdr" size="$size" passphrase=+"$key"
  bench "memory luks2-filter"; stop
  serve --filter=luks data data="<$tmp/luks1.hdr" size="$size" passphrase=+"$key"
  bench "memory nbdkit-luks"; stop
done

if [ $with_rbd = 1 ]; then
  echo "== rbd plugin (one-node bluestore cluster)"
  cluster="$tmp/cluster"
  eval "$("$src/tests/cluster/ceph-cluster.sh" start "$cluster" --bluestore)"
  rbd create --size "$((size >> 20))M" rbd/plain
  truncate -s "$size" "$tmp/enc.img"
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --sector-size 4096 --key-file "$key" "$tmp/enc.img"
  rbd import --no-progress "$tmp/enc.img" rbd/enc
  rm -f "$tmp/enc.img"
  for ((r = 1; r <= rounds; r++)); do
    serve "$plugin" rbd/plain conf="$CEPH_CONF"; bench "rbd plain"; stop
    serve --filter="$filter" "$plugin" rbd/enc conf="$CEPH_CONF" passphrase=+"$key"
    bench "rbd luks2-filter"; stop
    serve "$plugin" rbd/enc conf="$CEPH_CONF" encryption-format=luks2 \
      encryption-passphrase=+"$key"
    bench "rbd librbd-luks2"; stop
  done
fi

python3 - "$tmp/results" "$out" "$runtime" "$rounds" "$(uptime)" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    plugin, variant, *v = line.split()
    runs.setdefault((plugin, variant), []).append([int(x) for x in v])
lines = ["# luks2 filter benchmark", "",
         f"fio nbd engine over a unix socket, {sys.argv[3]} s per job, median of "
         f"{sys.argv[4]} rounds; 4M sequential write/read at iodepth 16, 4K random read "
         "at iodepth 32. Ratios are to plain on the same plugin.",
         f"Load at the end: {sys.argv[5].strip()}", "",
         "CPU: nbdkit's CPU milliseconds per GiB of 4M writes/reads (lower is better).", "",
         "| plugin | variant | 4M write MiB/s | x | 4M read MiB/s | x | 4K randread IOPS | x "
         "| CPU ms/GiB write | x | CPU ms/GiB read | x |",
         "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
base = {}
for (plugin, variant), rs in runs.items():
    med = [statistics.median(col) for col in zip(*rs)]
    base.setdefault(plugin, med)  # plain comes first
    cells = []
    for x, b in zip(med, base[plugin]):
        cells += [f"{x:.0f}", f"{x / b:.2f}" if b else "-"]
    lines.append(f"| {plugin} | {variant} | " + " | ".join(cells) + " |")
open(sys.argv[2], "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
