#!/usr/bin/env bash
# The Debian package: cpack builds it from this build tree; it must carry
# the plugin, the filter, the programs, the man pages, the systemd units
# and the right dependencies; unpacked into a scratch root, the programs
# there must run (nbdkit loads the plugin and the filter from the scratch
# root) and must not point back into the build tree.
source "$(dirname "$0")/../../lib/functions.sh"
requires cpack --version
requires dpkg-deb --version
requires nbdkit --version

build=$RBDGW_BUILD_DIR
[ -f "$build/CPackConfig.cmake" ] || fail "$build/CPackConfig.cmake missing: configure the build tree first"
# The package is rbdgw with its CSI driver and CLI (RBDGW_BUILD_CSI=ON).
requires test -d "$build/csi-shim"
for t in nbdkit-plugin/rbd/nbdkit-rbd-plugin.so nbdkit-plugin/luks2/nbdkit-luks2-filter.so \
         csi-shim/rbdgw-csi csi-shim/cli/rbdgw csi-shim/fuse/rbdgw-fuse; do
  [ -e "$build/$t" ] || fail "$build/$t is not built (build everything before packaging)"
done

# 1. Build the package into the test's own directory (nothing lands in the build tree).
out=$TEST_TMP/out
# cpack's install step writes install_manifest.txt into the build tree.
[ -e "$build/install_manifest.txt" ] || cleanup_fn "rm -f '$build/install_manifest.txt'"
cpack -G DEB -B "$out" --config "$build/CPackConfig.cmake" >"$TEST_TMP/cpack.log" 2>&1 ||
  { cat "$TEST_TMP/cpack.log" >&2; fail "cpack -G DEB failed"; }
debs=("$out"/rbdgw_*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] || fail "expected one rbdgw_*.deb in $out, got: ${debs[*]}"
deb=${debs[0]}
pass "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"

# 2. Control fields: name, architecture, dependencies (shared libraries via
#    dpkg-shlibdeps plus the programs rbdgw runs).
[ "$(dpkg-deb -f "$deb" Package)" = rbdgw ] || fail "Package is not rbdgw"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$(dpkg --print-architecture)" ] || fail "wrong Architecture"
depends=$(dpkg-deb -f "$deb" Depends)
for p in librbd1 librados2 libcryptsetup12 libssl3 'libgrpc++1.51' libfuse3-3 libnbd0 \
         nbdkit fuse3 util-linux mount e2fsprogs; do
  grep -Eq "(^|, )${p//+/\\+}( |,|$)" <<<"$depends" || fail "Depends lacks $p: $depends"
done
pass "Depends: $depends"
# Every dependency must be resolvable on Debian 12 (apt's local lists, no download).
if command -v apt-get >/dev/null; then
  apt-get install -s -q "$deb" >"$TEST_TMP/apt.log" 2>&1 ||
    { cat "$TEST_TMP/apt.log" >&2; fail "apt-get cannot resolve the package's dependencies"; }
  pass "apt-get resolves the dependencies"
fi

# 3. Contents.
plugindir=$(pkg-config --variable=plugindir nbdkit)
filterdir=$(pkg-config --variable=filterdir nbdkit)
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$TEST_TMP/contents"
for f in "$plugindir/nbdkit-rbd-plugin.so" "$filterdir/nbdkit-luks2-filter.so" \
         /usr/sbin/rbdgw /usr/sbin/rbdgw-csi /usr/sbin/rbdgw-fuse /usr/sbin/rbdgw-gateway-host \
         /usr/share/man/man1/nbdkit-rbd-plugin.1 /usr/share/man/man1/nbdkit-luks2-filter.1 \
         /usr/share/man/man8/rbdgw.8 /usr/share/man/man8/rbdgw-csi.8 /usr/share/man/man8/rbdgw-gateway-host.8 \
         /lib/systemd/system/rbdgw-csi.service /lib/systemd/system/rbdgw@.service \
         /lib/systemd/system/rbdgw-gateway-host.service \
         /lib/systemd/system/rbdgw-serve.service /usr/share/man/man8/rbdgw-serve.8 \
         /etc/default/rbdgw-csi \
         /usr/share/doc/rbdgw/examples/kubernetes/storageclass.yaml \
         /usr/share/doc/rbdgw/examples/container/Containerfile; do
  grep -qxF "$f" "$TEST_TMP/contents" || fail "package lacks $f"
done
if grep -E '^/usr/local/|/include/|\.a$' "$TEST_TMP/contents"; then
  fail "package holds files under /usr/local, headers or static libraries"
fi
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles | grep -qxF /etc/default/rbdgw-csi ||
  fail "/etc/default/rbdgw-csi is not a conffile"
pass "contents: $(wc -l <"$TEST_TMP/contents") entries"

# 4. Unpack into a scratch root and run from there.
root=$TEST_TMP/root
dpkg -x "$deb" "$root"
plugin=$root$plugindir/nbdkit-rbd-plugin.so
filter=$root$filterdir/nbdkit-luks2-filter.so

nbdkit "$plugin" --dump-plugin >"$TEST_TMP/dump" 2>&1 || { cat "$TEST_TMP/dump" >&2; fail "nbdkit --dump-plugin failed"; }
grep -qx 'name=rbd' "$TEST_TMP/dump" || { cat "$TEST_TMP/dump" >&2; fail "no name=rbd"; }
grep -qx "path=$plugin" "$TEST_TMP/dump" || fail "nbdkit loaded another plugin than $plugin"
pass "nbdkit loads the plugin from the scratch root: $(grep -E '^(name|version)=' "$TEST_TMP/dump" | tr '\n' ' ')"

