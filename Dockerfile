# One image for every grantmesh role (registry, agency, college, the CLI and
# the simulation), built in two stages:
#
#   builder  compiles `grantmesh` with the Rust toolchain (1.88 or newer);
#   runtime  a small Debian with the binary, its entrypoint and a non-root user.
#
# Base images are build arguments so that a machine without access to a
# registry can build from images it made itself (scripts/test-compose does):
#
#   docker build --build-arg BUILDER_IMAGE=... --build-arg RUNTIME_IMAGE=... .
#
# Nothing secret is baked in: keys, passwords and certificates come from the
# environment and volumes at run time (see docker-compose.yml, .env.example).
# Only the classic builder's syntax is used (no BuildKit-only `RUN --mount`),
# so Debian's docker.io and docker-compose 1.29 build it as well.

ARG BUILDER_IMAGE=rust:1.88-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILDER_IMAGE} AS builder
WORKDIR /src
# Only what cargo reads, so that editing the compose file, scripts or docs
# does not throw away the (long) cached compile.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY discovery discovery
COPY services services
COPY clients clients
# `target/` is removed in the same layer so that the builder image keeps only
# the binary, not gigabytes of intermediate artefacts.
RUN cargo build --release --locked -p grantmesh \
    && install -m 0755 target/release/grantmesh /usr/local/bin/grantmesh \
    && rm -rf target

FROM ${RUNTIME_IMAGE} AS runtime
# A fixed uid/gid, so that files the roles write into named volumes (the mesh
# CA and certificates) keep one owner across images and rebuilds. Every
# volume's mount point is made here, owned by that user: a new named volume
# takes its first mount point's owner (docker-compose.yml).
ARG GRANTMESH_UID=10001
RUN groupadd --gid "${GRANTMESH_UID}" grantmesh \
    && useradd --no-create-home --uid "${GRANTMESH_UID}" --gid grantmesh \
        --home-dir /var/lib/grantmesh --shell /usr/sbin/nologin grantmesh \
    && mkdir -p /var/lib/grantmesh/tls /var/lib/grantmesh/ca /var/lib/grantmesh/registry \
        /var/lib/grantmesh/agency /var/lib/grantmesh/agency-nsf /var/lib/grantmesh/agency-erc \
        /var/lib/grantmesh/college-keys /var/lib/grantmesh/mail \
    && chown -R grantmesh:grantmesh /var/lib/grantmesh \
    && chmod 0700 /var/lib/grantmesh/ca /var/lib/grantmesh/college-keys /var/lib/grantmesh/agency \
        /var/lib/grantmesh/mail \
        /var/lib/grantmesh/agency-nsf /var/lib/grantmesh/agency-erc
COPY --from=builder /usr/local/bin/grantmesh /usr/local/bin/grantmesh
COPY docker/entrypoint.sh /usr/local/bin/grantmesh-entrypoint
USER grantmesh
WORKDIR /var/lib/grantmesh
ENTRYPOINT ["grantmesh-entrypoint"]
CMD ["--help"]
