#!/bin/sh
# The app's metrics token goes to a file only Prometheus reads (credentials_file), then run it.
set -eu
umask 077
rm -f /prometheus/app-password  # an older stack's copy of the app's login
printf '%s' "${METRICS_TOKEN:?set METRICS_TOKEN}" > /prometheus/app-metrics-token
exec prometheus --config.file=/etc/mnist/prometheus.yml --storage.tsdb.path=/prometheus \
    --web.listen-address=0.0.0.0:9090 "$@"
