#!/usr/bin/env bash
# ceph-cluster.sh - start/stop a throwaway one-node Ceph cluster on 127.0.0.1.
#
# Usage:
#   ceph-cluster.sh start DIR [--port N] [--bluestore] [--bluestore-size SIZE]
#                             [--memstore-size SIZE]
#   ceph-cluster.sh stop DIR
#   ceph-cluster.sh status DIR
#   ceph-cluster.sh kill-osd DIR
#   ceph-cluster.sh start-osd DIR
#   ceph-cluster.sh --help
#
# start      Create DIR (it must not exist or be empty) and bring up 1 mon
#            (id a), 1 mgr (id x) and 1 osd (id 0) with cephx on. Every data,
#            run, pid, admin-socket, log and crash path lives under DIR;
#            nothing touches /etc/ceph, /var/run/ceph or /var/log/ceph.
#            Creates pool `rbd` (pg_num 8), runs `rbd pool init`, and waits
#            until HEALTH_OK, all PGs active+clean and `rbd ls` works.
#            On success prints exactly one line to stdout:
#                export CEPH_CONF=DIR/ceph.conf
#            so callers can:  eval "$(ceph-cluster.sh start DIR)"
#            (on failure stdout is `false`, so that eval fails too).
#            Progress goes to stderr. On failure the daemons are stopped, the
#            tails of the logs are printed, DIR is removed and the exit code
#            is non-zero (set CEPH_CLUSTER_KEEP_ON_FAILURE=1 to keep DIR).
#   --port N             mon msgr2 port N, msgr1 port N+1 (default: a free
#                        pair is picked, so clusters can run side by side).
#   --bluestore          bluestore on a sparse file DIR/osd.0/block (data
#                        survives kill-osd/start-osd). Default: memstore
#                        (data in RAM, lost when the osd is killed).
#   --bluestore-size S   size of the sparse block file (default 10G).
#   --memstore-size S    capacity memstore reports (default 2G; RAM is only
#                        used for data actually written, ~3.5x of it).
#   Sizes accept a plain byte count or a K/M/G/T suffix (powers of 1024).
#
# stop       Kill all daemons of the cluster in DIR (SIGTERM, SIGKILL after a
#            few seconds) and remove DIR. Exits 0 if DIR is missing or the
#            cluster is already stopped. Refuses to delete a non-empty DIR
#            that was not created by this script.
# status     Print `ceph -s`; exit 0 if the cluster answers, 1 otherwise.
# kill-osd   kill -9 the osd.
# start-osd  Start the osd again and wait until the PGs are active+clean.
#
# Environment:
#   CEPH_CLUSTER_TIMEOUT          seconds to wait for readiness (default 60)
#   CEPH_CLUSTER_KEEP_ON_FAILURE  1 = keep DIR (logs) when start fails
#   CEPH_CLUSTER_STOP_GRACE       seconds between SIGTERM and SIGKILL (default 3)
#   CEPH_CLUSTER_CLI_TIMEOUT      cap in seconds on each `ceph` CLI call (default
#                                 30; the kernel-VM tests raise it: under qemu
#                                 TCG the python CLI alone can take ~30 s)
#
# Layout of DIR: ceph.conf, ceph.client.admin.keyring (0600), mon.a/, mgr.x/,
# osd.0/, run/ (pid files, admin sockets), log/, crash/, mgr-modules/
# (symlinks to the few mgr python modules that are loaded).
set -euo pipefail

# A caller's environment must not leak into this cluster's tools (e.g. a
# CEPH_CONF exported for another cluster started with this script).
unset CEPH_CONF CEPH_ARGS

PROG=ceph-cluster
MON_ID=a
MGR_ID=x
OSD_ID=0
MARKER=.ceph-cluster-sh
TIMEOUT=${CEPH_CLUSTER_TIMEOUT:-60}
STOP_GRACE=${CEPH_CLUSTER_STOP_GRACE:-3}
CLI_TIMEOUT=${CEPH_CLUSTER_CLI_TIMEOUT:-30}

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# Seconds since the epoch with sub-second precision, for the timings.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Parse "10G", "512M", "1073741824" into bytes.
parse_size() {
  local s=$1 n mult=1
  case "$s" in
    *[kK]) n=${s%?}; mult=1024 ;;
    *[mM]) n=${s%?}; mult=$((1024 * 1024)) ;;
    *[gG]) n=${s%?}; mult=$((1024 * 1024 * 1024)) ;;
    *[tT]) n=${s%?}; mult=$((1024 * 1024 * 1024 * 1024)) ;;
    *) n=$s ;;
  esac
  [[ "$n" =~ ^[0-9]+$ ]] || die "invalid size '$s'"
  echo $((n * mult))
}

