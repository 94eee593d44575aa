#!/bin/busybox sh
# /init of the initramfs that run-in-vm.sh builds (PID 1, busybox ash).
#
# Loads the virtio/9p modules, mounts the host's / read-only over 9p at
# /newroot, lays tmpfs and the kernel filesystems over it, mounts the
# writable shares, runs /job/run.sh in a chroot of /newroot, prints
# "RBDGW-VM-RESULT: rc=N" on the console and powers off.
# On any setup error it prints "RBDGW-VM-SETUP-FAILED: ..." and powers off.

/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin /proc /sys /dev /newroot
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

R=/newroot
P9='trans=virtio,version=9p2000.L,msize=512000'

power_off() {
  sync
  echo o >/proc/sysrq-trigger
  sleep 60
}
fail() {
  echo "RBDGW-VM-SETUP-FAILED: $*"
  power_off
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
exec </dev/console >/dev/console 2>&1

while read -r m; do
  insmod "/modules/$m" || fail "insmod $m"
done </modules.list

ip link set lo up || fail "ip link set lo up"

vm_hostname=
script_copy=
shares=
share() { shares="$shares $1"; eval "share_path_$1=\$2"; }
script_copy() { script_copy=$1; }
. /job/config || fail "reading /job/config"
[ -n "$vm_hostname" ] && hostname "$vm_hostname"

mount -t 9p -o "$P9,ro,cache=loose" host "$R" || fail "mount the host root (9p tag 'host')"

mount -t proc proc "$R/proc" || fail "mount $R/proc"
mount -t sysfs sysfs "$R/sys" || fail "mount $R/sys"

# /dev: the initramfs devtmpfs plus what a normal system has.
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts || fail "mount devpts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm || fail "mount /dev/shm"
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mount -o rbind /dev "$R/dev" || fail "bind /dev"

mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp" || fail "mount $R/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs "$R/run" || fail "mount $R/run"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/var/tmp" || fail "mount $R/var/tmp"
mkdir -p "$R/run/lock" "$R/run/rbdgw-vm" && chmod 1777 "$R/run/lock"

# Writable shares, at their host paths (a mount point under a tmpfs, e.g.
# /tmp/x, does not exist yet in the guest: create it).
for tag in $shares; do
  eval "p=\$share_path_$tag"
  [ -d "$R$p" ] || mkdir -p "$R$p" || fail "mkdir $p for share $tag"
  mount -t 9p -o "$P9,rw,cache=mmap" "$tag" "$R$p" || fail "mount share $tag at $p"
done

# The script lives under a host tmpfs path: put a copy at the same path.
if [ -n "$script_copy" ]; then
  mkdir -p "$R${script_copy%/*}" && cp -p /job/script "$R$script_copy" ||
    fail "copy the script to $script_copy"
fi

echo /bin/modprobe-chroot >/proc/sys/kernel/modprobe

cp /job/run.sh "$R/run/rbdgw-vm/run.sh" || fail "copy the job"
chroot "$R" /bin/bash /run/rbdgw-vm/run.sh
rc=$?

sync
for tag in $shares; do
  eval "p=\$share_path_$tag"
  umount "$R$p" 2>/dev/null || umount -l "$R$p" 2>/dev/null
done
echo "RBDGW-VM-RESULT: rc=$rc"
# Let the UART drain before the power goes.
sleep 0.2
power_off
