#!/usr/bin/env bash
# The local stack for full mode and its tests, on loopback only:
#   Redis 127.0.0.1:6379, PostgreSQL 127.0.0.1:5432, tansu (a Kafka-protocol
#   broker, in memory) 127.0.0.1:9092; and the same three with TLS and
#   authentication only (below, "TLS and authentication on every store").
#
#   scripts/stack.sh start    install what is missing (Debian), start what is down
#   scripts/stack.sh stop     stop what this script started (tansu, the TLS stores)
#   scripts/stack.sh env      print the RUSH__… variables of full mode
#
# Installing tansu builds it from crates.io (`cargo install tansu --locked
# --features dynostore,libsql`, about 15 minutes on 2 cores, once; the
# binary stays in ~/.cargo/bin, its features in .tansu-features beside it). Debian's Postgres package asks for a password on TCP:
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

# libsql: the SQLite storage the authenticating broker keeps its SCRAM
# users in (the memory storage keeps none).
TANSU_FEATURES=dynostore,libsql

start_tansu() {
  local marker="$HOME/.cargo/bin/.tansu-features"
  if ! command -v tansu >/dev/null 2>&1 || [ "$(cat "$marker" 2>/dev/null)" != "$TANSU_FEATURES" ]; then
    echo "building tansu from crates.io (once; about 15 minutes on 2 cores)"
    cargo install tansu --locked --force --features "$TANSU_FEATURES"
    echo "$TANSU_FEATURES" >"$marker"
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

# TLS and authentication on every store, for the tests of rush's clients
# (engine/tests/tls_stores.rs, gateway/tests/api/tls.rs), on loopback:
#   PostgreSQL 127.0.0.1:5433  TLS only (hostnossl rejected), role rush by
#                              SCRAM password, a cluster of its own
#   Redis      127.0.0.1:6380  TLS only, client certificate required, ACL
#                              user rush (the default user is off)
#   Kafka      localhost:9094  TLS (socat in front of a second tansu on
#                              127.0.0.1:9095, which advertises 9094) with
#                              SASL/SCRAM-SHA-512 user rush
# The certificates (a CA of its own, the servers' for localhost, a
# client's), the stores' state and pid files are in /var/tmp/rush-tls, one
# set per machine (the servers hold their ports for every checkout).
# Passwords: rush-tls-pw.
TLS=/var/tmp/rush-tls
TLS_PW=rush-tls-pw
PG_TLS_DIR=/var/tmp/rush-pg-tls

make_certs() {
  [ -f "$TLS/client.key" ] && return 0
  command -v openssl >/dev/null 2>&1 || apt_install openssl
  mkdir -p "$TLS"
  (
    cd "$TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=rush test CA" \
      -keyout ca.key -out ca.pem 2>/dev/null
    # localhost only: 127.0.0.1 is an address the certificate does not hold.
    printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.pem 2>/dev/null
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl req -newkey rsa:2048 -nodes -subj "/CN=rush" -keyout client.key -out client.csr 2>/dev/null
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile client.ext -out client.pem 2>/dev/null
    # A CA nobody trusts, for the refusals.
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=other CA" \
      -keyout other-ca.key -out other-ca.pem 2>/dev/null
    chmod 0644 ./*.pem ./*.key
  )
}

start_pg_tls() {
  if pg_isready -h 127.0.0.1 -p 5433 >/dev/null 2>&1; then return 0; fi
  local bin
  bin="/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -1)/bin"
  if [ ! -f "$PG_TLS_DIR/data/PG_VERSION" ]; then
    rm -rf "$PG_TLS_DIR"
    mkdir -p "$PG_TLS_DIR"
    cp "$TLS/server.pem" "$TLS/server.key" "$TLS/ca.pem" "$PG_TLS_DIR/"
    chown -R postgres: "$PG_TLS_DIR"
    chmod 0600 "$PG_TLS_DIR/server.key"
    su postgres -c "$bin/initdb -D $PG_TLS_DIR/data -A trust -U postgres" >/dev/null
    cat >>"$PG_TLS_DIR/data/postgresql.conf" <<CONF
port = 5433
listen_addresses = '127.0.0.1'
unix_socket_directories = '$PG_TLS_DIR'
ssl = on
ssl_cert_file = '$PG_TLS_DIR/server.pem'
ssl_key_file = '$PG_TLS_DIR/server.key'
ssl_ca_file = '$PG_TLS_DIR/ca.pem'
password_encryption = 'scram-sha-256'
CONF
    cat >"$PG_TLS_DIR/data/pg_hba.conf" <<HBA
local     all  postgres                trust
hostssl   all  rush      127.0.0.1/32  scram-sha-256
hostnossl all  all       127.0.0.1/32  reject
HBA
  fi
  echo "starting PostgreSQL with TLS only on 127.0.0.1:5433"
  su postgres -c "$bin/pg_ctl -D $PG_TLS_DIR/data -l $PG_TLS_DIR/log -w start" >/dev/null
  psql -h "$PG_TLS_DIR" -p 5433 -U postgres -qtAc "SELECT 1 FROM pg_roles WHERE rolname = 'rush'" | grep -q 1 ||
    psql -h "$PG_TLS_DIR" -p 5433 -U postgres -qc "CREATE ROLE rush LOGIN CREATEDB PASSWORD '$TLS_PW'"
}

start_redis_tls() {
  local ping=(redis-cli --tls --cacert "$TLS/ca.pem" --cert "$TLS/client.pem" --key "$TLS/client.key"
    -h localhost -p 6380 --user rush --pass "$TLS_PW" --no-auth-warning ping)
  if "${ping[@]}" >/dev/null 2>&1; then return 0; fi
  echo "starting redis-server with TLS only on 127.0.0.1:6380"
  cat >"$TLS/redis.conf" <<CONF
bind 127.0.0.1
port 0
tls-port 6380
tls-cert-file $TLS/server.pem
tls-key-file $TLS/server.key
tls-ca-cert-file $TLS/ca.pem
tls-auth-clients yes
save ""
appendonly no
daemonize yes
pidfile $TLS/redis.pid
user default off
user rush on >$TLS_PW ~* &* +@all
CONF
  redis-server "$TLS/redis.conf"
  for _ in $(seq 50); do
    "${ping[@]}" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis-server with TLS did not come up" >&2
  return 1
}

start_kafka_tls() {
  if (exec 3<>/dev/tcp/127.0.0.1/9094) 2>/dev/null; then return 0; fi
  # tansu opens sqlite://HOST/PATH as the file HOST/PATH (relative).
  local db="${TLS#/}/tansu-auth.db"
  local broker=(tansu broker --listener-url tcp://127.0.0.1:9095 --advertised-listener-url tcp://localhost:9094
    --storage-engine "sqlite://$db" --silent)
  # The path is relative to /, where the brokers run.
  pushd / >/dev/null
  if [ ! -f "/$db" ]; then
    # The SCRAM user is created through a broker that asks for none.
    "${broker[@]}" >"$TLS/tansu-auth.log" 2>&1 &
    local pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9095) 2>/dev/null && break; sleep 0.1; done
    tansu user create --broker tcp://127.0.0.1:9095 --mechanism scram512 rush "$TLS_PW" >>"$TLS/tansu-auth.log" 2>&1
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  fi
  echo "starting tansu with SASL/SCRAM behind TLS on localhost:9094"
  nohup "${broker[@]}" --authentication >>"$TLS/tansu-auth.log" 2>&1 &
  echo $! >"$TLS/tansu-auth.pid"
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9095) 2>/dev/null && break; sleep 0.1; done
  nohup socat "OPENSSL-LISTEN:9094,bind=127.0.0.1,reuseaddr,fork,cert=$TLS/server.pem,key=$TLS/server.key,verify=0" \
    TCP:127.0.0.1:9095 >"$TLS/socat.log" 2>&1 &
  echo $! >"$TLS/socat.pid"
  popd >/dev/null
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/9094) 2>/dev/null && break; sleep 0.1; done
}

start_tls() {
  command -v socat >/dev/null 2>&1 || apt_install socat
  make_certs
  start_pg_tls
  start_redis_tls
  start_kafka_tls
  echo "TLS stores up: postgres 5433, redis 6380, kafka 9094"
}

stop_pidfile() {
  if [ -f "$1" ]; then kill "$(cat "$1")" 2>/dev/null || true; rm -f "$1"; fi
}

case "${1:-start}" in
  start)
    export PATH="$HOME/.cargo/bin:$PATH"
    start_redis
    start_postgres
    start_tansu
    start_tls
    ;;
  stop)
    stop_pidfile "$STATE/tansu.pid"
    for p in tansu-auth socat redis; do stop_pidfile "$TLS/$p.pid"; done
    if pg_isready -h 127.0.0.1 -p 5433 >/dev/null 2>&1; then
      su postgres -c "/usr/lib/postgresql/$(ls /usr/lib/postgresql | sort -n | tail -1)/bin/pg_ctl -D $PG_TLS_DIR/data -w stop" >/dev/null
    fi
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
