#!/usr/bin/env bash
# The randomized multi-node test, long: N real rush nodes on one Redis and
# one Postgres (and Kafka in full mode), random holds, cancels, payments,
# refunds, expiries and grabs through random nodes, then every invariant.
# Each run prints its seed; RUSH_RANDOM_SEED=<seed> replays it.
#
#   scripts/random-nodes.sh [runs] [ops] [nodes] [redis|full]
#
# Needs the local stack (scripts/stack.sh start).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export RUSH_RANDOM_OPS=${2:-2000}
export RUSH_RANDOM_NODES=${3:-3}
mode=${4:-redis}
failed=0
for i in $(seq "$runs"); do
  echo "run $i of $runs"
  if ! out=$(cargo test --release -p rush-gateway --test api -- \
    "nodes::randomized_operations_through_three_nodes_keep_every_invariant_${mode}_mode" --nocapture 2>&1); then
    failed=$((failed + 1))
  fi
  grep -E "RUSH_RANDOM_SEED|panicked|seed [0-9]+|^test " <<<"$out" || true
done
echo "$((runs - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
