-- Named queries of the ledger (stampede.ledger). Every status move is guarded by
-- `status = 'pending'` here and by the trigger of migration 0001, so a repeat is a no-op.

-- name: record_batch
-- One statement, so one round trip and its own transaction: the batch's pending rows, each sale's rows
-- joining the waiting settle job of its (sale, shard) or a new one (function of migration 0003). A
-- reservation id already present keeps its first row and is not in `inserted` (migration 0005). One row per
-- sale of the batch: (sale, job id, ids inserted pending).
SELECT job_sale, job, inserted
  FROM stampede_record_batch(%(queue)s, %(task)s, %(shard)s, %(ids)s::uuid[], %(sales)s::text[],
                             %(users)s::text[], %(quantities)s::int[], %(reserved_at_ms)s::bigint[]);

-- name: settle_barrier
-- A settle job's first step: waits until every writer that joined a waiting job of the shard has committed.
SELECT stampede_settle_barrier(%(sale)s, %(shard)s);

-- name: claim
-- Up to `limit` pending rows of one shard, oldest first, locked for this transaction. Rows another claim
-- holds are skipped (that claim settles them, or rolls back and leaves them pending for the next one).
SELECT reservation_id::text, sale, quantity
  FROM stampede_ledger
 WHERE sale = %(sale)s AND shard = %(shard)s AND status = 'pending'
 ORDER BY created_at
 LIMIT %(limit)s
   FOR UPDATE SKIP LOCKED;

-- name: settled_of_job
-- Rows a settle job moved (it stamps its id on them): what a re-run of that job replays to Redis, since
-- the run before it may have died between its ledger commit and its Redis write.
SELECT reservation_id::text, sale, quantity, status
  FROM stampede_ledger
 WHERE job_id = %(job_id)s AND status <> 'pending';

-- name: get_reservation
SELECT reservation_id::text, sale, user_id, quantity, status, reason, job_id, attempts, created_at, settled_at,
       hold_expires_at, closed_at, checkout_key, payment_ref
  FROM stampede_ledger
 WHERE reservation_id = %(reservation_id)s::uuid;

-- name: ensure_sale
-- A sale created again under a deleted one's name is a live sale again (deleted_at cleared).
INSERT INTO stampede_sales (sale, sku, stock, per_user_limit, window_start, window_end,
                            buyer_rate, buyer_burst, ip_rate, ip_burst, hold_seconds, buckets)
VALUES (%(sale)s, %(sku)s, %(stock)s, %(per_user_limit)s, %(window_start)s, %(window_end)s,
        %(buyer_rate)s, %(buyer_burst)s, %(ip_rate)s, %(ip_burst)s, %(hold_seconds)s, %(buckets)s)
ON CONFLICT (sale) DO UPDATE
   SET sku = EXCLUDED.sku, stock = EXCLUDED.stock, per_user_limit = EXCLUDED.per_user_limit,
       window_start = EXCLUDED.window_start, window_end = EXCLUDED.window_end,
       buyer_rate = EXCLUDED.buyer_rate, buyer_burst = EXCLUDED.buyer_burst,
       ip_rate = EXCLUDED.ip_rate, ip_burst = EXCLUDED.ip_burst, hold_seconds = EXCLUDED.hold_seconds,
       buckets = EXCLUDED.buckets, deleted_at = NULL, updated_at = now()
 WHERE (stampede_sales.sku, stampede_sales.stock, stampede_sales.per_user_limit,
        stampede_sales.window_start, stampede_sales.window_end, stampede_sales.buyer_rate,
        stampede_sales.buyer_burst, stampede_sales.ip_rate, stampede_sales.ip_burst, stampede_sales.hold_seconds,
        stampede_sales.buckets, stampede_sales.deleted_at)
       IS DISTINCT FROM
       (EXCLUDED.sku, EXCLUDED.stock, EXCLUDED.per_user_limit, EXCLUDED.window_start, EXCLUDED.window_end,
        EXCLUDED.buyer_rate, EXCLUDED.buyer_burst, EXCLUDED.ip_rate, EXCLUDED.ip_burst, EXCLUDED.hold_seconds,
        EXCLUDED.buckets, NULL::timestamptz);

-- name: mark_sale_deleted
-- The FlashSale is being deleted: from now on nobody restores it in Redis.
UPDATE stampede_sales SET deleted_at = now(), updated_at = now() WHERE sale = %(sale)s AND deleted_at IS NULL;

-- name: write_horizon
-- The first transaction id not yet started: every ledger write in progress now has a smaller one.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint;

-- name: writes_before
-- Whether every transaction that started before the horizon has ended (committed or not).
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint >= %(horizon)s;

