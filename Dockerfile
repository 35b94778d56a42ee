# fragnet in one image: the `fragnet` binary, its profiles, and the demo clip already
# split in 10 (the compose demo's seeder serves it). Standard multi-stage build for a
# machine that can pull from Docker Hub:
#
#   docker build -t fragnet:latest .          # or: docker compose build
#
# The runtime image has no shell and no curl: healthchecks run `fragnet health URL`.
# Where no registry is reachable, build docker/Dockerfile.prebuilt instead (see
# scripts/compose-demo.sh and docs/docker.md).
ARG RUNTIME_BASE=debian:bookworm-slim

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fragnet \
 && mkdir -p /out/data \
 && cp target/release/fragnet /out/fragnet \
 && /out/fragnet split media/demo.mp4 --out /out/demo-fragments

FROM ${RUNTIME_BASE}
COPY --from=build /out/fragnet /usr/local/bin/fragnet
COPY configs/ /etc/fragnet/configs/
COPY media/demo.mp4 /usr/share/fragnet/demo.mp4
COPY --from=build /out/demo-fragments /usr/share/fragnet/demo-fragments
# Named volumes mounted on /data start as a copy of this directory, owner included.
COPY --from=build --chown=65532:65532 /out/data /data
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
WORKDIR /data
# 5001 manager (REST, Swagger UI at /apidocs), 5555 broker, 6001-6004 peers (TCP and
# UDP for QUIC), 8001-8004 peers' HTTP (player, stream, health, metrics).
EXPOSE 5001 5555 6001-6004 6001-6004/udp 8001-8004
ENTRYPOINT ["/usr/local/bin/fragnet"]
CMD ["--help"]
