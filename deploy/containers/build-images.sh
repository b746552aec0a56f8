#!/bin/sh
# Builds the compose stack's images with podman (`make images`), tagged as compose.yaml names
# them. BASE_IMAGE is the base of all three. The project image's build uses this machine's pip
# configuration (certificate bundle, local indexes, wheel folders, constraints) as build
# arguments and read-only mounts, so a mirror that works here works inside and nothing of it
# stays.
set -eu
cd "$(dirname "$0")/../.."
base="${BASE_IMAGE:-debian:bookworm-slim}"
model=build/kserve/model-store/mnist.mar
test -f "$model" || { echo "no $model: run make kserve-store" >&2; exit 1; }

# A pip setting as this machine's pip sees it (its config files or PIP_* variables), or nothing.
pip_setting() {
    python3 -m pip config list 2>/dev/null | sed -n "s/^\(global\|:env:\)\.$1='\(.*\)'\$/\2/p" | tail -1
}

# Docker's image format: the OCI format has no HEALTHCHECK.
common="--format docker --build-arg BASE=$base"
set --
cert="$(pip_setting cert)"
if [ -n "$cert" ] && [ -f "$cert" ]; then
    set -- "$@" --volume "$(dirname "$cert"):/run/host-certs:ro" \
        --build-arg "PIP_CERT=/run/host-certs/$(basename "$cert")"
fi
indexes=""
for url in $(pip_setting extra-index-url); do
    folder="${url#file://}"
    if [ "$folder" != "$url" ] && [ -d "$folder" ]; then
        # The index's parent too: its pages link to the files beside it.
        set -- "$@" --volume "$(dirname "$folder"):$(dirname "$folder"):ro"
        indexes="$indexes $url"
    fi
done
[ -z "$indexes" ] || set -- "$@" --build-arg "PIP_EXTRA_INDEX_URL=${indexes# }"
constraint="$(pip_setting constraint)"
if [ -n "$constraint" ] && [ -f "$constraint" ]; then
    set -- "$@" --volume "$(dirname "$constraint"):$(dirname "$constraint"):ro" \
        --build-arg "PIP_CONSTRAINT=$constraint"
fi
links="$(pip_setting find-links)"
if [ -n "$links" ] && [ -d "$links" ]; then
    set -- "$@" --volume "$links:$links:ro" --build-arg "PIP_FIND_LINKS=$links"
fi

# shellcheck disable=SC2086  # $common is meant to split into its flags
podman build $common "$@" -t localhost/mnist:latest -f Containerfile .
podman build $common -t localhost/mnist-postgres:latest -f deploy/containers/postgres.Containerfile .
podman build $common -t localhost/mnist-prometheus:latest -f deploy/containers/prometheus.Containerfile .
podman images --filter reference='localhost/mnist*' --format '{{.Repository}}:{{.Tag}} {{.Size}}'
