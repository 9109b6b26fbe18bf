-- Checkout holds (docs/architecture.md, "Checkout holds"): opt-in per sale (`spec.checkout.holdSeconds`).
-- A sale with holds settles an accepted reservation as `held` (a pending transfer with a timeout) instead of
-- `confirmed`; the buyer's checkout moves it `held -> paid`, the workers' sweep moves it `held -> expired` once
-- `hold_expires_at` has passed, and its units go back on sale. Both moves are one conditional UPDATE out of
-- `held`, so whichever commits first wins and the other finds nothing to move: a unit is paid for or returned,
-- exactly once. Sales without holds keep `pending -> confirmed | compensated`.

-- The sale's hold, mirrored by the operator with the rest of its spec (0: no holds, today's behaviour).
ALTER TABLE stampede_sales ADD COLUMN hold_seconds integer NOT NULL DEFAULT 0 CHECK (hold_seconds >= 0);

-- hold_expires_at: when a held reservation expires (set when it is settled, never moved after).
-- closed_at: when the hold ended (paid or expired). checkout_key / payment_ref: the checkout that paid it (an
-- idempotent replay carries the same key). returned_at: an expired reservation whose units Redis has taken
-- back (NULL: not yet told; the sweep and the reconciler find those through the partial index below).
ALTER TABLE stampede_ledger
    ADD COLUMN hold_expires_at timestamptz,
    ADD COLUMN closed_at timestamptz,
    ADD COLUMN checkout_key text,
    ADD COLUMN payment_ref text,
    ADD COLUMN returned_at timestamptz;

ALTER TABLE stampede_ledger DROP CONSTRAINT stampede_ledger_status_check;
ALTER TABLE stampede_ledger ADD CONSTRAINT stampede_ledger_status_check
    CHECK (status IN ('pending', 'confirmed', 'compensated', 'held', 'paid', 'expired'));
ALTER TABLE stampede_ledger ADD CONSTRAINT stampede_ledger_hold_has_expiry
    CHECK (status NOT IN ('held', 'paid', 'expired') OR hold_expires_at IS NOT NULL);
ALTER TABLE stampede_ledger ADD CONSTRAINT stampede_ledger_hold_end_has_time
    CHECK ((status IN ('paid', 'expired')) = (closed_at IS NOT NULL));
ALTER TABLE stampede_ledger ADD CONSTRAINT stampede_ledger_paid_has_payment
    CHECK (status <> 'paid' OR (checkout_key IS NOT NULL AND payment_ref IS NOT NULL));

-- The legal moves, enforced here for every writer: pending -> confirmed | compensated | held, and
-- held -> paid | expired. What a reservation is, when its hold expires and what paid for it never change.
DROP TRIGGER stampede_ledger_only_out_of_pending ON stampede_ledger;

CREATE TRIGGER stampede_ledger_only_forward
    BEFORE UPDATE ON stampede_ledger
    FOR EACH ROW
    WHEN (
        (NEW.status IS DISTINCT FROM OLD.status AND NOT (
            (OLD.status = 'pending' AND NEW.status IN ('confirmed', 'compensated', 'held'))
            OR (OLD.status = 'held' AND NEW.status IN ('paid', 'expired'))
        ))
        OR NEW.reservation_id IS DISTINCT FROM OLD.reservation_id
        OR NEW.sale IS DISTINCT FROM OLD.sale
        OR NEW.user_id IS DISTINCT FROM OLD.user_id
        OR NEW.quantity IS DISTINCT FROM OLD.quantity
        OR (OLD.status <> 'pending' AND NEW.hold_expires_at IS DISTINCT FROM OLD.hold_expires_at)
        OR (OLD.status = 'paid' AND (NEW.checkout_key IS DISTINCT FROM OLD.checkout_key
                                     OR NEW.payment_ref IS DISTINCT FROM OLD.payment_ref))
    )
    EXECUTE FUNCTION stampede_ledger_refuse_update();

-- What the expiry sweep reads: the held rows, by expiry time. Partial, so a sweep costs the rows that are due,
-- not the sale (nor the held rows that are not due yet: an index range scan up to now()).
CREATE INDEX stampede_ledger_hold_due ON stampede_ledger (hold_expires_at) WHERE status = 'held';

-- Expired rows whose units Redis has not taken back yet: the worker that expired them died in between (or
-- is on its way). Holds only those rows, so finding them costs what is stuck.
CREATE INDEX stampede_ledger_expired_unreturned ON stampede_ledger (closed_at)
    WHERE status = 'expired' AND returned_at IS NULL;

-- The settled totals by hold state (migration 0010's table), kept by the statements that move the rows.
-- `held` rises when a row is settled held and falls when it is paid or expires, possibly on another shard row
-- of the sale (the shard follows the writing connection): a shard row may go negative, the sale's sum never.
ALTER TABLE stampede_sale_totals
    ADD COLUMN held bigint NOT NULL DEFAULT 0,
    ADD COLUMN paid bigint NOT NULL DEFAULT 0 CHECK (paid >= 0),
    ADD COLUMN expired bigint NOT NULL DEFAULT 0 CHECK (expired >= 0);
