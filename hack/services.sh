#!/usr/bin/env bash
# Local Redis and PostgreSQL as the project's own processes on free loopback ports.
#
#   hack/services.sh up       install if missing, start both, wait until they answer (no-op if up)
#   hack/services.sh down     stop both by PID and delete PostgreSQL's data (Redis keeps none)
#   hack/services.sh status   show what runs
#   hack/services.sh env      print the STAMPEDE_* variables that point at them
#
# State lives under .run/services (git-ignored), or STAMPEDE_SERVICES_DIR for a second, private pair
# (the fault suite stops and restarts its own). Nothing depends on services the machine happens to run.
# A restart keeps the ports of the last start (.run/services/env), so running clients find the servers again.
#
# Where PostgreSQL's data lives: PostgreSQL refuses to run as root.
#   - Not root: PostgreSQL runs as the invoking user, data in .run/services/pg/.
#   - Root: it runs as the `postgres` user, who may not be able to reach the checkout (a clone in /root, which
#     is mode 700). Its data then lives in /var/lib/stampede/pg-<hash of the services directory>/, a directory
#     of the project's own (postgres-owned, mode 700), and .run/services/pg is a symlink to it. `down` deletes
#     it; one whose checkout no longer exists is swept at the next `up`. No permission of the user's own
#     directories is changed.
# No Unix-domain socket: every client speaks TCP on 127.0.0.1, so a deep checkout path never runs into the
# 107-byte socket path limit, and no socket directory must be shared between users.
#
#   hack/services.sh restart-redis | stop-postgres | start-postgres   (faults: one service at a time)
#   hack/services.sh kill-redis | start-redis   (SIGKILL, then a start on the same port; with
#   STAMPEDE_REDIS_APPENDONLY=yes Redis keeps an append-only file, fsync every second, as the chart does)
#
# Redis Cluster: with STAMPEDE_REDIS_MODE=cluster (`make services-up REDIS_MODE=cluster`) `up` also starts a
# 6-node Redis Cluster on loopback (3 masters, 3 replicas, `redis-cli --cluster create`, data under
# .run/services/redis-cluster/<port>/) and STAMPEDE_REDIS_URL names it as redis+cluster://127.0.0.1:<port>;
# STAMPEDE_REDIS_CLUSTER_URL names it in either mode, so the single Redis and the cluster can run side by side.
#   hack/services.sh redis-cluster-up              start (only) the cluster, next to whatever runs
#   hack/services.sh kill-redis-node PORT          SIGKILL one cluster node (its replica takes over)
#   hack/services.sh start-redis-node PORT         start it again (it rejoins as a replica of the new master)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUN=${STAMPEDE_SERVICES_DIR:-$ROOT/.run/services}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd -P)
ENVFILE=$RUN/env
PG_STATE_BASE=/var/lib/stampede
PG_LINK=$RUN/pg

log() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

free_port() { python3 "$ROOT/hack/free_ports.py" 1; }
port_free() { python3 "$ROOT/hack/free_ports.py" --check "$1"; }

is_root() { [ "$(id -u)" = 0 ]; }

pg_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [ -x "$d/initdb" ] && { echo "$d"; return; }
  done
  # Other layouts (Fedora, Homebrew, a source build): the tools on PATH.
  d=$(command -v pg_ctl 2>/dev/null) && d=$(dirname "$d") && [ -x "$d/initdb" ] && { echo "$d"; return; }
  return 1
}

