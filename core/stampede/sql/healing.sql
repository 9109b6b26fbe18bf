-- Named queries of the reconciler's reads and writes (stampede.ledger.Ledger, for stampede_operator.reconcile).
-- `settled_age_ms`: how long ago the row last moved (its hold ended, else it was settled).
-- Status moves still go only out of pending (the trigger of migration 0001 guards them too).

-- name: sale_rows
-- Every row of a sale, read only to rebuild a sale Redis lost. Each row with what healing needs: when Redis took it, its job and that job's status (NULL: the
-- job vanished). One statement, so rows and jobs are read in one snapshot: a row settled and its job finished
-- between two reads would otherwise look like a pending row whose job is done.
SELECT l.reservation_id::text, l.user_id, l.quantity, l.status, l.job_id, l.reserved_at_ms, l.reason,
       j.status::text AS job_status,
       (extract(epoch FROM now() - coalesce(l.closed_at, l.settled_at)) * 1000)::bigint AS settled_age_ms
  FROM stampede_ledger l
  LEFT JOIN procrastinate_jobs j ON j.id = l.job_id
 WHERE l.sale = %(sale)s;

-- name: record_lost
-- Records Redis reservations the ledger never heard of as compensated (the API died before its durable
-- write, so no 202 was sent). ON CONFLICT: a row written meanwhile keeps its own story. Returns the ids
-- this statement recorded: only those may be released in Redis. Their units join the sale's compensated
-- total in the same statement.
WITH ins AS (
    INSERT INTO stampede_ledger (reservation_id, sale, user_id, quantity, reserved_at_ms, status, reason, settled_at)
    SELECT r.id, %(sale)s, r.user_id, r.quantity, r.reserved_at_ms, 'compensated', %(reason)s, now()
      FROM unnest(%(ids)s::uuid[], %(users)s::text[], %(quantities)s::int[], %(reserved_at_ms)s::bigint[])
           AS r(id, user_id, quantity, reserved_at_ms)
    ON CONFLICT (reservation_id) DO NOTHING
    RETURNING reservation_id, quantity
), counted AS (
    INSERT INTO stampede_sale_totals AS t (sale, shard, compensated)
    SELECT %(sale)s, (pg_backend_pid() %% 8)::smallint, sum(quantity) FROM ins HAVING count(*) > 0
    ON CONFLICT (sale, shard) DO UPDATE SET compensated = t.compensated + EXCLUDED.compensated
)
SELECT reservation_id::text FROM ins;

-- name: redefer
-- Defers one new settle_batch job for rows still pending whose job vanished or finished without settling
-- them, and points those rows at it, in one statement (the deferral of migration 0011). Returns the job id and how many rows it carries.
WITH job AS (
    SELECT stampede_defer_settle_job(%(queue)s, %(task)s, %(args)s::jsonb) AS id
), upd AS (
    UPDATE stampede_ledger l
       SET job_id = job.id
      FROM job
     WHERE l.reservation_id = ANY(%(ids)s::uuid[]) AND l.status = 'pending'
    RETURNING 1
)
SELECT (SELECT id FROM job) AS job_id, (SELECT count(*) FROM upd) AS rows;

-- name: rows_by_id
-- The listed reservations of a sale as healing needs them (the same columns as sale_rows, and as the
-- suspects of ledger.sql's tally_and_suspects).
SELECT l.reservation_id::text, l.user_id, l.quantity, l.status, l.job_id, l.reserved_at_ms, l.reason,
       j.status::text AS job_status,
       (extract(epoch FROM now() - coalesce(l.closed_at, l.settled_at)) * 1000)::bigint AS settled_age_ms
  FROM stampede_ledger l
  LEFT JOIN procrastinate_jobs j ON j.id = l.job_id
 WHERE l.reservation_id = ANY(%(ids)s::uuid[]) AND l.sale = %(sale)s;

-- name: settled_rows
-- Every settled row of a sale, streamed through a server-side cursor: only when the sale's counts
-- disagree and the reconciler looks for the reservations behind the difference.
SELECT l.reservation_id::text, l.user_id, l.quantity, l.status, l.job_id, l.reserved_at_ms, l.reason,
       NULL::text AS job_status,
       (extract(epoch FROM now() - coalesce(l.closed_at, l.settled_at)) * 1000)::bigint AS settled_age_ms
  FROM stampede_ledger l
 WHERE l.sale = %(sale)s AND l.status <> 'pending';

-- name: recorded_ids
-- Which of the listed reservations the ledger holds.
SELECT reservation_id::text FROM stampede_ledger WHERE reservation_id = ANY(%(ids)s::uuid[]);

-- name: pending_ids
-- The sale's pending reservations (through the partial index of pending rows).
SELECT reservation_id::text FROM stampede_ledger WHERE sale = %(sale)s AND status = 'pending';

-- name: sale_jobs_unfinished
-- Jobs of the sale's pending rows that are still waiting or running: what a deleted sale waits for.
SELECT count(DISTINCT j.id)
  FROM stampede_ledger l
  JOIN procrastinate_jobs j ON j.id = l.job_id
 WHERE l.sale = %(sale)s AND l.status = 'pending' AND j.status IN ('todo', 'doing');