-- name: restore_source
-- What restoring the sale in Redis needs, in one statement (one snapshot): the sale's row, then one row per
-- reservation (NULL reservation columns when it has none). No row at all: the ledger does not know the sale.
SELECT s.stock, s.per_user_limit, s.window_start, s.window_end, s.buyer_rate, s.buyer_burst, s.ip_rate,
       s.ip_burst, s.deleted_at IS NOT NULL AS deleted, s.buckets,
       l.reservation_id::text, l.user_id, l.quantity, l.status, l.reserved_at_ms
  FROM stampede_sales s
  LEFT JOIN stampede_ledger l ON l.sale = s.sale
 WHERE s.sale = %(sale)s;

-- name: rows
SELECT reservation_id::text, user_id, quantity, status, reason
  FROM stampede_ledger
 WHERE sale = %(sale)s;

-- name: counts
SELECT status, sum(quantity)::bigint AS units
  FROM stampede_ledger
 WHERE sale = %(sale)s
 GROUP BY status;

-- name: ping
SELECT 1;

-- name: sale_exists
SELECT 1 FROM stampede_sales WHERE sale = %(sale)s AND deleted_at IS NULL;

-- name: settle
-- Moves every listed reservation that is still pending to its outcome (confirmed, or compensated with
-- a reason) in one statement, and answers the final status of every listed reservation the ledger
-- holds, with whether this statement moved it. The outer SELECT sees the rows as they were before the
-- UPDATE (one snapshot), hence the CASE. A NULL sale matches any sale (compensation by id). A settle job
-- stamps its id on the rows it moves (`job_id`; NULL keeps the row's job). The units it moved are added to
-- the sale's settled totals by the same statement. In a sale with checkout holds (migration 0020) a
-- confirmation becomes a hold instead: `held` until now() + the sale's hold_seconds.
WITH want AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(sales)s::text[], %(outcomes)s::text[], %(reasons)s::text[])
                  AS w(id, sale, outcome, reason)
), hold AS (
    SELECT s.sale, s.hold_seconds
      FROM stampede_sales s
     WHERE s.hold_seconds > 0 AND s.sale IN (SELECT DISTINCT sale FROM want WHERE sale IS NOT NULL)
), moved AS (
    UPDATE stampede_ledger l
       SET status = CASE WHEN w.outcome = 'confirmed' AND h.sale IS NOT NULL THEN 'held' ELSE w.outcome END,
           hold_expires_at = CASE WHEN w.outcome = 'confirmed' AND h.sale IS NOT NULL
                                  THEN now() + make_interval(secs => h.hold_seconds) END,
           reason = w.reason, settled_at = now(), attempts = %(attempt)s,
           job_id = COALESCE(%(job_id)s::bigint, l.job_id)
      FROM want w
      LEFT JOIN hold h ON h.sale = w.sale
     WHERE l.reservation_id = w.id
       AND l.status = 'pending'
       AND (w.sale IS NULL OR l.sale = w.sale)
    RETURNING l.reservation_id, l.sale, l.quantity, l.status,
              extract(epoch FROM now() - l.created_at)::float8 AS lag_s
), counted AS (
    -- The sale's settled totals move in the same statement as its rows (migrations 0010, 0020).
    INSERT INTO stampede_sale_totals AS t (sale, shard, confirmed, compensated, held)
    SELECT m.sale, (pg_backend_pid() %% 8)::smallint,
           coalesce(sum(m.quantity) FILTER (WHERE m.status = 'confirmed'), 0),
           coalesce(sum(m.quantity) FILTER (WHERE m.status = 'compensated'), 0),
           coalesce(sum(m.quantity) FILTER (WHERE m.status = 'held'), 0)
      FROM moved m
     GROUP BY m.sale
     ORDER BY m.sale
    ON CONFLICT (sale, shard) DO UPDATE
       SET confirmed = t.confirmed + EXCLUDED.confirmed, compensated = t.compensated + EXCLUDED.compensated,
           held = t.held + EXCLUDED.held
)
SELECT l.reservation_id::text, l.sale, l.quantity,
       CASE WHEN m.reservation_id IS NULL THEN l.status ELSE m.status END AS status,
       m.reservation_id IS NOT NULL AS moved,
       m.lag_s
  FROM want w
  JOIN stampede_ledger l ON l.reservation_id = w.id
  LEFT JOIN moved m ON m.reservation_id = w.id;

-- name: pending_of_job
SELECT reservation_id::text, sale, quantity
  FROM stampede_ledger
 WHERE job_id = %(job_id)s AND status = 'pending';

