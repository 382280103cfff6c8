#!/bin/sh
# Starts PostgreSQL on the data volume, making the cluster and the database on
# first start: user POSTGRES_USER with password POSTGRES_PASSWORD (required),
# database POSTGRES_DB, password authentication for every network client.
set -eu
: "${POSTGRES_USER:=grantmesh}"
: "${POSTGRES_DB:=grantmesh}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD (see .env.example)}"
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    # Containers on the compose network reach the server with the password.
    printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' \
        >>"$PGDATA/pg_hba.conf"
    echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\";" |
        postgres --single -D "$PGDATA" -j postgres >/dev/null
    echo "postgres: made the cluster and database $POSTGRES_DB" >&2
fi
# The socket lives in /tmp: Debian's default /run/postgresql is not in the image.
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
