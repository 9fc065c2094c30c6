# One image with every Tidewatch service binary; docker-compose.yml picks the entrypoint.
#
# Stages: `planner` computes the dependency recipe (cargo-chef), `builder` compiles the
# dependencies first (a layer that stays cached until Cargo.lock changes), then the
# workspace in release mode; `runtime` is Debian slim with the binaries and the model
# artifact, running as an unprivileged user.
FROM rust:1.88-bookworm AS chef
RUN cargo install cargo-chef --version 0.1.71 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# librdkafka is built from source by rdkafka-sys.
RUN apt-get update && apt-get install -y --no-install-recommends cmake zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json
COPY . .
RUN cargo build --release --bins \
    && mkdir /out \
    && for b in generator normalize enrich aggregate prediction-consumer project prediction-api alert-receiver; do \
         cp "target/release/$b" /out/; \
       done

FROM debian:bookworm-20241016-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin tidewatch
COPY --from=builder /out/ /usr/local/bin/
COPY models/ /opt/tidewatch/models/
WORKDIR /opt/tidewatch
ENV LOG_FORMAT=json
USER 10001:10001
# Each service: `<service>` runs it, `<service> healthcheck` probes its readiness.
CMD ["prediction-api"]
