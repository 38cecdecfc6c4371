#!/usr/bin/env bash
# Kafka on vs off, same session: the hot-packet grab stage against
#   off: Redis mode, persist worker in `rush serve` reading the outbox
#        streams into Postgres;
#   on:  full mode, relay in `rush serve` (outbox streams → Kafka), `rush
#        worker` (Kafka → Postgres) as its own process.
# Same Redis, Postgres and broker (scripts/stack.sh start), fresh key
# prefix, topics and database per run; runs alternate off/on ROUNDS times.
# Prints each run's summary and the relay lag p99 from rush's histogram.
# Usage: loadtest/bench-kafka.sh [OUT_DIR]   (default: ./bench-results/kafka)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results/kafka}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cargo build --release -p rush-gateway -p rush-loadtest
rush=$PWD/target/release/rush
lt=$PWD/target/release/rush-loadtest
pg_admin=${RUSH_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1/postgres}
pg_base=${pg_admin%/*}
rounds=${ROUNDS:-2}
load=(--scenario grab --stage grab-hot --duration "${DURATION:-10}" --packets 60 --concurrency "${CONC:-128}" --no-ceiling)
[ -n "${RATE:-}" ] && load+=(--rate "$RATE")

# p99 of a Prometheus histogram from its cumulative buckets.
p99() {
  python3 - "$1" "$2" <<'EOF'
import sys, re
text, name = open(sys.argv[1]).read(), sys.argv[2]
buckets = [(float('inf') if le == '+Inf' else float(le), float(v))
           for le, v in re.findall(name + r'_bucket\{le="([^"]+)"\} (\S+)', text)]
total = buckets[-1][1] if buckets else 0
for le, n in buckets:
    if total and n >= 0.99 * total:
        print(f"{le * 1000:.1f} ms (of {int(total)} events)"); break
else:
    print("n/a")
EOF
}

one() {
  local name=$1 kafka=$2
  local dir="$out/$name" tag="bench$$-$name"
  rm -rf "$dir"; mkdir -p "$dir"
  psql "$pg_admin" -qc "CREATE DATABASE \"$tag\"" >/dev/null
  local env=(RUSH__REDIS__URL=redis://127.0.0.1:6379/12 RUSH__REDIS__KEY_PREFIX="$tag"
             RUSH__POSTGRES__URL="$pg_base/$tag" RUSH__DATA_DIR="$dir/data" RUSH__RATE_LIMITS__ENABLED=false)
  [ "$kafka" = on ] && env+=(RUSH__KAFKA__BROKERS=127.0.0.1:9092 RUSH__KAFKA__TOPIC_PREFIX="$tag"
                             RUSH__KAFKA__GROUP="$tag-persist")
  env "${env[@]}" "$rush" serve > "$dir/rush.out" 2> "$dir/rush.err" &
  local pid=$! wpid=
  for _ in $(seq 100); do curl -sf http://127.0.0.1:8080/healthz > /dev/null && break; sleep 0.1; done
  if [ "$kafka" = on ]; then
    env "${env[@]}" "$rush" worker > "$dir/worker.out" 2> "$dir/worker.err" &
    wpid=$!
  fi
  local rc=0
  "$lt" --out "$dir/res" "${load[@]}" > "$dir/summary.txt" 2>&1 || rc=$?
  curl -s http://127.0.0.1:8080/metrics > "$dir/metrics.txt"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  [ -n "$wpid" ] && { kill "$wpid"; wait "$wpid" 2>/dev/null || true; }
  psql "$pg_admin" -qc "DROP DATABASE \"$tag\" WITH (FORCE)" >/dev/null
  redis-cli -n 12 --scan --pattern "$tag:*" | xargs -r -n 1000 redis-cli -n 12 del > /dev/null
  echo "== kafka $kafka: $name (exit $rc)"
  grep -E "grab-hot|p99|ok/s|violations" "$dir/summary.txt" | head -8 || cat "$dir/summary.txt"
  [ "$kafka" = on ] && echo "relay lag p99: $(p99 "$dir/metrics.txt" rush_relay_lag_seconds)"
  return $rc
}

for r in $(seq "$rounds"); do
  one "off-$r" off
  one "on-$r" on
done
