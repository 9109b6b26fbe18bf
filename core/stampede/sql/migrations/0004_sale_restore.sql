-- What a process needs to restore a sale's Redis counters from the ledger alone, after Redis lost them
-- (restart without persistence, failover): the rate limits reserve.lua enforces, and whether the sale
-- was deleted (a deleted sale is never brought back; its pending reservations are compensated).
ALTER TABLE stampede_sales
    ADD COLUMN buyer_rate   double precision NOT NULL DEFAULT 0 CHECK (buyer_rate >= 0),
    ADD COLUMN buyer_burst  integer NOT NULL DEFAULT 0 CHECK (buyer_burst >= 0),
    ADD COLUMN ip_rate      double precision NOT NULL DEFAULT 0 CHECK (ip_rate >= 0),
    ADD COLUMN ip_burst     integer NOT NULL DEFAULT 0 CHECK (ip_burst >= 0),
    ADD COLUMN deleted_at   timestamptz;
