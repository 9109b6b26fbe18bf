-- What the reconciler reads instead of a sale's every row (ARCHITECTURE.md §2 step 4): its cost follows
-- what changed, not the sale's size.
--
-- 1. Pending rows are read through the partial index of pending rows of migration 0003
--    (stampede_ledger_pending_shard): in a healthy sale the pending set is what the workers have not settled
--    yet (small), so counting it and finding the old ones costs that set, not the sale.
--
-- 2. Settled units per sale, kept by the statements that settle (Ledger.settle, the reconciler's
--    record_lost) in the same statement as the rows they move, so the totals and the rows never disagree.
--    Never updated by the API's batch transaction (that would serialize every batch of a sale on one row
--    lock held through its commit). A sale has several shard rows (the settling connection's backend pid
--    picks one) so concurrent settle statements of one sale rarely wait for each other; readers sum them.
CREATE TABLE stampede_sale_totals (
    sale         text NOT NULL,
    shard        smallint NOT NULL,
    confirmed    bigint NOT NULL DEFAULT 0 CHECK (confirmed >= 0),
    compensated  bigint NOT NULL DEFAULT 0 CHECK (compensated >= 0),
    PRIMARY KEY (sale, shard)
);

-- What was settled before this migration.
INSERT INTO stampede_sale_totals (sale, shard, confirmed, compensated)
SELECT sale, 0,
       coalesce(sum(quantity) FILTER (WHERE status = 'confirmed'), 0),
       coalesce(sum(quantity) FILTER (WHERE status = 'compensated'), 0)
  FROM stampede_ledger
 WHERE status <> 'pending'
 GROUP BY sale;
