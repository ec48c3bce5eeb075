#!/usr/bin/env bash
# Make the local base image `lgm-base:bookworm` (Debian bookworm minbase + python3 + python3-venv) with
# debootstrap and `docker import`, for machines that reach no image registry. Its python3 must be the version
# in docker/python-version (bookworm's 3.11.2), for which the wheelhouse is made; checked at the end. Needs root, debootstrap and a
# Debian mirror (apt's). Elsewhere, build with the public `python:3.11-slim-bookworm` base instead (the default).
#
#   docker/make_base_image.sh [TAG]      (TAG defaults to lgm-base:bookworm; does nothing if it exists)
set -euo pipefail
TAG="${1:-lgm-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE="${DEBIAN_SUITE:-bookworm}"
# The Python the wheelhouse is resolved for (docker/make_wheelhouse.sh): this base must ship exactly that one.
WANT="$(sed -n 's/^\([0-9][0-9.]*\)$/\1/p' "$(dirname "$0")/python-version")"

check_python() {
  local have
  have="$(docker run --rm --network none "$TAG" python3 -c 'import platform, venv; print(platform.python_version())')"
  echo "base image $TAG: python $have"
  [ "$have" = "$WANT" ] || {
    echo "make_base_image: $TAG ships Python $have but docker/python-version says $WANT: the wheelhouse would be" \
      "resolved for the wrong interpreter; set docker/python-version to $have" >&2
    exit 1
  }
}

if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "base image $TAG exists"
  check_python
  exit 0
fi
command -v debootstrap >/dev/null || { echo "make_base_image: debootstrap is missing (apt-get install debootstrap)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "make_base_image: debootstrap needs root" >&2; exit 2; }

ROOTFS="$(mktemp -d /tmp/lgm-rootfs.XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
# ca-certificates: lets pip reach the package index in online builds (an offline wheelhouse build needs none).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOTFS" "$MIRROR"
# Trim what a container never uses: apt lists and caches, docs, man pages, locales.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/*
tar --numeric-owner -C "$ROOTFS" -c . | docker import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$TAG"
check_python
