#!/usr/bin/env bash
# Batching where it matters: grab-hot with Redis behind an added round trip
# (rush-latency-proxy), per-entity actors against one script per request
# (`actors.mode = direct`), for BENCHMARKS.md:
#
#   loadtest/bench-latency.sh [DURATION_S] [BIN] [ONE_WAY_DELAYS_US...]
#
# e.g. `loadtest/bench-latency.sh 10 target/release/rush 100 250 500` (0.2,
# 0.5 and 1 ms added per round trip). Redis mode (SQLite durable store),
# fresh key prefix and data dir per run; rush on 127.0.0.1:18090, the proxy
# on 127.0.0.1:16390; both stop when the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
bin=${2:-target/release/rush}
shift 2 || true
delays=("$@")
[ ${#delays[@]} -gt 0 ] || delays=(0 100 250 500)
lt=${LT:-target/release/rush-loadtest}
proxy=${PROXY:-target/release/rush-latency-proxy}
redis=${REDIS_ADDR:-127.0.0.1:6379}
data=$(mktemp -d)
pids=()
stop() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}
cleanup() {
  stop
  redis-cli -n 14 --scan --pattern "lat*" | xargs -r -n 500 redis-cli -n 14 DEL >/dev/null || true
  rm -rf "$data"
}
trap cleanup EXIT
printf '%-10s %-7s %10s %9s %9s\n' "rtt_ms" "mode" "grabs/s" "p50_ms" "p99_ms"
for d in "${delays[@]}"; do
  for mode in actor direct; do
    run=lat$$_${d}_$mode
    "$proxy" --listen 127.0.0.1:16390 --upstream "$redis" --delay-us "$d" >"$data/proxy.log" 2>&1 &
    pids+=($!)
    sleep 0.2
    RUSH__HTTP__ADDR=127.0.0.1:18090 RUSH__DATA_DIR="$data/$run" RUSH__ACTORS__MODE=$mode \
      RUSH__REDIS__URL=redis://127.0.0.1:16390/14 RUSH__REDIS__KEY_PREFIX=$run \
      RUST_LOG=warn "$bin" serve >"$data/$run.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18090/healthz >/dev/null && break; sleep 0.1; done
    "$lt" --url http://127.0.0.1:18090 --scenario grab --stage grab-hot --duration "$duration" --no-ceiling \
      --no-sample --out "loadtest-results/latency-$d-$mode" >"$data/$run.txt" 2>&1 || true
    line=$(grep -E '^grab-hot ' "$data/$run.txt" | head -1)
    rtt=$(awk -v d="$d" 'BEGIN { printf "%.1f", 2 * d / 1000 }')
    printf '%-10s %-7s %10s %9s %9s\n' "+$rtt" "$mode" "$(echo "$line" | awk '{print $2}')" \
      "$(echo "$line" | awk '{print $4}')" "$(echo "$line" | awk '{print $6}')"
    stop
  done
done
