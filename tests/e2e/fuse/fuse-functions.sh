# Helpers for the FUSE exporter tests: source after tests/lib/functions.sh.

RBDGW_FUSE="$RBDGW_BUILD_DIR/csi-shim/fuse/rbdgw-fuse"
requires test -x "$RBDGW_FUSE"
requires test -e /dev/fuse
requires which nbdkit fusermount3 losetup findmnt python3 date
MiB=$((1 << 20))

# start_exporter SOCKET [OPTION...]: rbdgw-fuse on SOCKET, exposing
# $TEST_TMP/disk; sets $exporter (pid) and $exporter_log, waits until the
# file is a FUSE mount. Its cleanup (unmount, stop) runs after that of
# anything registered later (the loop device).
start_exporter() {
  local sock=$1 i
  shift
  disk="$TEST_TMP/disk"
  exporter_log="$TEST_TMP/fuse.log"
  : >"$disk"
  "$RBDGW_FUSE" "$@" "$sock" "$disk" 2>"$exporter_log" &
  exporter=$!
  cleanup_fn "fusermount3 -u -z '$disk'; kill $exporter; for _ in \$(seq 50); do kill -0 $exporter 2>/dev/null || break; sleep 0.1; done; kill -9 $exporter"
  for ((i = 0; i < 100; i++)); do
    findmnt -n "$disk" >/dev/null && return 0
    kill -0 "$exporter" 2>/dev/null || break
    sleep 0.1
  done
  cat "$exporter_log" >&2
  fail "rbdgw-fuse did not mount $disk"
}

# start_proxy VAR TARGET MODE: tests/e2e/fuse/silent-proxy.py on a new
# socket (its path in VAR) in front of the NBD server on TARGET; every
# silent connection adds a line to $TEST_TMP/silent.
start_proxy() {
  local __p="$TEST_TMP/proxy-$RANDOM.sock" __i
  /usr/bin/python3 "$RBDGW_SOURCE_DIR/tests/e2e/fuse/silent-proxy.py" "$__p" "$2" \
    "$TEST_TMP/silent" "$3" 2>>"$TEST_TMP/proxy.log" &
  cleanup_fn "kill $!"
  for ((__i = 0; __i < 100; __i++)); do
    [ -S "$__p" ] && { printf -v "$1" '%s' "$__p"; return 0; }
    sleep 0.1
  done
  fail "the proxy did not start"
}

# proxy_hang PROXY: (mode until-flag) cuts the relayed connections and
# leaves every later one silent; returns once the cut is made.
proxy_hang() {
  local __i
  touch "$1.hang"
  for ((__i = 0; __i < 100; __i++)); do [ -e "$1.cut" ] && return 0; sleep 0.1; done
  fail "the proxy did not cut its connections"
}

# attach_loop: a loop device on $disk (as lib/attach makes it), in $loop.
attach_loop() {
  loop=$(losetup --find --show --direct-io=off "$disk")
  cleanup_fn "losetup -d $loop"
}

# running PID: PID is alive (not a zombie waiting to be reaped).
running() { local st; st=$(ps -o stat= -p "$1" 2>/dev/null) && [[ $st != Z* ]]; }

# now: milliseconds since the epoch; elapsed START: milliseconds since START
# (plain shell: a python3 start can take most of a second on a busy machine).
now() { date +%s%3N; }
elapsed() { echo $(($(now) - $1)); }
# secs MS: MS as seconds, one decimal.
secs() { printf '%d.%d' $(($1 / 1000)) $(($1 % 1000 / 100)); }

# assert_torn_down: the loop device can be detached, the FUSE mount goes
# with fusermount3 -u (no -z), the exporter exits, nothing is left.
assert_torn_down() {
  local i
  losetup -d "$loop" || fail "losetup -d $loop failed"
  for ((i = 0; i < 50; i++)); do losetup -j "$disk" | grep -q . || break; sleep 0.1; done
  fusermount3 -u "$disk" || fail "fusermount3 -u $disk failed"
  for ((i = 0; i < 50; i++)); do running "$exporter" || break; sleep 0.1; done
  running "$exporter" && fail "rbdgw-fuse still runs after the unmount"
  wait "$exporter" || fail "rbdgw-fuse exited $? after the unmount"
  findmnt -n "$disk" >/dev/null && fail "$disk is still mounted"
  losetup -j "$disk" | grep -q . && fail "a loop device is still on $disk"
  return 0
}

# write_data MIB: MIB MiB of random data to $TEST_TMP/data and to the
# start of $disk (O_DIRECT).
write_data() {
  head -c $(($1 * MiB)) /dev/urandom >"$TEST_TMP/data"
  dd if="$TEST_TMP/data" of="$disk" bs=1M oflag=direct conv=notrunc status=none || fail "writing the data failed"
}

# parallel_reads N: the first N MiB of $disk read at once, one O_DIRECT
# 1 MiB read per process, each compared with $TEST_TMP/data.
parallel_reads() {
  local i pids=()
  for ((i = 0; i < $1; i++)); do
    dd if="$disk" bs=1M skip=$i count=1 iflag=direct status=none of="$TEST_TMP/r$i" &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || fail "a parallel read failed"; done
  for ((i = 0; i < $1; i++)); do
    cmp -s "$TEST_TMP/r$i" <(dd if="$TEST_TMP/data" bs=1M skip=$i count=1 status=none) || fail "read $i differs"
  done
}
