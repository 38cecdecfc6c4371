#!/usr/bin/env bash
# The README's test command: installs and starts what the tests need on a
# fresh Debian 12 machine with only the Rust toolchain, then runs them.
#
#   scripts/test.sh          set up, then cargo test --workspace and the
#                            OpenAPI fuzz run (scripts/schemathesis.sh)
#   scripts/test.sh setup    set up only (what .ci/run needs before clippy)
#
# Setting up: Debian packages for building (a C compiler, pkg-config, zlib
# and OpenSSL for librdkafka) and the local stack of scripts/stack.sh (Redis, Postgres,
# tansu: built once from crates.io, about 15 minutes on 2 cores). Every step
# is skipped when what it provides is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

setup() {
  local need_apt=()
  command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
  command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
  command -v curl >/dev/null 2>&1 || need_apt+=(curl)
  # schemathesis goes into a virtualenv (Debian's python3 needs python3-venv).
  if ! command -v python3 >/dev/null 2>&1; then
    need_apt+=(python3 python3-venv)
  elif ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    need_apt+=(python3-venv)
  fi
  # librdkafka (built from source by rdkafka-sys) links zlib.
  dpkg -s zlib1g-dev >/dev/null 2>&1 || need_apt+=(zlib1g-dev)
  # ... and OpenSSL (TLS and SASL/SCRAM to Kafka).
  dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
  # promtool, for the alert rules' checks and unit tests (k8s/validate.sh).
  command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
  if [ ${#need_apt[@]} -gt 0 ]; then
    echo "installing: ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
  fi
  if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: rush needs Rust >= 1.85 (rustup)" >&2
    exit 1
  fi
  bash scripts/stack.sh start
}

setup
if [ "${1:-}" = setup ]; then
  exit 0
fi
if [ -f .stack/postgres.env ]; then
  # shellcheck disable=SC1091
  . .stack/postgres.env
fi
cargo test --workspace
# The HTTP contract, fuzzed against a fresh embedded rush (a few minutes).
bash scripts/schemathesis.sh