-- name: insert_pending
-- The same rows as record_batch, for a job deferred separately on the same transaction (procrastinate's
-- JobDeferrer with connection=...). Kept for bench/worker.py, which measures that two-step form against
-- the one-statement record_batch.
INSERT INTO stampede_ledger (reservation_id, sale, user_id, quantity, reserved_at_ms, job_id)
SELECT r.id, r.sale, r.user_id, r.quantity, r.reserved_at_ms, %(job_id)s
  FROM unnest(%(ids)s::uuid[], %(sales)s::text[], %(users)s::text[], %(quantities)s::int[],
              %(reserved_at_ms)s::bigint[]) AS r(id, sale, user_id, quantity, reserved_at_ms)
ON CONFLICT (reservation_id) DO NOTHING;

-- name: current
-- The status of each listed reservation now (a fresh snapshot): for rows `settle` saw pending but could
-- not move because another writer moved them after its snapshot was taken.
SELECT reservation_id::text, sale, quantity, status
  FROM stampede_ledger
 WHERE reservation_id = ANY(%(ids)s::uuid[]);

-- name: tally_and_suspects
-- Units of a sale by status without reading its settled rows (pending through the partial index of pending
-- rows, confirmed/compensated from the totals the settling statements keep), and its suspect pending rows:
-- reserved before the cutoff (Redis clock) and whose job will not settle them (vanished, finished, failed,
-- cancelled or aborted), oldest first, at most `limit`, with what healing needs (healing.sql's row shape).
-- One statement, one snapshot; every row carries the counts, and a sale without suspects gives one row whose
-- row columns are NULL.
WITH counts AS (
    SELECT (SELECT coalesce(sum(quantity), 0) FROM stampede_ledger
             WHERE sale = %(sale)s AND status = 'pending')::bigint AS pending,
           coalesce(sum(confirmed), 0)::bigint AS confirmed,
           coalesce(sum(compensated), 0)::bigint AS compensated,
           coalesce(sum(held), 0)::bigint AS held,
           coalesce(sum(paid), 0)::bigint AS paid,
           coalesce(sum(expired), 0)::bigint AS expired
      FROM stampede_sale_totals
     WHERE sale = %(sale)s
), suspects AS (
    SELECT l.reservation_id::text, l.user_id, l.quantity, l.status, l.job_id, l.reserved_at_ms, l.reason,
           j.status::text AS job_status, NULL::bigint AS settled_age_ms
      FROM stampede_ledger l
      LEFT JOIN procrastinate_jobs j ON j.id = l.job_id
     WHERE l.sale = %(sale)s AND l.status = 'pending' AND l.reserved_at_ms <= %(cutoff_ms)s
       AND (j.id IS NULL OR j.status::text NOT IN ('todo', 'doing', 'aborting'))
     ORDER BY l.reserved_at_ms
     LIMIT %(limit)s
)
SELECT c.pending, c.confirmed, c.compensated, c.held, c.paid, c.expired, s.*
  FROM counts c
  LEFT JOIN suspects s ON true
 ORDER BY s.reserved_at_ms;

-- name: import_settled
-- Benchmark and test data only: rows that are already final, written in one statement together with their
-- sale's totals (the same bookkeeping Ledger.settle does), so a sale of a million settled reservations can
-- be made in seconds.
WITH ins AS (
    INSERT INTO stampede_ledger (reservation_id, sale, user_id, quantity, reserved_at_ms, status, reason,
                                 settled_at)
    SELECT r.id, %(sale)s, r.user_id, r.quantity, r.reserved_at_ms, %(status)s, %(reason)s, now()
      FROM unnest(%(ids)s::uuid[], %(users)s::text[], %(quantities)s::int[], %(reserved_at_ms)s::bigint[])
           AS r(id, user_id, quantity, reserved_at_ms)
    ON CONFLICT (reservation_id) DO NOTHING
    RETURNING quantity
), counted AS (
    INSERT INTO stampede_sale_totals AS t (sale, shard, confirmed, compensated)
    SELECT %(sale)s, (pg_backend_pid() %% 8)::smallint,
           CASE WHEN %(status)s = 'confirmed' THEN coalesce(sum(quantity), 0) ELSE 0 END,
           CASE WHEN %(status)s = 'compensated' THEN coalesce(sum(quantity), 0) ELSE 0 END
      FROM ins
    ON CONFLICT (sale, shard) DO UPDATE
       SET confirmed = t.confirmed + EXCLUDED.confirmed, compensated = t.compensated + EXCLUDED.compensated
)
SELECT count(*) FROM ins;

-- name: checkout
-- The buyer's checkout: held -> paid, only while the hold runs (the ledger's clock) and only for its buyer,
-- with the payment that paid it; the sale's totals move in the same statement. One conditional UPDATE: if
-- the expiry sweep moved the row first, this one waits for its lock, finds it no longer held and moves
-- nothing (and the other way round). Returns the rows moved (0 or 1); the caller reads the row afresh to say
-- why not.
WITH moved AS (
    UPDATE stampede_ledger
       SET status = 'paid', closed_at = now(), checkout_key = %(key)s, payment_ref = %(payment_ref)s
     WHERE reservation_id = %(reservation_id)s::uuid AND user_id = %(user)s
       AND status = 'held' AND hold_expires_at > now()
    RETURNING sale, quantity
), counted AS (
    INSERT INTO stampede_sale_totals AS t (sale, shard, held, paid)
    SELECT sale, (pg_backend_pid() %% 8)::smallint, -quantity, quantity FROM moved
    ON CONFLICT (sale, shard) DO UPDATE SET held = t.held + EXCLUDED.held, paid = t.paid + EXCLUDED.paid
)
SELECT count(*) FROM moved;

