#!/bin/sh
# Entrypoint of the grantmesh image: `grantmesh ARGS…`, plus two roles that
# need a little shell around the binary in docker-compose.yml.
#
#   certs            the init service: makes the mesh CA once (in the `ca`
#                    volume, with its key) and issues the registry and agency
#                    certificates into the `tls` volume (CA certificate and
#                    leaves, no CA key). It runs again whenever a service that
#                    depends on it starts (`run simulate`, `up`), so it is
#                    idempotent: it keeps a certificate that is there for the
#                    same names and not within 30 days of expiring, and issues
#                    only what is missing, different or about to expire (a
#                    re-issued file would make every server reload under a
#                    live cluster). Everything else mounts `tls` read-only.
#   college ARGS…    a college replica: issues its own leaf at start for the
#                    container's hostname (unique per replica, so
#                    `--scale college=N` works) from the CA in the `ca` volume,
#                    advertises https://HOSTNAME:PORT, then runs
#                    `grantmesh college ARGS…`.
#   ARGS…            anything else runs `grantmesh ARGS…` (registry, agency,
#                    simulate, instances, health, …).
set -eu

# Mount points of the two volumes (see Dockerfile and docker-compose.yml).
CA_DIR=${GRANTMESH_CA_DIR:-/var/lib/grantmesh/ca}
TLS_DIR=${GRANTMESH_TLS_OUT:-/var/lib/grantmesh/tls}

case "${1:-}" in
certs)
    if [ ! -f "$CA_DIR/ca.pem" ]; then
        grantmesh ca init --dir "$CA_DIR"
    fi
    # Written next to the target, then renamed: a reader never sees half a
    # file. Copied only when it differs, so a live cluster sees no change.
    if ! cmp -s "$CA_DIR/ca.pem" "$TLS_DIR/ca.pem"; then
        cp "$CA_DIR/ca.pem" "$TLS_DIR/.ca.pem.new"
        mv "$TLS_DIR/.ca.pem.new" "$TLS_DIR/ca.pem"
    fi
    # Names the registries and agencies are dialled at: their compose service
    # names, plus localhost / 127.0.0.1 for healthchecks and published ports.
    grantmesh ca issue --dir "$CA_DIR" --out "$TLS_DIR" --renew-within 30d --service registry \
        --dns "${GRANTMESH_REGISTRY_NAMES:-registry-1,registry-2},localhost" --ip 127.0.0.1
    grantmesh ca issue --dir "$CA_DIR" --out "$TLS_DIR" --renew-within 30d --service agency \
        --dns "${GRANTMESH_AGENCY_NAMES:-agency-nsf,agency-erc},localhost" --ip 127.0.0.1
    exit 0
    ;;
college)
    shift
    host=$(hostname)
    port=${GRANTMESH_LISTEN##*:}
    leaf=$(mktemp -d)
    grantmesh ca issue --dir "$CA_DIR" --out "$leaf" --service college \
        --dns "$host,college,localhost" --ip 127.0.0.1 >/dev/null
    GRANTMESH_CERT="$leaf/college.pem"
    GRANTMESH_KEY="$leaf/college.key"
    GRANTMESH_ADVERTISE=${GRANTMESH_ADVERTISE:-https://$host:$port}
    export GRANTMESH_CERT GRANTMESH_KEY GRANTMESH_ADVERTISE
    exec grantmesh college "$@"
    ;;
esac
exec grantmesh "$@"
