#!/usr/bin/env bash
# A throwaway PostgreSQL for the service tests: installs Debian's `postgresql`
# package when it is missing (as root), starts a private cluster under
# $EGRESSD_PG_DIR (default /tmp/egressd-pg) listening on 127.0.0.1 at a free
# port and on a unix socket in that directory, creates the role and database
# `egressd` (the role may create databases: each test makes its own), and
# prints the connection URL on stdout. Idempotent: a running cluster is reused.
#
#   export EGRESSD_TEST_DATABASE_URL="$(scripts/postgres-test.sh start)"
#   scripts/postgres-test.sh stop      # stop it and delete its files
#   scripts/postgres-test.sh url       # print the URL of the running cluster
#
# The cluster trusts local connections: it exists only for tests.
set -euo pipefail

dir="${EGRESSD_PG_DIR:-/tmp/egressd-pg}"
data="$dir/data"
log="$dir/server.log"
cmd="${1:-start}"

say() { echo "postgres-test: $*" >&2; }

bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir
    return
  fi
  local newest
  newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$newest" ] && [ -x "$newest/initdb" ]; then
    echo "$newest"
    return
  fi
  return 1
}

# Runs a command as the cluster owner: `postgres` when we are root (the server
# refuses to run as root), else ourselves.
as_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

ensure_installed() {
  if bindir >/dev/null; then return; fi
  if [ "$(id -u)" != 0 ]; then
    say "PostgreSQL is not installed; run this script as root or: apt-get install -y postgresql"
    exit 1
  fi
  say "installing postgresql"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql >/dev/null
  bindir >/dev/null || { say "postgresql installed but initdb not found"; exit 1; }
}

# A port no socket on this machine uses, below the kernel's ephemeral range
# (a port inside it can be taken at any moment as the local end of an
# outgoing connection: a connect test then says "free" and the bind fails).
free_port() {
  local port low
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
  for port in $(seq $((low - 7400)) $((low - 7300))); do
    if [ -z "$(ss -Htan "( sport = :$port )" 2>/dev/null)" ] \
      && ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return
    fi
  done
  say "no free port in $((low - 7400))-$((low - 7300))"
  exit 1
}

url() {
  echo "postgres://egressd:egressd@127.0.0.1:$(cat "$dir/port")/egressd"
}

running() {
  [ -f "$dir/port" ] && [ -d "$data" ] && as_owner "$BIN/pg_ctl" -D "$data" status >/dev/null 2>&1
}

start() {
  ensure_installed
  BIN=$(bindir)
  if running; then
    url
    return
  fi
  # A leftover directory from a crashed run: start over.
  if [ -d "$dir" ]; then
    as_owner "$BIN/pg_ctl" -D "$data" stop -m immediate >/dev/null 2>&1 || true
    rm -rf "$dir"
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 700 "$dir"
  as_owner "$BIN/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
    >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; say "initdb failed"; exit 1; }
  local port
  port=$(free_port)
  echo "$port" >"$dir/port"
  as_owner "$BIN/pg_ctl" -D "$data" -l "$log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start \
    >/dev/null || { cat "$log" >&2; say "the server did not start"; exit 1; }
  as_owner "$BIN/psql" -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c "CREATE ROLE egressd LOGIN CREATEDB PASSWORD 'egressd'" \
    -c "CREATE DATABASE egressd OWNER egressd" >&2
  say "started on 127.0.0.1:$port (data in $data, log in $log)"
  url
}

stop() {
  if ! BIN=$(bindir); then
    rm -rf "$dir"
    return
  fi
  if [ -d "$data" ]; then
    as_owner "$BIN/pg_ctl" -D "$data" stop -m fast -w >/dev/null 2>&1 || true
  fi
  rm -rf "$dir"
  say "stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  url)
    BIN=$(bindir) || { say "PostgreSQL is not installed"; exit 1; }
    running || { say "not running; run: $0 start"; exit 1; }
    url
    ;;
  *) say "usage: $0 [start|stop|url]"; exit 2 ;;
esac
