#!/usr/bin/env bash
# run-test.sh SECONDS SCRIPT [ARGS...]: runs one shell test (what CTest runs
# for rbdgw_add_script_test) with a deadline of its own, SECONDS, ahead of
# CTest's TIMEOUT (tests/CMakeLists.txt gives CTest 120 s more). A test that
# overruns it is stopped here rather than killed by CTest, which says nothing
# of what the test waited on and leaves what it stacked up behind: killed
# in the middle, the 20-volume gateway test left 20 ext4 mounts, 20 FUSE
# mounts and 20 loop devices, and its exporters kept the writers' I/O
# waiting for a gateway that was gone.
#
# On overrun: prints what the test was waiting on (its processes with their
# kernel wait channel, any process in D state, the cluster's health), aborts
# the test's FUSE connections (their waiting requests fail at once), asks
# the test to stop (SIGTERM: its cleanup traps run) and then kills its
# process group, and removes what is left under its $TEST_TMP: processes,
# loop devices, mounts. Exits 1 with "TIMEOUT after N s". After a test
# ends by itself, the same sweep runs, and a test that passed but left
# something under its $TEST_TMP fails (what is left of its own process
# group 5 s after it ended is killed and named, not a fail).
#
# The test's $TEST_TMP is learnt from tests/lib/functions.sh, which writes
# it to $RBDGW_TEST_TMP_FILE.
#
# run-test.sh --sweep DIR...: only the sweep, of test directories left by a
# run killed from outside.
set -uo pipefail
limit=${1:?usage: run-test.sh SECONDS SCRIPT [ARGS...]}
shift
[ $# -ge 1 ] || { echo "usage: run-test.sh SECONDS SCRIPT [ARGS...]" >&2; exit 2; }
name=$(basename "$1" .sh)

deadline=$limit
[ "$limit" = --sweep ] || case $deadline in '' | *[!0-9]*) echo "run-test.sh: SECONDS must be a number: '$limit'" >&2; exit 2 ;; esac

RBDGW_TEST_TMP_FILE=$(mktemp /tmp/rbdgw-run-test.XXXXXX)
export RBDGW_TEST_TMP_FILE

# Bounded: nothing below may hang on a stuck process or a stuck cluster.
t() { timeout -k 2 "$@"; }

diagnose() {
  local sid=$1 p
  echo "---- $name: what it was waiting on ----"
  echo "its processes (session $sid):"
  t 10 ps -s "$sid" -o pid=,ppid=,stat=,etime=,wchan:28=,comm= 2>&1 | sed 's/^/  /'
  echo "processes in uninterruptible sleep (D) on this machine (the first 8 with their stacks):"
  local n=0
  for p in /proc/[0-9]*; do
    case $(t 2 cut -d' ' -f3 "$p/stat" 2>/dev/null) in
      D) n=$((n + 1))
         [ "$n" -le 8 ] || continue
         printf '  %s %s wchan=%s\n' "${p#/proc/}" "$(t 2 cat "$p/comm" 2>/dev/null)" \
           "$(t 2 cat "$p/wchan" 2>/dev/null)"
         t 2 cat "$p/stack" 2>/dev/null | head -6 | sed 's/^/      /' ;;
    esac
  done
  [ "$n" -le 8 ] || echo "  ... $n in all"
  if [ -n "${CEPH_CONF:-}" ] && [ -e "$CEPH_CONF" ]; then
    echo "the test cluster:"
    t 10 ceph -c "$CEPH_CONF" --connect-timeout 8 health detail 2>&1 | head -20 | sed 's/^/  /'
    t 10 ceph -c "$CEPH_CONF" --connect-timeout 8 df 2>&1 | head -12 | sed 's/^/  /'
  fi
}

# abort_fuse DIR: aborts every FUSE connection mounted under DIR, so that
# their waiting requests fail at once and the processes blocked on them
# (and on a loop device over them) can die.
abort_fuse() {
  local dir=$1 c mnt ours=
  grep -q " - fuse" /proc/self/mountinfo || return 0
  # fusectl, mounted here only for this and unmounted after (not every
  # machine mounts it).
  if ! mountpoint -q /sys/fs/fuse/connections; then
    mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null && ours=1
  fi
  awk -v d="$dir" '($5 == d || index($5, d "/") == 1) && / - fuse/ { split($3, a, ":"); print a[2], $5 }' \
    /proc/self/mountinfo | while read -r c mnt; do
      [ -e "/sys/fs/fuse/connections/$c/abort" ] || continue
      echo "sweep: aborting FUSE connection $c ($mnt)"
      echo 1 >"/sys/fs/fuse/connections/$c/abort" 2>/dev/null
    done
  [ -z "$ours" ] || umount /sys/fs/fuse/connections 2>/dev/null
  return 0
}

# pids_under DIR: processes with DIR in their argv or their cwd in DIR. One
# grep over every cmdline, bounded (reading the cmdline of a process stuck
# with its memory map locked blocks); then one at a time, each bounded.
pids_under() {
  local dir=$1 f p cmd
  {
    if f=$(t 10 grep -lsaF -- "$dir" /proc/[0-9]*/cmdline); then
      for p in $f; do p=${p#/proc/}; echo "${p%/cmdline}"; done
    else
      for p in /proc/[0-9]*; do
        cmd=$(t 2 tr '\0' ' ' 2>/dev/null <"$p/cmdline") || continue
        case "$cmd " in *"$dir"[/\ ]*) echo "${p#/proc/}" ;; esac
      done
    fi
    find /proc/[0-9]*/cwd -maxdepth 0 \( -lname "$dir" -o -lname "$dir/*" \) 2>/dev/null |
      cut -d/ -f3
  } | sort -un | grep -vx -e $$ -e "$BASHPID"
}

