#!/bin/sh
# Entrypoint of the grantmesh image: `grantmesh ARGS…`, plus two roles that
# need a little shell around the binary in docker-compose.yml.
#
#   certs            the init service: makes the mesh CA once (in the `ca`
#                    volume, with its key) and the token key pair once (in
#                    `college-keys`), copies the CA certificate and the token
#                    public key into the `tls` volume (everyone's, no private
#                    key), and issues the registries' certificate into
#                    `registry-tls` and each agency's (agency/NAME) into its
#                    own volume, which only that agency mounts. It runs again whenever a service that
#                    depends on it starts (`run simulate`, `up`), so it is
#                    idempotent: it keeps a certificate that is there for the
#                    same names and not within 30 days of expiring, and issues
#                    only what is missing, different or about to expire (a
#                    re-issued file would make every server reload under a
#                    live cluster). Everything else mounts `tls` read-only.
#   issuer           the certificate issuer (`grantmesh ca serve`) on the CA
#                    in the `ca` volume, with the join tokens `certs` made.
#   college ARGS…    a college replica: joins the issuer at start with the
#                    colleges' join token for a leaf naming college/HOSTNAME
#                    (the container's hostname, unique per replica and its
#                    registry id, so `--scale college=N` works), renews it
#                    through the issuer (--issuer), advertises
#                    https://HOSTNAME:PORT, mails sign-up codes through
#                    the relay GRANTMESH_SMTP_URL names or, when it is
#                    empty, into the `mail` volume's outbox
#                    (GRANTMESH_MAIL_OUTBOX), then runs
#                    `grantmesh college ARGS…`.
#   ARGS…            anything else runs `grantmesh ARGS…` (registry, agency,
#                    simulate, instances, health, …).
set -eu

# Mount points of the two volumes (see Dockerfile and docker-compose.yml).
CA_DIR=${GRANTMESH_CA_DIR:-/var/lib/grantmesh/ca}
TLS_DIR=${GRANTMESH_TLS_OUT:-/var/lib/grantmesh/tls}
REGISTRY_DIR=${GRANTMESH_REGISTRY_TLS:-/var/lib/grantmesh/registry}
KEYS_DIR=${GRANTMESH_COLLEGE_KEYS:-/var/lib/grantmesh/college-keys}

# Copies $1 to $2 unless they are alike; through a temporary file and a
# rename, so a reader never sees half a file, and a live cluster no change.
copy_if_changed() {
    if ! cmp -s "$1" "$2"; then
        cp "$1" "$2.new"
        mv "$2.new" "$2"
    fi
}

case "${1:-}" in
certs)
    if [ ! -f "$CA_DIR/ca.pem" ]; then
        grantmesh ca init --dir "$CA_DIR"
    fi
    copy_if_changed "$CA_DIR/ca.pem" "$TLS_DIR/ca.pem"
    if [ ! -f "$KEYS_DIR/token.key" ]; then
        grantmesh ca token-key --dir "$KEYS_DIR"
    fi
    copy_if_changed "$KEYS_DIR/token.pub" "$TLS_DIR/token.pub"
    # The colleges' join token: the issuer keeps it beside the CA, the
    # colleges in their own volume. Made once.
    if [ ! -f "$CA_DIR/join-tokens" ]; then
        token=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
        umask 077
        printf '%s\n' "$token" >"$KEYS_DIR/college.join-token"
        printf 'college/* %s\n' "$token" >"$CA_DIR/join-tokens"
        umask 022
    fi
    # Names the registries and agencies are dialled at: their compose service
    # names, plus localhost / 127.0.0.1 for healthchecks and published ports.
    grantmesh ca issue --dir "$CA_DIR" --out "$REGISTRY_DIR" --renew-within 30d --service registry \
        --dns "${GRANTMESH_REGISTRY_NAMES:-registry-1,registry-2},localhost" --ip 127.0.0.1
    # Each agency's certificate, in the volume only that agency mounts.
    for agency in ${GRANTMESH_AGENCIES_TO_ISSUE:-nsf erc}; do
        grantmesh ca issue --dir "$CA_DIR" --out "/var/lib/grantmesh/agency-$agency" \
            --renew-within 30d --service agency --name "$agency" \
            --dns "agency-$agency,localhost" --ip 127.0.0.1
    done
    exit 0
    ;;
issuer)
    shift
    exec grantmesh ca serve --dir "$CA_DIR" --listen 0.0.0.0:7300 \
        --dns "${GRANTMESH_ISSUER_NAMES:-issuer},localhost" --ip 127.0.0.1 \
        --join-tokens "$CA_DIR/join-tokens" "$@"
    ;;
college)
    shift
    host=$(hostname)
    port=${GRANTMESH_LISTEN##*:}
    leaf=$(mktemp -d)
    GRANTMESH_ISSUER=${GRANTMESH_ISSUER:-https://issuer:7300}
    grantmesh ca join --issuer "$GRANTMESH_ISSUER" --ca "$TLS_DIR/ca.pem" \
        --join-token-file "$KEYS_DIR/college.join-token" --service college --name "$host" \
        --dns "$host,college,localhost" --ip 127.0.0.1 --out "$leaf" >/dev/null
    GRANTMESH_CERT="$leaf/college.$host.pem"
    GRANTMESH_KEY="$leaf/college.$host.key"
    GRANTMESH_ADVERTISE=${GRANTMESH_ADVERTISE:-https://$host:$port}
    export GRANTMESH_CERT GRANTMESH_KEY GRANTMESH_ADVERTISE GRANTMESH_ISSUER
    if [ -n "${GRANTMESH_SMTP_URL:-}" ]; then
        unset GRANTMESH_MAIL_OUTBOX
    else
        unset GRANTMESH_SMTP_URL
        export GRANTMESH_MAIL_OUTBOX=${GRANTMESH_MAIL_OUTBOX:-/var/lib/grantmesh/mail}
    fi
    exec grantmesh college "$@"
    ;;
esac
exec grantmesh "$@"
