#!/usr/bin/env bash
# Builds a minimal runtime base image WITHOUT pulling from any registry: an empty root
# filesystem holding only the shared libraries a `fragnet` binary links (glibc's loader,
# libc, libm, libgcc_s), the CA bundle and an /etc/passwd entry, imported with
# `docker import`. Used where no registry is reachable (CI here); with Docker Hub
# access the Dockerfile's default base (debian:bookworm-slim) does the same job.
#
# Usage: docker/build-base-image.sh BINARY [TAG]   (default tag: fragnet-base:local)
set -euo pipefail
bin="${1:?usage: $0 BINARY [TAG]}"
tag="${2:-fragnet-base:local}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{etc,tmp,data,usr/local/bin}
chmod 1777 "$root/tmp"
# Every library the binary needs, at the same paths, following symlinks.
ldd "$bin" | awk '/=>/ { print $3 } !/=>/ && /^\s*\// { print $1 }' | while read -r lib; do
  [ -n "$lib" ] && [ -e "$lib" ] || continue
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# /lib64 -> the loader, as on Debian.
if [ -e /lib64/ld-linux-x86-64.so.2 ]; then
  mkdir -p "$root/lib64"
  cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
fi
[ -f /etc/ssl/certs/ca-certificates.crt ] && mkdir -p "$root/etc/ssl/certs" && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
echo 'root:x:0:0:root:/data:/nonexistent' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "built $tag"
