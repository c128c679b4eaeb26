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

# The demo app (web/) with the SDK built into web/sdk/, for SWITCHBOARD_WEB_DIR.
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY clients/js/package.json clients/js/package-lock.json clients/js/
RUN cd clients/js && npm ci --no-audit --no-fund --loglevel=error
COPY clients/js clients/js
COPY web web
RUN cd clients/js && npm run build

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates openssl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 switchboard
COPY --from=build /out/ /usr/local/bin/
# Makes the certificates of a TLS NATS cluster (docs/operations.md, "TLS to NATS").
COPY scripts/nats-certs /usr/local/bin/switchboard-nats-certs
# The demo: served at / when the edge runs with SWITCHBOARD_WEB_DIR=/usr/share/switchboard/web
# (development mode; leave it unset in production).
COPY --from=web /src/web /usr/share/switchboard/web
USER switchboard
ENV SWITCHBOARD_EDGE_ADDR=0.0.0.0:8080
EXPOSE 8080
# GET /healthz over bash's /dev/tcp: bash is already in the image, so the probe adds no
# package (curl would add about 5 MB and its libraries, a subcommand a second HTTP client
# in the binary). It speaks plain HTTP: with SWITCHBOARD_TLS_CERT set, override it.
# Containers of this image that run the workers or a one-shot job set their own (compose).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["bash", "-c", "port=${SWITCHBOARD_EDGE_ADDR##*:}; exec 3<>/dev/tcp/127.0.0.1/${port:-8080} && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -c 12 <&3 | grep -q ' 200'"]
CMD ["switchboard-edge"]
