#!/usr/bin/env bash
# Kernel path of `rbdgw serve` (one VM boot): Debian's nbd-client 3.24 in the
# guest attaches /dev/nbd0 over TLS (x509 with a client certificate; its
# TLS options are -certfile/-keyfile/-cacertfile) to rbdgw serve on the host;
# mkfs.ext4, a file written, unmounted, disconnected; a second attach mounts
# it and reads the file back (checksum); on the host the image holds it too.
# The guest has no IP network: each attach goes to the guest's own
# 127.0.0.1, where a relay (serve-vport-relay.py) copies the bytes to a
# virtio-serial port whose host end qemu connected to serve's unix socket.
source "${RBDGW_SOURCE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}/tests/lib/functions.sh"

if [ "${RBDGW_IN_VM:-}" != 1 ]; then
  # --- host ------------------------------------------------------------------
  source "$RBDGW_SOURCE_DIR/tests/e2e/serve/serve-functions.sh"
  requires which qemu-system-x86_64 debugfs
  new_image img 64M
  make_ca "$TEST_TMP/ca" "rbdgw test CA"
  make_cert "$TEST_TMP/ca" "$TEST_TMP/pki" server localhost server
  make_cert "$TEST_TMP/ca" "$TEST_TMP/guest" client guest-vm
  cat >"$TEST_TMP/serve.json" <<J
{ "listen": ["unix:$TEST_TMP/serve.sock"],
  "tls": { "certificates": "$TEST_TMP/pki" },
  "cluster": { "conf": "$CEPH_CONF" },
  "run_dir": "$SERVE_RUN",
  "negotiation_timeout": 0,
  "exports": [ { "name": "vol", "image": "rbd/$img", "encryption": "none", "allow": ["x509:guest-vm"] } ] }
J
  # qemu connects both channels at boot; the guest uses the second minutes
  # later, so no negotiation timeout here (negotiation_timeout 0).
  start_serve "$TEST_TMP/serve.json"
  mkdir -p "$TEST_TMP/out"
  q="-device virtio-serial-pci"
  for i in 1 2; do
    q+=" -chardev socket,id=nbd$i,path=$TEST_TMP/serve.sock -device virtserialport,chardev=nbd$i,name=nbd$i"
  done
  rc=0
  RBDGW_VM_QEMU_ARGS="$q" "$RBDGW_SOURCE_DIR/tests/kernel-vm/run-in-vm.sh" --timeout 600 \
    --share "$TEST_TMP" --env "HOST_TMP=$TEST_TMP" "$0" || rc=$?
  [ "$rc" = 0 ] || { tail -20 "$TEST_TMP/serve.log" >&2; exit "$rc"; }
  log_has "(x509:guest-vm): export 'vol' opened"
  # The image itself holds the guest's file.
  rbd_cli export --no-progress "rbd/$img" "$TEST_TMP/image"
  debugfs -R "dump /data $TEST_TMP/data-host" "$TEST_TMP/image" 2>/dev/null
  [ "$(sha256sum <"$TEST_TMP/data-host")" = "$(cat "$TEST_TMP/out/sum")" ] ||
    fail "the image's /data differs from what the guest wrote"
  pass "host: the image holds the ext4 file the guest wrote over TLS"
  stop_serve "$SERVE_PID"
  assert_serve_clean
  exit 0
fi

# --- in the guest ----------------------------------------------------------------
requires which nbd-client mkfs.ext4 e2fsck python3
modprobe nbd
modprobe virtio_console
for _ in $(seq 50); do [ -e /sys/class/virtio-ports ] && break; sleep 0.1; done
C=$HOST_TMP/guest
relay() {  # relay N: a relay for port nbdN on 127.0.0.1:1080N, waits until it listens
  rm -f "$TEST_TMP/ready$1"
  python3 "$RBDGW_SOURCE_DIR/tests/kernel-vm/serve-vport-relay.py" "nbd$1" "1080$1" "$TEST_TMP/ready$1" &
  for _ in $(seq 100); do [ -e "$TEST_TMP/ready$1" ] && return 0; sleep 0.1; done
  fail "relay $1 did not start"
}
attach() {  # attach N
  nbd-client 127.0.0.1 "1080$1" /dev/nbd0 -N vol -certfile "$C/client-cert.pem" \
    -keyfile "$C/client-key.pem" -cacertfile "$C/ca-cert.pem" -tlshostname localhost ||
    fail "nbd-client attach $1 over TLS"
  for _ in $(seq 100); do [ "$(cat /sys/block/nbd0/size)" != 0 ] && break; sleep 0.1; done
  [ "$(cat /sys/block/nbd0/size)" = $((64 << 20 >> 9)) ] || fail "/dev/nbd0 size $(cat /sys/block/nbd0/size) sectors"
}
detach() {
  nbd-client -d /dev/nbd0 || fail "nbd-client -d"
}

relay 1
attach 1
pass "guest: nbd-client attached /dev/nbd0 over TLS (x509) through the relay"
mkfs.ext4 -q /dev/nbd0
M=$TEST_TMP/mnt
mkdir -p "$M"
mount /dev/nbd0 "$M"
head -c 8M /dev/urandom >"$M/data"
sha256sum <"$M/data" >"$HOST_TMP/out/sum"
sync
umount "$M"
detach
pass "guest: mkfs.ext4, 8 MiB written, unmounted, detached"

relay 2
attach 2
e2fsck -fn /dev/nbd0 >/dev/null || fail "e2fsck after reattach"
mount /dev/nbd0 "$M"
[ "$(sha256sum <"$M/data")" = "$(cat "$HOST_TMP/out/sum")" ] || fail "read-back differs"
umount "$M"
detach
pass "guest: re-attached over TLS, fsck clean, the file reads back"
