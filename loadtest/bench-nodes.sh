#!/usr/bin/env bash
# One or more rush nodes on one Redis and one Postgres, the load spread
# over them (`--also`), for the "Nodes agree" figures in BENCHMARKS.md:
#
#   loadtest/bench-nodes.sh NODES SCENARIO STAGE [DURATION_S] [BIN]
#
# e.g. `loadtest/bench-nodes.sh 2 grab grab-hot 10 target/release/rush`.
# Each run gets a fresh key prefix and a fresh Postgres database; nodes
# listen on 127.0.0.1:18081… and stop when the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
nodes=${1:-1}
scenario=${2:-grab}
stage=${3:-grab-hot}
duration=${4:-10}
bin=${5:-target/release/rush}
lt=${LT:-target/release/rush-loadtest}
pg=${RUSH_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1/postgres}
run=bench$$_$(date +%s)
psql "$pg" -qc "CREATE DATABASE $run" >/dev/null
db="${pg%/*}/$run"
data=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$pg" -qc "DROP DATABASE IF EXISTS $run WITH (FORCE)" >/dev/null 2>&1 || true
  redis-cli -n 13 --scan --pattern "$run:*" | xargs -r -n 500 redis-cli -n 13 DEL >/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
urls=()
for i in $(seq "$nodes"); do
  port=$((18080 + i))
  RUSH__NODE_ID=$i RUSH__HTTP__ADDR=127.0.0.1:$port RUSH__DATA_DIR="$data/n$i" \
    RUSH__REDIS__URL=redis://127.0.0.1:6379/13 RUSH__REDIS__KEY_PREFIX=$run RUSH__POSTGRES__URL="$db" \
    RUSH__RATE_LIMITS__ENABLED=false RUST_LOG=warn "$bin" serve >"$data/n$i.log" 2>&1 &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
for u in "${urls[@]}"; do
  for _ in $(seq 100); do curl -sf "$u/healthz" >/dev/null && break; sleep 0.1; done
done
also=()
for u in "${urls[@]:1}"; do also+=(--also "$u"); done
"$lt" --url "${urls[0]}" "${also[@]}" --scenario "$scenario" --stage "$stage" --duration "$duration" \
  --no-ceiling --out "loadtest-results/nodes-$nodes-$stage" 2>&1 | grep -vE '^\s*$' | tail -25
