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
# nats-server for docker-compose.nats.yml: Debian's package, copied into the image.
RUN apt-get update && apt-get install -y --no-install-recommends nats-server \
 && rm -rf /var/lib/apt/lists/*
RUN cargo build --release --locked -p fragnet \
 && mkdir -p /out/volume/data \
 && cp target/release/fragnet /out/fragnet \
 && strip --strip-debug /out/fragnet \
 && /out/fragnet split media/demo.mp4 --out /out/demo-fragments

FROM ${RUNTIME_BASE}
COPY --from=build /out/fragnet /usr/local/bin/fragnet
COPY --from=build /usr/sbin/nats-server /usr/local/bin/nats-server
COPY configs/ /etc/fragnet/configs/
COPY media/demo.mp4 /usr/share/fragnet/demo.mp4
COPY --from=build /out/demo-fragments /usr/share/fragnet/demo-fragments
# Named volumes mounted on /data start as a copy of this directory, owner included.
# (Copying the parent makes --chown apply to /data itself, also on the legacy builder.)
COPY --from=build --chown=65532:65532 /out/volume/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
USER 65532:65532
WORKDIR /data
# No EXPOSE: one image plays every role, each on its own ports (docker-compose.yml):
# 5001 manager, 5555 broker, 600x peers (TCP, and UDP for QUIC), 800x peers' HTTP.
ENTRYPOINT ["/usr/local/bin/fragnet"]
CMD ["--help"]
