-- Named queries of the demonstration strategies (app/stampede_api/strategies). v1 is wrong on
-- purpose: it reads the stock, decides in Python, then writes the number it computed, in separate
-- statements, which is the read-modify-write race the other strategies exist to fix.

-- name: upsert_product
INSERT INTO strategy_products (product_id, stock, initial)
VALUES (%(product_id)s, %(stock)s, %(stock)s)
ON CONFLICT (product_id) DO UPDATE SET stock = EXCLUDED.stock, initial = EXCLUDED.initial;

-- name: delete_orders
DELETE FROM strategy_orders WHERE product_id = %(product_id)s;

-- name: read_stock
SELECT stock FROM strategy_products WHERE product_id = %(product_id)s;

-- name: write_stock
UPDATE strategy_products SET stock = %(stock)s WHERE product_id = %(product_id)s;

-- name: take_one
UPDATE strategy_products SET stock = stock - 1
WHERE product_id = %(product_id)s AND stock >= 1
RETURNING stock;

-- name: product_exists
SELECT 1 FROM strategy_products WHERE product_id = %(product_id)s;

-- name: insert_order
INSERT INTO strategy_orders (strategy, product_id, user_id, ref)
VALUES (%(strategy)s, %(product_id)s, %(user_id)s, %(ref)s)
RETURNING id;

-- name: stats
SELECT p.initial, p.stock,
       (SELECT count(*) FROM strategy_orders o
         WHERE o.product_id = p.product_id AND o.strategy = %(strategy)s) AS accepted
FROM strategy_products p
WHERE p.product_id = %(product_id)s;

-- name: order_count
SELECT count(*) FROM strategy_orders WHERE product_id = %(product_id)s AND strategy = %(strategy)s;