# Make DIR absolute without requiring it to exist.
abs_dir() {
  local d=$1
  [ -n "$d" ] || die "DIR must not be empty"
  case "$d" in
    /*) ;;
    *) d="$PWD/$d" ;;
  esac
  # Strip trailing slashes (but keep "/").
  while [ "${#d}" -gt 1 ] && [ "${d%/}" != "$d" ]; do d=${d%/}; done
  [ "$d" != / ] || die "refusing to use / as cluster directory"
  if [[ "$d" =~ [[:space:]\$\;\#\'\"\\] ]]; then
    die "DIR must not contain whitespace or any of \$ ; # ' \" \\ ('$d')"
  fi
  printf '%s\n' "$d"
}

# Seconds left until $DEADLINE (at least 5, at most $CLI_TIMEOUT): the bound for one
# command during start/start-osd.
time_left() {
  local left=$CLI_TIMEOUT
  if [ -n "${DEADLINE:-}" ]; then left=$((DEADLINE - $(date +%s))); fi
  [ "$left" -le "$CLI_TIMEOUT" ] || left=$CLI_TIMEOUT
  [ "$left" -ge 5 ] || left=5
  echo "$left"
}

ceph_cli() {
  # All CLI calls are bounded; the mon may be down.
  local t
  t=$(time_left)
  timeout "$t" ceph -c "$DIR/ceph.conf" --connect-timeout "$t" "$@"
}

# Pids of the daemons of the cluster in $DIR: every ceph-mon/ceph-mgr/ceph-osd
# whose command line names $DIR/ceph.conf (this script always starts them with
# `-c $DIR/ceph.conf`). This is a superset of the pids in $DIR/run/*.pid and
# also covers a daemon whose pid file is missing, while a stale pid file (pid
# reused after a kill -9) can never make us kill an unrelated process.
# Zombies have an empty cmdline, so exited daemons are never listed.
cluster_pids() {
  local conf="$DIR/ceph.conf" d p comm arg
  for d in /proc/[0-9]*; do
    p=${d#/proc/}
    comm=""
    read -r comm 2>/dev/null < "$d/comm" || continue
    case "$comm" in
      ceph-mon|ceph-mgr|ceph-osd) ;;
      *) continue ;;
    esac
    while IFS= read -r -d '' arg; do
      if [ "$arg" = "$conf" ]; then echo "$p"; break; fi
    done 2>/dev/null < "$d/cmdline" || true
  done
}

# Pid of one daemon ("mon.a", "osd.0"), via its command line, or empty.
daemon_pid() {
  local type=${1%%.*} id=${1#*.} p comm cmd
  for p in $(cluster_pids); do
    comm=""
    read -r comm 2>/dev/null < "/proc/$p/comm" || continue
    [ "$comm" = "ceph-$type" ] || continue
    cmd=$(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) || continue
    if [[ " $cmd " == *" -i $id "* ]]; then echo "$p"; return 0; fi
  done
  return 0
}

# True if pid $1 exists and is not a zombie.
alive() {
  local stat
  read -r stat 2>/dev/null < "/proc/$1/stat" || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

# The subset of the given pids that are still alive.
still_alive() {
  local p
  for p in "$@"; do
    if alive "$p"; then echo "$p"; fi
  done
}

# Send SIGTERM to the given pids, wait up to STOP_GRACE seconds (the daemons
# need ~2 s to exit), then SIGKILL and wait.
kill_and_wait() {
  local pids=("$@") i
  [ "${#pids[@]}" -gt 0 ] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE * 10; i++)); do
    mapfile -t pids < <(still_alive "${pids[@]}")
    [ "${#pids[@]}" -gt 0 ] || return 0
    sleep 0.1
  done
  log "daemons did not exit after SIGTERM, sending SIGKILL to ${pids[*]}"
  kill -KILL "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    mapfile -t pids < <(still_alive "${pids[@]}")
    [ "${#pids[@]}" -gt 0 ] || return 0
    sleep 0.1
  done
  log "warning: processes ${pids[*]} still present after SIGKILL"
  return 1
}

# Wait (up to 5 s, never failing) until the given pids are gone from /proc
# entirely: the daemons are orphans, so their zombies are reaped by pid 1,
# and a `pgrep ceph` right after `stop` should not show them as <defunct>.
wait_reaped() {
  local p i left
  for ((i = 0; i < 50; i++)); do
    left=0
    for p in "$@"; do
      if [ -e "/proc/$p" ]; then left=1; break; fi
    done
    [ "$left" = 1 ] || return 0
    sleep 0.1
  done
  return 0
}

stop_daemons() {
  local pids all=()
  mapfile -t pids < <(cluster_pids)
  if [ "${#pids[@]}" -gt 0 ]; then
    log "stopping daemons (pids ${pids[*]})"
    all+=("${pids[@]}")
    kill_and_wait "${pids[@]}" || true
  fi
  # A daemon may have forked in between; one more sweep, straight to SIGKILL.
  mapfile -t pids < <(cluster_pids)
  if [ "${#pids[@]}" -gt 0 ]; then
    all+=("${pids[@]}")
    kill -KILL "${pids[@]}" 2>/dev/null || true
    kill_and_wait "${pids[@]}" || true
  fi
  [ "${#all[@]}" -eq 0 ] || wait_reaped "${all[@]}"
}

remove_dir() {
  [ -e "$DIR" ] || return 0
  if [ ! -e "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR" 2>/dev/null)" ]; then
    die "$DIR was not created by $PROG (no $MARKER); not removing it"
  fi
  rm -rf -- "$DIR"
}

# On failure: the last errors of each daemon log and the tail of the
# bootstrap/stdout files (all of DIR/log is kept with KEEP_ON_FAILURE=1).
dump_logs() {
  local f
  for f in "$DIR"/log/*.log; do
    [ -s "$f" ] || continue
    [ "${f##*/}" != cluster.log ] || continue
    printf '%s: ---- last errors in %s ----\n' "$PROG" "$f" >&2
    grep -E '^[0-9T:.+-]+ [0-9a-f]+ -1 |rror|fail' "$f" | grep -v 'rocksdb:' \
      | tail -n 8 >&2 || true
  done
  for f in "$DIR"/log/*.out; do
    [ -s "$f" ] || continue
    printf '%s: ---- last lines of %s ----\n' "$PROG" "$f" >&2
    grep -v '^$' "$f" | tail -n 8 >&2 || true
  done
}

# Called on any failure during start.
fail_start() {
  local msg=$1
  printf '%s: error: %s\n' "$PROG" "$msg" >&2
  if [ -d "$DIR" ]; then
    if [ -n "$(daemon_pid "mon.$MON_ID")" ]; then
      ceph_cli --connect-timeout 5 -s >&2 2>&1 </dev/null || true
    fi
    dump_logs
  fi
  stop_daemons
  if [ "${CEPH_CLUSTER_KEEP_ON_FAILURE:-0}" = 1 ]; then
    log "keeping $DIR for inspection (stop it with: $0 stop $DIR)"
  else
    remove_dir || true
  fi
  exit 1
}

# Ports in use (listening or bound) on this host.
used_ports() {
  ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -un
}

pick_port_pair() {
  local used p i
  used=$(used_ports)
  for i in $(seq 1 200); do
    # Even ports in [20000, 60000): unlikely to collide with ephemeral ports
    # (32768-60999 by default is ephemeral, so prefer 20000-32767 first).
    if [ "$i" -le 150 ]; then
      p=$((20000 + (RANDOM % 6380) * 2))
    else
      p=$((40000 + (RANDOM % 10000) * 2))
    fi
    if ! grep -qx -e "$p" -e "$((p + 1))" <<<"$used"; then
      echo "$p"
      return 0
    fi
  done
  die "could not find a free port pair"
}

# memstore's space accounting can go below zero (seen after
# e2e.cli.shared-gateway-kill9-twenty-filesystems-recover, in about half the
# runs: `ceph osd df` then says 16 EiB used of 2 GiB with 58 KiB of objects).
# The OSD takes that as full and every client write then waits forever, so
# every later test hung (stop 24). On memstore the full ratios are set out of
# reach (the mon and the OSD read a ratio above 1 as a percentage: 1e15 is
# 1e13, above the ~8.6e9 such a wrapped counter gives); memstore holds its
# data in RAM, so it never runs out of "device" space anyway. Bluestore keeps
# Ceph's defaults.
full_ratio_conf() {
  [ "$1" = memstore ] || return 0
  printf '%s\n' "mon_osd_nearfull_ratio = 1e15" "mon_osd_backfillfull_ratio = 1e15" \
    "mon_osd_full_ratio = 1e15" "osd_failsafe_full_ratio = 1e15"
}

write_conf() {
  local port=$1 fsid=$2 objectstore=$3 bs_bytes=$4 ms_bytes=$5
  local v1=$((port + 1))
  cat > "$DIR/ceph.conf" <<EOF
# Throwaway one-node test cluster written by tests/cluster/ceph-cluster.sh.
[global]
fsid = $fsid
mon_host = [v2:127.0.0.1:$port,v1:127.0.0.1:$v1]
mon_initial_members = $MON_ID
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv4 = true
ms_bind_ipv6 = false
ms_bind_retry_count = 2
ms_bind_retry_delay = 1
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
# Every path under $DIR; never /var/run/ceph, /var/log/ceph, /etc/ceph.
# (pid_file, admin_socket and log_file are set per daemon type below, so
# clients keep their defaults: no admin socket, no log file.)
run_dir = $DIR/run
crash_dir = $DIR/crash
mon_data = $DIR/mon.\$id
mgr_data = $DIR/mgr.\$id
osd_data = $DIR/osd.\$id
mon_cluster_log_file = $DIR/log/cluster.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_mgr_mkfs_grace = 600
mon_mgr_digest_period = 1
# Commit mon map updates quickly (default 1 s between proposals): several
# successive map changes (osd new, pool create, crush, boot) are on the
# critical path of start-up.
paxos_propose_interval = 0.1
mgr_stats_period = 1
mgr_initial_modules = iostat
# Only the always-on modules (+ iostat): the mgr imports every module found in
# its module path, and importing all of /usr/share/ceph/mgr takes ~9 s here.
mgr_module_path = $DIR/mgr-modules
osd_memory_target = 939524096
# An osd stopped together with the mon would wait 5 s for the mon's ack.
osd_mon_shutdown_timeout = 1
$(full_ratio_conf "$objectstore")

[mon]
keyring = $DIR/mon.\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok

[mgr]
keyring = $DIR/mgr.\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok

[osd]
keyring = $DIR/osd.\$id/keyring
log_file = $DIR/log/\$name.log
pid_file = $DIR/run/\$name.pid
admin_socket = $DIR/run/\$name.asok
osd_objectstore = $objectstore
memstore_device_bytes = $ms_bytes
bluestore_block_size = $bs_bytes
bluestore_block_create = true
bluestore_fsck_on_mkfs = false

[client]
keyring = $DIR/ceph.client.admin.keyring
EOF
}

# A mgr module directory with only what this cluster needs: the modules the
# mgr considers always-on (a missing one is a health error), iostat, and the
# shared files they import. Symlinks into the system module directory.
MGR_MODULES="balancer crash devicehealth orchestrator pg_autoscaler progress
  rbd_support status telemetry volumes iostat"
link_mgr_modules() {
  local src=/usr/share/ceph/mgr m f
  [ -d "$src" ] || die "$src not found (is ceph-mgr installed?)"
  mkdir -p "$DIR/mgr-modules"
  for m in $MGR_MODULES; do
    [ -e "$src/$m" ] || die "mgr module $src/$m not found"
    ln -s "$src/$m" "$DIR/mgr-modules/$m" || die "cannot link $src/$m"
  done
  for f in "$src"/*.py; do
    [ -e "$f" ] || continue
    ln -s "$f" "$DIR/mgr-modules/${f##*/}"
  done
}

