#!/usr/bin/env bash
# A shared gateway of encrypted volumes: ONE `nbdkit --filter=luks2 rbd
# exports-dir=DIR passphrase-store=STORE` serves several cryptsetup-formatted
# LUKS2 images, each with its own passphrase, taken from the secret store
# (lib/attach/secret_store.hpp: STORE/<export>.passphrase) at the export's
# first open:
#  - concurrent mixed I/O on 4 volumes with different passphrases; each
#    image, read back by `rbd export` and decrypted with the volume key that
#    cryptsetup unlocks (luks2_xts.py, Python's AES-XTS), holds exactly what
#    was written;
#  - a volume added to the registry and the store while the others do I/O
#    opens without a restart;
#  - a wrong passphrase, no passphrase in the store, a 0644 store file and an
#    export name with "../" each fail only their own open, with a message
#    naming the export and the cause, while a writer on another export keeps
#    going without an error (and its data decrypts right); a corrected store
#    entry opens without a restart;
#  - two exports with byte-identical headers get a volume each; an export's
#    connections share one unlocked volume, kept after the last one while
#    its store entry is unchanged;
#  - no passphrase in the gateway's argv, environment or log (-v, and
#    libcryptsetup's debug messages);
#  - passphrase-store is exclusive with passphrase= and key-file= and must be
#    an absolute path.
source "$(dirname "$0")/common.sh"
source "$(dirname "$0")/shared-functions.sh"
requires test -f "$RBDGW_FILTER"
requires cryptsetup --version
requires /usr/bin/python3 -c 'import nbd, cryptography'
py=/usr/bin/python3
xts="$RBDGW_SOURCE_DIR/tests/e2e/luks2-filter/luks2_xts.py"

seg=$((8 << 20))
exdir=$TEST_TMP/exports log=$TEST_TMP/gateway.log
mkdir "$exdir"
# The store must be on tmpfs (TEST_TMP is not everywhere): new_secret_store.
new_secret_store

# put_secret VOLUME FILE [MODE]: FILE's bytes as VOLUME's passphrase in the
# store, as lib/attach's store_secret leaves it (0600 unless MODE).
put_secret() {
  install -m "${3:-0600}" "$2" "$store/$1.passphrase+tmp"
  mv "$store/$1.passphrase+tmp" "$store/$1.passphrase"
}

# make_volume NAME [COPY-OF]: a LUKS2 image formatted by cryptsetup with a
# passphrase of its own ($TEST_TMP/NAME.pass, random text), its data segment
# encrypted zeros, imported as an rbd image and registered as export NAME.
# With COPY-OF, a byte copy of that volume's file (same header and key).
declare -A image
make_volume() {
  local name=$1 f="$TEST_TMP/$1.luks"
  if [ -n "${2:-}" ]; then
    cp "$TEST_TMP/$2.luks" "$f"; cp "$TEST_TMP/$2.pass" "$TEST_TMP/$name.pass"
    cp "$TEST_TMP/$2.vk" "$TEST_TMP/$name.vk"
  else
    head -c 24 /dev/urandom | base64 | tr -d '\n' >"$TEST_TMP/$name.pass"
    truncate -s $(((16 << 20) + seg)) "$f"
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
      --key-file "$TEST_TMP/$name.pass" "$f"
    cryptsetup luksDump -q --dump-volume-key --volume-key-file "$TEST_TMP/$name.vk" \
      --key-file "$TEST_TMP/$name.pass" "$f" >/dev/null
    head -c "$seg" /dev/zero >"$TEST_TMP/zeros"
    "$py" "$xts" encrypt "$f" "$TEST_TMP/$name.vk" "$TEST_TMP/zeros" 0
  fi
  image[$name]=$(unique "$TEST_NAME")
  cleanup_fn "rbd_cli rm --no-progress rbd/${image[$name]}"
  rbd_cli import --no-progress "$f" "rbd/${image[$name]}" >/dev/null
  register_export "$exdir" "$name" "${image[$name]}"
}

