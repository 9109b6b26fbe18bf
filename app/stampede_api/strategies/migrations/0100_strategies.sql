-- Tables of the demonstration strategies v1-v3 (POST /api/v{1..3}/buy). They hold a product's stock
-- as a plain PostgreSQL counter and one row per accepted buy, so a run can compare what each strategy
-- accepted with the stock it started from. Production sales never touch them.
CREATE TABLE IF NOT EXISTS strategy_products (
    product_id   text PRIMARY KEY,
    stock        integer NOT NULL,
    initial      integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS strategy_orders (
    id          bigserial PRIMARY KEY,
    strategy    text NOT NULL,
    product_id  text NOT NULL,
    user_id     text NOT NULL,
    ref         text,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS strategy_orders_product ON strategy_orders (product_id, strategy);
