# Multi-stage build of the three Switchboard binaries: switchboard (CLI),
# switchboard-edge and switchboard-workers.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
        --bin switchboard --bin switchboard-edge --bin switchboard-workers \
    && mkdir /out \
    && cp target/release/switchboard target/release/switchboard-edge \
          target/release/switchboard-workers /out/

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 switchboard
COPY --from=build /out/ /usr/local/bin/
# Makes the certificates of a TLS NATS cluster (docs/operations.md, "TLS to NATS").
COPY scripts/nats-certs /usr/local/bin/switchboard-nats-certs
USER switchboard
ENV SWITCHBOARD_EDGE_ADDR=0.0.0.0:8080
EXPOSE 8080
CMD ["switchboard-edge"]