-- name: expire_due
-- The expiry sweep: up to `limit` held rows whose hold has passed, earliest first, through the partial index
-- of held rows (cost: the rows due), locked SKIP LOCKED (a checkout or another sweeper holding one keeps it),
-- moved held -> expired with the sale's totals, in one statement. Returns the rows this statement expired:
-- only their units may go back on sale in Redis.
WITH due AS (
    SELECT reservation_id
      FROM stampede_ledger
     WHERE status = 'held' AND hold_expires_at <= now()
     ORDER BY hold_expires_at
     LIMIT %(limit)s
       FOR UPDATE SKIP LOCKED
), moved AS (
    UPDATE stampede_ledger l
       SET status = 'expired', closed_at = now()
      FROM due
     WHERE l.reservation_id = due.reservation_id
    RETURNING l.reservation_id, l.sale, l.quantity, l.user_id
), counted AS (
    INSERT INTO stampede_sale_totals AS t (sale, shard, held, expired)
    SELECT sale, (pg_backend_pid() %% 8)::smallint, -sum(quantity), sum(quantity)
      FROM moved
     GROUP BY sale
     ORDER BY sale
    ON CONFLICT (sale, shard) DO UPDATE SET held = t.held + EXCLUDED.held, expired = t.expired + EXCLUDED.expired
)
SELECT reservation_id::text, sale, quantity, user_id FROM moved;

-- name: expired_of
-- The listed reservations the ledger expired, with their buyer and quantity: what Redis needs to take back
-- the units of a hold it may keep only as a compact settled entry (no buyer there).
SELECT reservation_id::text, sale, quantity, user_id
  FROM stampede_ledger
 WHERE reservation_id = ANY(%(ids)s::uuid[]) AND status = 'expired';

-- name: hold_work
-- What the expiry sweep has to do, in one read through the two partial indexes below it: a held row that is
-- due, and an expired row Redis has not taken back `older_s` seconds after its expiry. A ledger without holds
-- answers from two empty index ranges, so a sweep of it costs this one statement.
SELECT EXISTS (SELECT 1 FROM stampede_ledger WHERE status = 'held' AND hold_expires_at <= now()),
       EXISTS (SELECT 1 FROM stampede_ledger
                WHERE status = 'expired' AND returned_at IS NULL
                  AND closed_at <= now() - make_interval(secs => %(older_s)s));

-- name: expired_unreturned
-- Expired rows whose units Redis has not taken back, expired at least `older_s` seconds ago (their sweeper
-- died between the ledger and Redis), oldest first, through the partial index of such rows; one sale, or
-- every sale when `sale` is NULL.
SELECT reservation_id::text, sale, quantity, user_id
  FROM stampede_ledger
 WHERE status = 'expired' AND returned_at IS NULL
   AND closed_at <= now() - make_interval(secs => %(older_s)s)
   AND (%(sale)s::text IS NULL OR sale = %(sale)s::text)
 ORDER BY closed_at
 LIMIT %(limit)s;

-- name: mark_returned
-- Redis has taken back the units of these expired rows.
UPDATE stampede_ledger
   SET returned_at = now()
 WHERE reservation_id = ANY(%(ids)s::uuid[]) AND status = 'expired' AND returned_at IS NULL;

-- name: settle_backlog
-- The sale's settle backlog: pending rows, their units, and the age of the oldest in ms by the database's
-- clock (0 when none), through the partial index of pending rows: what the operator scales the workers on.
SELECT count(*)::bigint,
       coalesce(sum(quantity), 0)::bigint,
       coalesce((extract(epoch FROM clock_timestamp() - min(created_at)) * 1000)::bigint, 0)
  FROM stampede_ledger
 WHERE sale = %(sale)s AND status = 'pending';
