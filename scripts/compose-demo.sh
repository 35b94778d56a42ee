#!/usr/bin/env bash
# The compose demo, for real, as CI runs it: builds the release binary and an image
# without pulling anything (docker/build-base-image.sh + docker/Dockerfile.prebuilt),
# starts docker-compose.yml (manager, broker, seeder, peer1 on TCP, peer2 on QUIC,
# peer3 on both), waits until every peer holds all 10 fragments of the demo clip as
# the manager's REST API reports them, `docker kill`s peer3 while the fragments are
# still spreading (the seeder's upload is throttled so there is a "midway"), checks
# that peer1 and peer2 still complete and that the killed peer expires from the
# manager, prints a summary, and always removes everything (`down -v`).
# Then the same for the NATS-backed variant (docker-compose.nats.yml: nats-server,
# two manager replicas on the registry in JetStream key-value, peers registered
# through either), which also checks that both managers answer alike and that
# killing one loses nothing (docs/scaling.md).
#
#   scripts/compose-demo.sh
#
# Needs: a Docker engine, `docker compose` or `docker-compose` (v1.29+), cargo, curl,
# python3. Exits non-zero on any failure, after printing the containers' logs.
# Tunables (environment): FRAGNET_IMAGE (default fragnet:latest), FRAGNET_SEEDER_RATE
# (default 200KB per second), FRAGNET_COMPOSE_PROJECT (default fragnet-demo-ci),
# FRAGNET_DEMO_TIMEOUT (seconds for the whole distribution, default 240),
# FRAGNET_COMPOSE_VARIANTS ("default nats", the default; or either alone).
# Internal: FRAGNET_COMPOSE_FILE and FRAGNET_SKIP_BUILD=1 (the nats run reuses the image).
set -euo pipefail
cd "$(dirname "$0")/.."

variants="${FRAGNET_COMPOSE_VARIANTS:-default nats}"
compose_file="${FRAGNET_COMPOSE_FILE:-}"
if [ -z "$compose_file" ]; then
  case " $variants " in
    *" default "*) compose_file=docker-compose.yml ;;
    *) compose_file=docker-compose.nats.yml ;;
  esac
fi
nats_variant=0
[ "$compose_file" = docker-compose.nats.yml ] && nats_variant=1
project="${FRAGNET_COMPOSE_PROJECT:-fragnet-demo-ci}"
[ "$nats_variant" -eq 1 ] && project="${project%-nats}-nats"
export FRAGNET_IMAGE="${FRAGNET_IMAGE:-fragnet:latest}"
# Slow enough that the swarm is still busy when peer3 is killed (the clip is 1.5 MB),
# fast enough that the demo stays short.
export FRAGNET_SEEDER_RATE="${FRAGNET_SEEDER_RATE:-200KB}"
# Published ports on loopback, on whatever host ports are free (CI machines run other
# services on 5001 and 8001-8004); `compose port` tells which.
export FRAGNET_BIND=127.0.0.1 FRAGNET_MANAGER_PORT= FRAGNET_MANAGER2_PORT= FRAGNET_SEEDER_HTTP_PORT= \
  FRAGNET_PEER1_HTTP_PORT= FRAGNET_PEER2_HTTP_PORT= FRAGNET_PEER3_HTTP_PORT=
timeout_secs="${FRAGNET_DEMO_TIMEOUT:-240}"
peers=(peer1 peer2 peer3)
victim=peer3
fragments=10

say() { printf '[compose-demo %3ds] %s\n' "$((SECONDS - t0))" "$*"; }
die() { say "FAILED: $*" >&2; exit 1; }
t0=$SECONDS

if docker compose version >/dev/null 2>&1; then
  dc=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  dc=(docker-compose)
else
  die "neither 'docker compose' nor 'docker-compose' is installed"
fi
dc+=(-p "$project" -f "$compose_file")
say "variant: $compose_file"
if [ "$nats_variant" -eq 1 ]; then
  command -v nats-server >/dev/null || die "nats-server is not installed (apt-get install nats-server): the image carries it"
