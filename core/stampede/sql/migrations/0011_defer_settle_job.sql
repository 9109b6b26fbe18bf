-- One place defers a settle job through procrastinate's own function: stampede_defer_settle_job. The shard
-- job of the API's writes (stampede_settle_job, migration 0003) and the reconciler's re-deferral of pending
-- rows whose job will not settle them (healing.sql, redefer) both call it, so the job's queue, task,
-- priority and lock columns are written once.
CREATE FUNCTION stampede_defer_settle_job(queue text, task text, args jsonb) RETURNS bigint
    LANGUAGE sql
AS $$
    SELECT (procrastinate_defer_jobs_v1(ARRAY[
        ROW(queue, task, 0, NULL, NULL, args, NULL)::procrastinate_job_to_defer_v1
    ]))[1]
$$;

-- As in migration 0003, with the deferral through the function above.
CREATE OR REPLACE FUNCTION stampede_settle_job(queue text, task text, sale text, shard integer) RETURNS bigint
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
    RETURN stampede_defer_settle_job(queue, task, wanted);
END;
$$;
