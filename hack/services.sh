#!/usr/bin/env bash
# Local Redis and PostgreSQL as the project's own processes on free loopback ports.
#
#   hack/services.sh up       install if missing, start both, wait until they answer (no-op if up)
#   hack/services.sh down     stop both by PID
#   hack/services.sh status   show what runs
#   hack/services.sh env      print the STAMPEDE_* variables that point at them
#
# Data lives under .run/services (git-ignored), or STAMPEDE_SERVICES_DIR for a second, private pair
# (the fault suite stops and restarts its own). Nothing depends on services the machine happens to run.
#
#   hack/services.sh restart-redis | stop-postgres | start-postgres   (faults: one service at a time)
#   hack/services.sh kill-redis | start-redis   (SIGKILL, then a start on the same port; with
#   STAMPEDE_REDIS_APPENDONLY=yes Redis keeps an append-only file, fsync every second, as the chart does)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=${STAMPEDE_SERVICES_DIR:-$ROOT/.run/services}
ENVFILE=$RUN/env
mkdir -p "$RUN"

log() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

free_port() { python3 "$ROOT/hack/free_ports.py" 1; }
port_free() { python3 -c 'import socket,sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null; }

pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  return 1
}

install_missing() {
  local pkgs=()
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  pg_bindir >/dev/null || pkgs+=(postgresql)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${pkgs[*]}: install them (sudo apt-get install ${pkgs[*]})"
  log "installing ${pkgs[*]} from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # Debian starts packaged services where it can; the project never uses them.
  service redis-server stop >/dev/null 2>&1 || true
  service postgresql stop >/dev/null 2>&1 || true
}

alive() { [ -f "$1" ] && kill -0 "$(head -n1 "$1")" 2>/dev/null; }

# PostgreSQL refuses to run as root: run its tools as the postgres user then.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_redis() {
  local port=$1 dir=$RUN/redis
  mkdir -p "$dir"
  if alive "$dir/redis.pid"; then return 0; fi
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" \
    --appendonly "${STAMPEDE_REDIS_APPENDONLY:-no}" --appendfsync everysec \
    --maxclients 10000 --protected-mode yes >/dev/null 9>&-
  for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  tail -n 20 "$dir/redis.log" >&2 || true
  die "redis did not answer on 127.0.0.1:$port"
}

start_postgres() {
  local port=$1 dir=$RUN/pg bin
  bin=$(pg_bindir) || die "PostgreSQL binaries not found"
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$dir"; chmod 700 "$dir"; fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    log "initdb in $dir/data"
    as_pg "$bin/initdb" -D "$dir/data" -U stampede --auth=trust -E UTF8 --locale=C.UTF-8 >"$RUN/initdb.log" 2>&1 \
      || { cat "$RUN/initdb.log" >&2; die "initdb failed"; }
  fi
  if alive "$dir/data/postmaster.pid"; then return 0; fi
  # Sized for a flash sale on a small machine: many short transactions, durable commits.
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=400 \
     -c shared_buffers=256MB -c fsync=on -c synchronous_commit=on -c wal_level=minimal -c max_wal_senders=0 \
     -c max_wal_size=2GB -c checkpoint_timeout=15min" >/dev/null 9>&- \
    || { tail -n 30 "$dir/postgres.log" >&2; die "postgres did not start on 127.0.0.1:$port"; }
  for _ in $(seq 100); do
    psql -h 127.0.0.1 -p "$port" -U stampede -d postgres -Atc 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  psql -h 127.0.0.1 -p "$port" -U stampede -d postgres -Atc \
    "select 1 from pg_database where datname='stampede'" | grep -q 1 \
    || psql -h 127.0.0.1 -p "$port" -U stampede -d postgres -qc 'create database stampede' >/dev/null
}

cmd_up() {
  install_missing
  # Serialise concurrent starts (parallel test workers); daemons get the lock fd closed (9>&-).
  exec 9>"$RUN/.lock"
  flock 9
  local rport pport
  if [ -f "$ENVFILE" ]; then
    # Reuse the ports of the last start so a restart keeps every client's address.
    rport=$(sed -n 's/^STAMPEDE_REDIS_PORT=//p' "$ENVFILE")
    pport=$(sed -n 's/^STAMPEDE_PG_PORT=//p' "$ENVFILE")
  fi
  [ -n "${rport:-}" ] || rport=$(free_port)
  [ -n "${pport:-}" ] || pport=$(free_port)
  # A remembered port something else took meanwhile is given up for a fresh one.
  alive "$RUN/redis/redis.pid" || port_free "$rport" || rport=$(free_port)
  alive "$RUN/pg/data/postmaster.pid" || port_free "$pport" || pport=$(free_port)
  start_redis "$rport"
  start_postgres "$pport"
  cat >"$ENVFILE" <<ENV
STAMPEDE_REDIS_PORT=$rport
STAMPEDE_PG_PORT=$pport
STAMPEDE_REDIS_URL=redis://127.0.0.1:$rport/0
STAMPEDE_DATABASE_URL=postgresql://stampede@127.0.0.1:$pport/stampede
ENV
  log "redis on 127.0.0.1:$rport, postgres on 127.0.0.1:$pport ($ENVFILE)"
}

stop_pid() {
  local pidfile=$1 name=$2 pid
  alive "$pidfile" || return 0
  pid=$(head -n1 "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { log "$name stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  log "$name killed"
}

cmd_down() {
  stop_pid "$RUN/redis/redis.pid" redis
  # SIGINT is PostgreSQL's fast shutdown: aborts sessions, still a clean checkpoint.
  if alive "$RUN/pg/data/postmaster.pid"; then
    local pid; pid=$(head -n1 "$RUN/pg/data/postmaster.pid")
    kill -INT "$pid" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    log "postgres stopped"
  fi
}

cmd_status() {
  alive "$RUN/redis/redis.pid" && echo "redis: up (pid $(head -n1 "$RUN/redis/redis.pid"))" || echo "redis: down"
  alive "$RUN/pg/data/postmaster.pid" && echo "postgres: up (pid $(head -n1 "$RUN/pg/data/postmaster.pid"))" \
    || echo "postgres: down"
  [ -f "$ENVFILE" ] && cat "$ENVFILE"
  return 0
}

cmd_env() {
  [ -f "$ENVFILE" ] || die "services were never started: run hack/services.sh up"
  sed 's/^/export /' "$ENVFILE"
}

port_of() { sed -n "s/^$1=//p" "$ENVFILE"; }

case "${1:-}" in
  up) cmd_up ;;
  restart-redis)
    stop_pid "$RUN/redis/redis.pid" redis
    start_redis "$(port_of STAMPEDE_REDIS_PORT)" ;;
  kill-redis)
    if alive "$RUN/redis/redis.pid"; then
      pid=$(head -n1 "$RUN/redis/redis.pid")
      kill -KILL "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      rm -f "$RUN/redis/redis.pid"
      log "redis killed"
    fi ;;
  start-redis) start_redis "$(port_of STAMPEDE_REDIS_PORT)" ;;
  stop-postgres)
    if alive "$RUN/pg/data/postmaster.pid"; then
      as_pg "$(pg_bindir)/pg_ctl" -D "$RUN/pg/data" -m fast -w stop >/dev/null
      log "postgres stopped"
    fi ;;
  start-postgres) start_postgres "$(port_of STAMPEDE_PG_PORT)" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env|restart-redis|kill-redis|start-redis|stop-postgres|start-postgres" >&2
     exit 2 ;;
esac