fi
for tool in docker cargo curl python3; do
  command -v "$tool" >/dev/null || die "$tool is not installed"
done
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (is dockerd running?)"

staging="$(mktemp -d)"
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" -ne 0 ]; then
    echo "==== docker compose ps" >&2
    "${dc[@]}" ps >&2
    echo "==== docker compose logs (last 200 lines per service)" >&2
    "${dc[@]}" logs --no-color --tail=200 >&2
  fi
  say "down -v"
  "${dc[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1
  rm -rf "$staging"
  if [ "$rc" -eq 0 ]; then say "PASSED"; else say "FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A previous run that was killed hard may have left containers and volumes behind.
"${dc[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true

bin="${CARGO_TARGET_DIR:-target}/release/fragnet"
if [ "${FRAGNET_SKIP_BUILD:-0}" != 1 ]; then
say "cargo build --release --locked -p fragnet"
cargo build --release --locked -p fragnet
[ -x "$bin" ] || die "no binary at $bin"

say "building the base image fragnet-base:local (no registry)"
docker/build-base-image.sh "$bin" fragnet-base:local

say "building $FRAGNET_IMAGE from docker/Dockerfile.prebuilt"
cp "$bin" "$staging/fragnet"
# Debug line tables are most of the release binary's size; symbols stay for backtraces.
if command -v strip >/dev/null; then strip --strip-debug "$staging/fragnet"; fi
cp -r configs "$staging/configs"
cp media/demo.mp4 "$staging/demo.mp4"
mkdir -p "$staging/volume/data"
# The NATS-backed variant runs nats-server from the same image: Debian's binary, copied.
if command -v nats-server >/dev/null; then
  cp "$(command -v nats-server)" "$staging/nats-server"
else
  say "nats-server is not installed: the image will not carry it (the nats variant needs it)"
  printf '#!/bin/false\n' > "$staging/nats-server"
fi
"$bin" -q split media/demo.mp4 --fragments "$fragments" --out "$staging/demo-fragments" >/dev/null
docker build -q --build-arg BASE=fragnet-base:local -f docker/Dockerfile.prebuilt \
  -t "$FRAGNET_IMAGE" "$staging" >/dev/null
fi

say "up -d (the services first, healthy, then the seeder and the peers)"
"${dc[@]}" up -d --no-build
up_at=$SECONDS

hostport="$("${dc[@]}" port manager 5001 | tail -n1)"
[ -n "$hostport" ] || die "the manager's port 5001 is not published"
manager="http://$hostport"
say "manager at $manager (Swagger UI: $manager/apidocs)"

# One line per peer name: "<name> <fragments of video held> <node id>", asked of the
# manager: GET /nodes, then GET /fragments?video=V&node=N (paged) for each node.
status() {
  python3 - "$manager" "$1" <<'PY'
import json, sys, urllib.request, urllib.parse
base, video = sys.argv[1], sys.argv[2]
def get(path):
    with urllib.request.urlopen(base + path, timeout=5) as r:
        return json.load(r)
nodes, cursor = [], None
while True:
    page = get("/nodes?limit=1000" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else ""))
    nodes += page["nodes"]
    cursor = page.get("next_cursor")
    if not cursor:
        break
for n in nodes:
    held, cursor = 0, None
    while True:
        q = {"video": video, "node": n["id"], "limit": 1000}
        if cursor:
            q["cursor"] = cursor
        page = get("/fragments?" + urllib.parse.urlencode(q))
        held += len(page["fragments"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    print(n["name"], held, n["id"])
PY
}
http_port() { case $1 in seeder) echo 8001 ;; peer1) echo 8002 ;; peer2) echo 8003 ;; peer3) echo 8004 ;; esac; }
count_of() { awk -v n="$1" '$1 == n { if ($2 > c) c = $2 } END { print c + 0 }' <<<"$2"; }

