-- A sale is identified by namespace and name: `<namespace>/<name>` (stampede.names.sale_id), so two
-- FlashSales of one name in two namespaces are two sales in every ledger row. The ledger's `sale` columns
-- hold that id; only the sales table checked its shape, and it now accepts the qualified form (a bare
-- name stays valid for single-tenant callers and for rows written before this migration).
-- Rows written before carry the bare name: their namespace was never recorded, so they are left as they
-- are rather than guessed (see the README's upgrade note).
ALTER TABLE stampede_sales DROP CONSTRAINT stampede_sales_sale_check;
ALTER TABLE stampede_sales ADD CONSTRAINT stampede_sales_sale_check
    CHECK (sale ~ '^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?/)?[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$');
