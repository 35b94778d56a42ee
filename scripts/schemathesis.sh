#!/usr/bin/env bash
# Property-based API tests of the fragnet manager with Schemathesis (PyPI).
#
# Starts a real manager (`fragnet manager`) on a free loopback port
# with a token, validates /openapi.json with openapi-spec-validator, registers one video
# and one node, then runs `st run` twice with a bounded number of examples: every
# operation with every check (scripts/schemathesis.toml), then the reads of the seeded
# video and node with positive data (scripts/schemathesis-seeded.toml). Exits non-zero
# on any failure.
#
#   scripts/schemathesis.sh                  # ~1 minute
#   ST_EXAMPLES=200 scripts/schemathesis.sh  # longer, more cases
#   ST_SEED=123 scripts/schemathesis.sh      # another deterministic run
#
# Needs python3 with venv and pip (PyPI reachable the first time) and curl.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
EXAMPLES=${ST_EXAMPLES:-30}
SEED=${ST_SEED:-20261126}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=${ST_VENV:-$TARGET/schemathesis-venv}

if [ ! -x "$VENV/bin/st" ] || ! "$VENV/bin/python" -c 'import openapi_spec_validator' 2>/dev/null; then
    echo "schemathesis.sh: installing schemathesis and openapi-spec-validator into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4.32,<5' 'openapi-spec-validator>=0.7,<1'
fi

cargo build --quiet --locked -p fragnet
BIN="$TARGET/debug/fragnet"

DATA=$(mktemp -d)
PORT=$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TOKEN="st-$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
URL="http://127.0.0.1:$PORT"
LOG="$DATA/manager.log"

FRAGNET_MANAGER__TOKEN="$TOKEN" RUST_LOG=warn "$BIN" manager --listen "127.0.0.1:$PORT" --data "$DATA/data" --ttl 120 >"$LOG" 2>&1 &
PID=$!
cleanup() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 1 100); do
    curl -fsS "$URL/health" >/dev/null 2>&1 && break
    if ! kill -0 "$PID" 2>/dev/null; then
        echo "schemathesis.sh: the manager exited:" >&2
        cat "$LOG" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS "$URL/health" >/dev/null

echo "schemathesis.sh: validating $URL/openapi.json"
curl -fsS "$URL/openapi.json" -o "$DATA/openapi.json"
"$VENV/bin/python" - "$DATA/openapi.json" <<'PY'
import json, sys
from openapi_spec_validator import validate
spec = json.load(open(sys.argv[1]))
validate(spec)
print(f"  valid OpenAPI {spec['openapi']}: {len(spec['paths'])} paths")
PY

# Seed data: a consistent 10-fragment manifest (the manager does not check chunk
# hashes against content, which it never sees) and a node holding fragments 0-4.
MANIFEST=$("$VENV/bin/python" - <<'PY'
import json
h = "9f2c1b3a5d7e9f2c1b3a5d7e9f2c1b3a5d7e9f2c1b3a5d7e9f2c1b3a5d7e9f2c"
frags = [{"chunks": [h], "hash": h, "index": i, "offset": i * 1000, "size": 1000} for i in range(10)]
print(json.dumps({"chunk_size": 1048576, "fragment_count": 10, "fragments": frags, "hash": h,
                  "mime": "video/mp4", "name": "schemathesis.mp4", "size": 10000, "version": 1}))
PY
)
AUTH=(-H "Authorization: Bearer $TOKEN")
VIDEO=$(curl -fsS "${AUTH[@]}" -X POST --data-binary "$MANIFEST" "$URL/videos" | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["id"])')
NODE=$(printf 'ab%.0s' $(seq 1 32))
seed_node() {
    curl -fsS "${AUTH[@]}" -X PUT --data '{"name":"seed","addrs":["tcp://127.0.0.1:6001"]}' "$URL/nodes/$NODE" >/dev/null
    curl -fsS "${AUTH[@]}" -X PUT --data "{\"video\":\"$VIDEO\",\"have\":[0,1,2,3,4]}" "$URL/nodes/$NODE/fragments"
}
seed_node
echo "schemathesis.sh: seeded video $VIDEO and node $NODE"

cd "$DATA"
ST=("$VENV/bin/st")
COMMON=(--max-examples "$EXAMPLES" --seed "$SEED" --request-timeout 10 --max-failures 20 --header "Authorization: Bearer $TOKEN" --no-color)

echo "schemathesis.sh: run 1/2: every operation, every check"
"${ST[@]}" --config-file "$ROOT/scripts/schemathesis.toml" run "$URL/openapi.json" "${COMMON[@]}"

echo "schemathesis.sh: run 2/2: reads of the seeded video and node, positive data"
seed_node # run 1 may have deleted it (DELETE /nodes/{id} is under test too)
FRAGNET_ST_VIDEO="$VIDEO" FRAGNET_ST_NODE="$NODE" "${ST[@]}" --config-file "$ROOT/scripts/schemathesis-seeded.toml" run "$URL/openapi.json" "${COMMON[@]}" \
    --mode positive --phases examples,coverage,fuzzing \
    --include-name "GET /videos/{id}" --include-name "GET /videos/{id}/fragments/{index}/peers" \
    --include-name "GET /nodes/{id}" --include-name "GET /fragments"
echo "schemathesis.sh: passed"
