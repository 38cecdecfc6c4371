#!/usr/bin/env bash
# One rush-loadtest run against a fresh rush in the given mode, for the
# per-mode tables of BENCHMARKS.md:
#
#   loadtest/bench-mode.sh MODE [RUSH-LOADTEST ARGS...]
#
#   embedded  in-memory hot store → SQLite, persist worker in rush serve
#   redis     Redis hot store, persist worker → SQLite
#   redis-pg  Redis hot store, persist worker → Postgres
#   full      Redis, relay → Kafka (tansu), `rush worker` → Postgres; the
#             worker's /metrics is sampled too
#
# e.g. `loadtest/bench-mode.sh full --scenario grab --stage grab-hot --sustained 15000`.
# Needs scripts/stack.sh start for every mode but embedded. Fresh data dir,
# key prefix, topics and database per run; rush on 127.0.0.1:18080, the
# worker's metrics on 127.0.0.1:19464; everything stops when the run ends.
# BIN and LT choose the binaries (default: target/release/…); PG_OPTS is
# appended to the Postgres URL (e.g. '?options=-c%20synchronous_commit%3Doff'
# for a diagnosis); KEEP_LOG=FILE copies rush's log there during the run;
# REDIS_URL points at another Redis (default redis://127.0.0.1:6379/12),
# e.g. one with appendfsync always for RUSH__REDIS__DURABILITY=fsync.
# Rate limits are off (one address sends everything); RATE_LIMITS=true
# turns them on (then raise the per-address buckets with RUSH__… as well).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: loadtest/bench-mode.sh embedded|redis|redis-pg|full [rush-loadtest args]}
shift
bin=${BIN:-target/release/rush}
lt=${LT:-target/release/rush-loadtest}
pg_admin=${RUSH_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1/postgres}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/12}
tag=bm$$_$(date +%s)
data=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$mode" != embedded ]; then
    redis-cli -u "$redis_url" --scan --pattern "$tag:*" | xargs -r -n 1000 redis-cli -u "$redis_url" DEL >/dev/null || true
  fi
  case $mode in redis-pg|full) psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $tag WITH (FORCE)" >/dev/null 2>&1 || true ;; esac
  rm -rf "$data"
}
trap cleanup EXIT
env=(RUSH__HTTP__ADDR=127.0.0.1:18080 RUSH__DATA_DIR="$data/rush" RUST_LOG=warn RUSH__RATE_LIMITS__ENABLED="${RATE_LIMITS:-false}")
case $mode in
  embedded) ;;
  redis) env+=(RUSH__REDIS__URL="$redis_url" RUSH__REDIS__KEY_PREFIX="$tag") ;;
  redis-pg|full)
    psql "$pg_admin" -qc "CREATE DATABASE $tag" >/dev/null
    env+=(RUSH__REDIS__URL="$redis_url" RUSH__REDIS__KEY_PREFIX="$tag"
          RUSH__POSTGRES__URL="${pg_admin%/*}/$tag${PG_OPTS:-}") ;;
  *) echo "unknown mode $mode" >&2; exit 2 ;;
esac
[ "$mode" = full ] && env+=(RUSH__KAFKA__BROKERS=127.0.0.1:9092 RUSH__KAFKA__TOPIC_PREFIX="$tag"
                            RUSH__KAFKA__GROUP="$tag-persist")
env "${env[@]}" "$bin" serve >"$data/rush.log" 2>&1 &
pids+=($!)
[ -n "${KEEP_LOG:-}" ] && (sleep 2; timeout 120 tail -f "$data/rush.log" > "$KEEP_LOG" &)
for _ in $(seq 100); do curl -sf http://127.0.0.1:18080/healthz >/dev/null && break; sleep 0.1; done
extra=()
if [ "$mode" = full ]; then
  env "${env[@]}" RUSH__TELEMETRY__METRICS_ADDR=127.0.0.1:19464 "$bin" worker >"$data/worker.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -sf http://127.0.0.1:19464/healthz >/dev/null && break; sleep 0.1; done
  extra+=(--worker-metrics http://127.0.0.1:19464)
fi
rc=0
"$lt" --url http://127.0.0.1:18080 "${extra[@]}" --out "loadtest-results/$mode" "$@" || rc=$?
echo "== $mode (exit $rc)"
exit $rc
