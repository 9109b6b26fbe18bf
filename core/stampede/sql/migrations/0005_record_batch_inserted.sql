-- stampede_record_batch also says which reservation ids it inserted. An id the ledger already held (the
-- reconciler recorded it `lost_before_ack` while this write waited) keeps its row, and its writer must not
-- answer 202 for it: the stock is already given back. Same work as in 0003, one statement still.
DROP FUNCTION stampede_record_batch(text, text, integer, uuid[], text[], text[], integer[], bigint[]);

CREATE FUNCTION stampede_record_batch(
    queue text, task text, shard integer,
    ids uuid[], sales text[], users text[], quantities integer[], reserved_at_ms bigint[]
) RETURNS TABLE (job_sale text, job bigint, inserted text[])
    LANGUAGE plpgsql
AS $$
DECLARE
    s text;
    j bigint;
BEGIN
    FOR s IN SELECT DISTINCT x FROM unnest(sales) AS x ORDER BY x LOOP
        j := stampede_settle_job(queue, task, s, shard);
        WITH ins AS (
            INSERT INTO stampede_ledger (reservation_id, sale, user_id, quantity, reserved_at_ms, job_id, shard)
            SELECT r.id, r.sale, r.user_id, r.quantity, r.reserved_at_ms, j, shard
              FROM unnest(ids, sales, users, quantities, reserved_at_ms)
                   AS r(id, sale, user_id, quantity, reserved_at_ms)
             WHERE r.sale = s
            ON CONFLICT (reservation_id) DO NOTHING
            RETURNING reservation_id
        )
        SELECT coalesce(array_agg(ins.reservation_id::text), '{}') INTO inserted FROM ins;
        job_sale := s;
        job := j;
        RETURN NEXT;
    END LOOP;
END;
$$;
