#!/usr/bin/env bash
# Runs every test fragnet has, on a fresh machine: installs the system packages the
# tests need (Debian; needs root or sudo), then formatting, lints, the dependency
# policy check and the test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use: kill (procps) for signal tests, nc for the seed's
# clients, a real nats-server for the NATS suites, headless Chromium and its WebDriver
# for the browser playback test, curl for the schemathesis run, promtool (package
# prometheus) to check every service's /metrics with Prometheus's own parser.
need_pkgs=()
command -v kill >/dev/null || need_pkgs+=(procps)
command -v nc >/dev/null || need_pkgs+=(netcat-openbsd)
command -v nats-server >/dev/null || need_pkgs+=(nats-server)
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need_pkgs[@]}"
fi

# The broker test with 1,000 subscribers needs ~2,100 open files per process.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "warning: only $(ulimit -n) open files allowed; the 1,000-subscriber broker test needs ~2,100" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== dependency policy: rustls on ring only, no aws-lc"
if cargo tree --workspace --locked -i aws-lc-sys >/dev/null 2>&1 || cargo tree --workspace --locked -i aws-lc-rs >/dev/null 2>&1; then
  echo "aws-lc is in the dependency tree; keep rustls on the ring provider" >&2
  exit 1
fi

echo "== tests (real sockets, real processes, nats-server and headless Chromium)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

echo "== schemathesis against the running manager's /openapi.json (bounded)"
./scripts/schemathesis.sh
