#!/bin/sh
# The image's entrypoint (Containerfile): `serve` (TorchServe), `app` (the drawing app), or
# `health`, the health check of whichever of the two this container runs.
set -eu
role_file=/tmp/mnist-role
case "${1:-serve}" in
    serve)
        echo serve > "$role_file"
        exec python -m serving.server foreground ;;
    app)
        echo app > "$role_file"
        exec python -m client_ui ;;
    health)
        if [ "$(cat "$role_file")" = app ]; then
            exec python -m client_ui.health
        fi
        exec python -m serving.client health ;;
    *)
        exec "$@" ;;
esac
