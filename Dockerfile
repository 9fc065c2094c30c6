# One image with every Tidewatch service binary; docker-compose.yml picks the entrypoint.
#
# Stages: `planner` computes the dependency recipe (cargo-chef), `builder` compiles the
# dependencies first (a layer that stays cached until Cargo.lock changes), then the
# workspace in release mode; `runtime` is Debian slim with the stripped binaries and the
# model artifact, running as an unprivileged user.
#
# RUST_VERSION is the workspace's pinned toolchain (rust-toolchain.toml); scripts/check-toolchain
# fails when the two disagree. The base images are arguments so a machine without a registry
# can build this very file from local stand-ins (scripts/check-compose-docker does).
ARG RUST_VERSION=1.95.0
ARG RUST_IMAGE=rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-20241016-slim

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --version 0.1.71 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# librdkafka is built from source by rdkafka-sys.
RUN apt-get update && apt-get install -y --no-install-recommends cmake zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
# No debug info and stripped symbols in the image (set before `cook`, so the dependencies
# are built with the same profile as the workspace and are not rebuilt).
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
# The commit goes into tidewatch_build_info; the build context has no .git to read it from.
# Declared after `cook`, so a new commit does not rebuild the dependencies.
ARG GIT_COMMIT=unknown
RUN GIT_COMMIT="$GIT_COMMIT" cargo build --release --bins \
    && mkdir /out \
    && for b in generator normalize enrich aggregate prediction-consumer project prediction-api alert-receiver loadgen trainer; do \
         cp "target/release/$b" /out/; \
       done

FROM ${RUNTIME_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tidewatch \
    && mkdir -p /var/lib/tidewatch && chown 10001:10001 /var/lib/tidewatch
# /var/lib/tidewatch: the one writable place, for the generator's state (a named volume in
# compose, which takes this directory's owner when first mounted).
COPY --from=builder /out/ /usr/local/bin/
COPY models/ /opt/tidewatch/models/
WORKDIR /opt/tidewatch
ENV LOG_FORMAT=json
USER 10001:10001
# Each service: `<service>` runs it, `<service> healthcheck` probes its readiness.
CMD ["prediction-api"]
