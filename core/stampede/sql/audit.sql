-- Named queries of the sale audit (stampede.ledger.Ledger, for stampede_dev.sale_audit).

-- name: lag_percentiles
-- 202 -> settled lag of a sale's confirmed reservations, in seconds.
SELECT count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)) AS p95,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM settled_at - created_at)) AS p99,
       max(extract(epoch FROM settled_at - created_at)) AS max
  FROM stampede_ledger
 WHERE sale = %(sale)s AND status = 'confirmed' AND settled_at IS NOT NULL;

-- name: sale_row
SELECT stock, per_user_limit FROM stampede_sales WHERE sale = %(sale)s;
