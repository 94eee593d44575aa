#!/usr/bin/env bash
# Run a test script as root inside a throwaway qemu VM with Debian's own
# kernel, so that the real kernel paths (nbd.ko, dm-crypt, ext4) can be
# exercised on hosts that lack them (no KVM: qemu runs with -accel tcg).
#
# Usage: tests/kernel-vm/run-in-vm.sh [OPTIONS] SCRIPT [ARGS...]
#   --timeout SEC   kill the VM after SEC seconds (default 300, or $RBDGW_VM_TIMEOUT)
#   --mem MB        guest memory (default 1024, or $RBDGW_VM_MEM)
#   --cpus N        guest CPUs (default 1, or $RBDGW_VM_CPUS)
#   --share HOSTDIR mount HOSTDIR read-write in the guest at the same path
#                   (repeatable); everything else of the host is read-only
#   --env NAME=VAL  export NAME=VAL to SCRIPT in the guest (repeatable);
#                   host variables named RBDGW_* are passed through as well
#   --quiet         do not stream the guest console; show its tail on failure
#
# SCRIPT is a host path; the guest sees the host's / read-only at the same
# paths, runs SCRIPT (bash if it is not executable) in a chroot of it with
# ARGS, RBDGW_IN_VM=1, /proc /sys /dev mounted, tmpfs on /tmp /run /var/tmp
# /dev/shm, and the host's /lib/modules behind modprobe.
#
# Exit status: SCRIPT's exit status; 124 on timeout; 125 when the VM did not
# boot or report a result; 77 when a prerequisite is missing (skip); 2 on
# bad usage.
set -euo pipefail

prog=run-in-vm
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

timeout_s=${RBDGW_VM_TIMEOUT:-300}
mem_mb=${RBDGW_VM_MEM:-1024}
cpus=${RBDGW_VM_CPUS:-1}
quiet=0
shares=()
envs=()

usage() { sed -n '6,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }
die() { echo "$prog: $*" >&2; exit 2; }
skip() { echo "$prog: SKIP: $*" >&2; exit 77; }
is_uint() { [[ $1 =~ ^[0-9]+$ ]] && [ "$1" -gt 0 ]; }

while [ $# -gt 0 ]; do
  case "$1" in
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --mem) [ $# -ge 2 ] || usage; mem_mb=$2; shift 2 ;;
    --cpus) [ $# -ge 2 ] || usage; cpus=$2; shift 2 ;;
    --share) [ $# -ge 2 ] || usage; shares+=("$2"); shift 2 ;;
    --env) [ $# -ge 2 ] || usage; envs+=("$2"); shift 2 ;;
    --quiet) quiet=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    -*) die "unknown option '$1'" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
is_uint "$timeout_s" || die "--timeout: not a positive integer: '$timeout_s'"
is_uint "$mem_mb" || die "--mem: not a positive integer: '$mem_mb'"
is_uint "$cpus" || die "--cpus: not a positive integer: '$cpus'"

script=$(realpath -e -- "$1" 2>/dev/null) || die "script not found: '$1'"
[ -f "$script" ] || die "script is not a regular file: '$script'"
shift

share_paths=()
for s in "${shares[@]}"; do
  p=$(realpath -e -- "$s" 2>/dev/null) || die "--share: no such directory: '$s'"
  [ -d "$p" ] || die "--share: not a directory: '$p'"
  [ "$p" != / ] || die "--share: refusing to share / read-write"
  share_paths+=("$p")
