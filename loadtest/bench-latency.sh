#!/usr/bin/env bash
# Batching where it matters: grab-hot with Redis behind an added round trip
# (rush-latency-proxy), per-entity actors against one script per request
# (`actors.mode = direct`), for BENCHMARKS.md:
#
#   loadtest/bench-latency.sh [DURATION_S] [BIN] [ONE_WAY_DELAYS_US...]
#
# e.g. `loadtest/bench-latency.sh 10 target/release/rush none 100 250 500`
# (Redis directly, then 0.2, 0.5 and 1 ms added per round trip; the proxy's
# own hops add about 0.3 ms, which the rtt_ms column, measured with
# `redis-cli --latency` through it, includes). Redis mode (SQLite durable store),
# fresh key prefix and data dir per run; rush on 127.0.0.1:18090, the proxy
# on 127.0.0.1:16390; both stop when the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10}
bin=${2:-target/release/rush}
shift 2 || true
delays=("$@")
[ ${#delays[@]} -gt 0 ] || delays=(none 0 100 250 500)
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
# Redis's own counters: scripts run and CPU seconds used.
redis_stat() {
  redis-cli -h "${redis%:*}" -p "${redis#*:}" info all | tr -d '\r' | awk -F'[:,=]' '
    /^cmdstat_evalsha:/ { calls += $3 } /^cmdstat_eval:/ { calls += $3 } /^cmdstat_fcall:/ { calls += $3 }
    /^used_cpu_sys:/ { cpu += $2 } /^used_cpu_user:/ { cpu += $2 }
    END { printf "%d %.3f\n", calls, cpu }'
}
printf '%-8s %-9s %-7s %10s %9s %9s %13s %13s\n' "added" "rtt_ms" "mode" "grabs/s" "p50_ms" "p99_ms" \
  "scripts/grab" "redis_µs/grab"
for d in "${delays[@]}"; do
  for mode in actor direct; do
    run=lat$$_${d}_$mode
    port=16390
    if [ "$d" = none ]; then
      port=${redis#*:}
    else
      "$proxy" --listen 127.0.0.1:16390 --upstream "$redis" --delay-us "$d" >"$data/proxy.log" 2>&1 &
      pids+=($!)
      sleep 0.2
    fi
    RUSH__HTTP__ADDR=127.0.0.1:18090 RUSH__DATA_DIR="$data/$run" RUSH__ACTORS__MODE=$mode \
      RUSH__REDIS__URL=redis://127.0.0.1:$port/14 RUSH__REDIS__KEY_PREFIX=$run \
      RUSH__RATE_LIMITS__ENABLED=false RUST_LOG=warn "$bin" serve >"$data/$run.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do curl -sf http://127.0.0.1:18090/healthz >/dev/null && break; sleep 0.1; done
    # The round trip as a client sees it through the proxy (ms, average).
    measured=$(timeout 3 redis-cli -p "$port" --latency -i 1 2>/dev/null | tail -1 | awk '{print $3}' || true)
    read -r calls0 cpu0 < <(redis_stat)
    "$lt" --url http://127.0.0.1:18090 --scenario grab --stage grab-hot --duration "$duration" --no-ceiling \
      --no-sample --out "loadtest-results/latency-$d-$mode" >"$data/$run.txt" 2>&1 || true
    read -r calls1 cpu1 < <(redis_stat)
    line=$(grep -E '^grab-hot ' "$data/$run.txt" | head -1)
    grabs=$(grep -oE '200: [0-9]+' "$data/$run.txt" | head -1 | awk '{print $2}')
    added=$(awk -v d="$d" 'BEGIN { if (d == "none") print "none"; else printf "+%.1f", 2 * d / 1000 }')
    per=$(awk -v c0="$calls0" -v c1="$calls1" -v u0="$cpu0" -v u1="$cpu1" -v g="${grabs:-0}" \
      'BEGIN { if (g > 0) printf "%.3f %.1f", (c1 - c0) / g, (u1 - u0) * 1e6 / g; else print "- -" }')
    printf '%-8s %-9s %-7s %10s %9s %9s %13s %13s\n' "$added" "${measured:-?}" "$mode" \
      "$(echo "$line" | awk '{print $2}')" "$(echo "$line" | awk '{print $4}')" "$(echo "$line" | awk '{print $6}')" \
      ${per}
    stop
  done
done
