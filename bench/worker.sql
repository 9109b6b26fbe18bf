-- Named queries of bench/worker.py (loaded with stampede.sqlfiles.parse).

-- name: create_plain
CREATE TABLE IF NOT EXISTS bench_plain (
    reservation_id  uuid PRIMARY KEY,
    sale            text NOT NULL,
    user_id         text NOT NULL,
    quantity        integer NOT NULL,
    reserved_at_ms  bigint NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- name: truncate_plain
TRUNCATE bench_plain;

-- name: insert_plain
INSERT INTO bench_plain (reservation_id, sale, user_id, quantity, reserved_at_ms)
SELECT * FROM unnest(%(ids)s::uuid[], %(sales)s::text[], %(users)s::text[], %(quantities)s::int[],
                     %(reserved_at_ms)s::bigint[]);

-- name: settled_span
SELECT count(*) FILTER (WHERE status <> 'pending') AS settled,
       extract(epoch FROM max(settled_at) - min(settled_at))::float8 AS span_s,
       extract(epoch FROM max(settled_at) - min(created_at))::float8 AS wall_s
  FROM stampede_ledger WHERE sale = %(sale)s;

-- name: pending
SELECT count(*) FROM stampede_ledger WHERE sale = %(sale)s AND status = 'pending';

-- name: lag
SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99, 1.0]) WITHIN GROUP
       (ORDER BY extract(epoch FROM settled_at - created_at))::float8[]
  FROM stampede_ledger WHERE sale = %(sale)s AND status = 'confirmed';

-- name: cancel_todo
-- The record_batch measurements leave jobs for reservations Redis never held: out of the drains' way.
UPDATE procrastinate_jobs SET status = 'cancelled' WHERE status = 'todo';