# detach_loops DIR: detaches the loop devices whose backing file is in DIR
# (a busy one is detached when its last user lets go).
detach_loops() {
  local dir=$1 l bf
  for l in /sys/block/loop*; do
    { read -r bf <"$l/loop/backing_file"; } 2>/dev/null || continue
    case $bf in
      "$dir"/*) echo "sweep: detaching /dev/${l##*/} ($bf)"; t 10 losetup -d "/dev/${l##*/}" 2>/dev/null ;;
    esac
  done
}

# sweep DIR: removes every process, FUSE connection, loop device and mount
# under DIR (a test's $TEST_TMP), saying what it removed on stdout.
sweep() {
  local dir=$1 p mnt
  [[ $dir =~ ^/tmp/rbdgw-[^/]+$ && $dir != *..* ]] || return 0
  abort_fuse "$dir"
  for p in $(pids_under "$dir"); do
    # (the grep and timeout that found them had DIR in their argv too)
    kill -0 "$p" 2>/dev/null || continue
    echo "sweep: killing $p: $({ t 2 tr '\0' ' ' <"/proc/$p/cmdline"; } 2>/dev/null | cut -c1-160)"
    kill -9 "$p" 2>/dev/null
    kill -9 -- -"$p" 2>/dev/null  # a daemon's group with it (setsid'd)
  done
  sleep 0.2
  # Loop devices before the mounts: after a lazy unmount their backing
  # file's path no longer starts with DIR.
  detach_loops "$dir"
  # Deepest first: a loop-mounted filesystem inside a FUSE-exported file.
  awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r |
    while read -r mnt; do
      echo "sweep: unmounting $mnt"
      t 10 umount -l "$mnt" 2>/dev/null || t 10 fusermount3 -u -z "$mnt" 2>/dev/null
    done
  [ -e "$dir" ] && t 30 rm -rf --one-file-system "$dir" 2>/dev/null
  return 0
}

if [ "$limit" = --sweep ]; then
  rm -f "$RBDGW_TEST_TMP_FILE"
  for dir in "$@"; do sweep "$dir"; done
  exit 0
fi

# stop_test: aborts the test's FUSE connections (so that its cleanup traps
# do not wait on them), gives its traps 15 s after a SIGTERM, then kills
# its process group, and sweeps its $TEST_TMP.
stop_test() {
  local dir
  while read -r dir; do abort_fuse "$dir"; done <"$RBDGW_TEST_TMP_FILE"
  kill -TERM -- -"$child" 2>/dev/null
  for _ in $(seq 30); do kill -0 "$child" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- -"$child" 2>/dev/null
  pkill -KILL -s "$child" 2>/dev/null  # its session's other groups too
  wait "$child" 2>/dev/null
  while read -r dir; do sweep "$dir"; done <"$RBDGW_TEST_TMP_FILE"
  rm -f "$RBDGW_TEST_TMP_FILE"
}

# The test in a session of its own (its process group is its pid), so that
# it can be stopped whole. No signal-driven watchdog: a sleeper child, and
# `wait -n` for whichever of the two ends first.
setsid -w bash "$@" </dev/null &
child=$!
sleep "$deadline" &
sleeper=$!
# Interrupted (Ctrl-C of ctest, a cancelled CI job): the test goes too.
trap 'kill "$sleeper" 2>/dev/null; echo "$name: interrupted: stopping it" >&2; stop_test >&2; exit 130' INT TERM HUP

timed_out=0
while :; do
  wait -n "$child" "$sleeper"
  kill -0 "$child" 2>/dev/null || break
  if ! kill -0 "$sleeper" 2>/dev/null; then
    timed_out=1
    break
  fi
done
kill "$sleeper" 2>/dev/null
wait "$sleeper" 2>/dev/null
rc=0
[ "$timed_out" = 1 ] || { wait "$child"; rc=$?; }

if [ "$timed_out" = 1 ]; then
  echo "$name: TIMEOUT after $deadline s: stopping it" >&2
  diagnose "$child" >&2
  echo "---- $name: stopping it and removing what it left ----" >&2
  stop_test >&2
  echo "$name: FAIL: TIMEOUT after $deadline s" >&2
  exit 1
fi

# What the test left: background processes of its own group, and under its
# $TEST_TMP (which it removes on exit, also when a loop device or a process
# still uses a file there) processes, FUSE mounts, loop devices, mounts.
# Removed now; a test that passed fails for what was under its $TEST_TMP.
# (A process the test's cleanup signalled may take a moment to exit: 5 s.)
# (ps -g with a number: the session, which is the test's pid.)
group_alive() { ps -o stat= -g "$child" 2>/dev/null | grep -qv '^Z'; }
left=
for _ in $(seq 50); do group_alive || break; sleep 0.1; done
if group_alive; then
  # Killed and reported, not a fail: these do not outlive the test.
  echo "sweep: killing what is left in the test's process group:" \
    "$(ps -o pid=,comm= -g "$child" 2>/dev/null | tr '\n' ' ')" >&2
  kill -KILL -- -"$child" 2>/dev/null
  pkill -KILL -s "$child" 2>/dev/null
fi
while read -r dir; do
  out=$(sweep "$dir")
  [ -n "$out" ] && left+="$out"$'\n'
done <"$RBDGW_TEST_TMP_FILE"
rm -f "$RBDGW_TEST_TMP_FILE"
if [ -n "$left" ]; then
  printf '%s' "$left" >&2
  if [ "$rc" = 0 ]; then
    echo "$name: FAIL: it left processes, mounts or loop devices behind (removed now)" >&2
    exit 1
  fi
fi
exit "$rc"
