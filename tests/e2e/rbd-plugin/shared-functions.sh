# Helpers for the tests of the rbd plugin's exports-dir mode (one gateway,
# many exports), on top of common.sh.

# register_export DIR NAME IMAGE [read-only]: the registry entry of export
# NAME serving rbd/IMAGE.
register_export() {
  {
    echo "image=rbd/$3"
    [ -z "${4:-}" ] || echo "read-only=true"
  } >"$1/$2.tmp"
  mv "$1/$2.tmp" "$1/$2"
}

# export_uri SOCK NAME
export_uri() { echo "nbd+unix:///$2?socket=$1"; }

# start_shared SOCKVAR PIDVAR LOG EXPORTS-DIR: one nbdkit serving every
# export registered in EXPORTS-DIR, one writer per image (exclusive=true,
# durable-writes=true, as lib/attach starts gateways); its messages go to LOG.
start_shared() { _start_exports "$@"; }

# _start_exports SOCKVAR PIDVAR LOG EXPORTS-DIR [NBDKIT-OPTION... [-- PARAM...]]:
# start_shared with NBDKIT-OPTIONs before the plugin and PARAMs after it.
_start_exports() {
  local __sv=$1 __pv=$2 __log=$3 __dir=$4 __i __pid
  local __s="$TEST_TMP/shared-$RANDOM.sock" __p="$TEST_TMP/shared-$RANDOM.pid"
  shift 4
  local __pre=() __post=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do __pre+=("$1"); shift; done
  [ $# -gt 0 ] && shift
  __post=("$@")
  nbdkit -f -U "$__s" -P "$__p" "${__pre[@]}" "$RBDGW_PLUGIN" "exports-dir=$__dir" \
    exclusive=true durable-writes=true "conf=$CEPH_CONF" "${__post[@]}" 2>>"$__log" &
  __pid=$!
  cleanup_fn "kill $__pid; for _ in \$(seq 50); do kill -0 $__pid 2>/dev/null || break; sleep 0.1; done; kill -9 $__pid"
  for ((__i = 0; __i < 300; __i++)); do
    [ -s "$__p" ] && [ -S "$__s" ] && break
    kill -0 $__pid 2>/dev/null || break
    sleep 0.1
  done
  [ -s "$__p" ] || { cat "$__log" >&2; echo "start_shared: nbdkit did not start" >&2; return 1; }
  printf -v "$__sv" '%s' "$__s"
  printf -v "$__pv" '%s' "$__pid"
}

# mixed_io URI SEED MODEL: 150 random writes, zeroes, reads (checked against
# a model of the export kept in memory) and flushes on the export; ends with
# a flush and writes the model (what the export must hold) to MODEL.
mixed_io() {
  MIXED_SEED=$2 MIXED_MODEL=$3 nbdsh -u "$1" -c '
import os, random
size = h.get_size()
model = bytearray(size)
rnd = random.Random(int(os.environ["MIXED_SEED"]))
for _ in range(150):
    op = rnd.random()
    off = rnd.randrange(0, size // 4096) * 4096
    n = min(rnd.choice([4096, 65536, 1 << 20]), size - off)
    if op < 0.6:
        data = os.urandom(n)
        h.pwrite(data, off)
        model[off:off + n] = data
    elif op < 0.75:
        h.zero(n, off)
        model[off:off + n] = bytes(n)
    elif op < 0.9:
        if h.pread(n, off) != model[off:off + n]:
            raise SystemExit("read at %d+%d differs from what was written" % (off, n))
    else:
        h.flush()
h.flush()
with open(os.environ["MIXED_MODEL"], "wb") as f:
    f.write(model)
'
}

# new_secret_store: sets $store to a new secret store as lib/attach's
# store_secret makes it (a 0700 dir on tmpfs, /dev/shm, with this boot's id
# in a 0600 boot_id), removed at the end of the test.
new_secret_store() {
  store=$(mktemp -d "/dev/shm/rbdgw-test-store.XXXXXX")
  cleanup_fn "rm -rf '$store'"
  chmod 0700 "$store"
  cat /proc/sys/kernel/random/boot_id >"$store/boot_id"
  chmod 0600 "$store/boot_id"
}

# make_luks_export EXPORTS-DIR NAME [IMAGE-BYTES]: a LUKS2 image (pbkdf2,
# 1000 iterations) with a random passphrase ($TEST_TMP/NAME.pass, also in
# the secret store $store as NAME's entry) and its volume key in
# $TEST_TMP/NAME.vk, registered as export NAME; removed at the end.
make_luks_export() {
  local exdir=$1 name=$2 bytes=${3:-$((20 << 20))} f="$TEST_TMP/$2.luks" img
  head -c 24 /dev/urandom | base64 | tr -d '\n' >"$TEST_TMP/$name.pass"
  truncate -s $((24 << 20)) "$f"
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$TEST_TMP/$name.pass" "$f"
  cryptsetup luksDump -q --dump-volume-key --volume-key-file "$TEST_TMP/$name.vk" \
    --key-file "$TEST_TMP/$name.pass" "$f" >/dev/null
  [ "$(stat -c %s "$TEST_TMP/$name.vk")" = 64 ] || { echo "$name: not a 512-bit key" >&2; return 1; }
  truncate -s "$bytes" "$f"
  img=$(unique "$TEST_NAME-$name")
  cleanup_fn "rbd_cli rm --no-progress rbd/$img"
  rbd_cli import --no-progress "$f" "rbd/$img" >/dev/null
  register_export "$exdir" "$name" "$img"
  install -m 0600 "$TEST_TMP/$name.pass" "$store/$name.passphrase"
}

# start_decrypting SOCKVAR PIDVAR LOG EXPORTS-DIR: as start_shared, with the
# luks2 filter reading each export's passphrase from $store, and nbdkit -v
# (the filter's "unlocked with keyslot" lines count PBKDF runs).
start_decrypting() {
  _start_exports "$1" "$2" "$3" "$4" -v --filter="$RBDGW_FILTER" -- "passphrase-store=$store"
}
