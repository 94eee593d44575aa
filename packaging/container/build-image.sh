#!/usr/bin/env bash
# Builds the rbdgw-csi container image with podman without a registry: the
# Debian base comes from debootstrap and `podman import`.
#
# Usage: packaging/container/build-image.sh BUILD-DIR [TAG]
#   BUILD-DIR  a configured and built rbdgw tree (cmake + make); the .deb is
#              made there with `cpack -G DEB` unless one is already present
#   TAG        image name (default localhost/rbdgw-csi:<version of the .deb>)
#
# Needs: podman, debootstrap, root; network access to a Debian
# mirror for debootstrap and for apt-get inside the build (the mirror is
# $DEBIAN_MIRROR, default http://deb.debian.org/debian).
# On hosts where crun fails (hybrid cgroups), the build uses runc, and you
# may need ulimits in containers.conf ([containers] default_ulimits =
# ["nofile=20000:20000", "nproc=32768:32768"]).
#
# Steps, each skipped when already done:
#   1. cpack -G DEB in BUILD-DIR                       -> rbdgw_<ver>_<arch>.deb
#   2. debootstrap --variant=minbase bookworm (~80 s)  -> podman import
#      as localhost/debian:bookworm-minbase
#   3. podman build -f Containerfile with the .deb     -> TAG
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 1 ] || { sed -n '2,22p' "$0" >&2; exit 2; }
build=$(cd "$1" && pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
base=localhost/debian:bookworm-minbase

command -v podman >/dev/null || { echo "build-image: needs podman (apt-get install podman runc debootstrap)" >&2; exit 1; }

# 1. The package.
shopt -s nullglob
debs=("$build"/rbdgw_*.deb)
if [ ${#debs[@]} -eq 0 ]; then
  echo "build-image: making the .deb (cpack -G DEB in $build)"
  (cd "$build" && cpack -G DEB >/dev/null)
  debs=("$build"/rbdgw_*.deb)
fi
[ ${#debs[@]} -eq 1 ] || { echo "build-image: expected one rbdgw_*.deb in $build, found ${#debs[@]}" >&2; exit 1; }
deb=${debs[0]}
version=$(dpkg-deb -f "$deb" Version)
tag=${2:-localhost/rbdgw-csi:$version}

work=$(mktemp -d /tmp/rbdgw-image.XXXXXX)
trap 'rm -rf "$work"' EXIT

# 2. The base image.
if ! podman image exists "$base"; then
  command -v debootstrap >/dev/null || { echo "build-image: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
  echo "build-image: debootstrap bookworm into $work/rootfs (about a minute or two)"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  echo "build-image: importing it as $base"
  tar -C "$work/rootfs" -c . | podman import - "$base" >/dev/null
  rm -rf "$work/rootfs"
fi

# 3. The image.
cp "$here/Containerfile" "$deb" "$work/"
echo "build-image: building $tag"
podman build --runtime runc --build-arg BASE="$base" -f "$work/Containerfile" -t "$tag" "$work"
echo "build-image: done: $tag"
echo "  run it: podman run --rm $tag --help"