# ceph -s as JSON -> "ok" when HEALTH_OK, mgr available, osd up+in and all
# (>= 8) PGs active+clean; otherwise a short description of what is missing.
READY_JQ='
  def pgs: (.pgmap.pgs_by_state // []);
  def nclean: ([pgs[] | select(.state_name == "active+clean") | .count] | add // 0);
  if .health.status != "HEALTH_OK" then
    "health \(.health.status): \([.health.checks // {} | to_entries[] | .value.summary.message] | join("; "))"
  elif (.mgrmap.available | not) then "mgr not available"
  elif .osdmap.num_up_osds != 1 or .osdmap.num_in_osds != 1 then
    "osds up \(.osdmap.num_up_osds) in \(.osdmap.num_in_osds)"
  elif .pgmap.num_pgs < 8 or nclean != .pgmap.num_pgs then
    "pgs \(nclean)/\(.pgmap.num_pgs) active+clean"
  else "ok" end'

# Wait until the cluster is ready (see READY_JQ) or the deadline passes.
wait_ready() {
  local deadline=$1 state="no answer" shown="" js
  while :; do
    if js=$(ceph_cli -s -f json 2>/dev/null </dev/null); then
      state=$(jq -r "$READY_JQ" <<<"$js" 2>/dev/null || echo "unparsable status")
      [ "$state" != ok ] || return 0
    fi
    if [ "$state" != "$shown" ]; then
      log "  ... $state"
      shown=$state
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      LAST_STATE=$state
      return 1
    fi
    sleep 0.5
  done
}

# Start a daemon (they daemonize themselves; the parent returns once the
# child is initialised). stdout/stderr of the early startup go to log/*.out.
start_daemon() {
  local type=$1 id=$2
  "ceph-$type" -c "$DIR/ceph.conf" -i "$id" \
    >>"$DIR/log/$type.$id.out" 2>&1 </dev/null 3>&- 4>&-
}

start_osd_daemon() {
  start_daemon osd "$OSD_ID"
}

cmd_start() {
  local port="" auto_port=1 objectstore=memstore bs_size=10G ms_size=2G
  while [ $# -gt 0 ]; do
    case "$1" in
      --port) [ $# -ge 2 ] || die "--port needs a value"; port=$2; auto_port=0; shift 2 ;;
      --port=*) port=${1#--port=}; auto_port=0; shift ;;
      --bluestore) objectstore=bluestore; shift ;;
      --bluestore-size) [ $# -ge 2 ] || die "--bluestore-size needs a value"; bs_size=$2; shift 2 ;;
      --bluestore-size=*) bs_size=${1#--bluestore-size=}; shift ;;
      --memstore-size) [ $# -ge 2 ] || die "--memstore-size needs a value"; ms_size=$2; shift 2 ;;
      --memstore-size=*) ms_size=${1#--memstore-size=}; shift ;;
      -h|--help) usage; exit 0 ;;
      *) die "start: unknown option '$1' (see --help)" ;;
    esac
  done
  if [ "$auto_port" = 0 ]; then
    if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65534 ]; then
      die "invalid --port '$port'"
    fi
  fi
  local bs_bytes ms_bytes
  bs_bytes=$(parse_size "$bs_size")
  ms_bytes=$(parse_size "$ms_size")
  [ "$bs_bytes" -ge $((1024 * 1024 * 1024)) ] || die "--bluestore-size must be at least 1G"
  [ "$ms_bytes" -ge $((256 * 1024 * 1024)) ] || die "--memstore-size must be at least 256M"
  local tool
  for tool in ceph ceph-mon ceph-mgr ceph-osd ceph-authtool monmaptool rbd jq ss timeout uuidgen; do
    command -v "$tool" >/dev/null || die "'$tool' not found (run packaging/install-deps.sh)"
  done

  if [ -e "$DIR" ]; then
    [ -d "$DIR" ] || die "$DIR exists and is not a directory"
    [ -z "$(ls -A "$DIR")" ] || die "$DIR exists and is not empty"
  fi
  # Unix socket paths are limited to 107 bytes.
  if [ $((${#DIR} + 20)) -gt 107 ]; then
    die "DIR path too long for admin sockets ($DIR); use a shorter path"
  fi

  if [ "$auto_port" = 0 ] && grep -qx -e "$port" -e "$((port + 1))" <<<"$(used_ports)"; then
    die "port $port or $((port + 1)) on this host is already in use"
  fi

  local attempt
  for attempt in 1 2 3; do
    [ "$auto_port" = 0 ] || port=$(pick_port_pair)
    # Not called in a condition, so that errexit stays in force inside.
    start_attempt "$port" "$objectstore" "$bs_bytes" "$ms_bytes"
    if [ "$ATTEMPT" = ready ]; then
      printf 'export CEPH_CONF=%s/ceph.conf\n' "$DIR"
      return 0
    fi
    # The mon could not bind its port (taken since we looked): another pair.
    if [ "$auto_port" = 1 ] && [ "$attempt" -lt 3 ]; then
      log "port $port or $((port + 1)) is taken, retrying with another port"
      stop_daemons
      find "$DIR" -mindepth 1 -delete
      continue
    fi
    fail_start "mon could not bind 127.0.0.1:$port/$((port + 1)) (port in use?)"
  done
}

# One attempt to bring the cluster up. Sets ATTEMPT=ready on success,
# ATTEMPT="port-in-use" if the mon could not bind; any other failure ends the
# script through fail_start.
start_attempt() {
  local port=$1 objectstore=$2 bs_bytes=$3 ms_bytes=$4
  ATTEMPT=failed
  local t0 deadline fsid osd_uuid
  t0=$(now)
  deadline=$(( $(date +%s) + TIMEOUT ))
  DEADLINE=$deadline

  mkdir -p "$DIR"
  : > "$DIR/$MARKER"
  mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash" "$DIR/mon.$MON_ID" \
    "$DIR/mgr.$MGR_ID" "$DIR/osd.$OSD_ID"
  chmod 0700 "$DIR"
  fsid=$(uuidgen)
  osd_uuid=$(uuidgen)
  write_conf "$port" "$fsid" "$objectstore" "$bs_bytes" "$ms_bytes"
  link_mgr_modules

  # Keys: the mon keyring holds mon., client.admin, mgr.x and osd.0 with their
  # caps, so mon --mkfs registers them all and no `ceph auth` calls are needed.
  local tmp="$DIR/run/bootstrap"
  mkdir -p "$tmp"
  {
    ceph-authtool -c /dev/null --create-keyring "$tmp/mon.keyring" --gen-key -n mon. \
      --cap mon 'allow *'
    ceph-authtool -c /dev/null --create-keyring "$DIR/ceph.client.admin.keyring" --gen-key \
      -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
      --cap mgr 'allow *' --cap mds 'allow *'
    ceph-authtool -c /dev/null --create-keyring "$DIR/mgr.$MGR_ID/keyring" --gen-key \
      -n "mgr.$MGR_ID" --cap mon 'allow profile mgr' --cap osd 'allow *' \
      --cap mds 'allow *'
    ceph-authtool -c /dev/null --create-keyring "$DIR/osd.$OSD_ID/keyring" --gen-key \
      -n "osd.$OSD_ID" --cap mon 'allow profile osd' \
      --cap mgr 'allow profile osd' --cap osd 'allow *'
    ceph-authtool -c /dev/null "$tmp/mon.keyring" --import-keyring "$DIR/ceph.client.admin.keyring"
    ceph-authtool -c /dev/null "$tmp/mon.keyring" --import-keyring "$DIR/mgr.$MGR_ID/keyring"
    ceph-authtool -c /dev/null "$tmp/mon.keyring" --import-keyring "$DIR/osd.$OSD_ID/keyring"
  } >"$DIR/log/bootstrap.out" 2>&1 || fail_start "ceph-authtool failed"
  chmod 0600 "$DIR/ceph.client.admin.keyring" "$DIR/mgr.$MGR_ID/keyring" \
    "$DIR/osd.$OSD_ID/keyring" "$tmp/mon.keyring"

  monmaptool -c /dev/null --create --fsid "$fsid" \
    --addv "$MON_ID" "[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]" \
    "$tmp/monmap" >>"$DIR/log/bootstrap.out" 2>&1 || fail_start "monmaptool failed"
  ceph-mon -c "$DIR/ceph.conf" --mkfs -i "$MON_ID" --monmap "$tmp/monmap" \
    --keyring "$tmp/mon.keyring" >>"$DIR/log/bootstrap.out" 2>&1 \
    || fail_start "ceph-mon --mkfs failed"

  # The OSD store can be created without the mon; do it in the background
  # while the mon starts (bluestore mkfs takes a few seconds).
  log "creating $objectstore osd.$OSD_ID store in $DIR/osd.$OSD_ID"
  timeout "$TIMEOUT" ceph-osd -c "$DIR/ceph.conf" -i "$OSD_ID" --mkfs --osd-uuid "$osd_uuid" \
    --no-mon-config >"$DIR/log/osd-mkfs.out" 2>&1 </dev/null 3>&- 4>&- &
  local mkfs_pid=$!

  log "starting mon.$MON_ID on 127.0.0.1:$port (v2) / $((port + 1)) (v1)"
  if ! start_daemon mon "$MON_ID"; then
    wait "$mkfs_pid" || true
    if grep -qs -e 'Address already in use' -e 'unable to bind' \
        "$DIR/log/mon.$MON_ID.out" "$DIR/log/mon.$MON_ID.log"; then
      ATTEMPT="port-in-use"
      return 0
    fi
    fail_start "ceph-mon failed to start"
  fi

  # No device-health monitoring: it would create a `device_health_metrics`
  # pool. Module options live in the mon config store only (not ceph.conf),
  # and must be set before the mgr loads the module; --force because the mon
  # does not know the option before a mgr has reported its modules.
  ceph_cli config set mgr mgr/devicehealth/enable_monitoring false --force \
    >>"$DIR/log/bootstrap.out" 2>&1 </dev/null \
    || { wait "$mkfs_pid" || true; fail_start "'ceph config set' failed"; }

  log "starting mgr.$MGR_ID"
  start_daemon mgr "$MGR_ID" || { wait "$mkfs_pid" || true; fail_start "ceph-mgr failed to start"; }

  # Mon commands: register osd.0 (its key is already known) and create the pool.
  ceph_cli osd new "$osd_uuid" "$OSD_ID" >>"$DIR/log/bootstrap.out" 2>&1 </dev/null \
    || { wait "$mkfs_pid" || true; fail_start "'ceph osd new' failed"; }
  ceph_cli osd pool create rbd 8 8 >>"$DIR/log/bootstrap.out" 2>&1 </dev/null \
    || { wait "$mkfs_pid" || true; fail_start "'ceph osd pool create rbd' failed"; }

  wait "$mkfs_pid" || fail_start "ceph-osd --mkfs failed"
  log "starting osd.$OSD_ID ($objectstore)"
  start_osd_daemon || fail_start "ceph-osd failed to start"

  log "initialising pool rbd"
  local left=$(( deadline - $(date +%s) ))
  [ "$left" -gt 1 ] || left=1
  timeout "$left" rbd -c "$DIR/ceph.conf" pool init rbd \
    >>"$DIR/log/bootstrap.out" 2>&1 </dev/null || fail_start "'rbd pool init rbd' failed or timed out"

  log "waiting for HEALTH_OK and active+clean PGs"
  LAST_STATE=""
  wait_ready "$deadline" \
    || fail_start "cluster not ready after ${TIMEOUT}s (last state: $LAST_STATE)"
  timeout 15 rbd -c "$DIR/ceph.conf" ls rbd >/dev/null 2>>"$DIR/log/bootstrap.out" </dev/null \
    || fail_start "'rbd ls' failed"

  rm -rf "$tmp"
  log "ready in $(elapsed "$t0")s: $DIR ($objectstore, mon 127.0.0.1:$port)"
  ATTEMPT=ready
}

cmd_stop() {
  if [ ! -e "$DIR" ]; then
    return 0
  fi
  [ -d "$DIR" ] || die "$DIR is not a directory"
  if [ ! -e "$DIR/$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
    die "$DIR was not created by $PROG (no $MARKER); not touching it"
  fi
  stop_daemons
  if [ -n "$(cluster_pids)" ]; then
    die "some daemons of $DIR are still running; not removing it"
  fi
  rm -rf -- "$DIR"
  log "stopped and removed $DIR"
}

require_cluster() {
  [ -f "$DIR/ceph.conf" ] || die "no cluster in $DIR (missing ceph.conf)"
}

cmd_status() {
  require_cluster
  if [ -z "$(daemon_pid "mon.$MON_ID")" ]; then
    echo "cluster in $DIR is not running (no ceph-mon)" >&2
    return 1
  fi
  DEADLINE=$(( $(date +%s) + 10 ))
  if ! ceph_cli -s </dev/null; then
    echo "cluster in $DIR is not responding" >&2
    return 1
  fi
}

cmd_kill_osd() {
  require_cluster
  local p
  p=$(daemon_pid "osd.$OSD_ID")
  if [ -z "$p" ]; then
    log "osd.$OSD_ID is not running"
    return 0
  fi
  log "kill -9 osd.$OSD_ID (pid $p)"
  if grep -qx 'osd_objectstore = memstore' "$DIR/ceph.conf"; then
    log "warning: memstore cluster: all data is lost, start-osd cannot recover" \
      "it (use 'start --bluestore' for durability tests)"
  fi
  kill -KILL "$p"
  local i
  for ((i = 0; i < 200; i++)); do
    alive "$p" || break
    sleep 0.05
  done
  ! alive "$p" || die "osd.$OSD_ID (pid $p) did not die"
  rm -f "$DIR/run/osd.$OSD_ID.pid"
}

cmd_start_osd() {
  require_cluster
  local t0 deadline
  t0=$(now)
  deadline=$(( $(date +%s) + TIMEOUT ))
  DEADLINE=$deadline
  if [ -n "$(daemon_pid "osd.$OSD_ID")" ]; then
    log "osd.$OSD_ID is already running"
  else
    log "starting osd.$OSD_ID"
    start_osd_daemon || die "ceph-osd failed to start (see $DIR/log/osd.$OSD_ID.log)"
  fi
  if grep -qx 'osd_objectstore = memstore' "$DIR/ceph.conf"; then
    log "warning: memstore cluster: a killed osd restarts empty, its PGs stay" \
      "stale and this wait will time out; use 'start --bluestore' for kill/restart"
  fi
  # Right after a kill the mon and mgr may still report the old instance as
  # up with active+clean PGs, so first wait for the new instance to boot,
  # then for PG stats reported by it (reported_epoch >= its up_from epoch).
  log "waiting for osd.$OSD_ID to boot"
  local st="" up_from=""
  while :; do
    st=$(timeout 10 ceph -c "$DIR/ceph.conf" daemon "osd.$OSD_ID" status 2>/dev/null \
      </dev/null | jq -r .state 2>/dev/null || true)
    [ "$st" != active ] || break
    [ "$(date +%s)" -lt "$deadline" ] || die "osd.$OSD_ID did not boot within ${TIMEOUT}s (state '${st}'; see $DIR/log/osd.$OSD_ID.log)"
    sleep 0.3
  done
  up_from=$(ceph_cli osd dump -f json </dev/null 2>/dev/null \
    | jq -r --argjson id "$OSD_ID" '.osds[] | select(.osd == $id) | .up_from') \
    || die "'ceph osd dump' failed"
  log "waiting for HEALTH_OK and active+clean PGs (osd.$OSD_ID up since epoch $up_from)"
  local pgstate="" shown=""
  while :; do
    pgstate=$(ceph_cli pg ls -f json </dev/null 2>/dev/null | jq -r --argjson e "$up_from" '
      [.pg_stats[] | select(.state != "active+clean" or .reported_epoch < $e)] as $bad
      | if (.pg_stats | length) == 0 then "no pgs"
        elif ($bad | length) == 0 then "ok"
        else "\($bad | length)/\(.pg_stats | length) pgs not yet active+clean" end' \
      2>/dev/null || echo "no answer")
    [ "$pgstate" != ok ] || break
    if [ "$pgstate" != "$shown" ]; then log "  ... $pgstate"; shown=$pgstate; fi
    [ "$(date +%s)" -lt "$deadline" ] || die "PGs not active+clean within ${TIMEOUT}s ($pgstate)"
    sleep 0.3
  done
  LAST_STATE=""
  if ! wait_ready "$deadline"; then
    die "cluster not ready after ${TIMEOUT}s (last state: $LAST_STATE)"
  fi
  log "osd.$OSD_ID up, cluster ready in $(elapsed "$t0")s"
}

main() {
  [ $# -ge 1 ] || { usage >&2; exit 2; }
  local cmd=$1
  shift
  case "$cmd" in
    -h|--help|help) usage; exit 0 ;;
    start|stop|status|kill-osd|start-osd) ;;
    *) echo "$PROG: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
  esac
  case "${1:-}" in -h|--help) usage; exit 0 ;; esac
  if [ "$cmd" = start ]; then
    # Keep the caller's stdout/stderr on fds 3/4: a trap may run while a
    # command's output is redirected into a log file (the daemons get 3/4
    # closed, so they never hold the caller's pipe open).
    exec 3>&1 4>&2
    # On any failure stdout gets `false`, so `eval "$(ceph-cluster.sh start
    # DIR)"` fails as well instead of silently eval'ing nothing.
    trap 'if [ "$?" -ne 0 ]; then echo false >&3; fi' EXIT
  fi
  [ $# -ge 1 ] || die "$cmd: missing DIR"
  DIR=$(abs_dir "$1")
  shift
  if [ "$cmd" != start ] && [ $# -gt 0 ]; then
    die "$cmd: unexpected arguments: $*"
  fi
  case "$cmd" in
    start)
      # Interrupted: stop whatever was started, remove DIR.
      trap 'trap - INT TERM; exec 1>&3 2>&4; fail_start "interrupted"' INT TERM
      cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    kill-osd) cmd_kill_osd ;;
    start-osd) cmd_start_osd ;;
  esac
}

main "$@"
