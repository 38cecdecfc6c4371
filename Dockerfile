# syntax=docker/dockerfile:1
# The rush image: one static-ish binary on distroless, non-root.
#   docker build -t rush .
#   docker run --rm -p 8080:8080 -e RUSH__HTTP__ADDR=0.0.0.0:8080 rush serve
# Stages: chef (tools) → planner (dependency recipe) → builder (dependencies
# cached in their own layer by cargo-chef, then rush) → runtime.

FROM rust:1.95-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# librdkafka is built from source by rdkafka-sys (zlib, and the system's
# OpenSSL for TLS and SASL/SCRAM; distroless cc ships libssl3).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
COPY --from=planner /src/recipe.json recipe.json
# Only the dependencies: this layer is reused until Cargo.lock changes.
RUN cargo chef cook --release --recipe-path recipe.json -p rush-gateway --bin rush
COPY . .
RUN cargo build --release --locked -p rush-gateway --bin rush \
 && objcopy --strip-debug target/release/rush /rush \
 && mkdir /libs \
 && cp "$(ldconfig -p | awk '/libz\.so\.1 / {print $NF; exit}')" /libs/

# distroless/cc: glibc and libgcc, no shell, no package manager; uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /libs/ /usr/lib/
COPY --from=builder /rush /usr/local/bin/rush
USER 65532:65532
# rush serve's default listen address is loopback; in a container set
# RUSH__HTTP__ADDR=0.0.0.0:8080 (the k8s ConfigMap does).
EXPOSE 8080 9464
# Embedded mode keeps its SQLite files here (mount a volume to keep them).
ENV RUSH__DATA_DIR=/home/nonroot/rush-data
ENTRYPOINT ["/usr/local/bin/rush"]
CMD ["serve"]
