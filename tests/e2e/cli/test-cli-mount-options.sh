#!/usr/bin/env bash
# rbdgw map --mount --options: generic options become mount(2) flags (the
# per-mount field of /proc/self/mountinfo), filesystem options the data
# string (its super options field), on ext4 and xfs; staging mounts are
# nodev,nosuid unless dev/suid is asked; an unknown or refused option is
# exit status 2 naming it, with nothing left mounted, looped or running.
source "$RBDGW_SOURCE_DIR/tests/lib/functions.sh"
source "$RBDGW_SOURCE_DIR/tests/e2e/cli/cli-functions.sh"
requires which mkfs.xfs mknod

mnt="$TEST_TMP/mnt"
mkdir "$mnt"

# The per-mount options and the super options of the mount at $mnt.
per_mount() { awk -v m="$mnt" '$5 == m { print $6 }' /proc/self/mountinfo; }
super_opts() { awk -v m="$mnt" '$5 == m { for (i = 7; $i != "-"; i++); print $(i + 3) }' /proc/self/mountinfo; }
has() { case ",$1," in *",$2,"*) return 0 ;; esac; return 1; }
expect_per() { has "$(per_mount)" "$1" || fail "$2: per-mount options '$(per_mount)' lack $1"; }
expect_no_per() { ! has "$(per_mount)" "$1" || fail "$2: per-mount options '$(per_mount)' show $1"; }
expect_super() { has "$(super_opts)" "$1" || fail "$2: super options '$(super_opts)' lack $1"; }

map() { cli map "rbd/$img" --conf "$CEPH_CONF" --mount "$mnt" --attach userspace "$@" >/dev/null; }
unmap() { cli unmap "$mnt"; assert_clean; }

# Behaviour: a script on a noexec mount cannot run; a device node on a
# nodev mount cannot be opened; on a ro mount a write fails EROFS.
script_runs() {
  printf '#!/bin/sh\nexit 0\n' >"$mnt/s.sh" 2>/dev/null || true
  chmod 755 "$mnt/s.sh" 2>/dev/null || true
  "$mnt/s.sh" 2>/dev/null
}
null_opens() {
  [ -c "$mnt/null" ] || mknod "$mnt/null" c 1 3
  : 2>/dev/null >"$mnt/null"
}

# --- ext4 ---------------------------------------------------------------
new_image img 256M
map  # formats it; no options: nodev,nosuid, the kernel's relatime
expect_per nodev "no options"; expect_per nosuid "no options"; expect_per relatime "no options"
expect_per rw "no options"
null_opens && fail "no options: a device node opened on the staging mount (nodev by default)"
unmap
pass "ext4, no options: nodev,nosuid by default"

map --options noatime,nodiratime,noexec,discard,data=ordered
for f in noatime nodiratime noexec nodev nosuid rw; do expect_per $f "noatime,nodiratime,noexec,..."; done
expect_no_per relatime "noatime"
expect_super discard "discard"; expect_super data=ordered "data=ordered"
has "$(super_opts)" noatime && fail "noatime reached the filesystem as data"
script_runs && fail "noexec: a script ran"
null_opens && fail "nodev: a device node opened"
unmap
pass "ext4: noatime nodiratime noexec nodev nosuid (flags), discard data=ordered (data)"

# dev, suid and exec are honoured; relatime; a script runs, the node opens.
map --options relatime,dev,suid,exec
expect_per relatime "relatime"; expect_no_per nodev "dev"; expect_no_per nosuid "suid"
expect_no_per noexec "exec"; expect_no_per noatime "relatime"
script_runs || fail "exec: the script did not run"
null_opens || fail "dev: the device node did not open"
unmap
pass "ext4: relatime dev suid exec"

# ro on a read-write map: the mount is read-only, writes fail EROFS.
map --options ro,strictatime
expect_per ro "ro"; expect_no_per relatime "strictatime"; expect_no_per noatime "strictatime"
err=$(sh -c "echo x >'$mnt/new'" 2>&1) && fail "ro: a write succeeded"
case "$err" in *"Read-only file system"*) ;; *) fail "ro: write failed with '$err', not EROFS" ;; esac
unmap
pass "ext4: ro (EROFS on write), strictatime"

# Unknown and refused options: exit 2 naming them, nothing left behind.
expect_status 2 map --options noatime,bogus_opt,nodev
grep -q "bogus_opt" "$TEST_TMP/err" || fail "unknown option: message does not name it: $(cat "$TEST_TMP/err")"
grep -q "noatime" <(grep -o "unknown mount option[^;]*" "$TEST_TMP/err") &&
  fail "unknown option: the message blames noatime: $(cat "$TEST_TMP/err")"
is_mp=$(awk -v m="$mnt" '$5 == m' /proc/self/mountinfo)
[ -z "$is_mp" ] || fail "unknown option left a mount: $is_mp"
assert_clean
expect_status 2 map --options nobarrier
grep -q "nobarrier" "$TEST_TMP/err" || fail "nobarrier: message does not name it"
assert_clean
expect_status 2 map --options nouuid  # an xfs option, not ext4's
grep -q "nouuid" "$TEST_TMP/err" || fail "nouuid on ext4: message does not name it"
assert_clean
pass "ext4: unknown bogus_opt, refused nobarrier, xfs-only nouuid: exit 2 naming them, nothing left"

# barrier=00 / 0x0 / +0 are barrier=0 to the kernel (kstrtouint, base 0),
# and a data string past one page is cut by mount(2): "...,barrier=01"
# with its '1' at byte 4095 reaches ext4 as barrier=0. Each refused.
for o in barrier=00 barrier=0x0 barrier=+0 "$(printf 'commit=5,%.0s' $(seq 454))barrier=01"; do
  rc=0
  map --options "$o" 2>"$TEST_TMP/err" || rc=$?
  if [ "$rc" = 0 ]; then
    seen="per-mount '$(per_mount)', super options '$(super_opts)'"
    unmap
    fail "map --options ${o:0:40}... succeeded: $seen"
  fi
  [ "$rc" = 2 ] || fail "${o:0:40}...: exit $rc, expected 2: $(cat "$TEST_TMP/err")"
  grep -q "fsync\|longer than" "$TEST_TMP/err" || fail "${o:0:40}...: not refused as nobarrier or too long: $(cat "$TEST_TMP/err")"
  [ -z "$(awk -v m="$mnt" '$5 == m' /proc/self/mountinfo)" ] || fail "${o:0:40}...: left a mount"
  assert_clean
done
pass "ext4: barrier=00, barrier=0x0, barrier=+0 and a data string cut by mount(2) to barrier=0: refused"

# --- xfs ----------------------------------------------------------------
new_image img 320M
map --fstype xfs --options nouuid,noatime,discard,noexec
for f in noatime noexec nodev nosuid rw; do expect_per $f "xfs nouuid,noatime,..."; done
expect_super nouuid "xfs nouuid"; expect_super discard "xfs discard"
script_runs && fail "xfs noexec: a script ran"
unmap
expect_status 2 map --fstype xfs --options data=ordered
grep -q "data=ordered" "$TEST_TMP/err" || fail "data=ordered on xfs: message does not name it"
assert_clean
pass "xfs: nouuid discard (data), noatime noexec nodev nosuid (flags); data=ordered refused"
