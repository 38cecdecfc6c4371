#!/usr/bin/env bash
# Fuzzes rush's HTTP API from its own /openapi.json with schemathesis (PyPI):
# a freshly started embedded rush (no services; rate limits off, or the
# fuzzer's one user and address would mostly meet 429), every check, the phases
# examples, coverage, fuzzing and stateful, bounded in time. Two runs: the
# admin routes with an admin token, the rest with a user token. Fails on
# any failure, schema error or 5xx.
#
#   scripts/schemathesis.sh            (RUSH_BIN: the binary, default target/debug/rush)
#   ST_MAX_TIME=60 scripts/schemathesis.sh    seconds per run (default 90)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.stack/venv
ST_VERSION=4.32.5
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$ST_VERSION"
fi
RUSH_BIN=${RUSH_BIN:-target/debug/rush}
if [ ! -x "$RUSH_BIN" ]; then
  cargo build -q -p rush-gateway --bin rush
fi

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
RUSH__HTTP__ADDR="127.0.0.1:$port" RUSH__DATA_DIR="$work/data" RUST_LOG=warn RUSH__RATE_LIMITS__ENABLED=false \
  "$RUSH_BIN" serve >"$work/rush.log" 2>&1 &
rush_pid=$!
cleanup() {
  kill "$rush_pid" 2>/dev/null || true
  wait "$rush_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done

token() {
  curl -sf -XPOST "$base/v1/auth/dev-token" -H 'content-type: application/json' \
    -d "{\"user_id\":\"$1\",\"role\":\"$2\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])'
}
admin=$(token st-admin admin)
user=$(token st-user user)

# Every check runs; scripts/schemathesis.toml names the two places where
# one is off, and why.
run() {
  local who=$1 tok=$2
  shift 2
  echo "== schemathesis: $who"
  # One worker: with several threads, CPython 3.11's parser fails inside
  # hypothesis (ast.parse of a large module from a worker thread) with
  # "SystemError: AST constructor recursion depth mismatch", a bug of the
  # interpreter, not of rush or the schema.
  "$VENV/bin/schemathesis" \
    --config-file scripts/schemathesis.toml run "$base/openapi.json" \
    --phases examples,coverage,fuzzing,stateful \
    --max-time "${ST_MAX_TIME:-90}" \
    --max-examples "${ST_MAX_EXAMPLES:-50}" \
    --seed "${ST_SEED:-20261204}" \
    --request-timeout 10 \
    --workers 1 \
    -H "Authorization: Bearer $tok" \
    "$@"
}
status=0
run admin "$admin" --include-path-regex '^/v1/admin/' || status=1
run user "$user" --exclude-path-regex '^/v1/admin/' || status=1
if grep -q 'panicked' "$work/rush.log"; then
  echo "rush panicked during the run:" >&2
  grep -A5 'panicked' "$work/rush.log" >&2
  status=1
fi
exit $status
