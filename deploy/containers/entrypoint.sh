#!/bin/sh
# The image's entrypoint (Containerfile): `serve` (TorchServe), `app` (the drawing app),
# `kserve` (TorchServe on the layout KServe mounts at /mnt/models, deploy/k8s), or `health`, the
# health check of whichever of the first two this container runs.
set -eu
role_file=/tmp/mnist-role
case "${1:-serve}" in
    serve)
        echo serve > "$role_file"
        exec python -m serving.server foreground ;;
    app)
        echo app > "$role_file"
        exec python -m client_ui ;;
    kserve)
        exec python -m serving.kserve --serve ;;
    health)
        if [ "$(cat "$role_file")" = app ]; then
            exec python -m client_ui.health
        fi
        exec python -m serving.client health ;;
    *)
        exec "$@" ;;
esac
