-- The sale's stock buckets (spec.stock.buckets): a restore after Redis lost every bucket of a sale needs
-- their number to put each reservation back in its buyer's home bucket.
ALTER TABLE stampede_sales
    ADD COLUMN buckets integer NOT NULL DEFAULT 1 CHECK (buckets BETWEEN 1 AND 64);
