#!/usr/bin/env bash
# Re-adoption where the product runs, not only from a login shell: after a
# kill -9 of an encrypted volume's gateway, `rbdgw reattach` restarts it with
# the secrets kept at map time (the LUKS passphrase and a cephx key given as
# a key, not a keyring file), the data reads back and new writes land.
#  (a) Every rbdgw command under its own fresh session keyring
#      (`keyctl session -`), what systemd's KeyringMode=private and a
#      container runtime give a service.
#  (b) As rbdgw@VOLUME.service runs map (ExecStart), reattach (ExecReload),
#      status and unmap (ExecStop) inside the node DaemonSet's container.
#      PID 1 here is not systemd, so systemd-run cannot be used; emulated
#      instead, per command: a fresh session keyring (KeyringMode=private),
#      UMask=0077, only the unit's environment (env -i: PATH and the
#      EnvironmentFile's RBDGW_MAP_ARGS, plus the variables that point rbdgw
#      at this build's plugin and filter, which an installed package finds in
#      its default places; no RBDGW_SECRET_DIR), and a new mount namespace
#      (`unshare -m`, a container restart each time) with its own tmpfs /run
#      and a host directory on tmpfs bind-mounted at /run/rbdgw, as the
#      DaemonSet's hostPath (rbind), shared both ways (as mountPropagation:
#      Bidirectional would; the shipped DaemonSet has none) because here the
#      exporter outlives its "container" and the next one must see its FUSE
#      mount: the secret store is at its default place, /run/rbdgw/@secrets.
# Both: the secrets are 0600 files in a 0700 store and in no log or other
# file, and unmap leaves nothing behind.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires test -f "$RBDGW_FILTER"
requires which keyctl unshare nsenter jq
requires keyctl session - true
requires test "$(stat -f -c %T /dev/shm)" = tmpfs

passphrase="correct horse battery staple $RANDOM$RANDOM"
printf '%s' "$passphrase" >"$TEST_TMP/pass"
keyring_file="$(dirname "$CEPH_CONF")/ceph.client.admin.keyring"
key=$(sed -n 's/^[[:space:]]*key[[:space:]]*=[[:space:]]*\([^[:space:]]*\).*/\1/p' "$keyring_file")
[ -n "$key" ] || fail "no key in $keyring_file"
printf '%s' "$key" >"$TEST_TMP/key"
chmod 600 "$TEST_TMP/pass" "$TEST_TMP/key"
auth=(--conf "$CEPH_CONF" --id admin --key-file "$TEST_TMP/key")
enc=(--encrypted --passphrase-file "$TEST_TMP/pass" --pbkdf pbkdf2:1000)

