#!/usr/bin/env bash
# Collect the .deb files an image needs (the packages named, default HAProxy 2.6 for the load balancer, and
# whatever of their dependencies the base image lacks) into a folder (default debs/), for an offline build:
#   docker/make_debs.sh debs                      docker build -f docker/haproxy/Dockerfile --build-arg DEBS=debs
#   docker/make_debs.sh debs-redis redis-server   docker build -f docker/redis/Dockerfile --build-arg DEBS=debs-redis
# (then apt-get reads the files alone). One folder per image: each Dockerfile installs every .deb it is given.
# apt-get runs inside the base image itself, so the set is exactly what that image would install; it reaches
# Debian's mirror through the host's network, with the release's -updates and -security suites added when the
# base lists only the release (a debootstrap base does), so that HAProxy comes with its security fixes.
# Needs a Docker engine and the base image.
#   docker/make_debs.sh [DEST [PACKAGE...]]   env: LGM_BASE_IMAGE (default python:3.11-slim-bookworm), DEBIAN_SECURITY_MIRROR
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-debs}"
shift || true
PACKAGES="${*:-haproxy=2.6.*}"
BASE_IMAGE="${LGM_BASE_IMAGE:-python:3.11-slim-bookworm}"
mkdir -p "$DEST"
rm -f "$DEST"/*.deb
# The sandbox user _apt cannot write to a bind mount owned by root: download as root.
SECURITY="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
docker run --rm --network host --user 0 -e SECURITY="$SECURITY" -e PACKAGES="$PACKAGES" -v "$PWD/$DEST:/debs" "$BASE_IMAGE" sh -c '
  set -euf  # no globbing: PACKAGES holds apt patterns such as haproxy=2.6.*
  . /etc/os-release
  list=/etc/apt/sources.list
  if [ -f "$list" ] && ! grep -q -- "-security" "$list" /etc/apt/sources.list.d/* 2>/dev/null; then
    mirror=$(awk "\$1 == \"deb\" {print \$2; exit}" "$list")
    echo "deb $mirror $VERSION_CODENAME-updates main" >> "$list"
    echo "deb $SECURITY $VERSION_CODENAME-security main" >> "$list"
  fi
  apt-get -qq -o APT::Sandbox::User=root update
  apt-get -qq -y -o APT::Sandbox::User=root -o Dir::Cache::archives=/debs --download-only \
    --no-install-recommends install $PACKAGES
  rm -rf /debs/partial /debs/lock'
echo "$BASE_IMAGE" > "$DEST/base-image"
echo "$PACKAGES" > "$DEST/packages"
echo "debs: $(ls "$DEST"/*.deb | wc -l) packages, $(du -sh "$DEST" | cut -f1) in $DEST for $BASE_IMAGE:"
ls "$DEST"/*.deb | xargs -n1 basename | sed 's/^/  /'
