#!/bin/sh
# Run once by the PostgreSQL image's entrypoint on an empty data directory (from /docker-entrypoint-initdb.d), as
# the superuser: creates Stampede's role. It owns Stampede's database and its public schema, so `stampede migrate`
# can create the ledger and queue schema, but it is no superuser and may not create roles or databases, bypass
# row security or replicate. Nobody else may connect to the database.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v app_user="$APP_DB_USER" -v app_password="$APP_DB_PASSWORD" -v app_db="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"app_user" LOGIN PASSWORD :'app_password'
    NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER DATABASE :"app_db" OWNER TO :"app_user";
ALTER SCHEMA public OWNER TO :"app_user";
REVOKE ALL ON DATABASE :"app_db" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"app_db" TO :"app_user";
SQL