# check_secrets STORE VOL: the volume's secrets are in STORE (0700), as
# 0600 files, and nowhere else in RUN_DIR or the logs.
check_secrets() {
  local store=$1 vol=$2 run_dir=$3 f n=0
  [ "$(stat -c %a "$store")" = 700 ] || fail "secret store $store has mode $(stat -c %a "$store")"
  for f in "$store/$vol".*; do
    [ -e "$f" ] || continue
    n=$((n + 1))
    [ "$(stat -c '%a %u' "$f")" = "600 0" ] || fail "$f: mode/owner $(stat -c '%a %u' "$f")"
  done
  [ "$n" = 2 ] || { ls -la "$store" >&2; fail "expected 2 secrets of $vol in $store, found $n"; }
  if grep -rqF -e "$passphrase" -e "$key" "$run_dir"; then fail "a secret is in a file of $run_dir"; fi
  if grep -qF -e "$passphrase" -e "$key" "$TEST_TMP"/*.log 2>/dev/null; then fail "a secret is in a log"; fi
}

# check_gone STORE VOL: no secret of VOL left in STORE.
check_gone() {
  if ls -A "$1" 2>/dev/null | grep -qF "$2"; then ls -la "$1" >&2; fail "secrets of $2 left in $1"; fi
}

# pattern NAME: 1 MiB of random data; write_at DEV NAME MIB / read_at DEV MIB.
pattern() { head -c 1M /dev/urandom >"$TEST_TMP/$1"; }
write_at() { dd if="$TEST_TMP/$2" of="$1" bs=1M seek="$3" oflag=direct conv=fsync,notrunc status=none; }
read_at() { dd if="$1" bs=1M skip="$2" count=1 iflag=direct status=none; }

# --- (a) a fresh session keyring per command --------------------------------
new_image img 128M
vol="rbd.$img"
store="${RBDGW_SECRET_DIR:-/run/rbdgw/@secrets}"
fresh() { keyctl session - "$RBDGW_CLI" --run-root "$RUN_ROOT" "$@"; }

dev=$(fresh map "rbd/$img" "${auth[@]}" "${enc[@]}" --attach userspace 2>"$TEST_TMP/map-a.log") ||
  { cat "$TEST_TMP/map-a.log" >&2; fail "(a) map under a fresh session keyring failed"; }
pattern a1
write_at "$dev" a1 4
kill -9 "$(jq -r .gateway.pid "$RUN_ROOT/$vol/stash.json")"
fresh reattach "$vol" >"$TEST_TMP/reattach-a.out" 2>"$TEST_TMP/reattach-a.log" ||
  { cat "$TEST_TMP/reattach-a.log" >&2; fail "(a) reattach under a fresh session keyring failed"; }
grep -q ok "$TEST_TMP/reattach-a.out" || fail "(a) reattach did not report ok"
check_secrets "$store" "$vol" "$RUN_ROOT"
read_at "$dev" 4 | cmp - "$TEST_TMP/a1" || fail "(a) data written before the kill differs"
pattern a2
write_at "$dev" a2 8
read_at "$dev" 8 | cmp - "$TEST_TMP/a2" || fail "(a) data written after the reattach differs"
fresh status "$vol" >/dev/null || fail "(a) volume not healthy after reattach"
fresh unmap "$vol" 2>"$TEST_TMP/unmap-a.log" || { cat "$TEST_TMP/unmap-a.log" >&2; fail "(a) unmap failed"; }
check_gone "$store" "$vol"
assert_clean
pass "(a) re-adopted under a fresh session keyring; secrets 0600 in the store, gone after unmap"

# --- (b) as the unit runs it, in the DaemonSet's container ------------------
hostrun=$(mktemp -d /dev/shm/rbdgw-hostrun.XXXXXX)  # the host's /run/rbdgw (tmpfs)
cleanup_fn "umount -R -l '$hostrun'; rm -rf '$hostrun'"
mount --bind "$hostrun" "$hostrun" && mount --make-shared "$hostrun" || fail "cannot make $hostrun a shared mount"
new_image img2 128M
vol2=$img2  # --volume-id, as rbdgw@VOLUME.service passes %i
stash2="$hostrun/$vol2/stash.json"
printf 'RBDGW_MAP_ARGS=rbd/%s %s %s --attach userspace\n' "$img2" "${auth[*]}" "${enc[*]}" >"$TEST_TMP/unit.conf"
map_args=$(sed -n 's/^RBDGW_MAP_ARGS=//p' "$TEST_TMP/unit.conf")

# unit CMD...: runs `rbdgw CMD...` as the unit would, in a fresh container.
unit() {
  # Propagation unchanged keeps $hostrun shared with the host; / and /run
  # are made private first so that the tmpfs over /run stays in here.
  keyctl session - unshare -m --propagation unchanged sh -c '
    umask 0077
    mount --make-private / && { ! mountpoint -q /run || mount --make-private /run; } &&
      mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/rbdgw && mount --rbind "$1" /run/rbdgw || exit 99
    shift
    exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin RBDGW_MAP_ARGS="$RBDGW_MAP_ARGS" \
      RBDGW_PLUGIN="$RBDGW_PLUGIN" RBDGW_FILTER="$RBDGW_FILTER" "$@"' \
    unit "$hostrun" "$RBDGW_CLI" "$@"
}
export RBDGW_MAP_ARGS="$map_args"
# Whatever a failed run left: the exporter and gateway (in their own mount
# namespaces), the loop device, the host directory.
_unit_cleanup() {
  [ -e "$stash2" ] || return 0
  unit unmap "$vol2" || true
  if [ -e "$stash2" ]; then
    local d p
    d=$(jq -r '.loop_device // empty' "$stash2")
    [ -n "$d" ] && losetup -d "$d"
    for p in $(jq -r '.fuse.pid, .gateway.pid' "$stash2"); do kill -9 "$p"; done
  fi
}
cleanup_fn _unit_cleanup

# shellcheck disable=SC2086 # RBDGW_MAP_ARGS is split, as systemd splits $VAR
dev2=$(unit map --volume-id "$vol2" $map_args 2>"$TEST_TMP/map-b.log") ||
  { cat "$TEST_TMP/map-b.log" >&2; fail "(b) map as the unit failed"; }
[ -b "$dev2" ] || fail "(b) map printed '$dev2', not a block device"
pattern b1
write_at "$dev2" b1 4
kill -9 "$(jq -r .gateway.pid "$stash2")"
unit reattach "$vol2" >"$TEST_TMP/reattach-b.out" 2>"$TEST_TMP/reattach-b.log" ||
  { cat "$TEST_TMP/reattach-b.log" >&2; fail "(b) reattach (ExecReload) in a restarted container failed"; }
grep -q ok "$TEST_TMP/reattach-b.out" || fail "(b) reattach did not report ok"
check_secrets "$hostrun/@secrets" "$vol2" "$hostrun/$vol2"
read_at "$dev2" 4 | cmp - "$TEST_TMP/b1" || fail "(b) data written before the kill differs"
pattern b2
write_at "$dev2" b2 8
read_at "$dev2" 8 | cmp - "$TEST_TMP/b2" || fail "(b) data written after the reattach differs"
unit status "$vol2" >/dev/null || fail "(b) volume not healthy after reattach"
gw=$(jq -r .gateway.pid "$stash2")
fuse=$(jq -r .fuse.pid "$stash2")
unit unmap "$vol2" 2>"$TEST_TMP/unmap-b.log" || { cat "$TEST_TMP/unmap-b.log" >&2; fail "(b) unmap (ExecStop) failed"; }
for p in "$gw" "$fuse"; do
  for ((i = 0; i < 50; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$p" 2>/dev/null; then fail "(b) process $p still running after unmap"; fi
done
if losetup -a | grep -q "/run/rbdgw/$vol2/"; then fail "(b) loop device left behind"; fi
check_gone "$hostrun/@secrets" "$vol2"
left=$(cd "$hostrun" && find . -mindepth 1 ! -path ./@secrets ! -path ./@secrets/boot_id)
[ -z "$left" ] || fail "(b) unmap left in the host's /run/rbdgw: $left"
pass "(b) re-adopted as rbdgw@.service in a restarted container; nothing left behind"
