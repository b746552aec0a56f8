#!/bin/sh
# First start: make the cluster (password logins only), its database and owner; then run it.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (the compose stack reads it from deploy/compose/.env)}"
user="${POSTGRES_USER:-mnist}"
database="${POSTGRES_DB:-mnist}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    password_file="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$password_file"
    initdb --username="$user" --pwfile="$password_file" --auth=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$database\" OWNER \"$user\";" \
        | postgres --single -D "$PGDATA" -j postgres >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
