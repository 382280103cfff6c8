#!/bin/sh
# Starts PostgreSQL on the data volume, making the cluster and the database on
# first start: user POSTGRES_USER with password POSTGRES_PASSWORD (required),
# database POSTGRES_DB, password authentication for every network client.
#
# Every start also makes sure of one database role per grantmesh role, each
# with only what it needs (their passwords from the environment, set again
# at every start so that .env stays the truth):
#   grantmesh_college  owns schema `college` (its tables, its migrations)
#   grantmesh_agency   owns schema `agency`; no access to `college`
#   grantmesh_audit    reads `college` (the simulation's audit), writes nothing
# Each role's search_path is its schema, so the services' unqualified table
# names land there.
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

# `'` doubled, for a SQL string literal.
literal() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/''/g")"; }
roles_sql() {
    for role in college agency audit; do
        var=$(echo "${role}_db_password" | tr '[:lower:]' '[:upper:]')
        eval "password=\${$var:-}"
        if [ -z "$password" ]; then
            echo "set $var (see .env.example)" >&2
            return 1
        fi
        printf 'DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = %s) THEN CREATE ROLE grantmesh_%s LOGIN; END IF; END $$;\n\n' \
            "'grantmesh_$role'" "$role"
        printf 'ALTER ROLE grantmesh_%s LOGIN PASSWORD %s;\n\n' "$role" "$(literal "$password")"
    done
}
sql=$(roles_sql) || exit 1
printf '%s\n\n' "$sql" | postgres --single -D "$PGDATA" -j postgres >/dev/null
postgres --single -D "$PGDATA" -j "$POSTGRES_DB" >/dev/null <<SQL
REVOKE ALL ON DATABASE "$POSTGRES_DB" FROM PUBLIC;

GRANT CONNECT ON DATABASE "$POSTGRES_DB" TO grantmesh_college, grantmesh_agency, grantmesh_audit;

REVOKE CREATE ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA IF NOT EXISTS college AUTHORIZATION grantmesh_college;

CREATE SCHEMA IF NOT EXISTS agency AUTHORIZATION grantmesh_agency;

ALTER ROLE grantmesh_college SET search_path = college;

ALTER ROLE grantmesh_agency SET search_path = agency;

ALTER ROLE grantmesh_audit SET search_path = college;

GRANT USAGE ON SCHEMA college TO grantmesh_audit;

GRANT SELECT ON ALL TABLES IN SCHEMA college TO grantmesh_audit;

ALTER DEFAULT PRIVILEGES FOR ROLE grantmesh_college IN SCHEMA college GRANT SELECT ON TABLES TO grantmesh_audit;

SQL
# The socket lives in /tmp: Debian's default /run/postgresql is not in the image.
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
