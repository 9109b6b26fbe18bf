-- The ledger: the source of truth for every reservation's outcome (ARCHITECTURE.md §2).
-- One row per accepted reservation, written before the buyer hears 202, whose status moves once:
-- pending -> confirmed | compensated. The move "only out of pending" is enforced here, not only by the
-- callers' WHERE clauses, so no writer (worker, reconciler, a person with psql) can flip an outcome.

-- What the ledger needs to know of a FlashSale spec (the operator upserts it).
CREATE TABLE stampede_sales (
    sale            text PRIMARY KEY CHECK (sale ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    sku             text NOT NULL,
    stock           integer NOT NULL CHECK (stock >= 0),
    per_user_limit  integer NOT NULL CHECK (per_user_limit >= 1),
    window_start    timestamptz,
    window_end      timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (window_start IS NULL OR window_end IS NULL OR window_start < window_end)
);

-- No foreign key to stampede_sales: a batch may carry a reservation of a sale the ledger has not
-- heard of yet (the API learns sales from Redis), and such a row must be recorded, then settled
-- (compensated) on its own rather than failing its whole batch.
-- fillfactor < 100 leaves room on each page so the status update is a HOT update (status is not
-- indexed on purpose).
CREATE TABLE stampede_ledger (
    reservation_id  uuid PRIMARY KEY,
    sale            text NOT NULL,
    user_id         text NOT NULL,
    quantity        integer NOT NULL CHECK (quantity > 0),
    reserved_at_ms  bigint NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'confirmed', 'compensated')),
    reason          text,
    job_id          bigint,
    attempts        integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    settled_at      timestamptz,
    CONSTRAINT stampede_ledger_settled_iff_final CHECK ((status = 'pending') = (settled_at IS NULL)),
    CONSTRAINT stampede_ledger_compensated_has_reason CHECK (status <> 'compensated' OR reason IS NOT NULL)
) WITH (fillfactor = 80);

CREATE INDEX stampede_ledger_sale ON stampede_ledger (sale);
CREATE INDEX stampede_ledger_job ON stampede_ledger (job_id);

-- Transitions only out of pending; what a reservation is (id, sale, user, quantity) never changes.
-- The WHEN clause keeps the legal path (pending -> final) free of any function call.
CREATE FUNCTION stampede_ledger_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger row % is % and cannot become % (only pending rows move, once)',
        OLD.reservation_id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER stampede_ledger_only_out_of_pending
    BEFORE UPDATE ON stampede_ledger
    FOR EACH ROW
    WHEN (
        (OLD.status <> 'pending' AND NEW.status IS DISTINCT FROM OLD.status)
        OR NEW.reservation_id IS DISTINCT FROM OLD.reservation_id
        OR NEW.sale IS DISTINCT FROM OLD.sale
        OR NEW.user_id IS DISTINCT FROM OLD.user_id
        OR NEW.quantity IS DISTINCT FROM OLD.quantity
    )
    EXECUTE FUNCTION stampede_ledger_refuse_update();

-- An order is never deleted.
CREATE FUNCTION stampede_ledger_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger rows are never deleted' USING ERRCODE = 'check_violation';
END;
$$;

CREATE TRIGGER stampede_ledger_no_delete
    BEFORE DELETE ON stampede_ledger
    FOR EACH STATEMENT
    EXECUTE FUNCTION stampede_ledger_refuse_delete();
