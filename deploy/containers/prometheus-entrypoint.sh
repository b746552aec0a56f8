#!/bin/sh
# The app's login goes to a file only Prometheus reads (basic_auth password_file), then run it.
set -eu
umask 077
printf '%s' "${UI_PASSWORD:?set UI_PASSWORD}" > /prometheus/app-password
exec prometheus --config.file=/etc/mnist/prometheus.yml --storage.tsdb.path=/prometheus \
    --web.listen-address=0.0.0.0:9090 "$@"