say "waiting for the seeder to register the demo video"
video=""
while [ -z "$video" ]; do
  [ $((SECONDS - up_at)) -lt 60 ] || die "no video registered with the manager within 60 s"
  video="$(curl -fsS --max-time 5 "$manager/videos" 2>/dev/null | python3 -c '
import json, sys
v = [v for v in json.load(sys.stdin)["videos"] if v["fragment_count"] == int(sys.argv[1])]
print(v[0]["id"] if v else "")' "$fragments" || true)"
  [ -n "$video" ] || sleep 1
done
say "video $video registered ($fragments fragments)"

declare -A done_at=()
killed_at="" killed_with="" last=""
while :; do
  elapsed=$((SECONDS - up_at))
  [ "$elapsed" -lt "$timeout_secs" ] || die "the peers did not all complete within $timeout_secs s"
  st="$(status "$video" 2>/dev/null)" || { sleep 1; continue; }
  line=""
  for p in "${peers[@]}"; do
    c="$(count_of "$p" "$st")"
    line+="$p=$c/$fragments "
    if [ "$p" != "$victim" ] && [ "$c" -ge "$fragments" ] && [ -z "${done_at[$p]:-}" ]; then
      done_at[$p]=$elapsed
    fi
  done
  [ "$line" = "$last" ] || say "held: ${line}(seeder=$(count_of seeder "$st")/$fragments)"
  last="$line"

  if [ -z "$killed_at" ]; then
    vc="$(count_of "$victim" "$st")"
    total=0
    for p in "${peers[@]}"; do total=$((total + $(count_of "$p" "$st"))); done
    # Midway: the victim has taken part (holds some), the swarm is not done.
    if [ "$vc" -ge 2 ] || [ "$total" -ge $(( ${#peers[@]} * fragments / 3 )) ]; then
      incomplete=0
      for p in "${peers[@]}"; do
        [ "$p" = "$victim" ] && continue
        [ "$(count_of "$p" "$st")" -lt "$fragments" ] && incomplete=$((incomplete + 1))
      done
      [ "$incomplete" -gt 0 ] || die "the other peers completed before $victim could be killed midway (raise the throttle: FRAGNET_SEEDER_RATE)"
      say "docker kill $victim (holding $vc/$fragments; $incomplete other peer(s) still incomplete)"
      docker kill "$("${dc[@]}" ps -q "$victim")" >/dev/null
      killed_at=$elapsed killed_with=$vc
      victim_id="$(awk -v n="$victim" '$1 == n { print $3 }' <<<"$st" | head -n1)"
      # A victim that registered but was not in the listing yet has no id here; the
      # expiry check below then looks it up by name.
    fi
  fi

  all=1
  for p in "${peers[@]}"; do
    [ "$p" = "$victim" ] && continue
    [ -n "${done_at[$p]:-}" ] || all=0
  done
  if [ "$all" -eq 1 ] && [ -n "$killed_at" ]; then break; fi
  sleep 1
done
say "every remaining peer holds all $fragments fragments"

if [ "$nats_variant" -eq 1 ]; then
  # Two replicas, one registry: the same answers (but for the clocks and the order
  # of random samples), then one dies and the other still has everything.
  port2="$("${dc[@]}" port manager2 5001 | tail -n1)"
  manager2="http://$port2"
  # The killed peer is left out: it expires on its own clock meanwhile.
  listing() {
    curl -fsS --max-time 5 "$1/nodes?limit=1000" | python3 -c '
import json, sys
print(sorted((n["name"], n["fragments"]) for n in json.load(sys.stdin)["nodes"] if n["name"] != sys.argv[1]))' "$victim"
    curl -fsS --max-time 5 "$1/videos" | python3 -c '
import json, sys
print(json.load(sys.stdin))'
  }
  same=0 a="" b=""
  for _ in $(seq 1 20); do
    a="$(listing "$manager")" && b="$(listing "$manager2")" && [ "$a" = "$b" ] && { same=1; break; }
    sleep 1
  done
  [ "$same" -eq 1 ] || die "manager and manager2 answer differently: $a vs $b"
  say "manager and manager2 answer alike"
  say "docker kill manager2"
  docker kill "$("${dc[@]}" ps -q manager2)" >/dev/null
  after_kill="$(listing "$manager")" || die "manager stopped answering when manager2 died"
  [ "$after_kill" = "$a" ] || die "manager lost state when manager2 died: $after_kill vs $a"
  say "manager still answers with everything"
fi

say "waiting for $victim to expire from the manager (its TTL)"
while :; do
  [ $((SECONDS - up_at - killed_at)) -lt 90 ] || die "$victim is still listed by the manager 90 s after it was killed"
  names="$(curl -fsS --max-time 5 "$manager/nodes?limit=1000" | python3 -c '
import json, sys
for n in json.load(sys.stdin)["nodes"]:
    print(n["name"], n["id"])')" || { sleep 1; continue; }
  if ! awk -v n="$victim" -v id="${victim_id:-}" '$1 == n || (id != "" && $2 == id) { f = 1 } END { exit !f }' <<<"$names"; then
    break
  fi
  sleep 1
done
expired_after=$((SECONDS - up_at - killed_at))

# The survivors serve the whole clip, byte for byte, on their published player ports.
for p in "${peers[@]}"; do
  [ "$p" = "$victim" ] && continue
  port="$("${dc[@]}" port "$p" "$(http_port "$p")" | tail -n1)"
  curl -fsS --max-time 30 "http://$port/videos/$video/stream" -o "$staging/$p.mp4" \
    || die "GET http://$port/videos/$video/stream on $p failed"
  cmp -s "$staging/$p.mp4" media/demo.mp4 || die "$p streams a video that differs from media/demo.mp4"
  say "$p streams the whole clip, identical to media/demo.mp4 (http://$port/watch/$video)"
done

# The survivors are still healthy by their own healthchecks.
if [ "$nats_variant" -eq 1 ]; then services=(nats manager seeder); else services=(manager broker seeder); fi
for s in "${services[@]}" "${peers[@]}"; do
  [ "$s" = "$victim" ] && continue
  h="$(docker inspect -f '{{.State.Health.Status}}' "$("${dc[@]}" ps -q "$s")")"
  [ "$h" = healthy ] || die "$s is $h"
done

echo
echo "==== compose demo summary"
echo "compose:        ${dc[*]:0:$(( ${#dc[@]} - 4 ))}   image: $FRAGNET_IMAGE   seeder upload limit: $FRAGNET_SEEDER_RATE/s"
echo "video:          $video ($fragments fragments, media/demo.mp4)"
echo "manager:        $manager  (Swagger UI $manager/apidocs)"
for p in "${peers[@]}"; do
  case $p in
    peer1) t="tcp" ;; peer2) t="quic" ;; peer3) t="tcp+quic" ;;
  esac
  if [ "$p" = "$victim" ]; then
    printf '%-16s%s\n' "$p ($t):" "killed ${killed_at}s after up holding $killed_with/$fragments; gone from the manager ${expired_after}s later"
  else
    printf '%-16s%s\n' "$p ($t):" "all $fragments fragments ${done_at[$p]}s after up (per GET /fragments); streams the clip intact"
  fi
done
echo "total:          $((SECONDS - t0))s (of which distribution $((SECONDS - up_at))s)"
echo

# The NATS-backed variant next, on the same image, once this stack is gone.
if [ "$nats_variant" -eq 0 ]; then
  case " $variants " in
    *" nats "*)
      "${dc[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
      say "next: the NATS-backed variant"
      FRAGNET_COMPOSE_FILE=docker-compose.nats.yml FRAGNET_SKIP_BUILD=1 "$0"
      ;;
  esac
fi
