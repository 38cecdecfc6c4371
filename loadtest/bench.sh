#!/usr/bin/env bash
# Runs the BENCHMARKS.md set: each scenario against a fresh embedded rush
# (release build, its own data dir), load generator on the same machine.
# Usage: loadtest/bench.sh [OUT_DIR]    (default: ./bench-results)
# Needs free port 8080 on 127.0.0.1. Every run stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench-results}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cargo build --release -p rush-gateway -p rush-loadtest
rush=$PWD/target/release/rush
lt=$PWD/target/release/rush-loadtest

one() {
  local name=$1; shift
  local dir="$out/$name"
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && exec "$rush" serve > rush.out 2> rush.err) &
  local pid=$!
  for _ in $(seq 50); do curl -sf http://127.0.0.1:8080/healthz > /dev/null && break; sleep 0.1; done
  local rc=0
  "$lt" --out "$dir/res" "$@" > "$dir/summary.txt" 2>&1 || rc=$?
  kill "$pid"; wait "$pid" 2>/dev/null || true
  echo "== $name (exit $rc)"; cat "$dir/summary.txt"
  return $rc
}

one grab-closed  --scenario grab  --duration 10 --packets 60 --concurrency 128
# Open loop at ~80% of the closed-loop hot-packet peak on this machine.
one grab-open80  --scenario grab  --duration 10 --packets 60 --concurrency 256 --rate "${RATE:-19000}"
one seats-closed --scenario seats --duration 10 --events 20 --concurrency 128
one mixed-closed --scenario mixed --duration 10 --events 20 --rows 20 --cols 20 --packets 20 --concurrency 128