install_missing() {
  local pkgs=()
  command -v redis-server >/dev/null || pkgs+=(redis-server)
  pg_bindir >/dev/null || pkgs+=(postgresql)
  [ ${#pkgs[@]} -eq 0 ] && return 0
  is_root && command -v apt-get >/dev/null \
    || die "missing ${pkgs[*]}: install them (on Debian: sudo apt-get install ${pkgs[*]})"
  log "installing ${pkgs[*]} from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  # Debian starts packaged services where it can; the project never uses them.
  service redis-server stop >/dev/null 2>&1 || true
  service postgresql stop >/dev/null 2>&1 || true
}

# alive PIDFILE COMMAND: the pid file names a running (not zombie) process of that command. A pid file left by
# a crash may name a PID the system has since given to another process, which must not pass for the server.
alive() {
  local pid comm state
  [ -f "$1" ] || return 1
  pid=$(head -n1 "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  [ "$comm" = "$2" ] || return 1
  state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ "$state" != Z ]
}
redis_alive() { alive "$RUN/redis/redis.pid" redis-server; }
pg_alive() { alive "$PG_LINK/data/postmaster.pid" postgres; }

# PostgreSQL refuses to run as root: run its tools as the postgres user then, from a directory it may enter.
as_pg() {
  if is_root; then (cd "$PG_HOME" && runuser -u postgres -- "$@"); else "$@"; fi
}

# Where PostgreSQL's files go (see the top of this file): the directory $PG_LINK is, or links to.
pg_home() {
  if is_root; then
    echo "$PG_STATE_BASE/pg-$(printf '%s' "$RUN" | sha256sum | cut -c1-16)"
  else
    echo "$PG_LINK"
  fi
}

PG_HOME=$(pg_home)

# Deletes the PostgreSQL directory of this services directory (the postmaster must be stopped).
remove_pg_home() {
  local target
  if [ -L "$PG_LINK" ]; then
    target=$(readlink "$PG_LINK")
    # Only a directory this script made: under the state base and marked with this services directory.
    if [[ "$target" == "$PG_STATE_BASE"/pg-* ]] && [ "$(cat "$target/services-dir" 2>/dev/null)" = "$RUN" ]; then
      rm -rf "$target"
    fi
    rm -f "$PG_LINK"
  elif [ -d "$PG_LINK" ]; then
    rm -rf "$PG_LINK"
  fi
}

# Root: the directories of checkouts that no longer exist (deleted without `down`), unless their server runs.
sweep_orphans() {
  local d owner
  for d in "$PG_STATE_BASE"/pg-*; do
    # Another checkout's `down` may delete its directory between these lines: a marker gone is nothing to sweep.
    owner=$(cat "$d/services-dir" 2>/dev/null) || continue
    [ -d "$owner" ] && continue
    alive "$d/data/postmaster.pid" postgres && continue
    log "removing $d (its checkout $owner is gone)"
    rm -rf "$d"
  done
}

# Makes the PostgreSQL directory (owned by the user PostgreSQL runs as, mode 700) and, for root, the link to it.
prepare_pg_home() {
  local home=$PG_HOME
  if is_root; then
    getent passwd postgres >/dev/null \
      || die "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as (create one)"
    # A real directory here is an older layout's data, reachable or not: the local data is disposable.
    if [ -d "$PG_LINK" ] && [ ! -L "$PG_LINK" ]; then
      if pg_alive; then stop_postgres_now; fi
      log "PostgreSQL's data now lives in $home; dropping the old copy in the checkout"
      rm -rf "$PG_LINK"
    fi
    sweep_orphans
    install -d -m 755 -o root -g root "$PG_STATE_BASE"
    install -d -m 700 -o postgres -g "$(id -gn postgres)" "$home"
    printf '%s\n' "$RUN" >"$home/services-dir"
    [ "$(readlink "$PG_LINK" 2>/dev/null)" = "$home" ] || ln -sfn "$home" "$PG_LINK"
  else
    mkdir -p "$home"
    chmod 700 "$home"
  fi
}

start_redis() {
  local port=$1 dir=$RUN/redis
  mkdir -p "$dir"
  if redis_alive; then return 0; fi
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

pg_ctl_start() { # PORT: start the postmaster, waiting until it accepts connections
  as_pg "$1/pg_ctl" -D "$PG_HOME/data" -l "$PG_HOME/postgres.log" -w -t 60 start -o \
    "-c listen_addresses=127.0.0.1 -c port=$2 -c unix_socket_directories='' -c max_connections=400 \
     -c shared_buffers=256MB -c fsync=on -c synchronous_commit=on -c wal_level=minimal -c max_wal_senders=0 \
     -c max_wal_size=2GB -c checkpoint_timeout=15min" >"$RUN/pg_ctl.log" 2>&1 9>&-
}

start_postgres() {
  local port=$1 bin
  bin=$(pg_bindir) || die "PostgreSQL binaries not found"
  prepare_pg_home
  if [ ! -f "$PG_LINK/data/PG_VERSION" ]; then
    log "initdb in $PG_HOME/data"
    as_pg "$bin/initdb" -D "$PG_HOME/data" -U stampede --auth=trust -E UTF8 --locale=C.UTF-8 \
      >"$RUN/initdb.log" 2>&1 || { cat "$RUN/initdb.log" >&2; die "initdb failed"; }
  fi
  if pg_alive; then return 0; fi
  # A pid file left by a crash: its PID is no running postgres (maybe another process's by now, which
  # PostgreSQL itself would take for a live server of the same user).
  rm -f "$PG_HOME/data/postmaster.pid"
  # Sized for a flash sale on a small machine: many short transactions, durable commits. After a crash
  # (SIGKILL) the old server's processes take a moment to notice and exit; until then a start is refused.
  local tries=0
  until pg_ctl_start "$bin" "$port"; do
    tries=$((tries + 1))
    if [ $tries -ge 5 ] || ! tail -n 5 "$PG_LINK/postgres.log" 2>/dev/null | grep -q "is still in use"; then
      cat "$RUN/pg_ctl.log" >&2 || true
      tail -n 30 "$PG_LINK/postgres.log" >&2 || true
      die "postgres did not start on 127.0.0.1:$port"
    fi
    sleep 1
  done
  for _ in $(seq 100); do
    "$bin/psql" -h 127.0.0.1 -p "$port" -U stampede -d postgres -Atc 'select 1' >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$bin/psql" -h 127.0.0.1 -p "$port" -U stampede -d postgres -Atc \
    "select 1 from pg_database where datname='stampede'" | grep -q 1 \
    || "$bin/psql" -h 127.0.0.1 -p "$port" -U stampede -d postgres -qc 'create database stampede' >/dev/null
}

lock() {
  # Serialise up/down (parallel test workers); daemons get the lock fd closed (9>&-).
  exec 9>"$RUN/.lock"
  flock 9
}

CLUSTER_DIR=$RUN/redis-cluster
CLUSTER_NODES=6
# How long a master may not answer before its replica is promoted. Short, so a failover on loopback takes
# seconds; a real cluster keeps Redis's default (15 s) or what its network needs.
CLUSTER_NODE_TIMEOUT_MS=${STAMPEDE_REDIS_CLUSTER_NODE_TIMEOUT_MS:-2000}

cluster_ports() { sed -n 's/^STAMPEDE_REDIS_CLUSTER_PORTS=//p' "$ENVFILE" 2>/dev/null | tr ',' ' '; }

# Free ports for the cluster's nodes: each node also listens on its port + 10000 (the cluster bus).
free_cluster_ports() {
  local picked=() p
  while [ ${#picked[@]} -lt $CLUSTER_NODES ]; do
    p=$(free_port)
    [ $((p + 10000)) -le 65535 ] && port_free $((p + 10000)) || continue
    [[ " ${picked[*]} " == *" $p "* ]] || picked+=("$p")
  done
  echo "${picked[*]}"
}
node_alive() { alive "$CLUSTER_DIR/$1/redis.pid" redis-server; }

start_cluster_node() {
  local port=$1 dir=$CLUSTER_DIR/$1
  mkdir -p "$dir"
  node_alive "$port" && return 0
  # A node keeps its identity and its view of the cluster in nodes.conf, so a node started again rejoins.
  redis-server --bind 127.0.0.1 --port "$port" --daemonize yes --dir "$dir" \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --save "" --appendonly no \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout "$CLUSTER_NODE_TIMEOUT_MS" \
    --maxclients 10000 --protected-mode yes >/dev/null 9>&-
  for _ in $(seq 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  tail -n 20 "$dir/redis.log" >&2 || true
  die "redis cluster node did not answer on 127.0.0.1:$port"
}

cluster_ok() { # every node answers cluster_state:ok and every replica is in sync with its master (a replica
  # that never synced refuses to take over when its master dies)
  local p
  for p in "$@"; do
    redis-cli -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
    if redis-cli -p "$p" role 2>/dev/null | head -n1 | grep -q slave; then
      redis-cli -p "$p" info replication 2>/dev/null | grep -q '^master_link_status:up' || return 1
    fi
  done
}

start_cluster() { # starts the 6 nodes (on the ports of the last start while free) and creates the cluster once
  local ports=() p fresh=0
  read -r -a ports <<<"$(cluster_ports)"
  for p in "${ports[@]}"; do node_alive "$p" || { port_free "$p" && port_free $((p + 10000)); } || fresh=1; done
  if [ ${#ports[@]} -ne $CLUSTER_NODES ] || [ $fresh = 1 ]; then
    stop_cluster  # every node with a pid file here, remembered or not: none is left running without its data
    read -r -a ports <<<"$(free_cluster_ports)"
  fi
  for p in "${ports[@]}"; do start_cluster_node "$p"; done
  CLUSTER_PORTS=$(IFS=,; echo "${ports[*]}")
  if ! redis-cli -p "${ports[0]}" cluster info | grep -q "^cluster_known_nodes:$CLUSTER_NODES"; then
    log "creating the Redis Cluster on ports ${ports[*]} (3 masters, 3 replicas)"
    # shellcheck disable=SC2046
    redis-cli --cluster create $(printf '127.0.0.1:%s ' "${ports[@]}") --cluster-replicas 1 --cluster-yes \
      >"$CLUSTER_DIR/create.log" 2>&1 || { cat "$CLUSTER_DIR/create.log" >&2; die "redis-cli --cluster create failed"; }
  fi
  for _ in $(seq 300); do cluster_ok "${ports[@]}" && return 0; sleep 0.1; done
  die "the Redis Cluster on ${ports[*]} did not reach cluster_state:ok"
}

stop_cluster() {
  local d
  for d in "$CLUSTER_DIR"/*/; do
    [ -f "$d/redis.pid" ] && stop_pid "$d/redis.pid" "redis cluster node $(basename "$d")" redis-server
  done
  rm -rf "$CLUSTER_DIR"
}

write_env() { # REDIS_PORT PG_PORT [CLUSTER_PORTS]
  local url="redis://127.0.0.1:$1/0" cluster_url=""
  if [ -n "${3:-}" ]; then
    cluster_url="redis+cluster://127.0.0.1:${3%%,*}"
    [ "${STAMPEDE_REDIS_MODE:-single}" = cluster ] && url=$cluster_url
  fi
  {
    echo "STAMPEDE_REDIS_PORT=$1"
    echo "STAMPEDE_PG_PORT=$2"
    echo "STAMPEDE_REDIS_URL=$url"
    echo "STAMPEDE_DATABASE_URL=postgresql://stampede@127.0.0.1:$2/stampede"
    if [ -n "${3:-}" ]; then
      echo "STAMPEDE_REDIS_CLUSTER_PORTS=$3"
      echo "STAMPEDE_REDIS_CLUSTER_URL=$cluster_url"
    fi
  } >"$ENVFILE.new"
  mv "$ENVFILE.new" "$ENVFILE"
}

cmd_up() {
  install_missing
  lock
  local rport pport
  case "${STAMPEDE_REDIS_MODE:-single}" in single|cluster) ;; *)
    die "STAMPEDE_REDIS_MODE=${STAMPEDE_REDIS_MODE}: expected single or cluster" ;;
  esac
  if [ -f "$ENVFILE" ]; then
    # Reuse the ports of the last start so a restart keeps every client's address.
    rport=$(sed -n 's/^STAMPEDE_REDIS_PORT=//p' "$ENVFILE")
    pport=$(sed -n 's/^STAMPEDE_PG_PORT=//p' "$ENVFILE")
  fi
  [ -n "${rport:-}" ] || rport=$(free_port)
  [ -n "${pport:-}" ] || pport=$(free_port)
  # A remembered port another server took meanwhile is given up for a fresh one.
  redis_alive || port_free "$rport" || { log "port $rport is taken: redis moves"; rport=$(free_port); }
  pg_alive || port_free "$pport" || { log "port $pport is taken: postgres moves"; pport=$(free_port); }
  start_redis "$rport"
  start_postgres "$pport"
  CLUSTER_PORTS=""
  if [ "${STAMPEDE_REDIS_MODE:-single}" = cluster ] || [ -n "$(cluster_ports)" ]; then start_cluster; fi
  write_env "$rport" "$pport" "$CLUSTER_PORTS"
  log "redis on 127.0.0.1:$rport, postgres on 127.0.0.1:$pport${CLUSTER_PORTS:+, redis cluster on $CLUSTER_PORTS} ($ENVFILE)"
}

cmd_redis_cluster_up() {
  [ -f "$ENVFILE" ] || die "services were never started: run hack/services.sh up"
  lock
  local rport pport
  rport=$(port_of STAMPEDE_REDIS_PORT)
  pport=$(port_of STAMPEDE_PG_PORT)
  CLUSTER_PORTS=""
  start_cluster
  STAMPEDE_REDIS_MODE=$(grep -q '^STAMPEDE_REDIS_URL=redis+cluster://' "$ENVFILE" && echo cluster || echo single) \
    write_env "$rport" "$pport" "$CLUSTER_PORTS"
  log "redis cluster on $CLUSTER_PORTS"
}

stop_pid() {
  local pidfile=$1 name=$2 pid
  alive "$pidfile" "$3" || return 0
  pid=$(head -n1 "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || { log "$name stopped"; return 0; }; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  log "$name killed"
}

stop_postgres_now() {
  # SIGINT is PostgreSQL's fast shutdown: aborts sessions, still a clean checkpoint.
  pg_alive || return 0
  local pid; pid=$(head -n1 "$PG_LINK/data/postmaster.pid")
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 150); do pg_alive || break; sleep 0.1; done
  pg_alive && kill -KILL "$pid" 2>/dev/null
  log "postgres stopped"
}

cmd_down() {
  lock
  stop_pid "$RUN/redis/redis.pid" redis redis-server
  stop_cluster
  # The next `up` chooses its Redis mode afresh.
  [ -f "$ENVFILE" ] && sed -i '/^STAMPEDE_REDIS_CLUSTER_/d' "$ENVFILE"
  stop_postgres_now
  remove_pg_home
}

cmd_status() {
  redis_alive && echo "redis: up (pid $(head -n1 "$RUN/redis/redis.pid"))" || echo "redis: down"
  local p
  for p in $(cluster_ports); do
    node_alive "$p" && echo "redis cluster node $p: up ($(redis-cli -p "$p" role 2>/dev/null | head -n1))" \
      || echo "redis cluster node $p: down"
  done
  pg_alive && echo "postgres: up (pid $(head -n1 "$PG_LINK/data/postmaster.pid"), data in $PG_HOME/data)" \
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
    stop_pid "$RUN/redis/redis.pid" redis redis-server
    start_redis "$(port_of STAMPEDE_REDIS_PORT)" ;;
  kill-redis)
    if redis_alive; then
      pid=$(head -n1 "$RUN/redis/redis.pid")
      kill -KILL "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      rm -f "$RUN/redis/redis.pid"
      log "redis killed"
    fi ;;
  start-redis) start_redis "$(port_of STAMPEDE_REDIS_PORT)" ;;
  redis-cluster-up) cmd_redis_cluster_up ;;
  kill-redis-node)
    [[ "${2:-}" =~ ^[0-9]+$ ]] && [ -d "$CLUSTER_DIR/$2" ] || die "kill-redis-node PORT: no cluster node on ${2:-?}"
    if node_alive "$2"; then
      pid=$(head -n1 "$CLUSTER_DIR/$2/redis.pid")
      kill -KILL "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
      rm -f "$CLUSTER_DIR/$2/redis.pid"
      log "redis cluster node $2 killed"
    fi ;;
  start-redis-node)
    [[ "${2:-}" =~ ^[0-9]+$ ]] && [ -d "$CLUSTER_DIR/$2" ] || die "start-redis-node PORT: no cluster node on ${2:-?}"
    start_cluster_node "$2" ;;
  stop-postgres)
    if pg_alive; then
      as_pg "$(pg_bindir)/pg_ctl" -D "$PG_HOME/data" -m fast -w stop >/dev/null
      log "postgres stopped"
    fi ;;
  start-postgres) start_postgres "$(port_of STAMPEDE_PG_PORT)" ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env|restart-redis|kill-redis|start-redis|stop-postgres|start-postgres|" \
       "redis-cluster-up|kill-redis-node PORT|start-redis-node PORT" >&2
     exit 2 ;;
esac
