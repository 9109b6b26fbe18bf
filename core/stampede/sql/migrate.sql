-- Named queries of `stampede migrate` (stampede.migrate).

-- name: lock
-- A session-level advisory lock: one migrator at a time across every pod; the others wait, then find
-- nothing left to do.
SELECT pg_advisory_lock(%(key)s);

-- name: unlock
SELECT pg_advisory_unlock(%(key)s);

-- name: create_version_table
CREATE TABLE IF NOT EXISTS stampede_schema_version (
    name        text PRIMARY KEY,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: applied
SELECT name, checksum FROM stampede_schema_version ORDER BY name;

-- name: record
INSERT INTO stampede_schema_version (name, checksum) VALUES (%(name)s, %(checksum)s);

-- name: procrastinate_present
SELECT to_regclass('procrastinate_jobs') IS NOT NULL AS present;