nbdkit --filter="$filter" null --help >"$TEST_TMP/filter-help" 2>&1 ||
  { cat "$TEST_TMP/filter-help" >&2; fail "nbdkit cannot load the luks2 filter"; }
grep -q 'luks2' "$TEST_TMP/filter-help" || fail "nbdkit --help does not show the luks2 filter"
pass "nbdkit loads the filter from the scratch root"

"$root/usr/sbin/rbdgw" --help >"$TEST_TMP/rbdgw-help" || fail "rbdgw --help failed"
grep -q '^usage: rbdgw ' "$TEST_TMP/rbdgw-help" || fail "rbdgw --help: unexpected output"
"$root/usr/sbin/rbdgw-csi" --help >"$TEST_TMP/csi-help" || fail "rbdgw-csi --help failed"
grep -q '^Usage: rbdgw-csi ' "$TEST_TMP/csi-help" || fail "rbdgw-csi --help: unexpected output"
rc=0; "$root/usr/sbin/rbdgw-csi" --no-such-flag >/dev/null 2>"$TEST_TMP/csi-err" || rc=$?
[ "$rc" = 2 ] && grep -q "unknown option '--no-such-flag'" "$TEST_TMP/csi-err" ||
  fail "rbdgw-csi with a bad flag: exit $rc, $(cat "$TEST_TMP/csi-err")"
rc=0; "$root/usr/sbin/rbdgw-fuse" >/dev/null 2>"$TEST_TMP/fuse-err" || rc=$?
[ "$rc" != 0 ] && grep -q 'usage: rbdgw-fuse' "$TEST_TMP/fuse-err" || fail "rbdgw-fuse without arguments: exit $rc"
"$root/usr/sbin/rbdgw-gateway-host" --help 2>&1 | grep -q '^usage: rbdgw-gateway-host' ||
  fail "rbdgw-gateway-host --help: unexpected output"
pass "rbdgw, rbdgw-csi, rbdgw-fuse and rbdgw-gateway-host run from the scratch root"

# Nothing may refer to the build tree (RPATH/RUNPATH), and every shared
# library must come from the system.
for f in "$plugin" "$filter" "$root"/usr/sbin/rbdgw "$root"/usr/sbin/rbdgw-csi "$root"/usr/sbin/rbdgw-fuse \
         "$root"/usr/sbin/rbdgw-gateway-host; do
  if readelf -d "$f" | grep -E 'R(UN)?PATH'; then fail "$f has an RPATH/RUNPATH"; fi
  if ldd "$f" | grep -q 'not found'; then ldd "$f" >&2; fail "$f: unresolved shared library"; fi
done
pass "no RPATH into the build tree; all shared libraries resolve"

# Man pages render, units parse.
for m in man1/nbdkit-rbd-plugin.1 man1/nbdkit-luks2-filter.1 man8/rbdgw.8 man8/rbdgw-csi.8 \
         man8/rbdgw-gateway-host.8 man8/rbdgw-serve.8; do
  page=$root/usr/share/man/$m
  out_txt=$(MANWIDTH=80 man -l "$page" 2>/dev/null) || fail "man -l $m failed"
  grep -q '^NAME' <<<"$out_txt" && grep -q '^SYNOPSIS' <<<"$out_txt" || fail "$m lacks NAME/SYNOPSIS"
done
pass "the six man pages render"
if command -v systemd-analyze >/dev/null; then
  for u in rbdgw-csi.service rbdgw@.service rbdgw-gateway-host.service rbdgw-serve.service; do
    unit=$root/lib/systemd/system/$u
    [ "$u" = rbdgw@.service ] && { cp "$unit" "$TEST_TMP/rbdgw@vol1.service"; unit=$TEST_TMP/rbdgw@vol1.service; }
    # Unknown keys or bad syntax are reported; missing /usr/sbin binaries
    # (the package is only unpacked) and man: links are not our concern here.
    systemd-analyze verify --man=no "$unit" 2>&1 |
      grep -vE 'is not executable: No such file or directory|Command .* failed with code' >"$TEST_TMP/verify" || true
    if [ -s "$TEST_TMP/verify" ]; then cat "$TEST_TMP/verify" >&2; fail "systemd-analyze verify $u"; fi
  done
  pass "systemd units verify"
fi

# The container image installs this package: its ENTRYPOINT must be in the
# package, and every package its RUN line names must exist in Debian 12.
containerfile=$RBDGW_SOURCE_DIR/packaging/container/Containerfile
entry=$(sed -n 's/^ENTRYPOINT \["\([^"]*\)".*/\1/p' "$containerfile")
[ -n "$entry" ] && grep -qxF "$entry" "$TEST_TMP/contents" || fail "Containerfile ENTRYPOINT '$entry' is not in the package"
mapfile -t image_pkgs < <(sed -n '/apt-get install/,/&& rm/p' "$containerfile" | tr ' \\' '\n\n' |
  grep -E '^[a-z0-9][a-z0-9.+-]+$' | grep -vxE 'apt-get|install|rm|&&')
[ ${#image_pkgs[@]} -ge 5 ] || fail "cannot find the package list in $containerfile"
for p in "${image_pkgs[@]}"; do
  apt-cache show "$p" >/dev/null 2>&1 || fail "Containerfile installs '$p', which Debian does not have"
done
pass "Containerfile: ENTRYPOINT $entry in the package; ${#image_pkgs[@]} Debian packages exist"
