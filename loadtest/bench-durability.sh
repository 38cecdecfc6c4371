#!/usr/bin/env bash
# The cost of each redis.durability (issue 15), side by side in one sitting:
#
#   loadtest/bench-durability.sh [ROUNDS] [RUSH-LOADTEST ARGS...]
#
# Starts three private Redis set-ups on loopback, each keeping nothing
# beyond what its durability needs:
#   none      127.0.0.1:6391, no persistence
#   fsync     127.0.0.1:6392, appendonly yes, appendfsync always
#   replicas  127.0.0.1:6393 with a replica on 6394 (WAIT 1 after each batch)
# and runs loadtest/bench-mode.sh redis against each in turn, ROUNDS times
# (default 2), alternating the order. Default load: --stage grab-hot.
# Everything it starts stops when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
shift || true
args=("$@")
[ ${#args[@]} -eq 0 ] && args=(--stage grab-hot)
dir=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
serve() { # PORT ARGS...
  local port=$1
  shift
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --dir "$dir/$port" "$@" >"$dir/$port.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server on $port did not start" >&2
  exit 1
}
serve 6391 --appendonly no
serve 6392 --appendonly yes --appendfsync always
serve 6393 --appendonly no
serve 6394 --appendonly no --replicaof 127.0.0.1 6393
for _ in $(seq 100); do redis-cli -p 6394 info replication | grep -q master_link_status:up && break; sleep 0.1; done

run() { # NAME
  case $1 in
    none) url=redis://127.0.0.1:6391 ;;
    fsync) url=redis://127.0.0.1:6392 ;;
    replicas) url=redis://127.0.0.1:6393 ;;
  esac
  echo "== durability $1"
  REDIS_URL=$url RUSH__REDIS__DURABILITY=$1 loadtest/bench-mode.sh redis "${args[@]}" ||
    echo "== durability $1: exit $?"
}
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order=(none fsync replicas); else order=(replicas fsync none); fi
  for d in "${order[@]}"; do run "$d"; done
done
