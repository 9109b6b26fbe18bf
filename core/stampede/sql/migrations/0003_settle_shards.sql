-- Coalesced settling (ARCHITECTURE.md §2): a sale's pending rows are spread over a few shards, each shard
-- has at most one settle job waiting, and a running job claims the shard's pending rows in chunks
-- (FOR UPDATE SKIP LOCKED), so rows per job grow with load while the number of queued jobs stays bounded.

-- The shard a row waits in (chosen per API micro-batch). Rows written before this migration are shard 0;
-- their jobs carry explicit ids (payload v1) and settle them as before.
ALTER TABLE stampede_ledger ADD COLUMN shard smallint NOT NULL DEFAULT 0 CHECK (shard >= 0);

-- What a settle job claims: the shard's pending rows, oldest first. Partial, so it holds only what waits.
CREATE INDEX stampede_ledger_pending_shard ON stampede_ledger (sale, shard, created_at) WHERE status = 'pending';

-- The settle job of (sale, shard) a new batch of that shard joins: the one waiting (todo) if there is one,
-- else a new one deferred through procrastinate's own function. Called inside the writer's statement, so
-- the rows and the job they join commit together.
--
-- Why not procrastinate's queueing_lock: its unique index on waiting jobs also refuses a job going back to
-- todo (a retry, stalled-job recovery) while another one waits, and the job would then stay 'doing'. The
-- waiting job is found through procrastinate's partial index of todo jobs instead (a handful of rows), and
-- two writers creating one at the same instant are serialised by an advisory lock held until commit.
--
-- The shared advisory lock of the shard is the handshake with the claiming job: a writer holds it from
-- before it looks for the waiting job until it commits; a job that starts takes the same lock exclusively
-- once (stampede_settle_barrier) before its first claim. So every row that joined a job is committed, and
-- visible, before that job claims: no row can join a job that has already looked.
CREATE FUNCTION stampede_settle_lock_key(sale text, shard integer) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT hashtext(sale || '/' || shard::text) $$;

CREATE FUNCTION stampede_settle_job(queue text, task text, sale text, shard integer) RETURNS bigint
    LANGUAGE plpgsql
AS $$
DECLARE
    key integer := stampede_settle_lock_key(sale, shard);
    wanted jsonb := jsonb_build_object('v', 2, 'sale', sale, 'shard', shard);
    found bigint;
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtext('stampede.settle.claim'), key);
    SELECT j.id INTO found
      FROM procrastinate_jobs j
     WHERE j.status = 'todo' AND j.queue_name = queue AND j.task_name = task AND j.args = wanted
     ORDER BY j.id
     LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    -- No job waits: create one, one writer at a time (the next finds it once this one commits).
    PERFORM pg_advisory_xact_lock(hashtext('stampede.settle.defer'), key);
    SELECT j.id INTO found
      FROM procrastinate_jobs j
     WHERE j.status = 'todo' AND j.queue_name = queue AND j.task_name = task AND j.args = wanted
     ORDER BY j.id
     LIMIT 1;
    IF found IS NOT NULL THEN
        RETURN found;
    END IF;
    RETURN (procrastinate_defer_jobs_v1(ARRAY[
        ROW(queue, task, 0, NULL, NULL, wanted, NULL)::procrastinate_job_to_defer_v1
    ]))[1];
END;
$$;

-- The claiming job's side of the handshake: waits for every writer that may have joined a waiting job of
-- the shard to commit (see above). Taken and released in one statement.
CREATE FUNCTION stampede_settle_barrier(sale text, shard integer) RETURNS void
    LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('stampede.settle.claim'), stampede_settle_lock_key(sale, shard));
END;
$$;

-- The API's durable write: pending rows of one micro-batch, each sale's rows joining the settle job of
-- (sale, shard), in one statement. Sales are visited in sorted order so two writers never take their
-- shard locks in opposite orders. Returns the job of each sale, in that order.
CREATE FUNCTION stampede_record_batch(
    queue text, task text, shard integer,
    ids uuid[], sales text[], users text[], quantities integer[], reserved_at_ms bigint[]
) RETURNS TABLE (job_sale text, job bigint)
    LANGUAGE plpgsql
AS $$
DECLARE
    s text;
    j bigint;
BEGIN
    FOR s IN SELECT DISTINCT x FROM unnest(sales) AS x ORDER BY x LOOP
        j := stampede_settle_job(queue, task, s, shard);
        INSERT INTO stampede_ledger (reservation_id, sale, user_id, quantity, reserved_at_ms, job_id, shard)
        SELECT r.id, r.sale, r.user_id, r.quantity, r.reserved_at_ms, j, shard
          FROM unnest(ids, sales, users, quantities, reserved_at_ms) AS r(id, sale, user_id, quantity, reserved_at_ms)
         WHERE r.sale = s
        ON CONFLICT (reservation_id) DO NOTHING;
        job_sale := s;
        job := j;
        RETURN NEXT;
    END LOOP;
END;
$$;
