"""The four buy strategies of the flash-sale case study, side by side on ``POST /api/v{1..4}/buy``.

They exist to be measured against each other, never to serve a real sale, so they are mounted only when
``STAMPEDE_STRATEGIES_ENABLED`` is true. v1 reads then writes the stock in separate statements and
oversells under concurrency (on purpose); v2 lets PostgreSQL decide with one guarded UPDATE; v3 takes
the unit in Redis with the stock Lua script and then inserts the order synchronously; v4 is the real
path (Redis, the durable micro-batch, the settle job). Each can report what it accepted, so a run
compares the number of accepted buys with the stock it started from.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from stampede import errors
from stampede.ledger import Ledger
from stampede.stock import SaleConfig, StockEngine

from .base import Backends, BuyResult, Strategy, q
from .v1 import NaiveReadModifyWrite
from .v2 import GuardedUpdate
from .v3 import RedisThenSyncInsert
from .v4 import RedisDurableBatch

STRATEGIES: dict[str, type[Strategy]] = {
    "v1": NaiveReadModifyWrite,
    "v2": GuardedUpdate,
    "v3": RedisThenSyncInsert,
    "v4": RedisDurableBatch,
}


async def open_pool(database_url: str, *, min_size: int, max_size: int) -> AsyncConnectionPool:
    """The strategies' own autocommit pool (v1 must not get transactions it never asked for)."""
    pool = AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, kwargs={"autocommit": True}, open=False, timeout=10
    )
    await pool.open(wait=True, timeout=10)
    return pool


@dataclass(frozen=True, slots=True)
class Setup:
    strategy: str
    product: str
    stock: int


async def setup_product(
    strategy: str,
    product: str,
    stock_units: int,
    *,
    pool: AsyncConnectionPool | None = None,
    stock: StockEngine | None = None,
    ledger: Ledger | None = None,
    per_user_limit: int = 1_000_000,
) -> Setup:
    """Resets ``product`` for one strategy to ``stock_units`` (tests and the benchmark call this; the
    API has no endpoint for it). v3/v4 products are sales in Redis and must be valid sale names."""
    if strategy in ("v1", "v2"):
        if pool is None:
            raise ValueError("v1/v2 need the PostgreSQL pool")
        async with pool.connection() as conn:
            await conn.execute(q("upsert_product"), {"product_id": product, "stock": stock_units})
            await conn.execute(q("delete_orders"), {"product_id": product})
    elif strategy in ("v3", "v4"):
        if stock is None:
            raise ValueError("v3/v4 need the stock engine")
        await stock.delete(product)
        await stock.seed(product, SaleConfig(total=stock_units, per_user_limit=per_user_limit), open=True)
        if strategy == "v3":
            if pool is None:
                raise ValueError("v3 needs the PostgreSQL pool")
            async with pool.connection() as conn:
                await conn.execute(q("delete_orders"), {"product_id": product})
        else:
            if ledger is None:
                raise ValueError("v4 needs the ledger")
            await ledger.ensure_sale(
                product,
                sku=product,
                stock=stock_units,
                per_user_limit=per_user_limit,
                window_start=None,
                window_end=None,
            )
    else:
        raise errors.InvalidArgument("strategy", f"unknown strategy {strategy!r}")
    return Setup(strategy, product, stock_units)


__all__ = ["STRATEGIES", "Backends", "BuyResult", "Setup", "Strategy", "open_pool", "setup_product"]
