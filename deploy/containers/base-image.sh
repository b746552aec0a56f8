#!/bin/sh
# Makes localhost/bookworm-min from Debian's packages (debootstrap), for machines that reach
# Debian's mirror but no image registry: then `make compose-smoke BASE_IMAGE=localhost/bookworm-min`.
set -eu
image=localhost/bookworm-min
if podman image exists "$image"; then
    echo "$image exists"
    exit 0
fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
tar -C "$rootfs" -c . | podman import - "$image"
