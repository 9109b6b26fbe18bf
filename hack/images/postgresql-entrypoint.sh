#!/bin/sh
# The first start of an empty PGDATA, as the official PostgreSQL image does it: initdb with POSTGRES_USER's
# password, password logins over the network, POSTGRES_DB created, /docker-entrypoint-initdb.d/*.sh and *.sql run
# against a server listening on its socket only; then the server itself. Arguments starting with "-" go to it.
set -eu
case "${1:-}" in -*) set -- postgres "$@" ;; esac
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
    POSTGRES_USER="${POSTGRES_USER:-postgres}"
    POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
    export POSTGRES_USER POSTGRES_DB
    mkdir -p "$PGDATA"
    chmod 700 "$PGDATA"
    # A first start that fails half way leaves no data directory, so the next start initialises it again.
    trap 'pg_ctl -D "$PGDATA" -m immediate stop >/dev/null 2>&1; rm -rf "$PGDATA"' EXIT
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "$POSTGRES_DB" != postgres ]; then
        echo 'CREATE DATABASE :"db";' | psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" \
            --dbname postgres -v db="$POSTGRES_DB" >/dev/null
    fi
    for f in /docker-entrypoint-initdb.d/*; do
        case "$f" in
        *.sh) if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;
        *.sql) psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" -f "$f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    trap - EXIT
    echo "database initialised in $PGDATA"
fi
exec "$@"