# check_volume NAME MODEL: the image, exported by librbd and decrypted with
# cryptsetup's volume key, equals MODEL.
check_volume() {
  export_image "${image[$1]}" "$TEST_TMP/$1.exported"
  "$py" "$xts" decrypt "$TEST_TMP/$1.exported" "$TEST_TMP/$1.vk" 0 "$seg" "$TEST_TMP/$1.dec"
  cmp -s "$2" "$TEST_TMP/$1.dec" || fail "export $1: image ${image[$1]} does not decrypt to what was written"
}

# writer URI MODEL PROGRESS STOP: random writes, checked reads and flushes
# until STOP exists (at least 50 ops); counts ops in PROGRESS; writes the
# model to MODEL.
writer() {
  W_MODEL=$2 W_PROGRESS=$3 W_STOP=$4 nbdsh -u "$1" -c '
import os, random
size = h.get_size()
model = bytearray(size)
rnd = random.Random(7)
n_ops = 0
while n_ops < 50 or not os.path.exists(os.environ["W_STOP"]):
    off = rnd.randrange(0, size // 4096) * 4096
    n = min(rnd.choice([512, 4096, 65536]), size - off)
    op = rnd.random()
    if op < 0.6:
        data = os.urandom(n)
        h.pwrite(data, off)
        model[off:off + n] = data
    elif op < 0.9:
        if h.pread(n, off) != model[off:off + n]:
            raise SystemExit("read at %d+%d differs from what was written" % (off, n))
    else:
        h.flush()
    n_ops += 1
    if n_ops % 10 == 0:
        with open(os.environ["W_PROGRESS"] + ".tmp", "w") as f:
            f.write(str(n_ops))
        os.rename(os.environ["W_PROGRESS"] + ".tmp", os.environ["W_PROGRESS"])
h.flush()
with open(os.environ["W_MODEL"], "wb") as f:
    f.write(model)
'
}
progress() { local n; n=$(cat "$1" 2>/dev/null) || true; echo "${n:-0}"; }

# open_fails NAME PATTERN: a client's open of export NAME fails, and the
# gateway's log names it with PATTERN (ERE).
open_fails() {
  if NAME=$1 SOCK=$sock nbdsh -c '
import os
h.set_export_name(os.environ["NAME"])
h.connect_unix(os.environ["SOCK"])
' >"$TEST_TMP/open.out" 2>&1; then
    fail "export '$1' opened"
  fi
  for _ in $(seq 20); do grep -Eq -- "$2" "$log" && break; sleep 0.1; done
  grep -Eq -- "$2" "$log" || { cat "$log" >&2; fail "export '$1': no error matching /$2/ in the log"; }
  pass "export '$1' refused: $(grep -Eo -m1 -- "luks2: .*" <(grep -E -- "$2" "$log"))"
}

# Parameters: exclusive, absolute.
touch "$TEST_TMP/pf"
for args in "passphrase-store=$store passphrase=+$TEST_TMP/pf" \
            "passphrase-store=$store key-file=$TEST_TMP/pf" \
            "passphrase-store=relative/dir"; do
  # shellcheck disable=SC2086
  if nbdkit -U "$TEST_TMP/refused.sock" --run true --filter="$RBDGW_FILTER" null $args \
      >"$TEST_TMP/refused.out" 2>&1; then
    fail "nbdkit accepted: $args"
  fi
  grep -q "luks2: .*passphrase-store" "$TEST_TMP/refused.out" ||
    fail "refusal of '$args' does not name passphrase-store: $(cat "$TEST_TMP/refused.out")"
  pass "refused: $args: $(grep -m1 -o 'luks2: .*' "$TEST_TMP/refused.out")"
done

for v in vol1 vol2 vol3 vol4 wrongpw nopass mode0644; do make_volume "$v"; done
make_volume twin1 vol1  # same header and key as vol1
for v in vol1 vol2 vol3 vol4 twin1 mode0644; do put_secret "$v" "$TEST_TMP/$v.pass"; done
printf 'not the passphrase' >"$TEST_TMP/wrong"
put_secret wrongpw "$TEST_TMP/wrong"
chmod 0644 "$store/mode0644.passphrase"
# Different passphrases, really.
[ "$(for f in "$TEST_TMP"/vol[1-4].pass; do cat "$f"; echo; done | sort -u | wc -l)" = 4 ] || fail "passphrases not distinct"

sock="$TEST_TMP/gw.sock"
nbdkit -f -v -D luks2.verbose=1 -U "$sock" -P "$TEST_TMP/gw.pid" --filter="$RBDGW_FILTER" "$RBDGW_PLUGIN" \
  "exports-dir=$exdir" exclusive=true durable-writes=true "conf=$CEPH_CONF" \
  "passphrase-store=$store" 2>>"$log" &
pid=$!
cleanup_fn "kill $pid; for _ in \$(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done; kill -9 $pid"
for _ in $(seq 300); do [ -S "$sock" ] && [ -s "$TEST_TMP/gw.pid" ] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
[ -S "$sock" ] || { cat "$log" >&2; fail "the gateway did not start"; }

# A long writer on vol1, mixed I/O on vol2..vol4, all at once.
writer "$(export_uri "$sock" vol1)" "$TEST_TMP/vol1.model" "$TEST_TMP/vol1.progress" \
  "$TEST_TMP/stop" 2>"$TEST_TMP/vol1.err" &
wpid=$!
pids=()
for i in 2 3 4; do
  mixed_io "$(export_uri "$sock" "vol$i")" "$i" "$TEST_TMP/vol$i.model" 2>"$TEST_TMP/vol$i.err" &
  pids+=($!)
done
for _ in $(seq 600); do [ "$(progress "$TEST_TMP/vol1.progress")" -ge 20 ] && break; sleep 0.1; done
[ "$(progress "$TEST_TMP/vol1.progress")" -ge 20 ] || { cat "$TEST_TMP/vol1.err" "$log" >&2; fail "the writer on vol1 makes no progress"; }

# Bad input, each failing only its own open, while the writer runs.
before=$(progress "$TEST_TMP/vol1.progress")
open_fails wrongpw "luks2: export 'wrongpw': wrong passphrase"
open_fails nopass "luks2: export 'nopass': no passphrase in the secret store $store"
open_fails mode0644 "luks2: export 'mode0644': .*mode0644\.passphrase.*mode 0644"
# A name that is no volume id is never a path: a readable 0600 secret one
# level up is not used.
put_secret_outside() { install -m 0600 "$TEST_TMP/vol2.pass" "$(dirname "$store")/$(basename "$store")x.passphrase"; }
put_secret_outside; cleanup_fn "rm -f '$(dirname "$store")/$(basename "$store")x.passphrase'"
open_fails "../$(basename "$store")x" "luks2: export '\.\./$(basename "$store")x': .*(volume id|invalid)"
! grep -q 'exportname="\.\./' <(grep -v "luks2: open" "$log") || fail "the '../' name reached the plugin below"

# A volume added while the others do I/O opens without a restart.
make_volume vol5
put_secret vol5 "$TEST_TMP/vol5.pass"
mixed_io "$(export_uri "$sock" vol5)" 5 "$TEST_TMP/vol5.model" 2>"$TEST_TMP/vol5.err" ||
  { cat "$TEST_TMP/vol5.err" "$log" >&2; fail "mixed I/O on vol5, added while the gateway runs"; }
pass "vol5, added to the registry and the store while the gateway runs, serves"

# The corrected entry opens without a restart.
put_secret wrongpw "$TEST_TMP/wrongpw.pass"
nbdinfo --size "$(export_uri "$sock" wrongpw)" >/dev/null || fail "wrongpw does not open after its store entry was corrected"
pass "a corrected store entry opens without a restart"

for _ in $(seq 600); do [ "$(progress "$TEST_TMP/vol1.progress")" -gt "$before" ] && break; sleep 0.1; done
[ "$(progress "$TEST_TMP/vol1.progress")" -gt "$before" ] || fail "the writer on vol1 stalled during the failures"
touch "$TEST_TMP/stop"
wait $wpid || { cat "$TEST_TMP/vol1.err" >&2; fail "the writer on vol1 failed"; }
for i in 2 3 4; do
  wait "${pids[$((i - 2))]}" || { cat "$TEST_TMP/vol$i.err" >&2; fail "mixed I/O on vol$i failed"; }
done
kill -0 $pid || fail "the gateway died"
pass "writer on vol1 ($(progress "$TEST_TMP/vol1.progress") ops) and mixed I/O on vol2..vol4 went on without an error"
nbdinfo --size "$(export_uri "$sock" vol2)" >/dev/null || fail "vol2 does not open after the failures"

# Identical headers, two exports: two unlocked volumes (vol1's is held open
# meanwhile, so a match by header would have reused it).
nbdsh -u "$(export_uri "$sock" vol1)" -c 'import time; time.sleep(3)' &
hold=$!
sleep 1
nbdsh -u "$(export_uri "$sock" twin1)" -c 'h.pread(4096, 0)'
wait $hold
grep -q "luks2: export 'twin1': unlocked" "$log" || { cat "$log" >&2; fail "twin1 (vol1's header) was not unlocked for itself"; }
pass "an export with the same header as another gets a volume of its own"

# One export's connections share one volume, kept after the last close
# while the export's store entry is unchanged. (vol3 was opened before:
# its entry is put back as a new file, so the kept volume is not used.)
put_secret vol3 "$TEST_TMP/vol3.pass"
n0=$(grep -c "luks2: export 'vol3': unlocked" "$log")
nbdsh -u "$(export_uri "$sock" vol3)" -c 'import time; time.sleep(3)' &
hold=$!
sleep 1
nbdsh -u "$(export_uri "$sock" vol3)" -c 'h.pread(4096, 0)'
wait $hold
sleep 0.5
n1=$(grep -c "luks2: export 'vol3': unlocked" "$log")
[ "$n1" = $((n0 + 1)) ] || fail "two connections at once to vol3 (a new store entry): $((n1 - n0)) unlocks, expected 1"
nbdsh -u "$(export_uri "$sock" vol3)" -c 'h.pread(4096, 0)'
sleep 0.5
n2=$(grep -c "luks2: export 'vol3': unlocked" "$log")
[ "$n2" = "$n1" ] || fail "vol3 reopened after its last connection closed, entry unchanged: $((n2 - n1)) unlocks, expected 0"
pass "connections to one export share its volume; it is kept after the last one while its entry is unchanged"

# Many first opens at once, of several exports: each connection reads its
# own volume's data.
bpids=()
for k in $(seq 1 12); do
  v=vol$((k % 4 + 2))  # vol2..vol5
  M="$TEST_TMP/$v.model" nbdsh -u "$(export_uri "$sock" "$v")" -c '
import os
m = open(os.environ["M"], "rb").read()
assert h.pread(len(m), 0) == m, "read differs from the model"
' 2>"$TEST_TMP/burst$k.err" &
  bpids+=($!)
done
for k in $(seq 1 12); do
  wait "${bpids[$((k - 1))]}" || { cat "$TEST_TMP/burst$k.err" >&2; fail "burst open $k failed"; }
done
pass "12 connections opening 4 exports at once each read their own volume's data"

# No passphrase in argv, environment or log.
for v in vol1 vol2 vol3 vol4 vol5 wrongpw mode0644; do
  p=$(cat "$TEST_TMP/$v.pass")
  ! grep -qaF -- "$p" "/proc/$pid/cmdline" || fail "passphrase of $v in the gateway's argv"
  ! grep -qaF -- "$p" "/proc/$pid/environ" || fail "passphrase of $v in the gateway's environment"
  ! grep -qaF -- "$p" "$log" || fail "passphrase of $v in the gateway's log"
done
pass "no passphrase in the gateway's argv, environment or log"

kill $pid
for _ in $(seq 100); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
for v in vol1 vol2 vol3 vol4 vol5; do check_volume "$v" "$TEST_TMP/$v.model"; done
pass "vol1..vol5 decrypt (cryptsetup's volume key, independent AES-XTS) to exactly what was written"