done
# The guest lays tmpfs over /tmp, /run, /var/tmp and /dev/shm: a source or
# build tree there (a CI clone, say) is shared into the guest at its path.
for d in "${RBDGW_SOURCE_DIR:-}" "${RBDGW_BUILD_DIR:-}"; do
  [ -n "$d" ] && d=$(realpath -e -- "$d" 2>/dev/null) || continue
  case "$d" in /tmp/*|/run/*|/var/tmp/*|/dev/shm/*) ;; *) continue ;; esac
  covered=0
  for p in "${share_paths[@]}"; do
    case "$d/" in "$p"/*) covered=1 ;; esac
  done
  [ "$covered" = 1 ] || share_paths+=("$d")
done
for e in "${envs[@]}"; do
  [[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env: expected NAME=VALUE, got '$e'"
done

# --- prerequisites ----------------------------------------------------------
for tool in qemu-system-x86_64 timeout cpio modprobe; do
  command -v "$tool" >/dev/null || skip "$tool not found (run packaging/install-deps.sh --with-kernel-vm)"
done
busybox=${RBDGW_VM_BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || skip "$busybox not found (install busybox-static)"
if ldd "$busybox" >/dev/null 2>&1; then
  skip "$busybox is dynamically linked (install busybox-static)"
fi

# The guest kernel must match the host's modules tree, which the guest's
# modprobe reads through the root share.
kver=${RBDGW_VM_KERNEL_VERSION:-}
if [ -z "$kver" ]; then
  kver=$(find /lib/modules/ -mindepth 1 -maxdepth 1 -type d -printf '%f\n' 2>/dev/null | sort -V | tail -n 1)
fi
if [ -z "$kver" ] || [ ! -d "/lib/modules/$kver" ]; then
  skip "no /lib/modules/<version> (install linux-image-amd64)"
fi
kernel=/boot/vmlinuz-$kver
[ -r "$kernel" ] || skip "$kernel missing or unreadable (install linux-image-amd64; needs root)"
[ -r "/lib/modules/$kver/modules.dep" ] || skip "/lib/modules/$kver/modules.dep missing (run depmod $kver)"

# --- temp dir, cleanup --------------------------------------------------------
# Sweep temp dirs left by runs that were SIGKILLed (their owner is gone).
for d in /tmp/rbdgw-vm.*; do
  [ -f "$d/owner.pid" ] || continue
  owner=$(cat "$d/owner.pid" 2>/dev/null) || continue
  [[ $owner =~ ^[0-9]+$ ]] && ! kill -0 "$owner" 2>/dev/null && rm -rf -- "$d"
done
tmp=$(mktemp -d /tmp/rbdgw-vm.XXXXXX)
echo $$ >"$tmp/owner.pid"
qemu_pid=
tail_pid=
# shellcheck disable=SC2317  # invoked by the traps
cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    kill -TERM "$qemu_pid" 2>/dev/null || true   # timeout forwards it to qemu
    wait "$qemu_pid" 2>/dev/null || true
  fi
  if [ -n "$tail_pid" ]; then
    kill "$tail_pid" 2>/dev/null || true
    wait "$tail_pid" 2>/dev/null || true
  fi
  rm -rf -- "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "$prog: interrupted" >&2; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Quote for both bash and busybox ash: 'it'\''s'.
sq() { local q="'\\''"; printf "'%s'" "${1//\'/$q}"; }

# --- initramfs --------------------------------------------------------------
ird=$tmp/initramfs
mkdir -p "$ird/bin" "$ird/modules" "$ird/job"
cp "$busybox" "$ird/bin/busybox"

# Modules needed before the root share is up, in load order, deduplicated.
: >"$ird/modules.list"
want_mods=(virtio_pci 9pnet_virtio 9p)
if modprobe -S "$kver" -D virtio_rng >/dev/null 2>&1; then want_mods+=(virtio_rng); fi
: >"$tmp/deps"
for m in "${want_mods[@]}"; do
  modprobe -S "$kver" -D "$m" >>"$tmp/deps" 2>/dev/null || skip "module $m not found for kernel $kver"
done
awk '$1 == "insmod" && !seen[$2]++ { print $2 }' "$tmp/deps" >"$tmp/mods"
while read -r ko; do
  base=$(basename "$ko")
  case "$base" in
    *.ko) cp "$ko" "$ird/modules/$base" ;;
    *.ko.xz) base=${base%.xz}; xz -dc "$ko" >"$ird/modules/$base" ;;
    *.ko.zst) base=${base%.zst}; zstd -qdc "$ko" >"$ird/modules/$base" ;;
    *.ko.gz) base=${base%.gz}; gzip -dc "$ko" >"$ird/modules/$base" ;;
    *) skip "unknown module file type: $ko" ;;
  esac
  echo "$base" >>"$ird/modules.list"
done <"$tmp/mods"
[ -s "$ird/modules.list" ] || skip "could not resolve the virtio/9p modules for $kver"

# The job: shares to mount, then the guest-side runner (bash, in the chroot).
{
  echo "vm_hostname=$(sq "$(hostname)")"
  i=0
  for p in "${share_paths[@]}"; do
    echo "share share$i $(sq "$p")"
    i=$((i + 1))
  done
  # The guest lays tmpfs over these, hiding the host's files: a script that
  # lives there (and not in a share) is copied to the same path in the guest.
  case "$script" in
    /tmp/*|/run/*|/var/tmp/*|/dev/shm/*)
      in_share=0
      for p in "${share_paths[@]}"; do
        case "$script" in "$p"/*) in_share=1 ;; esac
      done
      if [ "$in_share" = 0 ]; then
        cp -p "$script" "$ird/job/script"
        echo "script_copy $(sq "$script")"
      fi ;;
  esac
} >"$ird/job/config"

{
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export HOME=/tmp LANG=C.UTF-8 TERM=dumb RBDGW_IN_VM=1'
  while IFS= read -r name; do
    [ "$name" = RBDGW_IN_VM ] && continue
    echo "export $name=$(sq "${!name}")"
  done < <(compgen -e | grep '^RBDGW_' || true)
  for e in "${envs[@]}"; do
    echo "export ${e%%=*}=$(sq "${e#*=}")"
  done
  echo "cd $(sq "$PWD") 2>/dev/null || cd /"
  if [ -x "$script" ]; then cmd=$(sq "$script"); else cmd="/bin/bash $(sq "$script")"; fi
  for a in "$@"; do cmd+=" $(sq "$a")"; done
  echo "exec $cmd </dev/null"
} >"$ird/job/run.sh"

# Kernel-requested module loads (crypto algorithms, fs-ext4, ...) run the
# usermode helper in the initramfs root: hand them to the host's modprobe.
cat >"$ird/bin/modprobe-chroot" <<'EOF'
#!/bin/sh
exec /bin/busybox chroot /newroot /sbin/modprobe "$@"
EOF
chmod 755 "$ird/bin/modprobe-chroot"

cp "$here/guest-init.sh" "$ird/init"
chmod 755 "$ird/init"
(cd "$ird" && find . -print0 | cpio --null -o -H newc --quiet) >"$tmp/initramfs.cpio"

# --- run ----------------------------------------------------------------------
log=$tmp/console.log
: >"$log"
virtfs=(-virtfs "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap")
i=0
for p in "${share_paths[@]}"; do
  # qemu's option parser splits on commas; a comma in a path must be doubled.
  virtfs+=(-virtfs "local,path=${p//,/,,},mount_tag=share$i,security_model=none,multidevs=remap")
  i=$((i + 1))
done
rng=()
if grep -qx 'virtio-rng.ko' "$ird/modules.list"; then rng=(-device virtio-rng-pci); fi
# $RBDGW_VM_QEMU_ARGS: extra qemu arguments (split on whitespace), e.g. the
# virtio-serial channels of test-serve-nbd-client-tls.sh.
read -r -a extra_qemu <<<"${RBDGW_VM_QEMU_ARGS:-}"

start=$(date +%s)
# Parent-death signals take timeout and qemu down even if this script is
# SIGKILLed (as a test driver's own timeout may do).
pdeath=()
if setpriv --help 2>/dev/null | grep -q -- --pdeathsig; then pdeath=(setpriv --pdeathsig KILL); fi
"${pdeath[@]}" timeout -k 10 "$timeout_s" "${pdeath[@]}" qemu-system-x86_64 \
  -accel "tcg,${RBDGW_VM_TCG_OPTS:-tb-size=256}" -cpu "${RBDGW_VM_CPU:-max}" -smp "$cpus" -m "$mem_mb" \
  -nodefaults -no-user-config -display none -no-reboot -nic none \
  -serial "file:$log" \
  -kernel "$kernel" -initrd "$tmp/initramfs.cpio" \
  -append "console=ttyS0 quiet panic=-1 rdinit=/init mitigations=off ${RBDGW_VM_APPEND:-}" \
  "${virtfs[@]}" "${rng[@]}" "${extra_qemu[@]}" \
  </dev/null >"$tmp/qemu.out" 2>&1 &
qemu_pid=$!

if [ "$quiet" = 0 ]; then
  # Stream the console live, without the serial line's carriage returns.
  tail -n +1 -F --pid="$qemu_pid" "$log" 2>/dev/null | sed -u 's/\r$//' &
  tail_pid=$!
fi

set +e
wait "$qemu_pid"
qrc=$?
set -e
qemu_pid=
if [ -n "$tail_pid" ]; then wait "$tail_pid" 2>/dev/null || true; tail_pid=; fi
elapsed=$(( $(date +%s) - start ))

show_tail() {
  echo "$prog: --- last 40 lines of the guest console ---" >&2
  tail -n 40 "$log" | sed 's/\r$//' >&2
  if [ -s "$tmp/qemu.out" ]; then
    echo "$prog: --- qemu output ---" >&2
    tail -n 20 "$tmp/qemu.out" >&2
  fi
  echo "$prog: ---" >&2
}

result=$(grep -ao 'RBDGW-VM-RESULT: rc=[0-9]*' "$log" | tail -n 1 || true)
if [ -n "$result" ]; then
  rc=${result##*rc=}
  echo "$prog: guest script exited with rc=$rc after ${elapsed}s (kernel $kver)" >&2
  if [ "$rc" != 0 ] && [ "$quiet" = 1 ]; then show_tail; fi
  exit "$rc"
fi

if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
  echo "$prog: TIMEOUT: no result after ${timeout_s}s; VM killed" >&2
  show_tail
  exit 124
fi
if grep -aq 'RBDGW-VM-SETUP-FAILED' "$log"; then
  echo "$prog: guest setup failed: $(grep -ao 'RBDGW-VM-SETUP-FAILED: .*' "$log" | tail -n 1 | tr -d '\r')" >&2
else
  echo "$prog: VM exited (qemu rc=$qrc) after ${elapsed}s without a result line" >&2
fi
show_tail
exit 125
