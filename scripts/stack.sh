#!/usr/bin/env bash
# The local stack for full mode and its tests, on loopback only:
#   Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432, tansu (a Kafka-protocol
#   broker, in memory) 127.0.0.1:9092.
#
#   scripts/stack.sh start    install what is missing (Debian), start what is down
#   scripts/stack.sh stop     stop the tansu this script started
#   scripts/stack.sh env      print the RUSH__… variables of full mode
#
# Installing tansu builds it from crates.io (`cargo install tansu --locked
# --features dynostore`, about 15 minutes on 2 cores, once; the binary stays
# in ~/.cargo/bin). Debian's Postgres package asks for a password on TCP:
# when the test URL is refused, this script sets the `postgres` user's
# password to `postgres` and writes RUSH_TEST_POSTGRES_URL to .stack.env.
set -euo pipefail
cd "$(dirname "$0")/.."

STATE=.stack
mkdir -p "$STATE"
PG_URL_DEFAULT="postgres://postgres@127.0.0.1/postgres"

apt_install() {
  echo "installing: $*"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

start_redis() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "starting redis-server on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    for _ in $(seq 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  redis-cli -h 127.0.0.1 -p 6379 ping
}

start_postgres() {
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    apt_install postgresql postgresql-client
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1; then
    local version
    version=$(ls /etc/postgresql | sort -n | tail -1)
    echo "starting PostgreSQL $version on 127.0.0.1:5432"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || pg_ctlcluster "$version" main start
    for _ in $(seq 100); do pg_isready -h 127.0.0.1 -p 5432 >/dev/null 2>&1 && break; sleep 0.1; done
  fi
  local url="${RUSH_TEST_POSTGRES_URL:-$PG_URL_DEFAULT}"
  if ! psql "$url" -qtAc 'SELECT 1' >/dev/null 2>&1; then
    # Debian's default: password auth on TCP. Give the superuser one.
    echo "setting a password for the postgres role (local test server)"
    su postgres -c "psql -qc \"ALTER ROLE postgres PASSWORD 'postgres'\""
    url="postgres://postgres:postgres@127.0.0.1/postgres"
    echo "export RUSH_TEST_POSTGRES_URL=$url" >"$STATE/postgres.env"
  fi
  psql "$url" -qtAc 'SELECT version()'
  # A database for running rush by hand in full mode.
  psql "$url" -qtAc "SELECT 1 FROM pg_database WHERE datname = 'rush'" | grep -q 1 ||
    psql "$url" -qc 'CREATE DATABASE rush'
}

start_tansu() {
  if ! command -v tansu >/dev/null 2>&1; then
    echo "building tansu from crates.io (once; about 15 minutes on 2 cores)"
    cargo install tansu --locked --features dynostore
  fi
  if ! (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null; then
    echo "starting tansu on 127.0.0.1:9092 (memory storage)"
    nohup tansu broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
      --storage-engine memory://tansu/ >"$STATE/tansu.log" 2>&1 &
    echo $! >"$STATE/tansu.pid"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && break; sleep 0.1; done
  fi
  (exec 3<>/dev/tcp/127.0.0.1/9092) 2>/dev/null && echo "tansu listening on 127.0.0.1:9092"
}

case "${1:-start}" in
  start)
    export PATH="$HOME/.cargo/bin:$PATH"
    start_redis
    start_postgres
    start_tansu
    ;;
  stop)
    if [ -f "$STATE/tansu.pid" ]; then kill "$(cat "$STATE/tansu.pid")" 2>/dev/null || true; rm -f "$STATE/tansu.pid"; fi
    ;;
  env)
    pg="${RUSH_TEST_POSTGRES_URL:-$PG_URL_DEFAULT}"
    [ -f "$STATE/postgres.env" ] && pg=$(sed 's/^export RUSH_TEST_POSTGRES_URL=//' "$STATE/postgres.env")
    echo "export RUSH__REDIS__URL=redis://127.0.0.1:6379"
    echo "export RUSH__KAFKA__BROKERS=127.0.0.1:9092"
    echo "export RUSH__POSTGRES__URL=${pg%/postgres}/rush"
    ;;
  *)
    echo "usage: $0 start|stop|env" >&2
    exit 2
    ;;
esac
