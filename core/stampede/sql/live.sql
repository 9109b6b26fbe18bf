-- Named queries of the live sale page (app/stampede_api/live_feed.py). Each reads what changes cheaply: pending
-- rows through the partial index of pending rows, settled units from stampede_sale_totals; never a sale's
-- settled rows.

-- name: live_sale
-- Units by status (as the reconciler's tally), the age of the oldest pending row (the 202 -> confirmed lag
-- the oldest unsettled reservation has reached), and the sale's mirror row (NULLs when the operator never
-- mirrored it), with the database's clock.
WITH pend AS (
    SELECT coalesce(sum(quantity), 0)::bigint AS units, min(created_at) AS oldest
      FROM stampede_ledger
     WHERE sale = %(sale)s AND status = 'pending'
), tot AS (
    SELECT coalesce(sum(confirmed), 0)::bigint AS confirmed, coalesce(sum(compensated), 0)::bigint AS compensated
      FROM stampede_sale_totals
     WHERE sale = %(sale)s
)
SELECT p.units, t.confirmed, t.compensated,
       extract(epoch FROM clock_timestamp() - p.oldest)::float8 AS oldest_pending_s,
       s.sku, s.stock, s.window_start, s.window_end
  FROM pend p
 CROSS JOIN tot t
  LEFT JOIN stampede_sales s ON s.sale = %(sale)s AND s.deleted_at IS NULL;

-- name: live_sales
-- The sales of one namespace the ledger knows (not deleted), newest window first; namespace '' lists the
-- sales addressed by a bare id.
SELECT sale, sku, stock, window_start, window_end
  FROM stampede_sales
 WHERE deleted_at IS NULL
   AND CASE WHEN %(namespace)s = '' THEN strpos(sale, '/') = 0
            ELSE starts_with(sale, %(namespace)s || '/') END
 ORDER BY coalesce(window_start, created_at) DESC, sale
 LIMIT %(limit)s;
